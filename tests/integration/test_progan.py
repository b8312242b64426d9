"""Progressive GAN (model=progan): the layers against direct computations, the growth schedule, continuity of a
fade-in at both ends, optimizer state that grows with the networks, exact resume inside a fade-in, evaluation only
at the final resolution, and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import bare_overrides, make_config, quiet_console
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.gan.progan import (
    EqualizedConv2d,
    EqualizedLinear,
    ProGAN,
    downsample,
    growth_at,
    minibatch_stddev,
    pixel_norm,
    upsample,
)
from gentrain.tasks import train
from test_metrics import TinyExtractor
from test_stop_resume import assert_same_state


def small(**kw) -> ProGAN:
    torch.manual_seed(0)
    args = dict(shape=[1, 28, 28], z_dim=8, fmap_base=64, fmap_max=16, stable_steps=2, fade_steps=4, mbstd_group=4) | kw
    return ProGAN(**args)


def test_equalised_layers_scale_unit_normal_weights_by_hes_constant_at_run_time():
    torch.manual_seed(0)
    conv, lin = EqualizedConv2d(16, 32, 3), EqualizedLinear(64, 8, gain=1.0)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.05) and torch.all(conv.bias == 0)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * math.sqrt(2) / math.sqrt(16 * 9), conv.bias, padding=1))
    v = torch.randn(3, 64)
    torch.testing.assert_close(lin(v), v @ (lin.weight / 8.0).T + lin.bias)


def test_pixel_norm_gives_each_pixel_unit_mean_square_over_channels():
    y = pixel_norm(torch.randn(4, 7, 3, 3) * 5)
    torch.testing.assert_close(y.square().mean(1), torch.ones(4, 3, 3), rtol=1e-5, atol=1e-5)


def test_minibatch_stddev_matches_the_released_codes_grouping():
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    out = minibatch_stddev(x, 4)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], x)
    a = x.numpy()
    m = 8 // 4  # the code reshapes to [group, M, ...]: sample i is in group i mod M
    for i in range(8):
        members = a[[j for j in range(8) if j % m == i % m]]
        expect = np.sqrt(members.var(axis=0) + 1e-8).mean()
        assert np.allclose(out[i, 3].numpy(), expect)
    assert minibatch_stddev(torch.randn(6, 2, 2, 2), 4).shape == (6, 3, 2, 2)  # 6 = 3 groups of 2: the largest divisor <= 4


def test_growth_schedule_trains_then_fades_in_each_resolution_and_stays_at_the_last():
    # 4 levels (4, 8, 16, 32): 2 steps at 4x4, then per level 4 fade-in steps (alpha 0, 1/4, 1/2, 3/4) and 2 at alpha 1
    got = [growth_at(t, 4, 2, 4) for t in range(22)]
    assert got[:2] == [(0, 1.0)] * 2
    assert got[2:8] == [(1, 0.0), (1, 0.25), (1, 0.5), (1, 0.75), (1, 1.0), (1, 1.0)]
    assert got[8:14] == [(2, 0.0), (2, 0.25), (2, 0.5), (2, 0.75), (2, 1.0), (2, 1.0)]
    assert got[14:18] == [(3, 0.0), (3, 0.25), (3, 0.5), (3, 0.75)] and got[18:] == [(3, 1.0)] * 4
    model = small()
    assert model.side == 32 and model.levels == 4 and model.final_step() == 18
    model.set_step(17)
    assert "still growing (32x32 fading in" in model.unfinished()
    model.set_step(18)
    assert model.unfinished() is None


@torch.no_grad()
def test_a_fade_in_starts_where_the_lower_resolution_was_and_ends_at_the_new_one():
    model = small()
    z, x = torch.randn(8, 8), torch.rand(8, 1, 28, 28) * 2 - 1
    for level in (1, 2, 3):
        model._set(level - 1, 1.0)
        g_low, d_low, r_low = model.generate(z), model.discriminate(x)[0], model.reals(x)
        model._set(level, 0.0)  # alpha 0: the new block contributes nothing yet
        torch.testing.assert_close(model.generate(z), g_low)
        torch.testing.assert_close(model.discriminate(x)[0], d_low, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.reals(x), r_low)
        model._set(level, 1.0 - 1e-9)  # the end of the fade is the stable network of the new level
        g_end, d_end = model.generate(z), model.discriminate(x)[0]
        model._set(level, 1.0)
        torch.testing.assert_close(model.generate(z), g_end, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.discriminate(x)[0], d_end, rtol=1e-5, atol=1e-5)
    # D sees reals at the current resolution: at 8x8 the data is box-filtered in 4x4 cells of the padded image
    model._set(1, 1.0)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    torch.testing.assert_close(model.reals(x), upsample(downsample(padded, 4), 4)[:, :, 2:30, 2:30])
    model._set(3, 1.0)
    assert torch.equal(model.reals(x), x)


def run(tmp_path, name, overrides):
    return train(make_config(overrides), run_dir=tmp_path / name, console=quiet_console())


def grow_overrides(steps: int, extra=()) -> list[str]:
    # digits 8x8: 4x4 for 2 steps, then 8x8 fades in over steps 2..5
    return bare_overrides("progan", "digits", None, steps=steps, extra=[
        "model.stable_steps=2", "model.fade_steps=4", "trainer.ema_decay=0.9", "logger.every=1", *extra])


def test_optimizers_keep_their_state_and_gain_the_new_blocks_parameters(tmp_path):
    run(tmp_path, "a", grow_overrides(4))
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    model = small(shape=[1, 8, 8], fmap_base=32, fmap_max=8)  # digits' tiny sizes (model.tiny), for the parameter order
    names = [n for n, _ in model.generator.named_parameters()]
    state = ckpt["optimizers"]["G"]["state"]
    steps = {names[i]: int(s["step"]) for i, s in state.items()}
    # the 4x4 block trained all 4 steps; the 8x8 block and its toRGB joined at step 2 (alpha 0: zero gradients, but state)
    assert steps["blocks.0.conv.weight"] == 4 and steps["to_rgb.0.weight"] == 4
    assert steps["blocks.1.conv0.weight"] == 2 and steps["to_rgb.1.weight"] == 2
    # the checkpoint holds the form its weights last trained in: the 4th step's, alpha 1/4
    assert ckpt["model"]["_extra_state"] == {"level": 1, "alpha": 0.25, "resolution": 8}


def test_a_resume_inside_a_fade_in_is_exact_and_pictures_come_at_every_resolution(tmp_path):
    full = run(tmp_path, "full", grow_overrides(6, ["logger.samples_every=1"]))
    run(tmp_path, "part", grow_overrides(3))  # stops inside the fade-in: the 4th step runs at alpha 1/4
    resumed = run(tmp_path, "part", [*grow_overrides(6, ["logger.samples_every=1"]), "trainer.resume=true"])
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert a["model"].pop("_extra_state") == b["model"].pop("_extra_state") == {"level": 1, "alpha": 0.75, "resolution": 8}
    assert_same_state(a, b)
    assert {k: v for k, v in full["final"].items() if "steps_per_s" not in k} == {k: v for k, v in resumed["final"].items() if "steps_per_s" not in k}
    log = (tmp_path / "full" / "gentrain.log").read_text()
    assert "model=progan: from step 3: fading in 8x8 over 4 steps" in log
    assert len(list((tmp_path / "full" / "samples").glob("step_*.png"))) == 6  # 4x4, the fade-in and 8x8 alike


def test_evaluation_reports_numbers_only_at_the_final_resolution(tmp_path, monkeypatch):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    evaluate = ["eval.metrics=[fid32]", "eval.every=2", "eval.batch_size=16"]
    report = run(tmp_path, "e", grow_overrides(8, evaluate))
    evals = [json.loads(r) for r in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in r]
    skipped = [e for e in evals if not e["results"][0]["available"]]
    assert [e["step"] for e in skipped] == [2, 4, 6]  # the 7th step is the first at 8x8 with alpha 1
    assert skipped[1]["results"][0]["notes"] == ["not evaluated: model=progan is still growing (8x8 fading in at alpha 0.250; "
                                                 "it trains at 8x8 with alpha 1 from step 7)"]
    assert report["metrics"]["fid32"] > 0 and "fid32_val" in evals[-1]  # at the end: full resolution, numbers
    # a run that ends while growing reports the reason in place of its numbers
    short = run(tmp_path, "short", grow_overrides(3, ["eval.metrics=[fid32]", "eval.batch_size=16"]))
    assert short["metrics"] == {} and "not evaluated: model=progan is still growing" in (tmp_path / "short" / "report.md").read_text()


def test_refusals_and_the_eager_fallback_are_one_line(tmp_path):
    with pytest.raises(GentrainError, match="grows images from 4x4 .* use model=gan_mlp"):
        run(tmp_path, "points", bare_overrides("progan", "ring8", None))
    with pytest.raises(GentrainError, match="use objective.pack=1"):
        run(tmp_path, "pack", bare_overrides("progan", "digits", "wasserstein_gp", extra=["objective.pack=2"]))
    with pytest.raises(GentrainError, match="square images"):
        small(shape=[1, 28, 24])
    run(tmp_path, "step", bare_overrides("progan", "digits", None, steps=2, extra=["trainer.compile=step", "trainer.compile_backend=eager"]))
    assert "ProGAN changes its networks as training goes" in (tmp_path / "step" / "gentrain.log").read_text()
