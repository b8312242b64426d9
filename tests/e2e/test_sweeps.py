"""Sweeps that optimise: the number a run returns to Hydra (``optimize=``), Optuna and joblib sweeps from the
shell, and the ``hparams_search`` / ``hydra/launcher`` presets."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import re
import math
from pathlib import Path

import pytest
import yaml

from conftest import make_config, tiny_overrides
from gentrain.config import CONFIG_DIR, compose_app_config
from gentrain.errors import GentrainError
from gentrain.tasks.optimize import Target, check_sweeper, target, value
from test_cli import GENTRAIN, assert_one_line_error, gentrain

needs = {name: importlib.util.find_spec(module) is not None for name, module in (
    ("optuna", "hydra_plugins.hydra_optuna_sweeper"), ("joblib", "hydra_plugins.hydra_joblib_launcher"), ("submitit", "hydra_plugins.hydra_submitit_launcher"),
)}


def _target(overrides: list[str]) -> Target | None:
    return target(make_config(overrides))


def test_the_default_target_is_the_first_metric_on_the_validation_split():
    assert _target(["eval.metrics=[fid10k,kid10k]"]) == Target("fid10k_val", False)
    assert _target(["eval.metrics=[pr10k,fid10k]"]) == Target("pr10k_val_precision", True)  # the family's headline, as eval.best's default
    assert _target(["eval.metrics=[fid10k,pr10k]", "eval.best=pr10k_recall"]) == Target("pr10k_val_recall", True)
    # likelihoods in bits/dim; metrics that use no split keep their name
    assert _target(["model=made", "objective=ar_nll", "eval.metrics=[nll500]"]) == Target("nll500_val_bpd", False)
    assert _target(["model=gan_mlp", "dataset=ring8", "eval.metrics=[modes2500]"]) == Target("modes2500_fair", True)
    assert _target([]) is None  # nothing evaluated: the last phase's loss, found in the report


def test_explicit_targets_and_their_refusals():
    assert _target(["optimize=eval/fid1k_val", "eval.metrics=[fid1k]"]) == Target("fid1k_val", False)
    assert _target(["optimize=train/G/loss"]) == Target("train/G/loss", False)
    with pytest.raises(GentrainError, match="test split; use fid10k_val"):
        _target(["optimize=fid10k", "eval.metrics=[fid10k]"])
    with pytest.raises(GentrainError, match="does not compute it; add kid1k"):
        _target(["optimize=kid1k_val", "eval.metrics=[fid1k]"])
    with pytest.raises(GentrainError, match="optimize=fid10k_vall"):
        _target(["optimize=fid10k_vall", "eval.metrics=[fid10k]"])


def test_the_value_comes_from_the_report():
    report = {"final": {"train/D/loss": 1.2, "train/G/loss": 0.7}, "metrics": {"fid10k_val": 31.5, "fid10k": 33.0}}
    assert value(make_config(["eval.metrics=[fid10k]", "optimize=fid10k_val"]), report) == 31.5
    assert value(make_config([]), report) == 0.7  # no metrics: the last phase's loss
    assert math.isnan(value(make_config([]), {"final": {"train/G/loss": float("inf")}, "metrics": {}}))
    assert value(make_config([]), None) is None  # tasks that return no report (sample, summarize)
    with pytest.raises(GentrainError, match="not among this run's results"):
        value(make_config(["eval.metrics=[fid10k]", "optimize=fid10k_val"]), {"final": {}, "metrics": {"fid10k": 3.0}})


def test_a_sweeper_direction_against_the_target_is_refused():
    cfg = compose_app_config(["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "eval.metrics=[fid10k]"]) if needs["optuna"] else None
    if cfg is None:
        pytest.skip("hydra-optuna-sweeper is not installed (pip install gentrain[sweeps])")
    with pytest.raises(GentrainError, match="set hydra.sweeper.direction=minimize"):
        check_sweeper(cfg)
    check_sweeper(compose_app_config(["hydra/sweeper=optuna", "hydra.sweeper.direction=minimize", "eval.metrics=[fid10k]"]))


def test_a_run_with_a_validation_target_evaluates_the_validation_split_at_the_end(train_run):
    overrides = tiny_overrides("made", "digits", "ar_nll", steps=2, extra=["eval.metrics=[nll100]", "optimize=nll100_val_bpd"])
    _, report = train_run(overrides)
    assert {"nll100_bpd", "nll100_val_bpd"} <= set(report["metrics"])  # validation to choose, test to report
    assert value(make_config(overrides), report) == report["metrics"]["nll100_val_bpd"]
    _, plain = train_run(overrides[:-1], name="plain")  # no target asked: the final evaluation is the test split's alone
    assert "nll100_val_bpd" not in plain["metrics"] and plain["metrics"]["nll100_bpd"] == report["metrics"]["nll100_bpd"]


@pytest.mark.skipif(not needs["optuna"], reason="hydra-optuna-sweeper is not installed (pip install gentrain[sweeps])")
def test_an_optuna_study_reports_its_best_value_and_grows_in_sqlite_when_the_command_runs_again(tmp_path):
    # the README's "longer, resumable study": optuna 2.x needs SQLAlchemy 1.4 (pyproject's sweeps extra pins it)
    import optuna

    args = ["-m", "hparams_search=toy_modes", *tiny_overrides("gan_mlp", "ring8", steps=4), "eval.metrics=[modes200]", "optimize=modes200_fair",
            "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.study_name=toy"]
    for session, trials in (("first", 2), ("again", 1)):  # each its own sweep folder: the default one is named by the clock's second
        result = gentrain([*args, f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir=multirun/{session}"], tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "Best value:" in result.stdout + result.stderr
    first = tmp_path / "multirun" / "first"
    best = yaml.safe_load((first / "optimization_results.yaml").read_text())
    reports = [json.loads(p.read_text()) for p in sorted(first.glob("*/report.json"))]
    assert len(reports) == 2
    assert best["best_value"] == max(r["metrics"]["modes200_fair"] for r in reports)  # toy_modes maximises the modes covered
    assert set(best["best_params"]) == {"model.optimizer.G.lr", "model.optimizer.D.lr", "objective.d_steps"}
    assert all(5e-5 <= r["config"]["model"]["optimizer"]["G"]["lr"] <= 2e-3 for r in reports)  # the preset's search space
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3  # the second command added to the stored study
    assert len({t.number for t in study.trials}) == 3


def test_a_wrong_direction_is_refused_before_the_first_trial(tmp_path):
    if not needs["optuna"]:
        pytest.skip("hydra-optuna-sweeper is not installed (pip install gentrain[sweeps])")
    result = gentrain(["-m", "hparams_search=toy_modes", "model=gan_mlp", "dataset=ring8", "hydra.sweeper.direction=minimize"], tmp_path)
    assert_one_line_error(result, "hydra.sweeper.direction=minimize", "set hydra.sweeper.direction=maximize")
    assert not (tmp_path / "multirun").exists()


PRESETS = sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_search_preset_composes_and_trains(preset):
    if not needs["optuna"]:
        pytest.skip("hydra-optuna-sweeper is not installed (pip install gentrain[sweeps])")
    fits = {"gan_fid": ["model=dcgan"], "flow_bpd": ["model=realnvp", "objective=flow_nll"], "toy_modes": ["model=gan_mlp", "dataset=ring8"]}
    cfg = compose_app_config([f"hparams_search={preset}", *fits[preset]])
    assert cfg.hydra.sweeper.params, preset
    check_sweeper(cfg)  # its direction is its target's
    from gentrain.tasks.training import check

    check(make_config([f"hparams_search={preset}", *fits[preset], "debug=tiny"]))
    for key in cfg.hydra.sweeper.params:  # every searched key exists in the composed config
        assert make_config([f"hparams_search={preset}", *fits[preset], f"{key}={_first(cfg.hydra.sweeper.params[key])}"]) is not None


def _first(space: str) -> str:
    """A value inside an Optuna search space expression (``choice(0.0, 0.5)`` -> ``0.0``; ``tag(log, interval(a, b))`` -> ``a``)."""
    inner = str(space).rsplit("(", 1)[1].split(")")[0]
    return inner.split(",")[0].strip()


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_presets_compose_onto_the_plugins(launcher):
    plugin = "submitit" if launcher.startswith("submitit") else launcher
    if not needs[plugin]:
        pytest.skip(f"the {plugin} launcher plugin is not installed (pip install gentrain[sweeps])")
    cfg = compose_app_config([f"hydra/launcher={launcher}"])
    assert "hydra_plugins" in cfg.hydra.launcher._target_
    ours = yaml.safe_load((Path(CONFIG_DIR) / "hydra" / "launcher" / f"{launcher}.yaml").read_text())
    for key, v in ours.items():
        if not str(v).startswith("${"):
            assert cfg.hydra.launcher[key] == v, key


@pytest.mark.skipif(not needs["joblib"], reason="hydra-joblib-launcher is not installed (pip install gentrain[sweeps])")
def test_a_joblib_sweep_runs_its_jobs_in_processes_and_a_job_that_fails_there_fails_the_sweep(tmp_path):
    # MNIST's files are missing (the test's data folder is empty): that job fails in its joblib worker, the other completes
    result = gentrain(["-m", "hydra/launcher=joblib", *tiny_overrides("gan_mlp", "mnist,ring8", steps=2), "device.threads=1"], tmp_path)
    assert result.returncode == 2
    assert "error: 1 sweep job(s) failed (job 0)" in result.stderr and "MNIST not found" in result.stderr
    assert "Traceback" not in result.stderr and "is validated against ConfigStore schema" not in result.stderr
    # every line a job prints names it (its start and data lines, steps, table, paths); Hydra's launcher lines are Hydra's
    jobs = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() and "[HYDRA]" not in line and not line.startswith("error:")]
    assert len(jobs) > 10 and all(re.match(r"\[job [01]\] ", line) for line in jobs), jobs
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun").glob("*/*/*/report.json"))]
    assert [r["run"]["dataset"] for r in reports] == ["ring8"] and reports[0]["run"]["status"] == "completed"


@pytest.mark.parametrize("args", [["hydra/sweeper=optuna"], ["hparams_search=gan_fid"]], ids=["sweeper", "search-preset"])
def test_a_missing_sweeps_extra_is_named_with_its_pip_command(args, tmp_path):
    if GENTRAIN is None:
        pytest.skip("the gentrain console script is not installed (pip install -e .)")
    """Without hydra-optuna-sweeper: one line naming ``pip install "gentrain[sweeps]"`` (it only listed ``basic``).
    The plugin is hidden by an empty package of the same name earlier on the path, which registers no config."""
    shadow = tmp_path / "shadow" / "hydra_plugins" / "hydra_optuna_sweeper"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([GENTRAIN, "-m", *args, *tiny_overrides("gan_mlp", "ring8", steps=1)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "unknown hydra/sweeper 'optuna'", 'pip install "gentrain[sweeps]"')
