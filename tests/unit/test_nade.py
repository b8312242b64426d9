"""NADE (Larochelle & Murray 2011): the running sum is the per-dimension computation, log_prob is a normalised
distribution over all images of a tiny shape, the sampler draws from it (and from its temperature), every conditional
depends only on earlier dimensions, bad settings are one-line errors, the ordering is saved, and a tiny run trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from conftest import make_config, tiny_overrides
from gentrain.build import build_model
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.autoregressive.nade import NADE
from gentrain.models.likelihood import from_levels, to_levels


def nade(shape, levels: int, ordering: str = "natural", hidden: int = 7, seed: int = 0, scale: float = 1.0) -> NADE:
    """A double-precision NADE with random parameters of size ``scale`` (sharp, input-dependent conditionals)."""
    model = NADE(shape, hidden=hidden, ordering=ordering, seed=seed, data_levels=levels).double()
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def rank_of(order: Tensor) -> Tensor:
    """The position of every dimension in the ordering: ``rank[order[k]] = k``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank


def every_image(shape, levels: int) -> Tensor:
    """All ``levels ** D`` images of a tiny shape, in model space."""
    d = math.prod(shape)
    grid = torch.cartesian_prod(*[torch.arange(levels)] * d).reshape(-1, *shape)
    return from_levels(grid, levels).double()


def random_images(n: int, shape, levels: int, seed: int = 0) -> Tensor:
    return from_levels(torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed)), levels).double()


def naive_logits(model: NADE, v: Tensor) -> Tensor:
    """The paper's definition, one matrix product per dimension: h_d = sigmoid(W[:, <d] v_<d + c), logits V[d] h_d + b[d]."""
    net, order = model.net, model.order
    out = []
    for d in range(model.dims):
        before = order[: int(rank_of(order)[d])]  # the dimensions generated before d
        h = torch.sigmoid(v[:, before] @ net.W[:, before].t() + net.c)  # [B, H]
        out.append(h @ net.V[d].t() + net.b[d])  # [B, K']
    return torch.stack(out, 1)


CASES = [(2, "natural"), (2, "random"), (5, "natural"), (5, "random"), (5, "reverse")]
CASE_IDS = [f"K{k}-{o}" for k, o in CASES]


# ----------------------------------------------------------------------------- the running sum


@pytest.mark.parametrize("batch", [2, 8], ids=["reorder-hidden", "reorder-weights"])  # K' < B or not: both branches
@pytest.mark.parametrize("levels,ordering", CASES, ids=CASE_IDS)
def test_the_running_sum_equals_one_matrix_product_per_dimension(levels, ordering, batch):
    shape = (2, 2, 3)
    model = nade(shape, levels, ordering)
    x = random_images(batch, shape, levels)
    v = model.inputs(x)
    assert torch.equal(v, to_levels(x.flatten(1), levels).double() / (levels - 1))  # level / (K - 1), bits for K = 2
    out = model(x)
    assert out.shape == (batch, 12, 1 if levels == 2 else levels) and out.dtype == torch.float64
    torch.testing.assert_close(out, naive_logits(model, v), rtol=1e-12, atol=1e-12)
    # between the levels too: the network's own inputs, any values in [0, 1]
    w = torch.rand(batch, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.net(w, model.order), naive_logits(model, w), rtol=1e-12, atol=1e-12)
    # the first dimension in the ordering reads nothing: its pre-activation is c
    torch.testing.assert_close(model.net.running_sums(w, model.order)[:, 0], model.net.c.expand(batch, -1), rtol=0, atol=0)


@pytest.mark.parametrize("levels,ordering", CASES, ids=CASE_IDS)
def test_log_prob_is_the_sum_of_the_conditionals_log_probs(levels, ordering):
    shape = (1, 2, 3)
    model = nade(shape, levels, ordering)
    x = random_images(5, shape, levels)
    logits = naive_logits(model, model.inputs(x))
    u = to_levels(x.flatten(1), levels)
    if levels == 2:  # Bernoulli: p(1) = sigmoid(logit)
        p1 = torch.sigmoid(logits[..., 0])
        by_hand = torch.where(u == 1, p1, 1 - p1).log().sum(1)
    else:
        by_hand = logits.log_softmax(2).gather(2, u[..., None]).squeeze(2).sum(1)
    torch.testing.assert_close(model.log_prob(x), by_hand, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "shape,levels,ordering",
    [((1, 2, 5), 2, "natural"), ((1, 2, 5), 2, "random"), ((1, 2, 3), 3, "natural"), ((2, 1, 3), 3, "random")],
    ids=["binary-1024", "binary-1024-random", "K3-729", "K3-729-random"],
)
def test_log_prob_sums_to_one_over_every_image(shape, levels, ordering):
    model = nade(shape, levels, ordering, scale=2.0)
    x = every_image(shape, levels)
    with torch.no_grad():
        log_p = model.log_prob(x)
    assert log_p.dtype == torch.float64
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-10
    assert log_p.max() - log_p.min() > 1  # not the uniform distribution


def test_a_fresh_model_is_near_uniform_over_the_levels():
    model = NADE((1, 8, 8), hidden=500, data_levels=17).double()
    x = random_images(16, (1, 8, 8), 17)
    with torch.no_grad():
        bpd = (-model.log_prob(x) / (64 * math.log(2))).mean().item()
    assert abs(bpd - math.log2(17)) < 0.05, bpd


# ----------------------------------------------------------------------------- sampling


def codes(x: Tensor, levels: int) -> Tensor:
    """Each image's index among :func:`every_image`'s (its levels as a base-K number, first dimension most significant)."""
    u = to_levels(x.flatten(1), levels)
    weights = levels ** torch.arange(u.shape[1] - 1, -1, -1)
    return (u * weights).sum(1)


def tempered_log_prob(model: NADE, x: Tensor, t: float) -> Tensor:
    """log q_t(x): the product of the conditionals with their logits divided by t (what sampling at temperature t draws)."""
    logits = model(x) / t
    u = to_levels(x.flatten(1), model.data_levels)
    if model.bernoulli:
        logits = torch.cat([torch.zeros_like(logits), logits], 2)  # sigmoid(l) = softmax([0, l])[1]
    return logits.log_softmax(2).gather(2, u[..., None]).squeeze(2).sum(1)


@pytest.mark.parametrize("shape,levels", [((1, 1, 3), 2), ((1, 1, 2), 3)], ids=["binary-D3", "K3-D2"])
def test_sample_frequencies_match_the_model_and_its_temperature(shape, levels):
    model = nade(shape, levels, "random", hidden=5, scale=1.5)
    grid = every_image(shape, levels)
    n = 20000
    with torch.no_grad():
        p = model.log_prob(grid).exp()
        for t in (1.0, 0.5, 2.0):
            q = tempered_log_prob(model, grid, t).exp()
            torch.testing.assert_close(q.sum(), torch.tensor(1.0, dtype=q.dtype))
            if t == 1.0:
                torch.testing.assert_close(q, p)
            x = model.sample(n, generator=torch.Generator().manual_seed(0), temperature=t)
            assert x.shape == (n, *shape) and x.dtype == torch.float64
            assert torch.equal(x, from_levels(to_levels(x, levels), levels).double())  # on the data's levels
            freq = torch.bincount(codes(x, levels), minlength=levels ** math.prod(shape)).double() / n
            se = (q * (1 - q) / n).sqrt()
            assert ((freq - q).abs() < 4.5 * se + 1e-4).all(), (t, freq, q)
            if t != 1.0:  # the temperature moves the frequencies where q_t says, away from p
                assert ((freq - p).abs() > 6 * se).any(), (t, freq, p)
    # the same generator, the same samples; the model's own temperature is the default
    model.temperature = 0.5
    a = model.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, model.sample(50, generator=torch.Generator().manual_seed(3), temperature=0.5))
    assert not torch.equal(a, model.sample(50, generator=torch.Generator().manual_seed(4)))


def test_samples_lie_on_the_levels_in_model_space():
    model = NADE((3, 2, 2), hidden=8, data_levels=256)  # float32, 8-bit
    x = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 2, 2) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, from_levels(to_levels(x)).to(x.dtype))


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("levels,ordering", CASES, ids=CASE_IDS)
def test_each_conditional_depends_only_on_the_dimensions_before_it(levels, ordering):
    shape = (1, 2, 3)
    model = nade(shape, levels, ordering)
    d = model.dims
    mix = torch.randn(model.net.b.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = torch.rand(1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # d logits(v)[i] / d v[j], the logits of each dimension mixed at random (no cancellation by chance): [D, D]
    jac = torch.autograd.functional.jacobian(lambda w: (model.net(w, model.order) @ mix)[0], v)[:, 0]
    rank = rank_of(model.order)
    not_before = rank[None, :] >= rank[:, None]  # [i, j]: j is i itself or comes after it
    assert jac[not_before].abs().max() == 0  # exactly: the running sum never adds a later column
    assert (jac[~not_before] != 0).all()  # and every earlier dimension is read
    assert not jac[int(model.order[0])].any()  # the first dimension in the ordering depends on nothing


# ----------------------------------------------------------------------------- settings, ordering, checkpoint


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["dataset=ring8"], "use model=made for vectors"),
        (["model.hidden=0"], "model.hidden"),
        (["model.hidden=true"], "model.hidden"),
        (["model.ordering=sideways"], "natural, reverse, random"),
        (["model.seed=1.5"], "model.seed"),
        (["model.temperature=0"], "model.temperature"),
        (["model.data_levels=1"], "model.data_levels"),
        (["model.shape=[1,8]"], "needs images"),
    ],
)
def test_bad_settings_are_one_line_errors(overrides, fragment):
    with pytest.raises(GentrainError, match=fragment) as err:
        build_model(make_config(["model=nade", "dataset=digits", *overrides]))
    assert "\n" not in str(err.value)


def test_sequences_are_refused_with_the_fix():
    with pytest.raises(GentrainError, match="needs images") as err:
        NADE([2, 100])
    assert "\n" not in str(err.value)


def test_the_config_builds_the_papers_model_with_ar_nll():
    cfg = make_config(["model=nade", "dataset=digits"])
    assert cfg.objective._target_.endswith("AutoregressiveNLL")
    model = build_model(cfg)
    assert isinstance(model, NADE) and model.net.W.shape == (500, 64) and model.data_levels == 17
    assert model.net.V.shape == (64, 17, 500) and model.likelihood_kind == "exact (17 levels)"
    assert model.ema_target() == "net"
    binary = NADE((1, 4, 4), hidden=3, data_levels=2)
    assert binary.bernoulli and binary.net.V.shape == (16, 1, 3) and binary.likelihood_kind == "exact (2 levels)"
    assert NADE((1, 2, 2), hidden=3).likelihood_kind == "exact"  # 256 levels: the default


def test_the_random_ordering_is_fixed_by_the_seed_and_saved_in_the_state():
    a, b, c = (NADE((1, 3, 3), hidden=4, ordering="random", seed=s) for s in (0, 0, 3))
    assert torch.equal(a.order, b.order) and not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(9)) and a.order.tolist() != list(range(9))
    assert NADE((1, 3, 3), ordering="reverse").order.tolist() == list(range(8, -1, -1))
    state = a.state_dict()
    assert "order" in state and torch.equal(state["order"], a.order)
    c.load_state_dict(state)  # the checkpoint's ordering wins over the config's seed
    assert torch.equal(c.order, a.order)
    x = random_images(4, (1, 3, 3), 256).float()
    torch.testing.assert_close(c.log_prob(x), a.log_prob(x))
    assert torch.equal(c.sample(3, generator=torch.Generator().manual_seed(0)), a.sample(3, generator=torch.Generator().manual_seed(0)))


def test_trains_two_steps_through_the_config(train_run):
    run_dir, report = train_run(tiny_overrides("nade", "digits", "ar_nll", 2, ["model.ordering=random"]))
    bpd = report["final"]["train/main/bits_per_dim"]
    assert math.isfinite(bpd) and 3.5 < bpd < 5  # about log2(17): the digits' 17 levels
    assert report["run"]["model"] == "nade" and report["run"]["objective"] == "ar_nll"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2 and "order" in state["model"]
