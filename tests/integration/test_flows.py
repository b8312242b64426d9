"""Normalizing flows: RealNVP and Glow layers are invertible with exact log-determinants; the models' densities, samples and training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_config, tiny_overrides
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.flows.layers import (
    ActNorm,
    ChannelCoupling,
    CheckerboardCoupling,
    GlowCoupling,
    InvertibleLinearLU,
    SplitPrior,
    Squeeze,
    VectorCoupling,
    standard_normal_log_prob,
)
from gentrain.families.flows.models import Glow, RealNVP
from gentrain.models.likelihood import LOG_256, bits_per_dim, dequantize, from_levels, logit_transform

# ---- helpers -----------------------------------------------------------------------------------


def autograd_log_det(fn, x1: torch.Tensor) -> torch.Tensor:
    """``log |det J|`` of the map ``x1 -> fn(x1)`` of one example (``[1, ...]``), flattened, by autograd."""
    shape = x1.shape
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view(shape)).flatten(), x1.flatten())
    sign, log_abs = torch.linalg.slogdet(jac)
    assert sign != 0
    return log_abs


@torch.no_grad()
def perturb_(module: torch.nn.Module, x: torch.Tensor, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """float64; one forward pass (ActNorm initialises), then noise on every parameter (zero-initialised convolutions included)."""
    module.double()
    module(x)
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def check_layer(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """``inverse(forward(x)) == x`` and ``log_det`` equals autograd's ``log |det J|`` of every example."""
    y, log_det = layer(x)
    assert y.numel() == x.numel() and log_det.shape == (x.shape[0],)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-5, rtol=0)
    for i in range(x.shape[0]):
        expected = autograd_log_det(lambda v: layer(v)[0], x[i : i + 1])
        torch.testing.assert_close(log_det[i], expected, atol=1e-6, rtol=1e-6)


def tiny_realnvp(shape, **kwargs) -> RealNVP:
    torch.manual_seed(0)
    return RealNVP(shape=shape, **{"hidden": 4, "blocks": 1, "scales": 2, "couplings": 4, **kwargs})


def tiny_glow(shape, **kwargs) -> Glow:
    torch.manual_seed(0)
    return Glow(shape=shape, **{"hidden": 4, "steps": 2, "levels": 2, **kwargs})


def digits_batch(n: int = 32) -> torch.Tensor:
    from gentrain.data.images import Digits

    return from_levels(Digits().load("train").x[:n])


def random_images(shape, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return from_levels(torch.randint(0, 256, (n, *shape), generator=g)).double()


# ---- layers ------------------------------------------------------------------------------------

LAYERS = {
    "checkerboard-even": (lambda: CheckerboardCoupling(2, (4, 4), hidden=4, blocks=1, parity=0), (2, 2, 4, 4)),
    "checkerboard-odd": (lambda: CheckerboardCoupling(2, (4, 4), hidden=4, blocks=1, parity=1), (2, 2, 4, 4)),
    "channel": (lambda: ChannelCoupling(4, hidden=4, blocks=1, flip=False), (2, 4, 2, 2)),
    "channel-flipped": (lambda: ChannelCoupling(4, hidden=4, blocks=1, flip=True), (2, 4, 2, 2)),
    "squeeze": (lambda: Squeeze(), (2, 2, 4, 4)),
    "actnorm": (lambda: ActNorm(2), (2, 2, 4, 4)),
    "invconv-lu": (lambda: InvertibleLinearLU(4), (2, 4, 2, 2)),
    "glow-coupling": (lambda: GlowCoupling(4, hidden=4), (2, 4, 2, 2)),
    "split-prior": (lambda: SplitPrior(4), (2, 4, 2, 2)),
    "actnorm-1d": (lambda: ActNorm(4), (3, 4)),
    "linear-lu-1d": (lambda: InvertibleLinearLU(4), (3, 4)),
    "coupling-1d": (lambda: VectorCoupling(4, hidden=8, flip=False), (3, 4)),
    "coupling-1d-flipped": (lambda: VectorCoupling(4, hidden=8, flip=True), (3, 4)),
    "coupling-2d-points": (lambda: VectorCoupling(2, hidden=8, flip=True), (3, 2)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_inverts_and_its_log_det_is_the_jacobians(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    layer = perturb_(make(), x)
    if name.startswith(("checkerboard", "channel", "glow-coupling", "split-prior", "coupling")):
        y, log_det = layer(x)  # the perturbed coupling is no identity: the check is not vacuous
        assert (y - x).abs().max() > 1e-2 and log_det.abs().max() > 1e-2
    check_layer(layer, x)


def test_couplings_start_as_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 4)
    for layer in (CheckerboardCoupling(4, (4, 4), 4, 1, 0), ChannelCoupling(4, 4, 1, False), GlowCoupling(4, 4), SplitPrior(4)):
        y, log_det = layer(x)  # (the split's prior is N(0, I) at first: it passes the half through)
        torch.testing.assert_close(y, x)
        assert torch.all(log_det == 0)


def test_checkerboard_coupling_leaves_the_conditioning_pixels_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    layer = perturb_(CheckerboardCoupling(1, (4, 4), 4, 1, parity=0), x)
    y, _ = layer(x)
    mask = layer.mask.bool().expand_as(x)
    assert torch.equal(y[mask], x[mask]) and not torch.allclose(y[~mask], x[~mask])


def test_squeeze_is_space_to_depth():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, log_det = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and torch.all(log_det == 0)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2x2 block


@pytest.mark.parametrize("shape", [(64, 3, 4, 4), (256, 3)])
def test_actnorm_initialises_from_the_first_batch_only(shape):
    torch.manual_seed(0)
    per_channel = (1, 3) + (1,) * (len(shape) - 2)
    x = torch.randn(shape) * torch.tensor([2.0, 0.5, 3.0]).view(per_channel) + torch.tensor([1.0, -2.0, 0.5]).view(per_channel)
    layer = ActNorm(3)
    assert not layer.initialized
    y, _ = layer(x)
    assert layer.initialized
    dims = [0] + list(range(2, len(shape)))
    torch.testing.assert_close(y.mean(dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert set(state) == {"bias", "log_scale", "initialized"} and bool(state["initialized"])
    layer(x * 5 + 3)  # a second batch does not initialise again
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())
    # a restored layer (a resumed run) does not initialise on its first batch
    restored = ActNorm(3)
    restored.load_state_dict(state)
    assert restored.initialized
    y2, _ = restored(x * 5 + 3)
    torch.testing.assert_close(y2, layer(x * 5 + 3)[0])
    assert torch.equal(restored.bias, state["bias"])


def test_lu_weight_is_invertible_and_its_log_det_is_slogdet_times_pixels():
    torch.manual_seed(0)
    layer = InvertibleLinearLU(6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = layer.weight()
    p = layer.P
    assert torch.equal(p.abs().sum(0), torch.ones(6, dtype=p.dtype)) and torch.equal(p @ p.T, torch.eye(6, dtype=p.dtype))
    torch.testing.assert_close(w @ torch.linalg.inv(w), torch.eye(6, dtype=w.dtype))
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    y, log_det = layer(x)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(w)[1].expand(2) * 15)
    torch.testing.assert_close(y, torch.einsum("oc,bchw->bohw", w, x))
    # the weight is a random rotation at first (Glow's initialisation)
    w0 = InvertibleLinearLU(6).weight().detach()
    torch.testing.assert_close(w0 @ w0.T, torch.eye(6), atol=1e-5, rtol=0)


# ---- whole models ------------------------------------------------------------------------------

MODELS = {
    "realnvp-1x4x4": lambda: tiny_realnvp([1, 4, 4]),
    "realnvp-2x4x4": lambda: tiny_realnvp([2, 4, 4]),
    "glow-1x4x4": lambda: tiny_glow([1, 4, 4]),
    "glow-2x4x4-one-level": lambda: tiny_glow([2, 4, 4], levels=1),
    "realnvp-points": lambda: tiny_realnvp([2]),
    "glow-points": lambda: tiny_glow([2]),
    "glow-4d": lambda: tiny_glow([4]),
}


def perturbed_model(name: str):
    model = MODELS[name]()
    if model.image:
        y = dequantize(random_images(model.shape, n=8, seed=1)).double()
        data = logit_transform(y, model.alpha)[0]
    else:
        data = torch.randn(8, *model.shape, dtype=torch.float64) * 2
    perturb_(model.flow, data, std=0.1)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_flow_inverts_and_log_prob_is_the_change_of_variables(name):
    model = perturbed_model(name)
    if model.image:
        x = random_images(model.shape, n=2)
        torch.manual_seed(7)
        log_p = model.log_prob(x)
        torch.manual_seed(7)
        y = dequantize(x).double()  # the same dequantization noise

        def to_noise(v):  # the complete transform: dequantized pixels -> logit -> flow -> eps
            return model.flow(logit_transform(v, model.alpha)[0])[0]

        data = y
        # decode(encode(.)) gives back the pixels (model space: 2y - 1)
        torch.testing.assert_close(model.decode(to_noise(y)), y * 2 - 1, atol=1e-5, rtol=0)
    else:
        x = torch.randn(3, *model.shape, dtype=torch.float64) * 2
        log_p = model.log_prob(x)

        def to_noise(v):
            return model.flow(v)[0]

        data = x
        torch.testing.assert_close(model.decode(to_noise(x)), x, atol=1e-5, rtol=0)
    eps, log_det = model.flow(logit_transform(data, model.alpha)[0] if model.image else data)
    assert eps.shape == (data.shape[0], model.dims) and log_det.abs().min() > 1e-3  # the perturbed flow is no identity
    torch.testing.assert_close(model.flow.inverse(eps), logit_transform(data, model.alpha)[0] if model.image else data, atol=1e-5, rtol=0)
    for i in range(data.shape[0]):
        v = data[i : i + 1]
        expected = standard_normal_log_prob(to_noise(v)) + autograd_log_det(to_noise, v)
        if model.image:
            expected = expected - model.dims * LOG_256
        torch.testing.assert_close(log_p[i], expected[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("cls", [RealNVP, Glow])
def test_dequantized_log_prob_is_the_composition(cls, levels):
    """log_prob(x) = log p_flow(logit(dequantize(x))) + logdet(logit) - D log K, for a fixed dequantization over K levels."""
    model = tiny_realnvp([1, 8, 8], data_levels=levels) if cls is RealNVP else tiny_glow([1, 8, 8], data_levels=levels)
    x = digits_batch(16)
    g = torch.Generator().manual_seed(3)
    log_p = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    h, log_det_logit = logit_transform(dequantize(x, g, levels), model.alpha)
    torch.testing.assert_close(log_p, model.flow_log_prob(h) + log_det_logit - 64 * math.log(levels))
    if levels == 256:
        assert math.log(levels) == LOG_256
    torch.manual_seed(5)
    a = model.log_prob(x)
    torch.manual_seed(5)
    torch.testing.assert_close(model.log_prob(x), a)  # the global RNG's noise by default
    assert log_p.shape == (16,)


@pytest.mark.parametrize("cls", [RealNVP, Glow])
def test_bits_per_dim_of_a_fresh_model_on_digits_is_sane(cls):
    model = tiny_realnvp([1, 8, 8]) if cls is RealNVP else tiny_glow([1, 8, 8])
    bpd = bits_per_dim(model.log_prob(digits_batch(64)), 64).mean().item()
    assert 4 < bpd < 12, bpd


def test_glow_state_dict_round_trip_keeps_actnorm_initialised():
    model = tiny_glow([1, 8, 8])
    x = digits_batch(32)
    model.log_prob(x)
    keys = [k for k in model.state_dict() if k.endswith("initialized")]
    assert keys and all(bool(model.state_dict()[k]) for k in keys)
    other = tiny_glow([1, 8, 8])
    other.load_state_dict(model.state_dict())
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(other.log_prob(x[:8] * 0.5, generator=g()), model.log_prob(x[:8] * 0.5, generator=g()))


# ---- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["realnvp-1x4x4", "glow-1x4x4", "realnvp-points", "glow-points"])
def test_samples_shapes_range_temperature_and_seeds(name):
    model = perturbed_model(name).float()
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    s = model.sample(5, generator=gen(0))
    assert s.shape == (5, *model.shape) and s.dtype == torch.float32 and torch.isfinite(s).all()
    if model.image:
        assert s.min() >= -1 and s.max() <= 1
    torch.testing.assert_close(model.sample(5, generator=gen(0)), s)
    assert not torch.allclose(model.sample(5, generator=gen(1)), s)
    # temperature 0: every sample is the flow's image of the zero latent
    cold = model.sample(3, generator=gen(2), temperature=0.0)
    zero = model.decode(torch.zeros(1, model.flow.dim))
    torch.testing.assert_close(cold, zero.expand_as(cold))
    torch.testing.assert_close(model.sample(3, generator=gen(9), temperature=0.0), cold)
    model.temperature = 0.0  # model.temperature is the default
    torch.testing.assert_close(model.sample(2, generator=gen(4)), zero.expand(2, *model.shape))
    # temperature scales the base noise
    model.temperature = 1.0
    eps = model.noise(2, gen(5))
    torch.testing.assert_close(model.sample(2, generator=gen(5), temperature=0.5), model.decode(0.5 * eps))


def test_interpolations_and_sample_grid():
    model = perturbed_model("glow-1x4x4").float()
    out = model.interpolate(2, 5, spherical=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (10, 1, 4, 4) and out.min() >= -1 and out.max() <= 1
    x, nrow = model.sample_grid(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 4, 4) and nrow is None


@pytest.mark.parametrize("cls", [RealNVP, Glow])
def test_density_grid_of_a_2d_model(cls):
    model = tiny_realnvp([2]) if cls is RealNVP else tiny_glow([2])
    grid = model.density_grid((-5.0, 5.0), 101)  # a fresh flow: N(0, I) (Glow: a rotation of it)
    assert grid.shape == (101, 101)
    assert sum(1 for m in model.modules() if isinstance(m, ActNorm) and m.initialized) == 0  # the grid initialised nothing
    mass = grid.exp().sum().item() * 0.1**2
    assert mass == pytest.approx(1.0, abs=1e-3)
    model = perturbed_model("realnvp-points").float()
    grid = model.density_grid((-3.0, 1.0, -2.0, 4.0), 5)  # xs = -3..1, ys = -2..4: out[i, j] = log p(xs[j], ys[i])
    torch.testing.assert_close(grid[3, 1], model.log_prob(torch.tensor([[-2.0, 2.5]]))[0])
    with pytest.raises(GentrainError, match="2-D"):
        tiny_glow([1, 4, 4]).density_grid((-1, 1), 4)


# ---- shapes and settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: RealNVP(shape=[3]), "even dimension"),
        (lambda: Glow(shape=[1]), "even dimension"),
        (lambda: Glow(shape=[1, 28, 28], levels=3), "model.levels"),
        (lambda: Glow(shape=[1, 8, 6], levels=2), "model.levels"),
        (lambda: RealNVP(shape=[1, 6, 6], scales=3), "model.scales"),
        (lambda: RealNVP(shape=[1, 2, 3, 4]), "dataset.shape"),
        (lambda: Glow(shape=[2], hidden=0), "model.hidden"),
        (lambda: RealNVP(shape=[2], temperature=-1.0), "model.temperature"),
        (lambda: Glow(shape=[2], alpha=0.5), "model.alpha"),
    ],
)
def test_bad_shapes_and_settings_are_one_line_errors(make, fragment):
    with pytest.raises(GentrainError, match=fragment.replace(".", r"\.")) as e:
        make()
    assert "\n" not in str(e.value)


def test_fitting_shapes_build():
    assert Glow(shape=[1, 28, 28], hidden=4, steps=1, levels=2).flow.dim == 784
    assert RealNVP(shape=[3, 4, 4], hidden=4, blocks=1, scales=3).flow.dim == 48
    assert RealNVP(shape=[1, 5, 5], hidden=4, blocks=0, scales=1).flow.dim == 25


# ---- training through the engine --------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["digits", "ring8"])
@pytest.mark.parametrize("model", ["realnvp", "glow"])
def test_flows_train_and_write_all_outputs(train_run, model, dataset):
    run_dir, report = train_run(tiny_overrides(model, dataset, "flow_nll", steps=3, extra=["logger.interpolations=true"]))
    for name in ("checkpoints/last.pt", "metrics.jsonl", "report.json", "report.md", "samples/step_000003.png"):
        assert (run_dir / name).is_file(), name
    if dataset == "digits":
        assert (run_dir / "samples" / "interp_slerp_step_000003.png").is_file()
    assert report["run"]["steps"] == 3 and report["run"]["model"] == model and report["run"]["objective"] == "flow_nll"
    final = report["final"]
    assert all(math.isfinite(v) for v in final.values())
    assert {"train/main/loss", "train/main/bits_per_dim", "train/main/nll", "train/main/grad_norm"} <= set(final)
    if dataset == "digits":
        assert 2 < final["train/main/bits_per_dim"] < 12
    assert json.loads((run_dir / "report.json").read_text())["run"]["dataset"] == dataset


def test_model_preset_picks_flow_nll_and_its_optimizer():
    for name, lr in (("realnvp", 1e-3), ("glow", 5e-4)):
        cfg = make_config([f"model={name}"])
        assert cfg.objective._target_.endswith("FlowNLL") and cfg.model.optimizer.main.lr == lr


def test_flow_with_an_adversarial_objective_is_refused_at_start_up(train_run):
    with pytest.raises(GentrainError, match="flow_nll") as e:
        train_run(tiny_overrides("realnvp", "digits", "minimax"))
    assert "\n" not in str(e.value)


def test_image_sides_that_do_not_fit_are_refused_through_the_config(train_run):
    with pytest.raises(GentrainError, match=r"model\.levels") as e:
        train_run([*tiny_overrides("glow", "digits", "flow_nll"), "model.levels=4"])
    assert "\n" not in str(e.value)


def test_glow_resume_does_not_initialise_actnorm_again(train_run):
    base = [*tiny_overrides("glow", "digits", "flow_nll", steps=4), "trainer.ckpt_every=2", "logger.samples_every=100"]
    full_dir, _ = train_run(base, "full")
    half_dir, _ = train_run([*base, "trainer.max_steps=2"], "half")
    resumed_dir, report = train_run([*base, f"trainer.resume={half_dir}"], "resumed")
    assert report["run"]["start_step"] == 2
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["model"]
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key


def test_flows_train_with_a_weight_average(train_run):
    run_dir, report = train_run([*tiny_overrides("glow", "digits", "flow_nll", steps=2), "trainer.ema_decay=0.9"])
    ema = load_checkpoint(run_dir / "checkpoints" / "last.pt")["ema"]
    assert ema["name"] == "flow" and all(bool(v) for k, v in ema["weights"].items() if k.endswith("initialized"))
    assert (run_dir / "samples" / "step_000002.png").is_file()
