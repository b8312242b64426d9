"""Logger backends (logger=[tensorboard,csv,mlflow,wandb]): each records the same scalars at the same steps, the
run's parameters and the sample pictures, read back with each library's own reader."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.errors import GentrainError
from gentrain.tasks import train

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb", minversion="0.31")  # its reader of offline runs: wandb leet inspect --json

ALL = "logger=[tensorboard,csv,mlflow,wandb]"
# gan_mlp on ring8: log at steps 2, 4, 6; pictures and evaluations (cheap mode counts) at 3 and 6
RUN = tiny_overrides("gan_mlp", "ring8", steps=6) + ["logger.samples_every=3", "eval.metrics=[modes100]", "eval.every=3"]
GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("loggers") / "run"
    train(make_config([*RUN, ALL]), run_dir=path, console=quiet_console())
    return path


def expected_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    """(key, step) -> value from metrics.jsonl, the run's own record: train/* lines and eval/* at evaluations."""
    out = {}
    for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        step = record["step"]
        if record["kind"] == "train":
            out |= {(k, step): v for k, v in record.items() if k.startswith("train/")}
        else:
            out |= {(f"eval/{k}", step): v for k, v in record.items() if k not in ("kind", "step", "splits", "eval_time_s", "results")}
    return out


def csv_params(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "params.csv", newline="") as f:
        return {row["key"]: row["value"] for row in csv.DictReader(f)}


def assert_same(scalars: dict[tuple[str, int], float], expected: dict[tuple[str, int], float], backend: str) -> None:
    assert sorted(scalars) == sorted(expected), backend
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6, nan_ok=True), (backend, key)


def test_every_backend_records_the_same_scalars_params_and_pictures(run_dir, monkeypatch):
    expected = expected_scalars(run_dir)
    assert {s for _, s in expected} == {2, 3, 4, 6} and ("eval/modes100_fair", 3) in expected and ("train/G/loss", 6) in expected
    params = csv_params(run_dir)
    assert params["model"] == "gan_mlp" and params["trainer.max_steps"] == "6" and params["model.g_widths"] == "[16, 32]"
    # the whole resolved config, as the TensorBoard text has it: device, evaluation and logger settings too
    assert params["seed"] == "0" and params["device.type"] == "cpu" and params["eval.every"] == "3" and params["eval.metrics"] == '["modes100"]'
    assert params["logger.every"] == "2" and params["logger.wandb.mode"] == "offline" and "logger.mlflow.tracking_uri" not in params  # null
    pictures = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert pictures == ["step_000003.png", "step_000006.png"]

    # CSV: long format step,key,value
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert_same({(r["key"], int(r["step"])): float(r["value"]) for r in rows}, expected, "csv")

    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert_same({(t, e.step): e.value for t in tags["scalars"] for e in acc.Scalars(t)}, expected, "tensorboard")
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    assert "config/text_summary" in tags["tensors"]

    # MLflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "gentrain"
    assert run.data.params == params
    history = {(k, m.step): m.value for k in run.data.metrics for m in client.get_metric_history(run.info.run_id, k)}
    assert_same(history, expected, "mlflow")
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples")) == [f"samples/{p}" for p in pictures]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.md", "samples"]
    # the README's readers need pandas (the loggers extra has it): mlflow.search_runs and the CSV pivot
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (run_dir / "mlruns").as_uri())
    frame = mlflow.search_runs(experiment_names=["gentrain"])
    assert list(frame["run_id"]) == [run.info.run_id] and frame["params.device.type"][0] == "cpu"
    import pandas as pd

    wide = pd.read_csv(run_dir / "metrics.csv").pivot_table(index="step", columns="key", values="value")
    assert list(wide.index) == [2, 3, 4, 6] and wide.loc[6, "train/G/loss"] == pytest.approx(expected[("train/G/loss", 6)])

    # W&B offline: its own reader of the run's transaction log (wandb leet inspect)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(offline)
    history = [(r["history"]["step"]["num"], r["history"]["item"]) for r in records if r["type"] == "history"]
    logged = {(k, step): v for step, item in history for k, v in item.items() if not k.startswith("_") and "." not in k}
    assert_same(logged, expected, "wandb")
    assert [step for step, item in history if item.get("samples._type") == "image-file"] == [3, 6]
    assert len(list((offline / "files" / "media" / "images").glob("samples_*.png"))) == 2
    summary = wandb_records(offline, "--summary")
    assert summary["state"] == "finished" and summary["exit_code"] == 0 and summary["name"] == "run" and summary["project"] == "gentrain"
    assert summary["config"].keys() == params.keys()
    for key, value in summary["config"].items():  # numbers as numbers (W&B's JSON writes 2.0 as 2)
        assert value == (params[key] if isinstance(value, str) else json.loads(params[key])), key


def wandb_records(offline: Path, *flags: str) -> list[dict] | dict:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(offline)], capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if flags else [json.loads(line) for line in out.stdout.splitlines()]


def test_tensorboard_names_each_run_by_its_directory_and_adds_no_hparam_cards(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert list(run_dir.glob("events.out.tfevents.*")) and not (run_dir / "tensorboard").exists()
    assert list(EventMultiplexer().AddRunsFromDirectory(str(run_dir.parent)).Runs()) == ["run"]  # tensorboard --logdir <parent>
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert not [t for t in scalars if t.startswith("hparam")]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics <= scalars and {"train/G/loss", "train/D/loss", "eval/modes100_fair"} <= metrics  # existing series only
    assert session.hparams["model"].string_value == "gan_mlp" and session.hparams["trainer.max_steps"].number_value == 6


def test_a_resume_continues_the_mlflow_and_wandb_runs(tmp_path):
    run_dir = tmp_path / "run"
    base = tiny_overrides("gan_mlp", "ring8", steps=4) + ["logger=[csv,mlflow,wandb]", "logger.samples_every=4"]
    train(make_config([*base, "trainer.max_steps=2"]), run_dir=run_dir, console=quiet_console())
    train(make_config([*base, f"trainer.resume={run_dir}"]), run_dir=run_dir, console=quiet_console())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("gentrain").experiment_id])
    assert run.info.run_id == (run_dir / "mlflow_run_id").read_text().strip() and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/G/loss")] == [2, 4]
    assert run.data.params["trainer.max_steps"] == "2" and run.data.tags["resumed.trainer.max_steps"] == "4"  # params are immutable
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    # one W&B run id, read from each session's own record (a folder started in the same second as another ends in -1)
    ids = {wandb_records(p, "--summary")["run_id"] for p in offline}
    assert len(offline) == 2 and ids == {(run_dir / "wandb_run_id").read_text().strip()}  # wandb sync joins them
    with open(run_dir / "metrics.csv", newline="") as f:
        assert sorted({int(r["step"]) for r in csv.DictReader(f)}) == [2, 4]


#: A gentrain session that SIGKILLs itself right after step KILL_AT's hooks (0: never), as a crash would.
KILLED_SESSION = """
import os, signal, sys
from gentrain.engine.trainer import Trainer
kill_at, after_step = int(sys.argv[1]), Trainer._after_step
def _after_step(self, last):
    after_step(self, last)
    if self.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer._after_step = _after_step
from gentrain.cli import main
sys.argv = ["gentrain", *sys.argv[2:]]
main()
"""


def logged_pairs(run_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """Backend -> every (key, step) point it holds, duplicates kept, read with each library's own reader."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(run_dir / "metrics.csv", newline="") as f:
        out = {"csv": [(r["key"], int(r["step"])) for r in csv.DictReader(f)]}
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()  # applies the purge a resumed session's writer recorded
    out["tensorboard"] = [(t, e.step) for t in acc.Tags()["scalars"] for e in acc.Scalars(t)] + [("samples", e.step) for e in acc.Images("samples")]
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    out["mlflow"] = [(k, m.step) for k in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, k)]
    out["mlflow"] += [("samples", int(a.path[-10:-4])) for a in client.list_artifacts(run_id, "samples") if a.path.startswith("samples/step_")]
    out["wandb"] = []
    for offline in sorted((run_dir / "wandb").glob("offline-run-*")):  # every session's file: what wandb sync uploads
        for r in wandb_records(offline):
            if r["type"] == "history":
                step, item = r["history"]["step"]["num"], r["history"]["item"]
                out["wandb"] += [(k, step) for k in item if not k.startswith("_") and "." not in k]
                out["wandb"] += [("samples", step) for k, v in item.items() if k == "samples._type"]
    return out


def test_after_a_sigkill_and_a_resume_every_backend_holds_each_step_once(tmp_path, monkeypatch):
    # checkpoint at 10, killed after step 15 (scalars at 12, 14, a picture at 15 logged past it), resumed to 20
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = tmp_path / "run"
    args = [*tiny_overrides("gan_mlp", "ring8", steps=20), ALL, "logger.samples_every=5", "trainer.ckpt_every=10", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "GENTRAIN_DATA": str(tmp_path / "data")}
    env.pop("WANDB_SERVICE", None)  # each session its own wandb service (not this process's, which outlives the killed one)
    for kill_at, session in ((15, args), (0, [f"trainer.resume={run_dir}"])):
        out = subprocess.run([sys.executable, "-c", KILLED_SESSION, str(kill_at), *session], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == (-9 if kill_at else 0), out.stderr[-2000:]
        if kill_at:  # named as W&B names a second session started in the same second: the resume reads ids, not names
            (killed,) = (run_dir / "wandb").glob("offline-run-*")
            killed.rename(killed.with_name(killed.name + "-1"))
    expected = set(expected_scalars(run_dir))
    assert {s for _, s in expected} == {2, 4, 6, 8, 10, 12, 14, 16, 18, 20}
    pictures = {("samples", s) for s in (5, 10, 15, 20)}
    for backend, pairs in logged_pairs(run_dir).items():
        counts = Counter(pairs)
        assert not [p for p, n in counts.items() if n > 1], (backend, "duplicate steps")
        want = expected | (pictures if backend != "csv" else set())  # CSV: the pictures are samples/*.png
        assert set(counts) == want, (backend, "missing", sorted(want - set(counts))[:5], "extra", sorted(set(counts) - want)[:5])


@pytest.mark.parametrize("backend,fix", [("mlflow", "pip install mlflow-skinny"), ("wandb", "pip install wandb")])
def test_a_backend_that_is_not_installed_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, backend, fix):
    monkeypatch.setitem(sys.modules, backend, None)  # import fails as if not installed
    with pytest.raises(GentrainError) as excinfo:
        train(make_config([*RUN, f"logger=[tensorboard,{backend}]"]), run_dir=tmp_path / "run", console=quiet_console())
    message = str(excinfo.value)
    assert "\n" not in message and f"logger={backend}" in message and fix in message and "pip install gentrain[loggers]" in message
    assert excinfo.value.exit_code == 2 and not (tmp_path / "run").exists()


@pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")
def test_the_cli_refuses_a_missing_or_unknown_backend_with_one_line(tmp_path):
    fake = tmp_path / "fake" / "wandb"  # a wandb that cannot be imported
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "GENTRAIN_DATA": str(tmp_path / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    for logger, fragment in (("[tensorboard,wandb]", "pip install wandb"), ("[tensorboard,nope]", "logger/nope")):
        out = subprocess.run(
            [GENTRAIN, f"logger={logger}", "model=gan_mlp", "dataset=ring8", "device=cpu", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 2 and out.stderr.startswith("error:") and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert fragment in out.stderr and "Traceback" not in out.stdout + out.stderr
        assert not (tmp_path / "run").exists()


def test_a_backend_that_fails_during_the_run_is_reported_once_and_turned_off():
    from gentrain.engine.loggers import Backend, Loggers

    class Broken(Backend):
        def scalars(self, values, step):
            raise OSError("disk full")

    class Kept(Backend):
        seen: list = []

        def scalars(self, values, step):
            self.seen.append(step)

        def finish(self, status):
            self.seen.append(status)

    said: list[str] = []
    loggers = Loggers({"broken": Broken(), "kept": Kept()}, said.append)
    loggers.scalars({"train/G/loss": 1.0}, 1)
    loggers.scalars({"train/G/loss": 1.0}, 2)
    loggers.finish("FINISHED")
    loggers.finish("FAILED")  # a second finish does nothing
    assert Kept.seen == [1, 2, "FINISHED"] and said == ["logger broken failed (OSError: disk full); it is off for the rest of this run"]


@pytest.mark.parametrize("error,status", [("crash", "FAILED"), ("signal", "KILLED")])
def test_a_run_that_raises_ends_its_tracker_runs_failed_or_killed(tmp_path, monkeypatch, error, status):
    from mlflow.tracking import MlflowClient

    from gentrain.engine.trainer import Interrupted, Trainer

    def boom(self, last):
        if self.step == 2:
            raise RuntimeError("boom") if error == "crash" else Interrupted("stopped by SIGTERM", 15)

    monkeypatch.setattr(Trainer, "_after_step", boom)
    run_dir = tmp_path / "run"
    with pytest.raises((RuntimeError, Interrupted)):
        train(make_config([*RUN, "logger=[mlflow,wandb]"]), run_dir=run_dir, console=quiet_console())
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    assert client.get_run((run_dir / "mlflow_run_id").read_text().strip()).info.status == status
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    summary = wandb_records(offline, "--summary")
    assert summary["exit_code"] == 1 and summary["state"] != "finished"


def test_the_backends_draw_nothing_from_the_runs_random_numbers(run_dir, tmp_path, monkeypatch):
    """MLflow pads a new experiment's id with ``random.randint`` digits when its uuid4 has leading zeros (1 run in
    ~10, by chance): opening the loggers keeps every RNG of the run, so a run logged to all four backends ends in
    the state of one logged to CSV alone, RNG states included (the fault-injection benchmark caught a restarted run
    whose Python RNG state differed from the uninterrupted run's). The padding is forced here."""
    import types
    import uuid

    import torch
    from mlflow.utils import name_utils

    from gentrain.engine.checkpoint import load_checkpoint

    train(make_config([*RUN, "logger=[csv]"]), run_dir=tmp_path / "csv", console=quiet_console())
    zeros = uuid.UUID(int=10**20 + 7)  # its decimal digits end in ...000007: leading zeros to pad
    monkeypatch.setattr(name_utils, "uuid", types.SimpleNamespace(uuid4=lambda: zeros))
    train(make_config([*RUN, ALL]), run_dir=tmp_path / "all", console=quiet_console())
    run_dir = tmp_path / "all"
    alone, every = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (tmp_path / "csv", run_dir))
    same_python_state = alone["rng"]["python"] == every["rng"]["python"]
    assert same_python_state, "Python's random state differs: a backend drew from the run's RNG"
    assert torch.equal(alone["rng"]["torch"], every["rng"]["torch"]) and torch.equal(alone["rng"]["numpy"][1], every["rng"]["numpy"][1])
    assert all(torch.equal(v, every["model"][k]) for k, v in alone["model"].items())


def test_a_backend_is_turned_off_with_false_and_on_by_choosing_it_not_with_true():
    from gentrain.config import logger_settings

    assert logger_settings(make_config(["logger.tensorboard=false"]).logger).backends == {}
    with pytest.raises(GentrainError, match=r"logger.tensorboard=true replaces the tensorboard backend's settings; a backend is on when chosen"):
        logger_settings(make_config(["logger.tensorboard=true"]).logger)
