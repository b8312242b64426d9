"""The generator's weight average (EMA) and latent interpolations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.ema import EMA
from gentrain.errors import GentrainError
from gentrain.models.base import interpolate_latents
from gentrain.families.gan.models import GanMLP
from gentrain.tasks import common, evaluate, sample
from test_metrics import TinyExtractor


def test_ema_update_is_the_moving_average():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,))
    ema = EMA(model, decay=0.9, warmup=False)
    assert ema.module is None and ema.state_dict() is None
    ema.update()  # the first update takes the copy
    before = [p.detach().clone() for p in model.generator.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    ema.update()
    for avg, old in zip(ema.module.parameters(), before):
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * (old + 1.0))
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_applied_swaps_the_generator_for_the_block():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,))
    ema = EMA(model, decay=0.5)
    live = model.generator
    with ema.applied(model):  # nothing averaged yet: the live weights
        assert model.generator is live
    ema.update()
    with ema.applied(model):
        assert model.generator is ema.module
    assert model.generator is live


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_bad_decay_is_refused(decay):
    with pytest.raises(GentrainError, match="trainer.ema_decay"):
        EMA(GanMLP(shape=(2,)), decay)


def test_training_with_ema_saves_it_and_resumes_it_exactly(train_run):
    base = tiny_overrides("gan_mlp", "ring8", steps=4) + ["trainer.ema_decay=0.9"]
    full, _ = train_run(base, "full")
    half, _ = train_run([*base, "trainer.max_steps=2"], "half")
    resumed, _ = train_run([*base, f"trainer.resume={half}"], "resumed")
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["ema"]["name"] == "generator"
    for k, v in a["ema"]["weights"].items():
        assert torch.equal(v, b["ema"]["weights"][k]), k
    # the average lags the trained weights
    assert any(not torch.equal(v, a["model"][f"generator.{k}"]) for k, v in a["ema"]["weights"].items())


def test_eval_and_sample_use_the_average_unless_told_not_to(train_run, monkeypatch, tmp_path):
    monkeypatch.setattr(common, "inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    run_dir, _ = train_run(tiny_overrides("dcgan", "digits", steps=3) + ["trainer.ema_decay=0.5"])
    ckpt = run_dir / "checkpoints" / "last.pt"
    with_ema = evaluate(make_config(["task=eval", f"ckpt={ckpt}", "device=cpu", "eval.metrics=[fid40]"]), quiet_console())
    without = evaluate(make_config(["task=eval", f"ckpt={ckpt}", "device=cpu", "eval.metrics=[fid40]", "eval.use_ema=false"]), quiet_console())
    assert with_ema["weights"] == "ema" and without["weights"] == "trained"
    assert with_ema["metrics"]["fid40"] != without["metrics"]["fid40"]
    a = np.load(sample(make_config(["task=sample", f"ckpt={ckpt}", "n=4", "device=cpu", f"out={tmp_path}/a"]), quiet_console())["npz"])["x"]
    b = np.load(sample(make_config(["task=sample", f"ckpt={ckpt}", "n=4", "device=cpu", f"out={tmp_path}/b", "eval.use_ema=false"]), quiet_console())["npz"])["x"]
    assert not np.array_equal(a, b)


def test_interpolation_endpoints_and_the_spherical_path():
    z0, z1 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    for spherical in (False, True):
        path = interpolate_latents(z0, z1, 5, spherical)
        assert path.shape == (1, 5, 3)
        torch.testing.assert_close(path[0, 0], z0[0])
        torch.testing.assert_close(path[0, -1], z1[0])
    lerp = interpolate_latents(z0, z1, 3, False)[0, 1]
    torch.testing.assert_close(lerp, torch.tensor([0.5, 1.0, 0.0]))
    # orthogonal vectors: the slerp midpoint is sin(pi/4) (z0 + z1), whose norm stays between the endpoints'
    mid = interpolate_latents(z0, z1, 3, True)[0, 1]
    torch.testing.assert_close(mid, math.sin(math.pi / 4) * (z0[0] + z1[0]))
    unit = interpolate_latents(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 7, True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(1, 7))


def test_model_interpolation_grid_shape():
    model = GanMLP(shape=(1, 8, 8), z_dim=4, g_widths=(8,), d_widths=(8,)).eval()
    out = model.interpolate(3, 5, spherical=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (15, 1, 8, 8)
