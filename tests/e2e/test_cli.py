"""The installed ``gentrain`` console script as a user runs it: help, config printing, errors, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")
pytestmark = pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")

TINY_RUN = ["debug=tiny", "logger.samples_every=2"]


def gentrain(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENTRAIN_DATA": str(cwd / "data"), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([GENTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.strip() == lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_the_config_groups(tmp_path):
    result = gentrain(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("model:", "dataset:", "objective:", "device:", "trainer:", "eval:", "logger:", "experiment:", "task:"):
        assert group in result.stdout, group
    for option in ("dcgan", "gan_mlp", "minimax", "non_saturating", "fashion_mnist", "ring8", "image_folder"):
        assert option in result.stdout, option


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = gentrain(["--cfg", "job", "model=gan_mlp", "dataset=ring8", "seed=7"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GanMLP" in result.stdout and "Ring8" in result.stdout and "seed: 7" in result.stdout


def test_a_run_writes_every_output_a_refused_resume_changes_none_and_sample_and_summarize_read_it(tmp_path):
    result = gentrain(["model=gan_mlp", "dataset=moons", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    for name in (".hydra/config.yaml", "checkpoints/last.pt", "samples/step_000002.png", "metrics.jsonl", "report.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    # a resume that would change the run: one line, exit 2, not a byte of the run touched (every key: tests/integration)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert_one_line_error(gentrain(["model=dcgan", f"trainer.resume={run_dir}"], tmp_path), "changes the run being resumed", "model=gan_mlp")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before
    result = gentrain(["task=sample", f"ckpt={run_dir}", "n=20", "device=cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((run_dir / "checkpoints").glob("last_step2_n20_seed0.*"))) == 2
    result = gentrain(["task=summarize", f"dir={tmp_path / 'outputs'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # sample and summarize made no run directory


def test_multirun_sweeps_from_the_shell(tmp_path):
    result = gentrain(["-m", "model=gan_mlp", "dataset=ring8", "objective=minimax,non_saturating", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    reports = sorted((tmp_path / "multirun").glob("*/*/*/report.json"))
    assert len(reports) == 2
    assert {json.loads(p.read_text())["run"]["objective"] for p in reports} == {"minimax", "non_saturating"}


def test_unknown_option_names_the_available_ones(tmp_path):
    assert_one_line_error(gentrain(["model=nope"], tmp_path), "unknown model 'nope'", "gan_mlp", "wgan_gp")


def test_unknown_key_is_refused(tmp_path):
    assert_one_line_error(gentrain(["trainer.max_stpes=10"], tmp_path), "trainer.max_stpes is not an option", "+trainer.max_stpes=10")


def test_every_value_of_a_sweep_is_checked_before_any_run(tmp_path):
    result = gentrain(["-m", "model=gan_mlp", "dataset=ring8,nope", "seed=range(0,2)", "trainer.max_steps=1", *TINY_RUN], tmp_path)
    assert_one_line_error(result, "unknown dataset 'nope'", "moons")
    assert not (tmp_path / "multirun").exists()


def test_cfg_of_an_unknown_option_is_one_line(tmp_path):
    assert_one_line_error(gentrain(["--cfg", "job", "dataset=nope"], tmp_path), "unknown dataset 'nope'")


def test_a_sweep_value_without_multirun_says_how(tmp_path):
    assert_one_line_error(gentrain(["model=dcgan,gan_mlp"], tmp_path), "add --multirun")


def test_wrong_type_is_one_line(tmp_path):
    assert_one_line_error(gentrain(["trainer.max_steps=abc", "dataset=ring8"], tmp_path), "trainer.max_steps", "Integer")


def test_dataset_missing_offline_is_one_line(tmp_path):
    assert_one_line_error(gentrain(["dataset=mnist", *TINY_RUN], tmp_path), "MNIST", "dataset.download=true")


def test_image_folder_without_a_path_is_one_line(tmp_path):
    assert_one_line_error(gentrain(["dataset=image_folder", *TINY_RUN], tmp_path), "dataset.path")


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(gentrain(["task=eval", f"ckpt={tmp_path}/nope.pt"], tmp_path), "no checkpoint at")


# ------------------------------------------------------------------------- stopping and continuing

LONG_RUN = ["model=gan_mlp", "dataset=moons", "trainer.max_steps=1000000", "trainer.ckpt_every=0", *TINY_RUN]


def start(args: list[str], cwd: Path, ignore_sigint: bool = False) -> subprocess.Popen:
    env = {**os.environ, "GENTRAIN_DATA": str(cwd / "data"), "COLUMNS": "200"}
    # a shell starting `gentrain ... &` ignores SIGINT in the child; preexec_fn does the same
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([GENTRAIN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def wait_for_training(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.1)


@pytest.mark.parametrize("signum,ignore_sigint", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "sigint-in-background"])
def test_a_signal_stops_a_run_with_a_checkpoint_and_the_printed_command_continues_it(tmp_path, signum, ignore_sigint):
    run_dir = tmp_path / "run"
    proc = start([*LONG_RUN, f"hydra.run.dir={run_dir}"], tmp_path, ignore_sigint)
    wait_for_training(run_dir, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"stopped by {signal.Signals(signum).name}" in line
    command = line.split("continue with: ")[1].split()
    step = json.loads(run_dir.joinpath("report.json").read_text())["run"]["steps"] if run_dir.joinpath("report.json").exists() else None
    assert step is None  # stopped, not completed
    from gentrain.engine.checkpoint import load_checkpoint

    stopped_at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    if signum != signal.SIGTERM:
        return  # the printed command continues a stopped run alike for either signal: SIGTERM's case runs it
    # the printed command, as given, plus a new length: no original override repeated
    result = gentrain([*command[1:], f"trainer.max_steps={stopped_at + 4}"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["run"]["model"], report["run"]["start_step"], report["run"]["steps"]) == ("gan_mlp", stopped_at, stopped_at + 4)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)


def test_two_runs_started_in_the_same_second_get_a_directory_each(tmp_path):
    args = ["model=gan_mlp", "dataset=moons", "trainer.max_steps=3", *TINY_RUN, f"hydra.run.dir={tmp_path / 'run'}"]
    procs = [start(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert sum("this run writes to" in o[0] for o in outs) == 1
    for run_dir in (tmp_path / "run", tmp_path / "run_1"):
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [2, 3]


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_the_first_job(tmp_path):
    result = gentrain(["-m", "model=gan_mlp", "dataset=moons", "trainer.max_steps=1", *TINY_RUN, "trainer.batch_size=32,0"], tmp_path)
    assert_one_line_error(result, "trainer.batch_size must be >= 1", "trainer.batch_size=0")
    assert not (tmp_path / "multirun").exists()
    # a combination that fails only with both built (WGAN-GP on a batch-norm critic): that job fails with its one line
    # when it builds them, before it writes anything, and the sweep goes on (the precheck builds nothing)
    result = gentrain(["-m", "model=dcgan", "objective=wasserstein_gp,hinge", "trainer.max_steps=1", *TINY_RUN], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 2, result.stderr
    assert "model.d_norm=layer" in errors[0] and "1 sweep job(s) failed (job 0)" in errors[1]
    assert [p.parent.name for p in (tmp_path / "multirun").glob("*/*/*/report.json")] == ["1"]


def test_a_job_that_fails_while_running_does_not_stop_the_sweep(tmp_path):
    result = gentrain(["-m", "model=gan_mlp", "dataset=mnist,moons", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "MNIST not found" in errors[0] and "1 sweep job(s) failed (job 0)" in errors[-1]
    reports = list((tmp_path / "multirun").glob("*/*/1/report.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["run"]["dataset"] == "moons"


@pytest.mark.parametrize("args", [["trainer.max_steps=[1,2"], ["-m", "seed=0,1", "model.z_dim=[1"]])
def test_an_override_with_a_syntax_error_is_one_line(tmp_path: Path, args: list[str]) -> None:
    out = gentrain(args, tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot parse the overrides") and "[1" in lines[0]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_bare_shell_completion_is_one_line_naming_the_usage(tmp_path: Path) -> None:
    out = gentrain(["--shell-completion"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "--shell-completion install=bash" in out.stderr
    installed = gentrain(["--shell-completion", "install=bash"], tmp_path)
    assert installed.returncode == 0 and "hydra_bash_completion" in installed.stdout
