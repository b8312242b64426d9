"""The installed ``gentrain`` console script as a user runs it: help, config printing, errors, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")
pytestmark = pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")

TINY_RUN = ["device=cpu", "trainer.batch_size=16", "logger.every=2", "logger.samples_every=2", "logger.n_samples=16", "logger.progress=false"]


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


def test_a_run_writes_every_output(tmp_path):
    result = gentrain(["model=gan_mlp", "dataset=moons", "trainer.max_steps=2", *TINY_RUN, *TINY["gan_mlp"]], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    for name in (".hydra/config.yaml", "checkpoints/last.pt", "samples/step_000002.png", "metrics.jsonl", "report.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_multirun_sweeps_from_the_shell(tmp_path):
    result = gentrain(["-m", "model=gan_mlp", "dataset=ring8", "objective=minimax,non_saturating", "trainer.max_steps=2", *TINY_RUN, *TINY["gan_mlp"]], tmp_path)
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


def test_sample_task_from_the_shell(tmp_path):
    result = gentrain(["model=gan_mlp", "dataset=moons", "trainer.max_steps=1", *TINY_RUN, *TINY["gan_mlp"]], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    result = gentrain(["task=sample", f"ckpt={run_dir}", "n=20", "device=cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((run_dir / "checkpoints").glob("last_step1_n20_seed0.*"))) == 2
