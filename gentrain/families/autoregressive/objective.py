"""objective=ar_nll: maximum likelihood for autoregressive models."""

from __future__ import annotations

from gentrain.families.autoregressive.models import AutoregressiveModel
from gentrain.models.likelihood import bits_per_dim
from gentrain.objectives.base import Batch, StepOutput, mean_scalar
from gentrain.objectives.likelihood import ExactNLL


class AutoregressiveNLL(ExactNLL):
    """objective=ar_nll: maximum likelihood for autoregressive models (product of conditionals); a class-conditional
    model (WaveNet with ``model.num_classes``) is trained on ``log p(x | y)`` of the batch's labels."""

    family = AutoregressiveModel

    def step(self, phase: str, model: AutoregressiveModel, batch: Batch) -> StepOutput:  # type: ignore[override]
        log_p = model.training_log_prob(batch.x, batch.y)  # [B] nats
        bpd = bits_per_dim(log_p, batch.x[0].numel())
        loss = bpd.mean()
        return StepOutput(loss, {"loss": loss.detach(), "nll": mean_scalar(-log_p), "bits_per_dim": mean_scalar(bpd)})
