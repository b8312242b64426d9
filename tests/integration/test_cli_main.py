"""``gentrain`` as the console script runs it, in this process (``gentrain.cli.main`` with the arguments, the working
directory and the data folder a shell would give it): help, config printing, every one-line refusal, sweeps and their
failing jobs. What needs a real process (signals, two processes at once, the installed script) is in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli_in_process as cli
from test_cli import TINY_RUN, assert_one_line_error


def test_help_lists_the_config_groups(tmp_path):
    result = cli(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("model:", "dataset:", "objective:", "device:", "trainer:", "eval:", "logger:", "experiment:", "task:"):
        assert group in result.stdout, group
    for option in ("dcgan", "gan_mlp", "minimax", "non_saturating", "fashion_mnist", "ring8", "image_folder"):
        assert option in result.stdout, option


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = cli(["--cfg", "job", "model=gan_mlp", "dataset=ring8", "seed=7"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GanMLP" in result.stdout and "Ring8" in result.stdout and "seed: 7" in result.stdout


def test_multirun_sweeps_from_the_shell(tmp_path):
    result = cli(["-m", "model=gan_mlp", "dataset=ring8", "objective=minimax,non_saturating", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    reports = sorted((tmp_path / "multirun").glob("*/*/*/report.json"))
    assert len(reports) == 2
    assert {json.loads(p.read_text())["run"]["objective"] for p in reports} == {"minimax", "non_saturating"}


def test_unknown_option_names_the_available_ones(tmp_path):
    assert_one_line_error(cli(["model=nope"], tmp_path), "unknown model 'nope'", "gan_mlp", "wgan_gp")


def test_unknown_key_is_refused(tmp_path):
    assert_one_line_error(cli(["trainer.max_stpes=10"], tmp_path), "trainer.max_stpes is not an option", "+trainer.max_stpes=10")


def test_every_value_of_a_sweep_is_checked_before_any_run(tmp_path):
    result = cli(["-m", "model=gan_mlp", "dataset=ring8,nope", "seed=range(0,2)", "trainer.max_steps=1", *TINY_RUN], tmp_path)
    assert_one_line_error(result, "unknown dataset 'nope'", "moons")
    assert not (tmp_path / "multirun").exists()


def test_cfg_of_an_unknown_option_is_one_line(tmp_path):
    assert_one_line_error(cli(["--cfg", "job", "dataset=nope"], tmp_path), "unknown dataset 'nope'")


def test_a_sweep_value_without_multirun_says_how(tmp_path):
    assert_one_line_error(cli(["model=dcgan,gan_mlp"], tmp_path), "add --multirun")


def test_wrong_type_is_one_line(tmp_path):
    assert_one_line_error(cli(["trainer.max_steps=abc", "dataset=ring8"], tmp_path), "trainer.max_steps", "Integer")


def test_dataset_missing_offline_is_one_line(tmp_path):
    assert_one_line_error(cli(["dataset=mnist", *TINY_RUN], tmp_path), "MNIST", "dataset.download=true")


def test_image_folder_without_a_path_is_one_line(tmp_path):
    assert_one_line_error(cli(["dataset=image_folder", *TINY_RUN], tmp_path), "dataset.path")


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(cli(["task=eval", f"ckpt={tmp_path}/nope.pt"], tmp_path), "no checkpoint at")


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_the_first_job(tmp_path):
    result = cli(["-m", "model=gan_mlp", "dataset=moons", "trainer.max_steps=1", *TINY_RUN, "trainer.batch_size=32,0"], tmp_path)
    assert_one_line_error(result, "trainer.batch_size must be >= 1", "trainer.batch_size=0")
    assert not (tmp_path / "multirun").exists()
    # a combination that fails only with both built (WGAN-GP on a batch-norm critic): that job fails with its one line
    # when it builds them, before it writes anything, and the sweep goes on (the precheck builds nothing)
    result = cli(["-m", "model=dcgan", "objective=wasserstein_gp,hinge", "trainer.max_steps=1", *TINY_RUN], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 2, result.stderr
    assert "model.d_norm=layer" in errors[0] and "1 sweep job(s) failed (job 0)" in errors[1]
    assert [p.parent.name for p in (tmp_path / "multirun").glob("*/*/*/report.json")] == ["1"]


def test_a_job_that_fails_while_running_does_not_stop_the_sweep(tmp_path):
    result = cli(["-m", "model=gan_mlp", "dataset=mnist,moons", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "MNIST not found" in errors[0] and "1 sweep job(s) failed (job 0)" in errors[-1]
    reports = list((tmp_path / "multirun").glob("*/*/1/report.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["run"]["dataset"] == "moons"


@pytest.mark.parametrize("args", [["trainer.max_steps=[1,2"], ["-m", "seed=0,1", "model.z_dim=[1"]])
def test_an_override_with_a_syntax_error_is_one_line(tmp_path: Path, args: list[str]) -> None:
    out = cli(args, tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot parse the overrides") and "[1" in lines[0]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_bare_shell_completion_is_one_line_naming_the_usage(tmp_path: Path) -> None:
    out = cli(["--shell-completion"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "--shell-completion install=bash" in out.stderr
    installed = cli(["--shell-completion", "install=bash"], tmp_path)
    assert installed.returncode == 0 and "hydra_bash_completion" in installed.stdout
