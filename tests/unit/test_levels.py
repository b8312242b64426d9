"""The data's number of levels (``dataset.levels``) reaches every likelihood model.

Datasets declare their levels per sub-pixel (256 for 8-bit images, 17 for the 8x8 digits); the
models get them as ``model.data_levels``. Checked here: levels map to and from model space
exactly as the loader stores them, dequantisation fills each level's cell (noise / K) and the flows'
``-D log K`` offset makes their log_prob an unbiased estimate of a lower bound of a proper discrete
distribution, the autoregressive models' softmaxes have K outputs and normalise over the K^D
images, the VAE's binarisation and Gaussian offset, and one-line errors for levels that do not fit.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_config, tiny_overrides
from gentrain.build import build, build_model
from gentrain.data.base import Dataset, DataSplit, value_off_levels
from gentrain.data.images import Digits, ImageFolder
from gentrain.engine.loader import to_model_space
from gentrain.errors import GentrainError
from gentrain.families.autoregressive.models import MADE, PixelCNN
from gentrain.families.flows.models import Glow, RealNVP
from gentrain.models.likelihood import bits_per_dim, dequantize, from_levels, logit_transform, to_levels
from gentrain.families.vae.model import VAE


def stored(levels: int) -> torch.Tensor:
    """The uint8 values that store levels 0..K-1: round(255 k / (K - 1))."""
    return torch.round(torch.arange(levels, dtype=torch.float64) * 255 / (levels - 1)).to(torch.uint8)


# ----------------------------------------------------------------------------- datasets and configs


def test_datasets_declare_their_levels_and_the_models_receive_them():
    assert Digits().levels == 17
    assert Digits(levels=256).levels == 256
    for dataset, levels in (("digits", 17), ("fashion_mnist", 256), ("mnist", 256), ("cifar10", 256), ("ring8", None), ("moons", None)):
        for model in ("realnvp", "glow", "pixelcnn", "made", "vae", "conv_vae"):
            if (model in ("pixelcnn", "conv_vae") and levels is None) or (model == "vae" and levels is None):
                continue  # image-only models (the VAE's default decoder binarises images)
            cfg = make_config([f"model={model}", f"dataset={dataset}"])
            assert cfg.model.data_levels == levels, (dataset, model)
            assert cfg.dataset.get("levels") == levels
    # an override of dataset.levels follows through the interpolation
    assert make_config(["model=pixelcnn", "dataset=digits", "dataset.levels=256"]).model.data_levels == 256


def test_the_digits_asset_holds_exactly_the_stored_values_of_17_levels():
    x = Digits(levels=256).load("train").x
    assert torch.equal(torch.unique(x), stored(17))
    assert torch.equal(to_levels(to_model_space(x), 17).unique(), torch.arange(17))


@pytest.mark.parametrize("value", [1, 0, 257, 2.5, True, "17"])
def test_invalid_levels_are_one_line_errors(value):
    with pytest.raises(GentrainError, match=r"dataset\.levels") as err:
        Digits(levels=value)
    assert "\n" not in str(err.value)
    with pytest.raises(GentrainError, match=r"model\.data_levels") as err:
        PixelCNN((1, 4, 4), hidden=4, layers=1, data_levels=value)
    assert "\n" not in str(err.value)


def test_invalid_levels_through_the_config_are_one_line_errors():
    cfg = make_config(["model=pixelcnn", "dataset=digits", "dataset.levels=1"])
    with pytest.raises(GentrainError, match=r"dataset\.levels must be an integer in 2\.\.256") as err:
        build(cfg.dataset, "dataset")
    assert "\n" not in str(err.value)
    with pytest.raises(GentrainError, match=r"model\.data_levels must be an integer in 2\.\.256"):
        build_model(cfg)


def test_vectors_have_no_levels():
    class Points(Dataset):
        def _load(self, split):
            return DataSplit(torch.zeros(4, 2), None)

    assert Points("points", [2], None).levels is None
    with pytest.raises(GentrainError, match=r"dataset\.levels=17 applies to images.*set dataset\.levels=null"):
        Points("points", [2], None, levels=17)
    with pytest.raises(GentrainError, match=r"model\.data_levels=17 applies to images"):
        MADE((2,), data_levels=17)
    assert build_model(make_config(["model=realnvp", "dataset=ring8"])).data_levels is None


@pytest.mark.parametrize("levels", [2, 3, 4, 16, 17, 100, 255, 256])
def test_value_off_levels_accepts_exactly_the_stored_values(levels):
    assert value_off_levels(stored(levels), levels) is None
    if levels < 256:
        others = sorted(set(range(256)) - set(stored(levels).tolist()))
        off: list[int] = []
        for v in others:
            # a value fits when it is within 0.5 of 255 k / (K - 1) (ties may round either way), in integers:
            fits = min(abs(2 * (v * (levels - 1) - 255 * k)) for k in range(levels)) <= levels - 1
            assert value_off_levels(torch.tensor([v], dtype=torch.uint8), levels) == (None if fits else v)
            off.extend([] if fits else [v])
        assert levels == 255 or off  # 255 levels: every value is within 0.5 of one (127 and 128 tie for level 127)
        if off:
            assert value_off_levels(torch.cat([stored(levels), torch.tensor(off[-1:], dtype=torch.uint8)]), levels) == off[-1]


def test_data_that_does_not_fit_the_declared_levels_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(GentrainError, match=r"dataset 'digits' has the pixel value 16.*dataset\.levels=16.*set dataset\.levels=256") as err:
        Digits(levels=16).load("train")
    assert "\n" not in str(err.value)
    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    four = torch.tensor([0, 85, 170, 255], dtype=torch.uint8)
    for i in range(6):
        Image.fromarray(four[torch.randint(0, 4, (8, 8), generator=g)].numpy()).save(folder / f"{i}.png")
    assert ImageFolder(path=str(folder), size=8, channels=1, shape=(1, 8, 8), levels=4).load("test").x.unique().tolist() == four.tolist()
    with pytest.raises(GentrainError, match=r"pixel value 85.*dataset\.levels=3"):
        ImageFolder(path=str(folder), size=8, channels=1, shape=(1, 8, 8), levels=3).load("test")


def test_a_model_whose_levels_do_not_fit_the_data_is_refused_at_start_up(train_run):
    overrides = tiny_overrides("pixelcnn", "digits", "ar_nll", steps=2, extra=["model.data_levels=5"])
    with pytest.raises(GentrainError, match=r"model\.data_levels=5 but dataset=digits has the pixel value 16.*leave model\.data_levels") as err:
        train_run(overrides)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- levels <-> model space


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_to_levels_and_from_levels_round_trip_and_match_the_loader(levels):
    u = torch.arange(levels)
    x = from_levels(u, levels)
    assert torch.equal(to_levels(x, levels), u)
    # from_levels gives exactly the loader's value of the level's stored uint8 value
    assert torch.equal(x, to_model_space(stored(levels)))
    assert torch.equal(to_levels(to_model_space(stored(levels)), levels), u)
    assert x.min() == -1 and x.max() == 1


def test_256_levels_keep_the_8bit_formulas_bit_for_bit():
    x = torch.rand(10000, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    assert torch.equal(to_levels(x, 256), torch.round((x + 1.0) * 127.5).clamp(0, 255).long())
    assert torch.equal(to_levels(x), to_levels(x, 256))
    u = torch.arange(256)
    assert torch.equal(from_levels(u, 256), u.float() / 127.5 - 1.0)
    xs = from_levels(torch.randint(0, 256, (4, 1, 3, 3), generator=torch.Generator().manual_seed(1)))
    old = (torch.round((xs + 1.0) * 127.5).clamp(0, 255).long().float() + torch.rand(xs.shape, generator=torch.Generator().manual_seed(2))) / 256.0
    assert torch.equal(dequantize(xs, torch.Generator().manual_seed(2), 256), old)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantization_fills_each_levels_cell_with_noise_over_levels(levels):
    u = torch.randint(0, levels, (64, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    x = from_levels(u, levels)
    y = dequantize(x, torch.Generator().manual_seed(5), levels)
    noise = torch.rand(u.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y, (u + noise) / levels, atol=0, rtol=0)
    assert (y >= u / levels).all() and (y < (u + 1) / levels).all()  # the cell [u / K, (u + 1) / K)


# ----------------------------------------------------------------------------- flows: a proper bound


def _cdf_of_y(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """CDF of y in the identity flow's model: h = logit(alpha + (1 - 2 alpha) y) ~ N(0, 1)."""
    s = alpha + (1 - 2 * alpha) * y
    return torch.distributions.Normal(0.0, 1.0).cdf(torch.log(s) - torch.log1p(-s))


@pytest.mark.parametrize("levels", [3, 17, 256])
def test_a_fresh_flows_log_prob_is_an_unbiased_estimate_of_a_lower_bound_on_the_exact_discrete_likelihood(levels):
    """A fresh RealNVP is the identity (zero-initialised couplings): pixels are independent with the CDF
    ``F(y) = Phi(logit(alpha + (1 - 2 alpha) y))``, so ``P(u) = prod_d F((u_d + 1) / K) - F(u_d / K)`` exactly.

    ``E_noise[exp(log_prob)] = P(u)`` (the ``-D log K`` offset is right) and ``E_noise[log_prob] <= log P(u)`` (Jensen)."""
    torch.manual_seed(0)
    model = RealNVP(shape=[1, 2, 2], hidden=4, blocks=1, scales=1, data_levels=levels).double()
    u = torch.randint(0, levels, (5, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    x = from_levels(u, levels).double()
    h = logit_transform(dequantize(x, levels=levels).double(), model.alpha)[0]
    assert torch.equal(model.flow(h)[1], torch.zeros(5, dtype=torch.float64))  # the identity
    cdf = lambda v: _cdf_of_y(v.double(), model.alpha)  # noqa: E731
    exact = (torch.log(cdf((u + 1) / levels) - cdf(u / levels))).flatten(1).sum(1)
    n = 4000
    with torch.no_grad():
        log_p = model.log_prob(x.repeat_interleave(n, 0), generator=torch.Generator().manual_seed(2)).view(5, n)
    estimate = torch.logsumexp(log_p, 1) - math.log(n)
    w = (log_p - log_p.max(1, keepdim=True).values).exp()
    standard_error = w.std(1) / w.mean(1) / math.sqrt(n)  # of the estimate's log, to first order
    assert ((estimate - exact).abs() < 5 * standard_error + 1e-4).all(), (estimate - exact, standard_error)
    # a wrong offset (log 256 for K levels) would be off by D log(256 / K) nats
    assert (log_p.mean(1) <= exact + 5 * log_p.std(1) / math.sqrt(n)).all()
    if levels < 256:
        assert (log_p.mean(1) < exact).all()  # a real Jensen gap: the bound is below the exact likelihood
    # the cells tile [0, 1)^D: the discrete probabilities sum to the model's mass there, at most 1
    total = ((cdf(torch.tensor(1.0)) - cdf(torch.tensor(0.0))) ** 4).item()
    assert 0.9 < total <= 1


def test_a_trained_looking_flows_discrete_probabilities_sum_to_its_mass_on_the_unit_cube():
    """Perturbed (not the identity) RealNVP over 3 levels of 2x2 images: the estimates ``mean exp(log_prob)`` of the 81 cells'
    probabilities sum to the share of the flow's own samples that land in [0, 1)^4, so the -D log K offset makes a distribution."""
    torch.manual_seed(0)
    levels = 3
    model = RealNVP(shape=[1, 2, 2], hidden=4, blocks=1, scales=1, data_levels=levels).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    cells = torch.tensor(list(itertools.product(range(levels), repeat=4))).view(-1, 1, 2, 2)
    n = 300  # noise draws per cell: the sum's standard error is about 0.003
    x = from_levels(cells, levels).double().repeat_interleave(n, 0)
    with torch.no_grad():
        log_p = model.log_prob(x, generator=torch.Generator().manual_seed(1)).view(len(cells), n)
        assert log_p.std(0).mean() > 1  # cells differ a lot: not a flat density
        p_cells = log_p.exp().mean(1)
        eps = torch.randn(100000, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        y = (torch.sigmoid(model.flow.inverse(eps)) - model.alpha) / (1 - 2 * model.alpha)
    inside = ((y >= 0) & (y < 1)).flatten(1).all(1).double().mean().item()
    assert inside < 0.99  # some mass falls outside the cube (the logit margin): the bound is of a sub-probability
    assert p_cells.sum().item() == pytest.approx(inside, abs=0.015)


@pytest.mark.parametrize("cls", [RealNVP, Glow])
def test_flow_samples_on_fewer_levels_lie_on_the_datas_values(cls):
    torch.manual_seed(0)
    model = cls(shape=[1, 4, 4], hidden=4, **({"blocks": 1} if cls is RealNVP else {"steps": 1, "levels": 1}), data_levels=17)
    model.log_prob(from_levels(torch.randint(0, 17, (8, 1, 4, 4)), 17))  # Glow's ActNorm initialises
    s = model.sample(32, generator=torch.Generator().manual_seed(0))
    assert torch.isin(s, to_model_space(stored(17))).all()
    assert "17-level images" in model.likelihood_kind


# ----------------------------------------------------------------------------- autoregressive models


def _ar(kind: str, shape, levels: int):
    torch.manual_seed(0)
    if kind == "made":
        return MADE(shape, hidden=[16, 16], data_levels=levels).double()
    return PixelCNN(shape, hidden=4, layers=1, gated=kind == "gated", data_levels=levels).double()


@pytest.mark.parametrize("kind", ["pixelcnn", "gated", "made"])
@pytest.mark.parametrize("levels", [3, 17, 256])
def test_autoregressive_models_output_levels_logits_per_subpixel(kind, levels):
    shape = (2, 2, 2)
    model = _ar(kind, shape, levels)
    x = from_levels(torch.randint(0, levels, (3, *shape)), levels).double()
    out = model(x)
    assert out.shape == ((3, levels, *shape) if kind != "made" else (3, 8, levels))
    assert model.likelihood_kind == ("exact" if levels == 256 else f"exact ({levels} levels)")


@pytest.mark.parametrize("kind", ["pixelcnn", "gated", "made"])
def test_autoregressive_likelihoods_over_3_levels_sum_to_one_over_all_images(kind):
    shape = (1, 2, 2)
    model = _ar(kind, shape, 3)
    with torch.no_grad():
        for p in model.parameters():  # sharp, input-dependent conditionals
            p.mul_(4)
        u = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, *shape)
        log_p = model.log_prob(from_levels(u, 3).double()).double()
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-5)  # log_prob works in float32
    assert log_p.max() - log_p.min() > 1


@pytest.mark.parametrize("kind", ["pixelcnn", "made"])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_a_uniform_softmax_gives_log2_levels_bits_per_dim(kind, levels):
    model = _ar(kind, (1, 3, 3), levels)
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        x = from_levels(torch.randint(0, levels, (4, 1, 3, 3)), levels).double()
        bpd = bits_per_dim(model.log_prob(x), 9)
    torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)))


@pytest.mark.parametrize("kind", ["pixelcnn", "made"])
def test_autoregressive_samples_on_17_levels_are_the_datas_values(kind):
    model = _ar(kind, (1, 3, 3), 17)
    s = model.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.isin(s, to_model_space(stored(17))).all()


# ----------------------------------------------------------------------------- VAE


@pytest.mark.parametrize("levels", [17, 256])
def test_vae_binarisation_is_the_upper_half_of_the_levels_as_before(levels):
    """``2 level >= K - 1``: the 8-bit rule ``value >= 128`` for K = 256, and for the digits (K = 17) the same pixels."""
    x8 = Digits(levels=256).load("train").x[:200]
    x = to_model_space(x8)
    vae = VAE((1, 8, 8), z_dim=2, hidden=[8], decoder="bernoulli", data_levels=levels)
    assert torch.equal(vae.target(x), (x8 >= 128).float())
    k = torch.arange(levels)
    assert torch.equal(vae.binarise(from_levels(k, levels)), (2 * k >= levels - 1).float())


@pytest.mark.parametrize("levels", [17, 256])
def test_vae_gaussian_decoder_dequantises_over_levels_with_the_minus_d_log_k_offset(levels):
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), z_dim=2, hidden=[8], decoder="gaussian", data_levels=levels)
    x = to_model_space(Digits(levels=256).load("train").x[:16])
    torch.manual_seed(1)
    target = vae.target(x)
    torch.manual_seed(1)
    noise = torch.rand(x.shape)
    torch.testing.assert_close(target, (to_levels(x, levels) + noise) / levels)
    params = torch.rand(16, 1, 8, 8)
    log_std = vae.log_std.view(1, 1, 8, 8).clamp(-7, 3)
    by_hand = (-0.5 * ((target - params) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) - 64 * math.log(levels)
    torch.testing.assert_close(vae.log_px_given_z(target, params), by_hand)
    if levels != 256:
        assert vae.likelihood_kind.startswith("IWAE bound") and f"{levels}-level" in vae.likelihood_kind


# ----------------------------------------------------------------------------- a run


def test_a_digits_run_reports_the_likelihood_of_17_levels(train_run):
    overrides = tiny_overrides("realnvp", "digits", "flow_nll", steps=2, extra=["eval.metrics=[nll64]"])
    _, report = train_run(overrides)
    (result,) = report["evaluation"]
    assert any("17-level images" in note for note in result["notes"])
    bpd = result["values"]["nll64_bpd"]
    assert 2 < bpd < 8, bpd  # a near-fresh flow on 17 levels; at 256 levels it would be above 8
