"""``trainer.compile=step``: every model's whole step as one graph, equal to eager, resuming exactly, syncing never per step.

The CPU form of the mode is ``torch.compile(fullgraph=True)``: a graph break is an error there, so a run that
captures is a run with zero graph breaks. Most runs here use the ``eager`` backend (Dynamo traces the whole step,
no code is generated) or ``aot_eager`` (AOT autograd too); one runs inductor, the backend users get.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class as locate

from conftest import bare_overrides, make_config, quiet_console
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.models.base import Scheduled
from gentrain.tasks import train

CONFIGS = Path(__file__).parents[2] / "gentrain" / "configs" / "model"
#: Every model of configs/model, each on the digits but for the vector-only MLP GAN (its own objective).
MODELS = [(p.stem, {"gan_mlp": "ring8"}.get(p.stem, "digits")) for p in sorted(CONFIGS.glob("*.yaml"))]


def changes_with_the_step(model: str) -> bool:
    """A :class:`Scheduled` model (a growing network) trains eager under the mode, and says so."""
    target = make_config([f"model={model}"]).model._target_  # composed: a preset such as wgan_gp takes it from its defaults
    return issubclass(locate(target), Scheduled)


def run(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, dict]:
    run_dir = tmp_path / name
    report = train(make_config(overrides), run_dir=run_dir, console=quiet_console())
    return run_dir, report


def captured(run_dir: Path) -> bool:
    return "each step runs as one" in (run_dir / "gentrain.log").read_text()


def assert_close_states(a: dict, b: dict, rtol: float, atol: float) -> None:
    for key, value in a.items():
        if not isinstance(value, torch.Tensor):  # a module's extra state (a growing network's resolution)
            assert value == b[key], key
        elif value.is_floating_point():
            torch.testing.assert_close(value, b[key], rtol=rtol, atol=atol, msg=key)
        else:
            assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("model,dataset", MODELS, ids=[m for m, _ in MODELS])
def test_every_model_captures_its_whole_step_and_matches_eager(tmp_path, model, dataset):
    """Zero graph breaks (fullgraph), and after 4 steps the weights and the last interval's logs are eager's."""
    base = bare_overrides(model, dataset, None, steps=4, extra=["logger.every=2"])
    whole_dir, whole = run(tmp_path, "whole", [*base, "trainer.compile=step", "trainer.compile_backend=eager"])
    eager_dir, eager = run(tmp_path, "eager", base)
    if changes_with_the_step(model):
        assert "changes its networks as training goes" in (whole_dir / "gentrain.log").read_text() and not captured(whole_dir)
    else:
        assert captured(whole_dir) and not captured(eager_dir)
    # the optimizers differ only in their update's arithmetic (foreach capturable vs the single-tensor CPU default)
    assert_close_states(load_checkpoint(whole_dir / "checkpoints" / "last.pt")["model"], load_checkpoint(eager_dir / "checkpoints" / "last.pt")["model"], 1e-4, 1e-5)
    assert whole["final"].keys() == eager["final"].keys()
    for key, value in eager["final"].items():
        if "steps_per_s" not in key:
            assert whole["final"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def whole_overrides(steps: int, backend: str = "aot_eager") -> list[str]:
    # batch 256 of 1350 digits: 5 batches an epoch, a step takes 2, so steps 3 and 6 cross into a new epoch; the
    # weight average, a warm-up schedule and clipping are in the region too
    return bare_overrides("dcgan", "digits", "non_saturating", steps=steps, extra=[
        "trainer.batch_size=256", "trainer.ema_decay=0.9", "trainer.warmup_steps=3", "trainer.grad_clip=0.5", "logger.every=2",
        "trainer.compile=step", f"trainer.compile_backend={backend}",
    ])


def test_whole_step_resumes_exactly_and_keeps_eager_batch_order(tmp_path):
    full_dir, _ = run(tmp_path, "full", whole_overrides(6))
    half_dir, _ = run(tmp_path, "half", whole_overrides(3))
    resumed_dir, _ = run(tmp_path, "resumed", [*whole_overrides(6), f"trainer.resume={half_dir}"])
    full, resumed = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (full_dir, resumed_dir))
    assert captured(full_dir) and captured(resumed_dir)
    for part in ("model",):
        for key, value in full[part].items():
            assert torch.equal(value, resumed[part][key]), key
    for key, value in full["ema"]["weights"].items():
        assert torch.equal(value, resumed["ema"]["weights"][key]), key
    assert full["ema"]["updates"] == resumed["ema"]["updates"] == 5
    for phase in ("D", "G"):
        a, b = full["optimizers"][phase], resumed["optimizers"][phase]
        assert a["param_groups"] == b["param_groups"]
        assert all(isinstance(g["lr"], float) and g.get("capturable") is False for g in a["param_groups"])  # as eager keeps them
        for i, state in a["state"].items():
            for k, v in state.items():
                assert torch.equal(v, b["state"][i][k]), (phase, i, k)
    # the same batches as eager: its stream state after 6 steps, and weights within rounding
    eager_dir, _ = run(tmp_path, "eager", [o for o in whole_overrides(6) if not o.startswith("trainer.compile")])
    eager = load_checkpoint(eager_dir / "checkpoints" / "last.pt")
    assert (full["stream"]["pos"], full["stream"]["epoch"]) == (eager["stream"]["pos"], eager["stream"]["epoch"]) == (512, 3)
    assert torch.equal(full["stream"]["perm"], eager["stream"]["perm"].cpu())
    assert_close_states(full["model"], eager["model"], 1e-4, 1e-5)
    assert_close_states(full["ema"]["weights"], eager["ema"]["weights"], 1e-4, 1e-5)  # the in-graph average and its warm-up
    full_lines = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    eager_lines = [json.loads(line) for line in (eager_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in full_lines] == [2, 4, 6]
    for a, b in zip(full_lines, eager_lines):
        for key in ("train/D/loss", "train/G/loss", "train/D/grad_norm", "train/lr/G"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_inductor_whole_step_matches_eager(tmp_path):
    """The backend users get: generated code, noise drawn from torch's generator as eager draws it."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    whole_dir, whole = run(tmp_path, "whole", whole_overrides(4, backend="inductor"))
    assert counters["stats"]["unique_graphs"] - before == 1  # traced once: nothing the region reads changes between steps
    eager_dir, eager = run(tmp_path, "eager", [o for o in whole_overrides(4) if not o.startswith("trainer.compile")])
    assert captured(whole_dir)
    assert_close_states(load_checkpoint(whole_dir / "checkpoints" / "last.pt")["model"], load_checkpoint(eager_dir / "checkpoints" / "last.pt")["model"], 1e-4, 1e-5)
    assert whole["final"]["train/G/loss"] == pytest.approx(eager["final"]["train/G/loss"], rel=1e-4)


def test_a_run_the_mode_cannot_capture_says_why_in_one_line_and_trains_eager(tmp_path):
    run_dir, report = run(tmp_path, "fp16", [*whole_overrides(3), "device.precision=fp16"])
    lines = [line for line in (run_dir / "gentrain.log").read_text().splitlines() if "trainer.compile=step:" in line]
    assert len(lines) == 1 and "fp16 loss scaling" in lines[0] and "run eager" in lines[0]
    assert not captured(run_dir) and report["run"]["steps"] == 3
