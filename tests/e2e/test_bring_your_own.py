"""A user's own model family, from a package outside gentrain, through the CLI and the API with no edit to gentrain.

The package is ``tests/fixtures/byo/mygen`` (a low-rank Gaussian with its own objective), its YAMLs
``tests/fixtures/byo/conf/{model,objective,logger,callbacks}/*.yaml``: found with ``--config-dir`` on the command line and with
``hydra.searchpath`` in the API, as Hydra users do. It trains, evaluates, samples, resumes (bitwise on the CPU)
and loads; the user's own logger and callback come in the same way (one class and one YAML each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gentrain
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "byo"
CONF = FIXTURE / "conf"
GENTRAIN = str(Path(sys.executable).with_name("gentrain"))
RUN = ["model=lowrank", "dataset=ring8", "debug=tiny", "eval.metrics=[nll128]", "trainer.ckpt_every=2", "callbacks=trace"]


@pytest.fixture
def on_path(monkeypatch):
    """The user's package importable, as ``pip install`` or PYTHONPATH would make it."""
    monkeypatch.syspath_prepend(str(FIXTURE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FIXTURE), os.environ.get("PYTHONPATH", "")]))


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([GENTRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (a, b))
    assert x["step"] == y["step"] == 4
    assert x["callbacks"]["trace"] == y["callbacks"]["trace"] == {"calls": 2}  # the user's callback kept its state by name
    for key, value in x["model"].items():
        assert torch.equal(value, y["model"][key]), key
    for pid, state in x["optimizers"]["main"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, y["optimizers"]["main"]["state"][pid][k]), (pid, k)


def test_a_users_own_family_trains_evaluates_samples_resumes_and_loads(tmp_path, on_path):
    search = f"hydra.searchpath=[file://{CONF}]"
    # the API: four steps uninterrupted; the user's objective is the model YAML's own choice
    full = gentrain.train([search, *RUN, "trainer.max_steps=4"], run_dir=tmp_path / "full", quiet=True)
    assert full.report["run"]["model"] == "lowrank" and full.report["run"]["objective"] == "gauss_nll"
    assert set(full.metrics) == {"nll128", "nll128_bpd"} and torch.isfinite(torch.tensor(full.metrics["nll128"]))

    # the CLI: two steps, then a resume to four (the run is rebuilt from its checkpoint: _target_ mygen.models...)
    cli(["--config-dir", str(CONF), *RUN, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'half'}"], tmp_path)
    cli(["--config-dir", str(CONF), *RUN, "trainer.max_steps=4", f"trainer.resume={tmp_path / 'half'}", f"hydra.run.dir={tmp_path / 'resumed'}"], tmp_path)
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")

    # the CLI evaluated the user's model at the end of its run; task=sample needs no config dir: the checkpoint holds the config
    assert set(json.loads((tmp_path / "resumed" / "report.json").read_text())["metrics"]) == {"nll128", "nll128_bpd"}
    sampled = cli(["task=sample", f"ckpt={tmp_path / 'resumed'}", "n=8"], tmp_path)
    assert "8 samples of" in sampled.stdout

    # the API: load, sample, score, evaluate: the same numbers as the run's own
    loaded = gentrain.load(tmp_path / "full")
    assert loaded.model_name == "lowrank" and loaded.has_likelihood and not loaded.conditional
    assert loaded.sample(16, seed=3).shape == (16, 2) and torch.equal(loaded.sample(16, seed=3), loaded.sample(16, seed=3))
    assert gentrain.evaluate(loaded, metrics=["nll128"], quiet=True) == pytest.approx(full.metrics)


def test_a_users_model_that_does_not_import_is_one_line(tmp_path):
    with pytest.raises(GentrainError) as e:
        gentrain.train([f"hydra.searchpath=[file://{CONF}]", *RUN, "model._target_=notinstalled.models.Net"], run_dir=tmp_path / "r", quiet=True)
    assert str(e.value) == (
        "could not build model: model._target_=notinstalled.models.Net does not import (No module named 'notinstalled'); "
        "install its package or put it on PYTHONPATH"
    )


def test_a_users_own_logger_is_one_class_and_one_yaml(tmp_path, on_path):
    result = gentrain.train([f"hydra.searchpath=[file://{CONF}]", *RUN, "trainer.max_steps=4", "logger=[csv,jsonlines]"], run_dir=tmp_path / "r", quiet=True)
    lines = [json.loads(line) for line in (result.run_dir / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/main/loss" in r] == [2, 4]
    assert [r["step"] for r in lines if "eval/nll128" in r] == [4]  # the final evaluation's record too
    assert [(r["step"], r["trace/calls"]) for r in lines if "trace/calls" in r] == [(2, 1.0), (4, 2.0)]  # the user's callback
    assert (result.run_dir / "metrics.csv").is_file() and not list(result.run_dir.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("override, message", [
    ("callbacks.trace._target_=collections.OrderedDict",
     "callbacks.trace._target_=collections.OrderedDict is not a gentrain.engine.hooks.Hook; a callback is "
     "'callbacks.trace={_target_: package.module.Class, ...}' naming a gentrain.engine.hooks.Hook subclass"),
    ("+callbacks.log={_target_:mygen.callbacks.LossTrace}",
     "callbacks.log: 'log' is a default callback's name (their state is saved by name); call yours otherwise"),
])
def test_a_callback_that_is_no_hook_or_takes_a_default_name_is_one_line(tmp_path, on_path, override, message):
    with pytest.raises(GentrainError) as e:
        gentrain.train([f"hydra.searchpath=[file://{CONF}]", *RUN, override], run_dir=tmp_path / "r", quiet=True)
    assert str(e.value) == message and not (tmp_path / "r").exists()
