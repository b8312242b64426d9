"""Adversarial objectives: the losses against their definitions, and the phases the engine runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gentrain.errors import GentrainError
from gentrain.families.gan.models import GanMLP
from gentrain.families.gan.objectives import AdversarialObjective, Hinge, Minimax, NonSaturating
from gentrain.objectives.base import Batch, Phase
from gentrain.families.gan.wasserstein import Wasserstein, WassersteinGP


def tiny_gan(seed: int = 0) -> GanMLP:
    torch.manual_seed(seed)
    return GanMLP(shape=(2,), z_dim=4, g_widths=(8, 8), d_widths=(8,))


def test_minimax_and_non_saturating_give_the_same_discriminator_loss():
    model, batch = tiny_gan(), Batch(torch.randn(32, 2))
    losses = []
    for objective in (Minimax(), NonSaturating()):
        torch.manual_seed(123)  # same z for both
        losses.append(objective.step("D", model, batch).loss)
    assert torch.equal(losses[0], losses[1])


def test_discriminator_loss_is_binary_cross_entropy():
    torch.manual_seed(0)
    logits_real, logits_fake = torch.randn(64) * 3, torch.randn(64) * 3
    for s in (0.0, 0.1, 0.3):
        loss_real, loss_fake = NonSaturating(label_smoothing=s).discriminator_loss(logits_real, logits_fake)
        expected_real = F.binary_cross_entropy_with_logits(logits_real, torch.full_like(logits_real, 1 - s), reduction="none")
        expected_fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake), reduction="none")
        torch.testing.assert_close(loss_real, expected_real)
        torch.testing.assert_close(loss_fake, expected_fake)


def test_generator_losses_match_their_definitions():
    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)
    d = torch.sigmoid(logits)
    torch.testing.assert_close(Minimax().generator_loss(logits), torch.log1p(-d))  # log(1 - D(G(z)))
    torch.testing.assert_close(NonSaturating().generator_loss(logits), -torch.log(d))  # -log D(G(z))


@pytest.mark.parametrize("objective", [Minimax(), NonSaturating()])
def test_losses_stay_finite_where_the_sigmoid_saturates(objective):
    logits = torch.tensor([-200.0, -50.0, 0.0, 50.0, 200.0], requires_grad=True)
    loss = objective.generator_loss(logits).sum() + sum(t.sum() for t in objective.discriminator_loss(logits, logits))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_non_saturating_keeps_a_gradient_where_minimax_saturates():
    # early in training D rejects fakes confidently: logit -10, D(G(z)) ~ 4.5e-5
    logit = torch.tensor([-10.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(Minimax().generator_loss(logit).sum(), logit)
    (g_ns,) = torch.autograd.grad(NonSaturating().generator_loss(logit).sum(), logit)
    assert abs(g_mm.item()) < 1e-4 < 0.99 < abs(g_ns.item())


def test_phases_follow_d_steps():
    # the generator's phase draws its own noise: the engine gathers only the labels for it
    assert NonSaturating(d_steps=5).phases == (Phase("D", 5), Phase("G", 1, batch="labels"))
    with pytest.raises(GentrainError, match="must be 'data' or 'labels'"):
        Phase("G", batch="images")


@pytest.mark.parametrize("kwargs", [{"d_steps": 0}, {"d_steps": 1.5}, {"label_smoothing": 1.0}, {"label_smoothing": -0.1}])
def test_bad_settings_are_refused_with_one_line(kwargs):
    with pytest.raises(GentrainError) as e:
        NonSaturating(**kwargs)
    assert "\n" not in str(e.value) and "objective." in str(e.value)


def test_discriminator_phase_does_not_reach_the_generator():
    model = tiny_gan()
    out = NonSaturating().step("D", model, Batch(torch.randn(16, 2)))
    out.loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert any(p.grad is not None for p in model.discriminator.parameters())


def test_logs_are_detached_scalars():
    model = tiny_gan()
    for phase in ("D", "G"):
        out = NonSaturating().step(phase, model, Batch(torch.randn(16, 2)))
        assert out.loss.requires_grad and out.loss.dim() == 0
        assert all(v.dim() == 0 and not v.requires_grad for v in out.logs.values())
    d_logs = NonSaturating().step("D", model, Batch(torch.randn(16, 2))).logs
    assert 0 < d_logs["D_real"] < 1 and 0 < d_logs["D_fake"] < 1


@pytest.mark.parametrize("objective", [Minimax(), NonSaturating(), Hinge(), Wasserstein(), WassersteinGP()], ids=lambda o: type(o).__name__)
def test_d_outputs_are_logged_as_probabilities_only_where_they_are_ones(objective: AdversarialObjective):
    # GAN losses: sigmoid(D(x)) is the probability that x is real; hinge and Wasserstein critics output unbounded scores
    model, x = tiny_gan(), torch.randn(16, 2)
    with torch.no_grad():
        f_real = model.discriminate(x)[0]
    torch.manual_seed(5)
    d_logs = objective.step("D", model, Batch(x)).logs
    torch.manual_seed(5)
    with torch.no_grad():
        f_fake = model.discriminate(model.generate(model.noise(16)))[0]
    torch.manual_seed(5)
    g_logs = objective.step("G", model, Batch(x)).logs
    if isinstance(objective, (Minimax, NonSaturating)):
        expected_d, expected_g = {"D_real": f_real.sigmoid().mean(), "D_fake": f_fake.sigmoid().mean()}, {"D_fake": f_fake.sigmoid().mean()}
    else:
        expected_d, expected_g = {"critic_real": f_real.mean(), "critic_fake": f_fake.mean()}, {"critic_fake": f_fake.mean()}
    others = {"D_real", "D_fake", "critic_real", "critic_fake"}
    assert others & set(d_logs) == set(expected_d) and others & set(g_logs) == set(expected_g)
    for logs, expected in ((d_logs, expected_d), (g_logs, expected_g)):
        for key, value in expected.items():
            assert logs[key].dim() == 0 and not logs[key].requires_grad  # a device scalar: no host sync
            torch.testing.assert_close(logs[key], value)
