"""Stopping and continuing a run, in process: signals take effect at step boundaries and resume exactly; a resume
rebuilds the run from its checkpoint's config; a run owns its directory; full disks and divergence stop with one line
and keep the last good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import make_config, quiet_console, tiny_overrides
from gentrain import shared as checkpoint_module  # atomic_save lives there
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.shared import atomic_save
from gentrain.engine.rundir import RunDirectory, trim_metrics, writable_error
from gentrain.engine.trainer import Interrupted
from gentrain.errors import GentrainError
from gentrain.families.gan.objectives import AdversarialObjective
from gentrain.tasks import train
from test_metrics import TinyExtractor


def run(overrides: list[str], run_dir: Path, console=None) -> dict:
    return train(make_config(overrides), run_dir=run_dir, console=console or quiet_console())


def assert_same_state(a: dict, b: dict) -> None:
    """Weights (batch-norm statistics and counters included), optimizer states and step counts, the weight average, the batch order."""
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for phase, opt in a["optimizers"].items():
        for pid, state in opt["state"].items():
            for k, v in state.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizers"][phase]["state"][pid][k])), (phase, pid, k)
    if a.get("ema"):
        for k, v in a["ema"]["weights"].items():
            assert torch.equal(v, b["ema"]["weights"][k]), k
        assert a["ema"]["updates"] == b["ema"]["updates"]
    assert torch.equal(a["stream"]["perm"], b["stream"]["perm"]) and a["stream"]["pos"] == b["stream"]["pos"]


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def without_timing(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("time_s", "eval_time_s", "train/steps_per_s")}


def signal_at_call(monkeypatch, call: int, signum: int) -> None:
    """Send ``signum`` to this process from inside the ``call``-th phase update (mid-step when the step has several)."""
    original, calls = AdversarialObjective.step, {"n": 0}

    def step(self, phase, model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original(self, phase, model, batch)

    monkeypatch.setattr(AdversarialObjective, "step", step)


@pytest.mark.parametrize(
    "model,dataset,objective,extra,call,signum,stop_step",
    [
        # DCGAN with batch norm, 2 D updates + 1 G update per step: the 7th update is the first D update of step 3
        ("dcgan", "digits", "non_saturating", ["objective.d_steps=2", "trainer.ema_decay=0.9"], 7, signal.SIGINT, 3),
        # WGAN-GP, 5 critic updates per step: the 9th update is step 2's third critic update
        ("gan_mlp", "ring8", "wasserstein_gp", [], 9, signal.SIGTERM, 2),
    ],
    ids=["dcgan-sigint-in-D", "wgan_gp-sigterm-in-critic"],
)
def test_an_interrupt_inside_a_step_finishes_the_step_and_resumes_exactly(tmp_path, monkeypatch, model, dataset, objective, extra, call, signum, stop_step):
    base = tiny_overrides(model, dataset, objective, steps=6, extra=[*extra, "logger.every=1", "trainer.ckpt_every=0"])
    run(base, tmp_path / "full")
    signal_at_call(monkeypatch, call, signum)
    with pytest.raises(Interrupted, match=f"stopped by {signal.Signals(signum).name} at step {stop_step}") as e:
        run(base, tmp_path / "run")
    assert e.value.exit_code == 128 + signum and f"trainer.resume={tmp_path / 'run'}" in str(e.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == stop_step
    monkeypatch.undo()
    report = run([*base, "trainer.resume=true"], tmp_path / "run")
    assert report["run"]["start_step"] == stop_step
    assert_same_state(load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt"), load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    # the log: every step once, with the values of the uninterrupted run
    assert [without_timing(r) for r in records(tmp_path / "run")] == [without_timing(r) for r in records(tmp_path / "full")]


def test_a_stop_during_an_evaluation_cuts_it_short_and_resume_runs_it_first(tmp_path, monkeypatch):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    base = tiny_overrides("dcgan", "digits", steps=6, extra=["eval.metrics=[fid48]", "eval.every=2", "eval.batch_size=16", "trainer.ckpt_every=0"])
    run(base, tmp_path / "full")
    original, calls = TinyExtractor.forward, {"n": 0}

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] == 5:  # inside the second evaluation (step 4): 3 batches of 16 generated images each (references are cached)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, x)

    monkeypatch.setattr(TinyExtractor, "forward", forward)
    with pytest.raises(Interrupted, match="at step 4"):
        run(base, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["pending"] == ["evaluate"]
    assert [r["step"] for r in records(tmp_path / "run", "eval")] == [2]
    monkeypatch.undo()
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    report = run([*base, "trainer.resume=true"], tmp_path / "run")
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    assert [without_timing(r) for r in records(tmp_path / "run", "eval")] == [without_timing(r) for r in records(tmp_path / "full", "eval")]
    assert report["best"] == full["best"] and report["metrics"] == full["metrics"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["pending"] == []


def test_a_second_signal_while_the_checkpoint_is_written_gets_one_line_and_the_checkpoint_stays_whole(tmp_path, monkeypatch):
    signal_at_call(monkeypatch, 4, signal.SIGINT)  # step 2
    real_save, saves = torch.save, {"n": 0}

    def save(obj, f):
        saves["n"] += 1
        os.kill(os.getpid(), signal.SIGINT)  # arrives during the write
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    console = quiet_console()
    with pytest.raises(Interrupted, match="at step 2"):
        run(tiny_overrides("dcgan", "digits", steps=6, extra=["trainer.ckpt_every=0"]), tmp_path / "run", console)
    text = console.file.getvalue()
    assert text.count("SIGINT: stopping at the end of this step") == 1 and text.count("SIGINT: already stopping") == saves["n"] == 1
    assert "Traceback" not in text and load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


def test_resume_rebuilds_the_run_from_its_checkpoint_without_the_original_overrides(tmp_path):
    base = tiny_overrides("gan_mlp", "ring8", "minimax", steps=4, extra=["trainer.ckpt_every=2", "logger.every=1"])
    run(base, tmp_path / "full")
    run([*base, "trainer.max_steps=2"], tmp_path / "run")
    # only the resume and the new length: the composed defaults (dcgan on digits, non-saturating) must not leak in
    report = run([f"trainer.resume={tmp_path / 'run'}", "trainer.max_steps=4", "device=cpu", "logger.progress=false"], tmp_path / "run")
    assert (report["run"]["model"], report["run"]["dataset"], report["run"]["objective"], report["run"]["start_step"]) == ("gan_mlp", "ring8", "minimax", 2)
    assert_same_state(load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt"), load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "GanMLP" in saved and "max_steps: 4" in saved


def test_a_resume_that_would_change_the_run_is_refused_and_changes_nothing_on_disk(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_overrides("dcgan", "digits", steps=2), run_dir)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    for change in ("model.g_width=16", "trainer.batch_size=8", "objective=hinge", "seed=3", "dataset.val_fraction=0.2"):
        with pytest.raises(GentrainError, match="changes the run being resumed") as e:
            run([*tiny_overrides("dcgan", "digits", steps=4), change, "trainer.resume=true"], run_dir)
        assert "\n" not in str(e.value) and change.split("=")[0] in str(e.value)
    with pytest.raises(GentrainError, match="has model=dcgan"):
        run(["model=gan_mlp", "device=cpu", "trainer.resume=true"], run_dir)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before


def test_metrics_jsonl_has_no_duplicate_steps_after_a_crash_and_resume(tmp_path, monkeypatch):
    base = tiny_overrides("gan_mlp", "moons", steps=6, extra=["logger.every=1", "trainer.ckpt_every=3"])
    run(base, tmp_path / "full")
    original, calls = AdversarialObjective.step, {"n": 0}

    def crash(self, phase, model, batch):
        calls["n"] += 1
        if calls["n"] == 9:  # step 5: a crash (think SIGKILL) after steps 4 was logged and step 3 checkpointed
            raise RuntimeError("crash")
        return original(self, phase, model, batch)

    monkeypatch.setattr(AdversarialObjective, "step", crash)
    with pytest.raises(RuntimeError, match="crash"):
        run(base, tmp_path / "run")
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2, 3, 4]
    monkeypatch.undo()
    run([*base, "trainer.resume=true"], tmp_path / "run")
    assert [without_timing(r) for r in records(tmp_path / "run")] == [without_timing(r) for r in records(tmp_path / "full")]


def test_trim_metrics_drops_lines_past_the_checkpoint_and_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": 2}, {"kind": "eval", "step": 2}, {"kind": "train", "step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tr')
    assert trim_metrics(path, 2, drop_eval_at_step=True) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == [lines[0]]


def test_a_learning_rate_given_on_resume_applies_and_the_report_says_so(tmp_path):
    base = tiny_overrides("gan_mlp", "moons", steps=2, extra=["logger.every=1"])
    run(base, tmp_path / "run")
    report = run([*base, "trainer.max_steps=4", "model.optimizer.G.lr=1e-3", "trainer.resume=true"], tmp_path / "run")
    assert report["run"]["resumed_with_changes"] == ["model.optimizer.G.lr: 0.0002 -> 0.001"]
    assert [r["train/lr/G"] for r in records(tmp_path / "run")] == pytest.approx([2e-4, 2e-4, 1e-3, 1e-3])
    assert [r["train/lr/D"] for r in records(tmp_path / "run")] == pytest.approx([2e-4] * 4)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["optimizers"]["G"]["param_groups"][0]["lr"] == 1e-3


def test_a_run_owns_its_directory(tmp_path):
    first, note = RunDirectory.claim(tmp_path / "run", resume_in_place=False)
    assert note is None and first.path == tmp_path / "run"
    second, note = RunDirectory.claim(tmp_path / "run", resume_in_place=False)  # started in the same second
    assert second.path == tmp_path / "run_1" and "in use by another gentrain run" in note and f"pid {os.getpid()}" in note
    with pytest.raises(GentrainError, match="in use by a running gentrain process"):
        RunDirectory.claim(tmp_path / "run", resume_in_place=True)
    second.release()
    first.release()
    (tmp_path / "run" / "metrics.jsonl").write_text("")  # a finished run's directory: a new run does not write into it
    third, note = RunDirectory.claim(tmp_path / "run", resume_in_place=False)
    assert third.path == tmp_path / "run_1" and "holds another run's outputs" in note
    third.release()


def test_a_new_run_never_writes_into_another_runs_directory(tmp_path):
    run(tiny_overrides("gan_mlp", "moons", steps=2), tmp_path / "run")
    console = quiet_console()
    run(tiny_overrides("gan_mlp", "moons", steps=2), tmp_path / "run", console)
    assert "this run writes to" in " ".join(console.file.getvalue().split())  # however the console wraps a long path
    assert [r["step"] for r in records(tmp_path / "run")] == [2] and [r["step"] for r in records(tmp_path / "run_1")] == [2]
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_directory_whose_run_was_killed_before_its_first_checkpoint_is_taken_by_a_new_run(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_overrides("gan_mlp", "moons", steps=2, extra=["trainer.ckpt_every=0"]), run_dir)
    # what a SIGKILL during the first checkpoint write leaves: logs up to then, no checkpoint, the write's empty temporary
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "report.json").unlink()
    (run_dir / "report.md").unlink(missing_ok=True)
    stale = run_dir / "checkpoints" / f".last.pt.tmp-{_dead_pid()}"
    stale.write_bytes(b"")
    console = quiet_console()
    report = run(tiny_overrides("gan_mlp", "moons", steps=3, extra=["trainer.ckpt_every=0"]), run_dir, console)
    assert report["run"]["steps"] == 3 and not (tmp_path / "run_1").exists()
    assert "killed before its first checkpoint" in " ".join(console.file.getvalue().split())
    assert not stale.exists() and [r["step"] for r in records(run_dir)] == [2, 3]  # the new run's lines only
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "gentrain.log").read_text().count("completed at step") == 2  # the old log is kept, the new one follows


def test_a_new_run_removes_dead_temporaries_from_a_run_it_must_not_take(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_overrides("gan_mlp", "moons", steps=2), run_dir)
    stale, live = run_dir / "checkpoints" / f".last.pt.tmp-{_dead_pid()}", run_dir / "checkpoints" / f".last.pt.tmp-{os.getpid()}"
    stale.write_bytes(b"")
    live.write_bytes(b"")  # a process that is alive may still be writing it
    claimed, note = RunDirectory.claim(run_dir, resume_in_place=False)
    claimed.release()
    assert claimed.path == tmp_path / "run_1" and "holds another run's outputs" in note
    assert not stale.exists() and live.exists() and (run_dir / "checkpoints" / "last.pt").is_file()


def test_the_run_log_is_written_and_stale_temporaries_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_overrides("gan_mlp", "moons", steps=2), run_dir)
    log = (run_dir / "gentrain.log").read_text()
    assert "model=gan_mlp" in log and "step 2/2" in log and "checkpoint at step 2" in log and "completed at step 2" in log
    stale = run_dir / "checkpoints" / ".last.pt.tmp-99999"
    stale.write_bytes(b"\0" * 1000)  # a checkpoint write killed midway
    run([*tiny_overrides("gan_mlp", "moons", steps=3), "trainer.resume=true"], run_dir)
    assert not stale.exists() and "removing" in (run_dir / "gentrain.log").read_text()


def test_non_finite_parameters_stop_the_run_and_never_replace_the_last_finite_checkpoint(tmp_path):
    overrides = tiny_overrides("dcgan", "digits", steps=8, extra=["model.optimizer.G.lr=1e9", "model.optimizer.D.lr=1e9", "trainer.ckpt_every=1", "logger.every=4"])
    with pytest.raises(GentrainError, match="non-finite|became") as e:
        run(overrides, tmp_path / "run")
    assert "\n" not in str(e.value) and "lower the learning rate" in str(e.value)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if last.exists():
        ckpt = load_checkpoint(last)
        assert all(bool(t.isfinite().all()) for t in ckpt["model"].values() if t.is_floating_point())


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save, saves = torch.save, {"n": 0}

    def save(obj, f):
        saves["n"] += 1
        if saves["n"] == 2:
            f.write(b"\0" * 4096)  # part of the file, then the device is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    with pytest.raises(GentrainError) as e:
        run(tiny_overrides("gan_mlp", "moons", steps=4, extra=["trainer.ckpt_every=2"]), run_dir)
    message = str(e.value)
    assert "\n" not in message and "no space left on the device" in message and "the previous last.pt is intact" in message
    assert str(run_dir / "checkpoints" / "last.pt") in message
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file left


def test_unwritable_places_are_named(tmp_path, monkeypatch):
    with pytest.raises(GentrainError, match="read-only file system") as e:
        monkeypatch.setattr(checkpoint_module.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
        atomic_save({"x": 1}, tmp_path / "ckpt.pt")
    assert not list(tmp_path.glob(".ckpt.pt.tmp-*")) and "\n" not in str(e.value)
    monkeypatch.undo()

    class ReadOnly:
        f_flag = os.ST_RDONLY

    assert writable_error(tmp_path / "new" / "run") is None
    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly())
    assert "read-only file system" in writable_error(tmp_path / "new" / "run")


def test_examples_per_second_count_every_batch_a_step_consumes(train_run):
    _, report = train_run(tiny_overrides("gan_mlp", "ring8", steps=4, extra=["objective.d_steps=3"]))
    r = report["run"]
    assert r["batches_per_step"] == 4 and r["examples_per_s"] == pytest.approx(r["steps_per_s"] * 16 * 4)


HOLD_AT_EXIT = '''
import atexit, os, time
from pathlib import Path

def _hold():  # registered first, so it runs after gentrain's exit functions: the last work before the process ends
    marker = Path(os.environ["GENTRAIN_TEST_HOLD"])
    marker.write_text("exiting")
    deadline = time.monotonic() + 20
    while not marker.with_name("go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)

atexit.register(_hold)
'''


def test_signals_after_a_stop_print_one_line_each_until_the_process_exits_with_130(tmp_path):
    """Ctrl-C, then more SIGINT/SIGTERM while the stopped CLI run is exiting: one line each, exit 130, no traceback.

    A ``sitecustomize`` holds the process in its last exit function until the test has sent the later signals,
    so the window in which they arrive is certain (it used to be the interpreter's teardown: killed by SIGINT, status -2).
    """
    import shutil
    import subprocess
    import sys
    import time

    gentrain = shutil.which("gentrain", path=str(Path(sys.executable).parent))
    if gentrain is None:
        pytest.skip("the gentrain console script is not installed (pip install -e .)")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HOLD_AT_EXIT)
    hold = tmp_path / "hold"
    env = {**os.environ, "GENTRAIN_DATA": str(tmp_path / "data"), "GENTRAIN_TEST_HOLD": str(hold), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    args = [a for a in tiny_overrides("gan_mlp", "moons", steps=1_000_000) if not a.startswith("logger.samples_every")]
    proc = subprocess.Popen([gentrain, *args, "logger.samples_every=0", "trainer.ckpt_every=0", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        while not hold.exists():  # the run stopped and is ending
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        for second in (signal.SIGINT, signal.SIGTERM):
            proc.send_signal(second)
            time.sleep(0.3)
        (tmp_path / "go").write_text("")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in out + err, err
    assert (out + err).count("SIGINT: stopping at the end of this step") == 1
    assert err.count("SIGINT: already stopping") == 1 and err.count("SIGTERM: already stopping") == 1, err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] > 0
