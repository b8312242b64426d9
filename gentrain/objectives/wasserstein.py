"""Wasserstein GANs: the critic estimates the Wasserstein-1 distance, ``E[f(x)] - E[f(G(z))]``.

WGAN (Arjovsky et al. 2017) keeps f Lipschitz by clipping the critic's weights to [-c, c] after
every critic step; WGAN-GP (Gulrajani et al. 2017) instead penalises ``(||grad f(x_hat)||_2 - 1)^2``
on random interpolates ``x_hat`` between real and fake samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gentrain.errors import GentrainError
from gentrain.models.base import AdversarialModel
from gentrain.objectives.adversarial import AdversarialObjective
from gentrain.objectives.base import mean_scalar


class Wasserstein(AdversarialObjective):
    """WGAN: critic loss ``f(G(z)) - f(x)``, generator loss ``-f(G(z))``, critic weights clipped to [-clip, clip]."""

    def __init__(self, d_steps: int = 5, clip: float = 0.01, aux_weight: float = 1.0) -> None:
        super().__init__(d_steps, aux_weight)
        if not float(clip) > 0:
            raise GentrainError(f"objective.clip must be > 0, got {clip!r}; e.g. objective.clip=0.01 (the WGAN paper's c)")
        self.clip = float(clip)

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        estimate = logits_real.mean() - logits_fake.mean()  # the critic's estimate of W(p_data, p_G)
        return -estimate, {"wasserstein": estimate.detach(), "critic_real": mean_scalar(logits_real), "critic_fake": mean_scalar(logits_fake)}

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -logits_fake

    def after_update(self, phase: str, model: nn.Module) -> None:
        if phase == "D":
            clip_weights_(model.discriminator, self.clip)


@torch.no_grad()
def clip_weights_(module: nn.Module, c: float) -> None:
    """Clip every parameter of ``module`` to [-c, c] in place (one fused call over all tensors)."""
    params = [p for p in module.parameters()]
    torch._foreach_clamp_min_(params, -c)
    torch._foreach_clamp_max_(params, c)


def gradient_penalty(critic: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``mean (||grad critic(x_hat)||_2 - 1)^2`` on random interpolates. Gulrajani et al. 2017.

    ``x_hat = eps x_real + (1 - eps) x_fake``, eps ~ U[0, 1] per sample. Returns (penalty [], gradient norms [B]).
    The graph is kept (create_graph) so the penalty trains the critic.
    """
    eps = torch.rand(x_real.shape[0], *([1] * (x_real.dim() - 1)), device=x_real.device, dtype=x_real.dtype, generator=generator)
    x_hat = (eps * x_real + (1 - eps) * x_fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean(), norms


class WassersteinGP(Wasserstein):
    """WGAN-GP: the Wasserstein losses plus ``gp_weight * (||grad f(x_hat)||_2 - 1)^2``; no clipping."""

    def __init__(self, d_steps: int = 5, gp_weight: float = 10.0, aux_weight: float = 1.0) -> None:
        AdversarialObjective.__init__(self, d_steps, aux_weight)
        if not float(gp_weight) >= 0:
            raise GentrainError(f"objective.gp_weight must be >= 0, got {gp_weight!r}; e.g. objective.gp_weight=10 (the WGAN-GP paper's lambda)")
        self.gp_weight = float(gp_weight)

    def penalty(self, model: AdversarialModel, x_real: Tensor, x_fake: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        gp, norms = gradient_penalty(lambda x: model.discriminate(x, y)[0], x_real, x_fake)
        return self.gp_weight * gp, {"gradient_penalty": gp.detach(), "critic_grad_norm": mean_scalar(norms)}

    def after_update(self, phase: str, model: nn.Module) -> None:
        """No clipping: the penalty keeps the critic 1-Lipschitz."""
