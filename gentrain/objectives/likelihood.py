"""Likelihood objectives: one "main" phase minimising the negative log-likelihood (or the negative ELBO).

The loss is in bits per dimension, so learning rates carry across datasets of different sizes;
logs hold nats per example as well. On images the likelihood is of the data's own levels
(``model.data_levels`` from ``dataset.levels``), so bits/dim compare with ``log2 K`` (4.09 for
the 17-level digits, 8 for 8-bit images), not with 8 everywhere.
"""

from __future__ import annotations

from torch import Tensor

from gentrain.models.likelihood import LikelihoodModel, bits_per_dim
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput, mean_scalar


class ExactNLL(Objective):
    """``-log p(x)``: exact for autoregressive models, dequantized over the data's levels for flows on images."""

    family = LikelihoodModel
    phases = (Phase("main"),)

    def log_p(self, model: LikelihoodModel, batch: Batch) -> Tensor:
        """The log-probability [B] (nats) the step maximises: ``log_prob(x)``; a family's objective may use the labels too."""
        return model.log_prob(batch.x)

    def step(self, phase: str, model: LikelihoodModel, batch: Batch) -> StepOutput:
        log_p = self.log_p(model, batch)  # [B] nats
        bpd = bits_per_dim(log_p, batch.x[0].numel())
        loss = bpd.mean()
        return StepOutput(loss, {"loss": loss.detach(), "nll": mean_scalar(-log_p), "bits_per_dim": mean_scalar(bpd)})

