"""Wasserstein GANs: the critic estimates the Wasserstein-1 distance, ``E[f(x)] - E[f(G(z))]``.

WGAN (Arjovsky et al. 2017) keeps f Lipschitz by clipping the critic's weights to [-c, c] after
every critic step: the tensors the model names in
:meth:`~gentrain.models.base.AdversarialModel.critic_weights` (every discriminator parameter, but
not a conditional model's label embedding or AC-GAN's class head). WGAN-GP (Gulrajani et al. 2017)
instead penalises ``(||grad f(x_hat)||_2 - 1)^2`` on random interpolates ``x_hat`` between real and
fake samples, computed in float32 even under bf16 autocast; the penalty is per sample, so a
batch-norm critic is refused. Both log the raw critic outputs (``critic_real``, ``critic_fake``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gentrain.errors import GentrainError
from gentrain.families.gan.base import AdversarialModel
from gentrain.families.gan.objectives import AdversarialObjective
from gentrain.objectives.base import mean_scalar


class Wasserstein(AdversarialObjective):
    """WGAN: critic loss ``f(G(z)) - f(x)``, generator loss ``-f(G(z))``; after every critic step the
    model's :meth:`~gentrain.models.base.AdversarialModel.critic_weights` are clipped to [-clip, clip].

    Logs ``wasserstein``, the estimate ``E f(x) - E f(G(z))``, besides the raw critic outputs.
    """

    def __init__(self, d_steps: int = 5, clip: float = 0.01, aux_weight: float = 1.0, pack: int = 1, ortho_reg: float = 0.0) -> None:
        super().__init__(d_steps, aux_weight, pack, ortho_reg)
        if not float(clip) > 0:
            raise GentrainError(f"objective.clip must be > 0, got {clip!r}; e.g. objective.clip=0.01 (the WGAN paper's c)")
        self.clip = float(clip)

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        estimate = logits_real.mean() - logits_fake.mean()  # the critic's estimate of W(p_data, p_G)
        return -estimate, {"wasserstein": estimate.detach()}

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -logits_fake

    def after_update(self, phase: str, model: AdversarialModel) -> None:
        if phase == "D":
            clip_weights_(model.critic_weights(), self.clip)


@torch.no_grad()
def clip_weights_(weights: Sequence[Tensor], c: float) -> None:
    """Clip ``weights`` (parameters or views of them) to [-c, c] in place, one fused call over all tensors."""
    weights = list(weights)
    torch._foreach_clamp_min_(weights, -c)
    torch._foreach_clamp_max_(weights, c)


def gradient_penalty(critic: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``mean (||grad critic(x_hat)||_2 - 1)^2`` on random interpolates. Gulrajani et al. 2017.

    ``x_hat = eps x_real + (1 - eps) x_fake``, eps ~ U[0, 1] per sample. Returns (penalty [], gradient norms [B]).
    The graph is kept (create_graph) so the penalty trains the critic.

    Autocast is disabled here and ``x_hat`` is float32 (or the inputs' wider dtype): the critic's
    forward on ``x_hat``, the input gradient, its norms and the double backward through them run in
    full precision even when the step runs under bf16 autocast, whose 8-bit mantissa would put
    errors of about 1% into ``||grad f||`` and so into a penalty that measures its distance to 1.
    """
    dtype = torch.promote_types(torch.promote_types(x_real.dtype, x_fake.dtype), torch.float32)
    with torch.autocast(device_type=x_real.device.type, enabled=False):
        eps = torch.rand(x_real.shape[0], *([1] * (x_real.dim() - 1)), device=x_real.device, dtype=dtype, generator=generator)
        x_hat = (eps * x_real.to(dtype) + (1 - eps) * x_fake.to(dtype)).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return ((norms - 1.0) ** 2).mean(), norms


class WassersteinGP(Wasserstein):
    """WGAN-GP: the Wasserstein losses plus ``gp_weight * (||grad f(x_hat)||_2 - 1)^2`` (in float32); no clipping.

    Logs ``gradient_penalty`` and ``critic_grad_norm`` (the mean ``||grad f(x_hat)||_2``) besides the
    Wasserstein logs. A critic with batch norm is refused at start-up (:meth:`check_model`).
    """

    eager_phases = frozenset({"D"})
    eager_reason = "the gradient penalty differentiates through the critic twice, which torch.compile's autograd does not support"

    def __init__(self, d_steps: int = 5, gp_weight: float = 10.0, aux_weight: float = 1.0, pack: int = 1, ortho_reg: float = 0.0) -> None:
        AdversarialObjective.__init__(self, d_steps, aux_weight, pack, ortho_reg)
        if not float(gp_weight) >= 0:
            raise GentrainError(f"objective.gp_weight must be >= 0, got {gp_weight!r}; e.g. objective.gp_weight=10 (the WGAN-GP paper's lambda)")
        self.gp_weight = float(gp_weight)

    def penalty(self, model: AdversarialModel, x_real: Tensor, x_fake: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        gp, norms = gradient_penalty(lambda x: model.discriminate(x, y)[0], x_real, x_fake)
        return self.gp_weight * gp, {"gradient_penalty": gp.detach(), "critic_grad_norm": mean_scalar(norms)}

    def after_update(self, phase: str, model: nn.Module) -> None:
        """No clipping: the penalty keeps the critic 1-Lipschitz."""

    def check_model(self, model: nn.Module, objective_name: str, model_name: str, fitting: list[str]) -> None:
        """Also refuse a critic with batch norm: the penalty constrains each sample's gradient
        ``grad f(x_hat_i)``, which batch norm makes depend on the rest of the batch (Gulrajani et al. 2017, section 4)."""
        super().check_model(model, objective_name, model_name, fitting)
        if any(isinstance(m, _BatchNorm) for m in model.discriminator.modules()):
            raise GentrainError(
                f"objective={objective_name} penalises each sample's critic gradient, which the batch norm in model={model_name}'s critic "
                "couples across the batch; add model.d_norm=layer (or none), or use model=wgan_gp (DCGAN with a layer-norm critic)"
            )
