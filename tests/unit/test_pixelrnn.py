"""PixelRNN (Row LSTM, Diagonal BiLSTM): causality by gradients, the skew's round trip, exact normalisation,
samples that follow the model's own log_prob, and one-line errors for bad settings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from conftest import make_config
from test_autoregressive import assert_raster_causal, raster_rank
from gentrain.build import build_model
from gentrain.errors import GentrainError
from gentrain.families.autoregressive.pixelrnn import CELLS, PixelRNN, skew, unskew
from gentrain.models.likelihood import from_levels, to_levels


def pixelrnn(shape, cell, hidden=4, layers=2, levels=256, seed=0, scale=1.0) -> PixelRNN:
    """A float64 model; ``scale`` multiplies every weight (sharper, input-dependent conditionals)."""
    torch.manual_seed(seed)
    model = PixelRNN(list(shape), cell=cell, hidden=hidden, layers=layers, data_levels=levels).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def projected_jacobian(model: PixelRNN, x: Tensor) -> Tensor:
    """d (r . logits at sub-pixel o) / d x[i] as [outputs, inputs], r a fixed random vector over the K logits (no chance cancellation)."""
    r = torch.randn(model.data_levels, generator=torch.Generator().manual_seed(1), dtype=x.dtype)

    def f(v: Tensor) -> Tensor:
        return torch.einsum("bkchw,k->bchw", model(v.view_as(x)), r).flatten()

    return torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())


def all_images(shape, levels: int) -> Tensor:
    """Every image of ``levels`` levels of a tiny shape, in model space, float64: [levels ** numel, *shape]."""
    grid = torch.cartesian_prod(*[torch.arange(levels)] * math.prod(shape)).reshape(-1, *shape)
    return from_levels(grid, levels).double()


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 6)], ids=["grey", "rgb"])
@pytest.mark.parametrize("cell", CELLS)
def test_logits_depend_on_every_earlier_subpixel_and_on_no_later_one(cell, shape):
    model = pixelrnn(shape, cell, hidden=4 * shape[0], layers=2)  # two layers: the residual path and the shifted direction compose
    x = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    jac = projected_jacobian(model, x)
    _, later_or_same, depends = assert_raster_causal(jac, shape)  # exactly zero: masks and the row shift
    if cell == "diagonal_bilstm":  # both directions together: the whole context but for the row above's last sub-pixel
        c, h, w = shape
        ci, ii, jj = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
        ii, jj = ii.flatten(), jj.flatten()
        last_above = raster_rank(shape)[None, :] == (ii * w * c - 1)[:, None]  # input (C-1, i-1, W-1) of output (., i, .)
        blind = last_above & (ii >= 1)[:, None] & (jj < w - 4)[:, None]  # beyond the 7x7 first layer's 3 columns
        assert blind.any() and not depends[blind].any()
        assert depends[~later_or_same & ~blind].all()
    if shape[0] == 3:  # within a pixel: G sees R, B sees R and G
        n = shape[1] * shape[2]
        pixel = 5
        r, g, b = (c * n + pixel for c in range(3))
        assert depends[g, r] and depends[b, r] and depends[b, g]


def test_the_row_lstm_context_is_a_triangle_above_the_pixel():
    """Row i's state reads row i-1 at columns j-1 .. j+1, so a pixel far to the right, rows up, is out of reach."""
    shape = (1, 3, 16)
    model = pixelrnn(shape, "row_lstm", layers=1)
    x = torch.rand(1, *shape, dtype=torch.float64) * 2 - 1
    depends = projected_jacobian(model, x) != 0
    w = shape[2]
    # (2, 0) reaches row 1 up to column 1 (+3 by the 7x7 first layer) and row 0 up to column 2 (+3, +3)
    assert not depends[2 * w + 0, 0 * w + 15] and not depends[2 * w + 0, 1 * w + 15]
    assert depends[2 * w + 0, 1 * w + 1] and depends[2 * w + 0, 0 * w + 2]


# ----------------------------------------------------------------------------- skewing


@pytest.mark.parametrize("size", [(2, 3, 4, 5), (1, 1, 5, 2), (1, 2, 1, 3)])
def test_skew_shifts_row_i_right_by_i_and_unskew_inverts_it(size):
    b, c, h, w = size
    x = torch.randn(*size, dtype=torch.float64)
    s = skew(x)
    assert s.shape == (b, c, h, w + h - 1)
    for i, j in itertools.product(range(h), range(w)):
        assert torch.equal(s[..., i, i + j], x[..., i, j])
    assert s.abs().sum() == x.abs().sum()  # zeros everywhere else
    assert torch.equal(unskew(s, w), x)
    with pytest.raises(ValueError):
        unskew(s, w + 1)


# ----------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("cell", CELLS)
def test_log_prob_is_normalised_over_all_binary_images_of_a_2x3_grid(cell):
    shape = (1, 2, 3)
    model = pixelrnn(shape, cell, levels=2, scale=3.0)
    x = all_images(shape, 2)  # 64 images
    with torch.no_grad():
        log_p = model.log_prob(x)
    assert log_p.dtype == torch.float64
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1) < 1e-10
    assert log_p.max() - log_p.min() > 1  # not the uniform distribution


@pytest.mark.parametrize("cell", CELLS)
def test_log_prob_is_the_sum_of_categorical_log_probs_of_the_logits(cell):
    shape = (3, 2, 3)
    model = pixelrnn(shape, cell, hidden=6, levels=17)
    x = from_levels(torch.randint(0, 17, (4, *shape), generator=torch.Generator().manual_seed(0)), 17).double()
    log_probs = model(x).log_softmax(1)  # [B, K, C, H, W]
    levels = to_levels(x, 17)
    by_hand = torch.zeros(4, dtype=torch.float64)
    for c, i, j in itertools.product(*map(range, shape)):
        by_hand += log_probs[torch.arange(4), levels[:, c, i, j], c, i, j]
    torch.testing.assert_close(model.log_prob(x), by_hand)
    assert model.likelihood_kind == "exact (17 levels)"


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("cell", CELLS)
def test_samples_follow_the_models_own_probabilities(cell):
    """20k samples on a 1x2x2 binary grid: the counts of the 16 images against n exp(log_prob), by a chi-square and per image."""
    shape, n = (1, 2, 2), 20_000
    model = pixelrnn(shape, cell, levels=2, scale=3.0)
    images = all_images(shape, 2)
    with torch.no_grad():
        p = model.log_prob(images).exp()
        x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, *shape) and x.dtype == torch.float64
    bits = to_levels(x, 2).flatten(1)  # [n, 4], in the order of all_images (first sub-pixel most significant)
    index = (bits * 2 ** torch.arange(3, -1, -1)).sum(1)
    counts = torch.bincount(index, minlength=16).double()
    expected = n * p
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 42.6, chi2  # 15 degrees of freedom: P(chi2 > 42.6) ~ 2e-4
    z = (counts - expected) / (n * p * (1 - p)).sqrt()
    assert z.abs().max() < 4.5
    assert p.max() / p.min() > 3  # the test has a non-uniform distribution to match


def test_samples_lie_on_the_data_levels_and_follow_the_seed():
    model = pixelrnn((3, 3, 3), "diagonal_bilstm", hidden=6, levels=17)
    a = model.sample(5, generator=torch.Generator().manual_seed(0))
    b = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (5, 3, 3, 3)
    assert torch.equal(from_levels(to_levels(a, 17), 17).double(), a)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"shape": [2]}, "use model=made for vectors"),
        ({"shape": [1, 1000]}, "use model=wavenet for sequences"),
        ({"shape": [1, 0, 4]}, "model.shape"),
        ({"cell": "gru"}, "row_lstm, diagonal_bilstm"),
        ({"shape": [3, 8, 8], "hidden": 5}, "model.hidden >= 6"),
        ({"layers": 0}, "model.layers"),
        ({"temperature": 0}, "model.temperature"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, fragment):
    with pytest.raises(GentrainError, match=fragment) as err:
        PixelRNN(**{"shape": [1, 8, 8], **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cell", CELLS)
def test_the_config_builds_both_cells_and_refuses_vectors_and_sequences(cell):
    model = build_model(make_config(["model=pixelrnn", f"model.cell={cell}", "dataset=digits", "objective=ar_nll"]))
    assert isinstance(model, PixelRNN) and model.cell == cell and model.data_levels == 17
    for dataset, fragment in (("ring8", "use model=made for vectors"), ("waveforms", "use model=wavenet for sequences")):
        with pytest.raises(GentrainError, match=fragment) as err:
            build_model(make_config(["model=pixelrnn", f"model.cell={cell}", f"dataset={dataset}", "objective=ar_nll"]))
        assert "\n" not in str(err.value)
