"""Wasserstein, WGAN-GP and hinge objectives against hand computations; clipping bounds; the fp32 penalty; the batch-norm refusal; the presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_config, tiny_overrides
from gentrain.build import build_model, build_objective, build_optimizers
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.gan.base import AdversarialModel
from gentrain.families.gan.models import DCGAN, GanMLP
from gentrain.families.gan.objectives import Hinge
from gentrain.objectives.base import Batch
from gentrain.families.gan.wasserstein import Wasserstein, WassersteinGP, clip_weights_, gradient_penalty


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # f(x) = w.x has gradient w everywhere: the penalty is (||w|| - 1)^2 whatever the interpolates
    w = torch.tensor([3.0, 4.0, 0.0, 12.0])  # ||w|| = 13
    gp, norms = gradient_penalty(lambda x: x @ w, torch.randn(16, 4), torch.randn(16, 4))
    assert torch.allclose(norms, torch.full((16,), 13.0)) and gp.item() == pytest.approx(144.0)
    gp, _ = gradient_penalty(lambda x: x @ (w / 13), torch.randn(8, 4), torch.randn(8, 4))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_on_images_uses_the_per_sample_norm():
    # f(x) = sum of squares / 2: grad = x_hat, so the norm is ||x_hat|| per sample; x_real = x_fake pins x_hat
    x = torch.randn(5, 1, 4, 4)
    gp, norms = gradient_penalty(lambda v: 0.5 * (v**2).flatten(1).sum(1), x, x)
    expected = x.flatten(1).norm(dim=1)
    assert torch.allclose(norms, expected) and gp.item() == pytest.approx(((expected - 1) ** 2).mean().item(), rel=1e-6)


def test_gradient_penalty_under_bf16_autocast_is_computed_in_float32():
    # device.precision=bf16 runs the objective's step under autocast (the engine's backward runs after it):
    # the penalty must still be the fp32 one
    torch.manual_seed(0)
    # smooth, without output bias: then grad_x f depends on every parameter, so each gets a gradient from the penalty
    critic = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1, bias=False))
    params = list(critic.parameters())
    x_real, x_fake = torch.randn(16, 4), torch.randn(16, 4).bfloat16()  # the generator's output is bf16 under autocast

    def penalty(x_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gradient_penalty(lambda x: critic(x).flatten(), x_real, x_fake, generator=torch.Generator().manual_seed(3))

    gp32, norms32 = penalty(x_fake.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp, norms = penalty(x_fake)
    grads32, grads = torch.autograd.grad(gp32, params), torch.autograd.grad(gp, params)
    assert gp.dtype == norms.dtype == torch.float32
    torch.testing.assert_close(gp, gp32)  # float32 tolerances; bf16 would be off by about 1e-2
    torch.testing.assert_close(norms, norms32)
    for g, g32 in zip(grads, grads32):
        assert g.dtype == torch.float32 and g.abs().sum() > 0  # the double backward reaches every critic weight
        torch.testing.assert_close(g, g32)


def test_gradient_penalty_trains_the_critic():
    critic = nn.Linear(3, 1)
    gp, _ = gradient_penalty(lambda x: critic(x).flatten(), torch.randn(4, 3), torch.randn(4, 3))
    gp.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0  # create_graph keeps the penalty differentiable


class LinearCritic(AdversarialModel):
    """G(z) = z + 1 (no parameters worth training), D(x) = w.x: every loss is a hand computation."""

    def __init__(self, w: torch.Tensor) -> None:
        disc = nn.Linear(2, 1, bias=False)
        disc.weight.data = w.view(1, 2).clone()
        gen = nn.Sequential(nn.Identity())
        super().__init__(gen, disc, z_dim=2)

    def generate(self, z, y=None):
        return z + 1.0


def test_wasserstein_losses_and_estimate():
    model = LinearCritic(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[1.0, 1.0], [3.0, 0.0]])  # f = 3, 3
    torch.manual_seed(0)
    out = Wasserstein().step("D", model, Batch(x))
    torch.manual_seed(0)
    fake = model.noise(2, device=x.device) + 1.0
    f_fake = (fake @ torch.tensor([1.0, 2.0])).mean()
    assert out.logs["wasserstein"].item() == pytest.approx(3.0 - f_fake.item())
    assert out.loss.item() == pytest.approx(f_fake.item() - 3.0)
    torch.manual_seed(0)
    g = Wasserstein().step("G", model, Batch(x))
    assert g.loss.item() == pytest.approx(-f_fake.item())


def test_wasserstein_gp_adds_lambda_times_the_penalty():
    model = LinearCritic(torch.tensor([3.0, 4.0]))  # ||w|| = 5: penalty 16 whatever the interpolates
    x = torch.randn(8, 2)
    torch.manual_seed(1)
    plain = Wasserstein().step("D", model, Batch(x)).loss
    torch.manual_seed(1)
    out = WassersteinGP(gp_weight=10.0).step("D", model, Batch(x))
    assert out.logs["gradient_penalty"].item() == pytest.approx(16.0)
    assert out.logs["critic_grad_norm"].item() == pytest.approx(5.0)
    assert out.loss.item() == pytest.approx(plain.item() + 160.0, rel=1e-6)


def test_hinge_losses():
    h = Hinge()
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 3.0])
    loss, logs = h.critic_loss(real, fake)
    assert loss.item() == pytest.approx((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 4.0) / 3)
    assert torch.equal(h.generator_loss(fake), -fake)


def test_clipping_keeps_every_critic_weight_in_bounds_after_every_critic_step(train_run, monkeypatch):
    from gentrain.families.gan import wasserstein

    seen = []
    original = wasserstein.clip_weights_

    def spy(weights, c):
        original(weights, c)
        seen.append(max(w.abs().max().item() for w in weights))

    monkeypatch.setattr(wasserstein, "clip_weights_", spy)
    run_dir, _ = train_run(tiny_overrides("gan_mlp", "ring8", "wasserstein", steps=3) + ["objective.clip=0.05"])
    assert len(seen) == 3 * 5  # n_critic = 5 critic steps per generator step
    c = torch.tensor(0.05).item()  # 0.05 as float32 rounds up: that value is the bound
    assert max(seen) <= c
    weights = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert max(v.abs().max().item() for k, v in weights.items() if k.startswith("discriminator.")) <= c


def test_clip_weights_in_place():
    layer = nn.Linear(4, 4)
    nn.init.normal_(layer.weight, std=1.0)
    clip_weights_(list(layer.parameters()), 0.01)
    assert layer.weight.abs().max() <= 0.01 and layer.bias.abs().max() <= 0.01


@pytest.mark.parametrize(
    "objective,kwargs,fragment",
    [(Wasserstein, {"clip": 0.0}, "objective.clip"), (Wasserstein, {"clip": -1}, "objective.clip"), (WassersteinGP, {"gp_weight": -1.0}, "objective.gp_weight"),
     (WassersteinGP, {"d_steps": 0}, "objective.d_steps"), (Hinge, {"d_steps": 0}, "objective.d_steps"), (Hinge, {"aux_weight": -1}, "aux_weight")],
)
def test_bad_values_are_refused(objective, kwargs, fragment):
    with pytest.raises(GentrainError, match=fragment.replace(".", r"\.")) as e:
        objective(**kwargs)
    assert "\n" not in str(e.value)


def test_presets_pick_architecture_objective_and_optimizer():
    cfg = make_config(["model=wgan_gp"])
    assert cfg.objective._target_.endswith("WassersteinGP") and cfg.objective.d_steps == 5 and cfg.objective.gp_weight == 10
    assert cfg.model.d_norm == "layer" and cfg.model.optimizer.D.lr == 1e-4 and list(cfg.model.optimizer.D.betas) == [0.0, 0.9]
    cfg = make_config(["model=wgan"])
    assert cfg.objective._target_.endswith(".Wasserstein") and cfg.objective.clip == 0.01 and cfg.objective.d_steps == 5
    for phase in ("G", "D"):  # exactly RMSprop(lr=5e-5): nothing of dcgan's Adam (betas) is inherited
        assert dict(cfg.model.optimizer[phase]) == {"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 5e-5}
    # the architecture keys are dcgan's
    dcgan = make_config(["model=dcgan"]).model
    assert {k: v for k, v in cfg.model.items() if k != "optimizer"} == {k: v for k, v in dcgan.items() if k != "optimizer"}
    # every part can still be overridden
    cfg = make_config(["model=wgan_gp", "objective=hinge", "model.optimizer.D.lr=3e-4"])
    assert cfg.objective._target_.endswith("Hinge") and cfg.model.optimizer.D.lr == 3e-4


def test_wgan_gp_critic_has_no_batch_norm():
    model = DCGAN(shape=(1, 28, 28), d_norm="layer")
    assert not [m for m in model.discriminator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m for m in model.discriminator.modules() if isinstance(m, nn.GroupNorm)]
    assert not [m for m in DCGAN(shape=(1, 28, 28), d_norm="none").discriminator.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    with pytest.raises(GentrainError, match="model.d_norm"):
        DCGAN(shape=(1, 28, 28), d_norm="instance")


def test_spectral_norm_option():
    model = DCGAN(shape=(1, 8, 8), spectral_norm=True)
    convs = [m for m in model.discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    mlp = GanMLP(shape=(2,), spectral_norm=True)
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") for m in mlp.discriminator.modules() if isinstance(m, nn.Linear))


ADVERSARIAL = ["minimax", "non_saturating", "hinge", "wasserstein", "wasserstein_gp"]


@pytest.mark.parametrize("objective", ADVERSARIAL)
@pytest.mark.parametrize("model,dataset", [("gan_mlp", "ring8"), ("dcgan", "digits")])
def test_every_adversarial_objective_trains(train_run, model, dataset, objective):
    critic_norm = ["model.d_norm=layer"] if (model, objective) == ("dcgan", "wasserstein_gp") else []  # no batch norm under the penalty
    run_dir, report = train_run(tiny_overrides(model, dataset, objective, steps=2) + ["objective.d_steps=2", *critic_norm])
    assert report["run"]["steps"] == 2 and all(v == v for v in report["final"].values())  # no NaN
    critic = objective in ("hinge", "wasserstein", "wasserstein_gp")  # raw critic outputs, not sigmoids
    for key in ("train/D/critic_real", "train/D/critic_fake", "train/G/critic_fake"):
        assert (key in report["final"]) == critic, key
    for key in ("train/D/D_real", "train/D/D_fake", "train/G/D_fake"):
        assert (key in report["final"]) != critic, key
    if objective.startswith("wasserstein"):
        assert "train/D/wasserstein" in report["final"] and "train/D/grad_norm" in report["final"]
    if objective == "wasserstein_gp":
        assert "train/D/gradient_penalty" in report["final"] and "train/D/critic_grad_norm" in report["final"]


def test_wgan_gp_preset_trains_with_spectral_norm_on_images(train_run):
    overrides = [o for o in tiny_overrides("dcgan", "digits", steps=2) if not o.startswith(("model=", "objective="))]
    run_dir, report = train_run(["model=wgan_gp", *overrides, "model.spectral_norm=true", "objective.d_steps=1"])
    assert report["run"]["model"] == "wgan_gp" and report["run"]["objective"] == "wasserstein_gp"


def test_wgan_preset_trains_with_rmsprop(train_run):
    # model=wgan used to stop at once: RMSprop got dcgan's Adam betas from the config merge
    overrides = [o for o in tiny_overrides("dcgan", "digits", steps=2) if not o.startswith(("model=", "objective="))]
    overrides = ["model=wgan", *overrides, "objective.d_steps=1"]
    cfg = make_config(overrides)
    model = build_model(cfg)
    optimizers = build_optimizers(cfg, model, build_objective(cfg, model))
    for opt in optimizers.values():
        assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 5e-5 and "betas" not in opt.defaults
    run_dir, report = train_run(overrides)
    assert report["run"]["model"] == "wgan" and report["run"]["objective"] == "wasserstein" and report["run"]["steps"] == 2
    for state in load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizers"].values():
        (group,) = state["param_groups"]
        assert group["lr"] == 5e-5 and "alpha" in group and "betas" not in group  # RMSprop's state


@pytest.mark.parametrize("model", ["dcgan", "cgan", "acgan"])
def test_wasserstein_gp_refuses_a_batch_norm_critic_at_start_up(train_run, model):
    with pytest.raises(GentrainError, match="model.d_norm=layer") as e:
        train_run(tiny_overrides(model, "digits", "wasserstein_gp", steps=1))
    message = str(e.value)
    assert "\n" not in message and "model=wgan_gp" in message and f"model={model}" in message and "objective=wasserstein_gp" in message


@pytest.mark.parametrize("model,dataset,extra", [
    ("dcgan", "digits", ["model.d_norm=layer"]), ("dcgan", "digits", ["model.d_norm=none"]),
    ("cgan", "digits", ["model.d_norm=layer"]), ("acgan", "digits", ["model.d_norm=none"]),
    ("gan_mlp", "digits", []), ("dcgan", "ring8", []),  # MLP critics, no batch norm (dcgan on 2-D points uses the MLP networks)
])
def test_wasserstein_gp_accepts_critics_without_batch_norm(model, dataset, extra):
    cfg = make_config(tiny_overrides(model, dataset, "wasserstein_gp", extra=extra))
    assert isinstance(build_objective(cfg, build_model(cfg)), WassersteinGP)
