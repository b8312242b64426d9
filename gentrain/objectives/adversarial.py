"""Adversarial objectives (Goodfellow et al. 2014), computed from logits, never as log of a sigmoid.

With ``l = D(x)`` a logit and ``sigmoid(l)`` the probability of "real":
``log sigmoid(l) = -softplus(-l)`` and ``log(1 - sigmoid(l)) = -softplus(l)``, both finite for any ``l``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import GentrainError
from gentrain.models.base import AdversarialModel
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput, check_positive_int, mean_scalar


class GANObjective(Objective):
    """Discriminator ``d_steps`` times, then the generator once. Subclasses define the generator loss.

    The discriminator minimises ``-[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(G(z)))`` with
    ``t = 1 - label_smoothing`` (one-sided label smoothing, Salimans et al. 2016; 0 disables it).
    """

    family = AdversarialModel

    def __init__(self, d_steps: int = 1, label_smoothing: float = 0.0) -> None:
        check_positive_int(d_steps, "objective.d_steps")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise GentrainError(
                f"objective.label_smoothing must be in [0, 1), got {label_smoothing!r}; "
                "e.g. objective.label_smoothing=0.1 (0 disables it)"
            )
        self.d_steps = d_steps
        self.label_smoothing = float(label_smoothing)
        self.phases = (Phase("D", d_steps), Phase("G", 1))

    def step(self, phase: str, model: AdversarialModel, batch: Batch) -> StepOutput:
        return self.discriminator_step(model, batch) if phase == "D" else self.generator_step(model, batch)

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample losses on real [B] and fake [B'] logits."""
        target = 1.0 - self.label_smoothing
        # BCE with logits against target t: t * softplus(-l) + (1 - t) * softplus(l)
        loss_real = target * F.softplus(-logits_real) + (1.0 - target) * F.softplus(logits_real)
        loss_fake = F.softplus(logits_fake)
        return loss_real, loss_fake

    def discriminator_step(self, model: AdversarialModel, batch: Batch) -> StepOutput:
        z = model.noise(batch.x.shape[0], device=batch.x.device)
        # detach: the discriminator's phase must not push gradients into the generator
        x_fake = model.generator(z).detach()
        logits_real = model.discriminator(batch.x).flatten()
        logits_fake = model.discriminator(x_fake).flatten()
        loss_real, loss_fake = self.discriminator_loss(logits_real, logits_fake)
        loss = loss_real.mean() + loss_fake.mean()
        return StepOutput(
            loss,
            {
                "loss": loss.detach(),
                "loss_real": mean_scalar(loss_real),
                "loss_fake": mean_scalar(loss_fake),
                "D_real": mean_scalar(logits_real.sigmoid()),  # mean D(x)
                "D_fake": mean_scalar(logits_fake.sigmoid()),  # mean D(G(z))
            },
        )

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        """Per-sample generator loss [B] from the discriminator's logits on fakes."""
        raise NotImplementedError

    def generator_step(self, model: AdversarialModel, batch: Batch) -> StepOutput:
        z = model.noise(batch.x.shape[0], device=batch.x.device)
        logits_fake = model.discriminator(model.generator(z)).flatten()
        loss = self.generator_loss(logits_fake).mean()
        return StepOutput(loss, {"loss": loss.detach(), "D_fake": mean_scalar(logits_fake.sigmoid())})


class Minimax(GANObjective):
    """The original game: the generator minimises ``log(1 - D(G(z))) = -softplus(l)``.

    Its gradient vanishes where the discriminator rejects fakes confidently (early training).
    """

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -F.softplus(logits_fake)


class NonSaturating(GANObjective):
    """The non-saturating heuristic: the generator minimises ``-log D(G(z)) = softplus(-l)``."""

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return F.softplus(-logits_fake)
