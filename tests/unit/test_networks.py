"""Network options through config (activation, maxout, batch-norm placement, init) and PacGAN packing.

The networks must be the ones the keys say: layer types and counts, initial weight statistics.
Packing must give the discriminator ``pack`` samples at once, and the losses must be the
unpacked formulas applied to packs, checked by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.build import compose
from gentrain.errors import GentrainError
from gentrain.families.gan.conditional import ConditionalGAN
from gentrain.families.gan.models import DCGAN, GanMLP, Maxout, mlp_discriminator, mlp_generator
from gentrain.families.gan.objectives import Hinge, Minimax, NonSaturating
from gentrain.objectives.base import Batch
from gentrain.families.gan.wasserstein import Wasserstein, WassersteinGP
from gentrain.tasks.training import prepare, train


def layer_types(net: nn.Module) -> list[str]:
    return [type(m).__name__ for m in net.children()]


# ---- maxout ----------------------------------------------------------------------------------


def test_maxout_is_the_maximum_over_pieces_of_an_affine_map() -> None:
    torch.manual_seed(0)
    unit = Maxout(3, 4, pieces=5)
    assert unit.linear.weight.shape == (20, 3)
    x = torch.randn(7, 3)
    # by hand: unit j takes rows 5j .. 5j+4 of the affine map (piece fastest, as Blocks' LinearMaxout)
    affine = x @ unit.linear.weight.T + unit.linear.bias
    expected = torch.stack([affine[:, 5 * j : 5 * j + 5].max(dim=1).values for j in range(4)], dim=1)
    torch.testing.assert_close(unit(x), expected)
    # gradient flows only into the winning piece of each unit
    unit(x[:1]).sum().backward()
    winners = affine[:1].view(4, 5).argmax(1)
    rows_with_grad = unit.linear.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert rows_with_grad == [5 * j + int(w) for j, w in enumerate(winners)]


# ---- layer layout ----------------------------------------------------------------------------


def test_pacgan_networks_have_the_published_layers() -> None:
    model = GanMLP(
        (2,), z_dim=2, g_widths=[400] * 4, d_widths=[200] * 3, g_activation="relu", d_activation="maxout",
        maxout_pieces=5, g_batchnorm="all", d_batchnorm="none", init="dcgan",
    )
    # G: 4 x (Linear without bias, BatchNorm, ReLU), then the linear output (with bias)
    assert layer_types(model.generator) == ["Linear", "BatchNorm1d", "ReLU"] * 4 + ["Linear", "Identity", "_Reshape"]
    linears = [m for m in model.generator.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (2, 400, False), (400, 400, False), (400, 400, False), (400, 400, False), (400, 2, True)
    ]
    # D: 3 maxout layers of 200 units x 5 pieces, then one logit; no batch norm
    assert layer_types(model.discriminator) == ["Flatten", "Maxout", "Maxout", "Maxout", "Linear"]
    maxouts = [m for m in model.discriminator.modules() if isinstance(m, Maxout)]
    assert [(m.linear.in_features, m.out_features, m.pieces) for m in maxouts] == [(2, 200, 5), (200, 200, 5), (200, 200, 5)]
    assert model.discriminator(torch.randn(3, 2)).shape == (3, 1)
    # the parameter counts of PacGAN's Theano model (printed by its pacgan_task.py): D 2*1000+1000 + 2*(200*1000+1000) + 201
    assert sum(p.numel() for p in model.discriminator.parameters()) == 3000 + 2 * 201000 + 201
    # G: no hidden biases, batch norm scale and shift per unit
    assert sum(p.numel() for p in model.generator.parameters()) == 2 * 400 + 3 * 400 * 400 + 4 * 800 + 400 * 2 + 2


@pytest.mark.parametrize(
    "placement, norms_after",
    [("all", [0, 1, 2]), ("all_but_first", [1, 2]), ("none", []), (True, [1, 2]), (False, [])],
)
def test_batchnorm_goes_where_the_key_says(placement, norms_after) -> None:
    g = mlp_generator(4, (2,), [8, 8, 8], activation="leaky_relu", batchnorm=placement if isinstance(placement, str) else
                      ("all_but_first" if placement else "none"))
    d = GanMLP((2,), z_dim=4, g_widths=[8, 8, 8], d_widths=[8, 8, 8], g_batchnorm=placement, d_batchnorm=placement)
    for net in (g, d.generator, d.discriminator):
        linears = [m for m in net.children() if isinstance(m, nn.Linear)][:3]  # the hidden layers
        children = list(net.children())
        with_norm = [i for i, lin in enumerate(linears) if isinstance(children[children.index(lin) + 1], nn.BatchNorm1d)]
        assert with_norm == norms_after
        # a linear layer followed by batch norm carries no bias (the normalisation removes it)
        assert all((lin.bias is None) == (i in norms_after) for i, lin in enumerate(linears))


@pytest.mark.parametrize("activation, module", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh)])
def test_activation_key_picks_the_unit(activation, module) -> None:
    d = mlp_discriminator((2,), [8, 8], activation=activation)
    assert layer_types(d) == ["Flatten", "Linear", module.__name__, "Linear", module.__name__, "Linear"]
    if activation == "leaky_relu":
        assert d[2].negative_slope == 0.2


def test_maxout_pieces_key_sets_the_pieces() -> None:
    d = mlp_discriminator((2,), [8], activation="maxout", pieces=3)
    assert d[1].pieces == 3 and d[1].linear.out_features == 24


# ---- initialisation ---------------------------------------------------------------------------


def test_dcgan_init_draws_weights_from_n_0_002_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = GanMLP((2,), z_dim=2, g_widths=[400] * 4, d_widths=[200] * 3, d_activation="maxout", g_batchnorm="all", init="dcgan")
    weights = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert weights.numel() > 500_000
    assert abs(float(weights.mean())) < 1e-3
    assert float(weights.std()) == pytest.approx(0.02, rel=0.01)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    scales = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm1d)])
    assert float(scales.mean()) == pytest.approx(1.0, abs=0.005) and float(scales.std()) == pytest.approx(0.02, rel=0.1)


def test_orthogonal_init_gives_orthonormal_rows_or_columns() -> None:
    model = GanMLP((2,), z_dim=8, g_widths=[16, 32], d_widths=[16], init="orthogonal")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(small, torch.eye(small.shape[0]), atol=1e-5, rtol=0)
            if m.bias is not None:
                assert float(m.bias.detach().abs().max()) == 0


def test_default_init_is_pytorchs() -> None:
    torch.manual_seed(0)
    model = GanMLP((2,), z_dim=4, g_widths=[256], d_widths=[256], init="default")
    w = model.discriminator[1].weight.detach()  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 2
    assert float(w.abs().max()) <= 1 / math.sqrt(2) and float(w.abs().max()) > 0.6


def test_dcgan_init_key_on_images() -> None:
    torch.manual_seed(0)
    dcgan = DCGAN((1, 8, 8), z_dim=8, g_width=8, d_width=8)  # init: dcgan by default, as the paper
    convs = torch.cat([m.weight.detach().flatten() for m in dcgan.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert float(convs.std()) == pytest.approx(0.02, rel=0.1)
    ortho = DCGAN((1, 8, 8), z_dim=8, g_width=8, d_width=8, init="orthogonal")
    w = ortho.discriminator[0].weight.detach().flatten(1)  # [out, in * k * k] = [8, 16]: orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"g_activation": "swish"}, "model.g_activation"),
        ({"d_activation": "max"}, "model.d_activation"),
        ({"g_batchnorm": "first"}, "model.g_batchnorm"),
        ({"d_batchnorm": "yes"}, "model.d_batchnorm"),
        ({"init": "xavier"}, "model.init"),
        ({"maxout_pieces": 1}, "model.maxout_pieces"),
        ({"pack": 0}, "model.pack"),
    ],
)
def test_bad_network_keys_are_one_line(kwargs, key) -> None:
    with pytest.raises(GentrainError, match=key.replace(".", r"\.")) as e:
        GanMLP((2,), **kwargs)
    assert "\n" not in str(e.value)


# ---- packing ----------------------------------------------------------------------------------


def test_packed_discriminator_takes_pack_times_the_features() -> None:
    assert GanMLP((2,), d_widths=[8], pack=2).discriminator[1].in_features == 4
    assert GanMLP((1, 4, 4), d_widths=[8], pack=3).discriminator[1].in_features == 48
    assert DCGAN((1, 8, 8), z_dim=8, g_width=8, d_width=8, pack=2).discriminator[0].in_channels == 2


def test_packing_concatenates_consecutive_samples() -> None:
    x = torch.arange(12.0).view(6, 2)
    packed = NonSaturating(pack=2).packed(x)
    assert packed.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    images = torch.arange(4 * 2 * 3 * 3.0).view(4, 2, 3, 3)
    p = NonSaturating(pack=2).packed(images)
    assert p.shape == (2, 4, 3, 3)
    torch.testing.assert_close(p[1, 2:], images[3])  # pack 1 = samples 2 and 3, channels of sample 3 second
    assert NonSaturating().packed(x) is x


class Recorder(nn.Module):
    """A discriminator that records its inputs and returns a fixed linear score of them."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, d_in))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return (x.flatten(1) * self.w).sum(1, keepdim=True)


@pytest.mark.parametrize("objective_cls", [Minimax, NonSaturating, Hinge, Wasserstein, WassersteinGP])
def test_packed_losses_by_hand(objective_cls) -> None:
    torch.manual_seed(0)
    model = GanMLP((2,), z_dim=2, g_widths=[8], d_widths=[8], pack=2)
    model.discriminator = Recorder(4)
    objective = objective_cls(pack=2)
    x = torch.randn(6, 2)

    torch.manual_seed(1)
    out_d = objective.step("D", model, Batch(x))
    real, fake = model.discriminator.seen[0], model.discriminator.seen[1]
    assert real.shape == fake.shape == (3, 4)  # 6 samples -> 3 packs of 2, real with real ...
    torch.testing.assert_close(real, x.view(3, 4))
    torch.manual_seed(1)
    z = model.noise(6)
    torch.testing.assert_close(fake, model.generate(z).detach().view(3, 4))  # ... and fake with fake
    w = model.discriminator.w.detach()
    lr, lf = real @ w, fake @ w
    expected_d = {
        Minimax: F.softplus(-lr).mean() + F.softplus(lf).mean(),
        NonSaturating: F.softplus(-lr).mean() + F.softplus(lf).mean(),
        Hinge: F.relu(1 - lr).mean() + F.relu(1 + lf).mean(),
        Wasserstein: lf.mean() - lr.mean(),
        # the critic is linear: ||grad|| = ||w|| at every interpolate
        WassersteinGP: lf.mean() - lr.mean() + 10 * (w.norm() - 1) ** 2,
    }[objective_cls]
    torch.testing.assert_close(out_d.loss, expected_d)

    model.discriminator.seen.clear()
    torch.manual_seed(2)
    out_g = objective.step("G", model, Batch(x))
    (fake_g,) = model.discriminator.seen
    assert fake_g.shape == (3, 4)
    lg = fake_g @ w
    expected_g = {Minimax: -F.softplus(lg).mean(), NonSaturating: F.softplus(-lg).mean()}.get(objective_cls, -lg.mean())
    torch.testing.assert_close(out_g.loss, expected_g)


def test_gradient_penalty_is_per_pack() -> None:
    torch.manual_seed(0)
    model = GanMLP((2,), z_dim=2, g_widths=[8], d_widths=[16], pack=2)
    out = WassersteinGP(pack=2).step("D", model, Batch(torch.randn(8, 2)))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()  # the double backward runs through the packed critic
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_pack_mismatch_and_batch_size_are_refused_in_one_line() -> None:
    with pytest.raises(GentrainError, match=r"set model\.pack=2"):
        NonSaturating(pack=2).check_model(GanMLP((2,), pack=1), "non_saturating", "gan_mlp", [])
    cgan = ConditionalGAN((2,), num_classes=8, z_dim=4, mlp_g_widths=[8], mlp_d_widths=[8])
    with pytest.raises(GentrainError, match="conditional"):
        Hinge(pack=2).check_model(cgan, "hinge", "cgan", [])
    with pytest.raises(GentrainError, match=r"trainer\.batch_size=100"):
        NonSaturating(pack=2).check_batch_size(101)
    NonSaturating(pack=2).check_batch_size(100)
    with pytest.raises(GentrainError, match=r"objective\.pack"):
        NonSaturating(pack=0)


def test_objective_pack_reaches_the_model_through_config(tmp_path) -> None:
    cfg = make_config(["model=gan_mlp", "dataset=ring8", "objective=hinge", "objective.pack=3", "trainer.batch_size=30",
                       "model.g_widths=[8]", "model.d_widths=[8]", "model.z_dim=2", "device.type=cpu"])
    setup = prepare(cfg)
    assert setup.model.pack == setup.objective.pack == 3
    assert setup.model.discriminator[1].in_features == 6
    bad = make_config(["model=gan_mlp", "dataset=ring8", "objective.pack=3", "trainer.batch_size=32", "device.type=cpu"])
    with pytest.raises(GentrainError, match=r"trainer\.batch_size=30"):
        prepare(bad)


def test_pacgan_presets_compose_to_the_published_setting() -> None:
    for preset, (dataset, std) in {"pacgan_ring": ("ring8", 0.01), "pacgan_grid": ("grid25", 0.05)}.items():
        cfg = compose([f"experiment={preset}"])
        m = cfg.model
        assert cfg.dataset.name == dataset and cfg.dataset.std == std and cfg.dataset.n_train == 100000
        assert (m.z_dim, list(m.g_widths), list(m.d_widths)) == (2, [400] * 4, [200] * 3)
        assert (m.g_activation, m.d_activation, m.maxout_pieces, m.g_batchnorm, m.d_batchnorm, m.init) == (
            "relu", "maxout", 5, "all", "none", "dcgan")
        for phase in ("G", "D"):
            assert m.optimizer[phase].lr == 1e-4 and list(m.optimizer[phase].betas) == [0.8, 0.999]
        assert cfg.objective._target_.endswith("NonSaturating") and cfg.trainer.batch_size == 100 and m.pack == 1
        packed = compose([f"experiment={preset}", "objective.pack=2", "trainer.batch_size=200"])
        assert packed.model.pack == 2
    assert compose(["experiment=pacgan_ring"]).dataset.radius == 1.0


def test_packed_image_critic_trains_end_to_end(tmp_path) -> None:
    """DCGAN on digits with WGAN-GP and packs of 2: the critic takes 2 channels, the run completes and stays finite."""
    overrides = tiny_overrides("dcgan", "digits", "wasserstein_gp", steps=2, extra=["model.d_norm=layer", "objective.pack=2", "trainer.batch_size=16"])
    report = train(make_config(overrides), run_dir=tmp_path / "run", console=quiet_console())
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 2
    assert all(math.isfinite(v) for k, v in report["final"].items() if k.startswith("train/D/"))
