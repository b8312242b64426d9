"""objective=ar_nll: maximum likelihood for autoregressive models."""

from __future__ import annotations

from torch import Tensor

from gentrain.families.autoregressive.models import AutoregressiveModel
from gentrain.objectives.base import Batch
from gentrain.objectives.likelihood import ExactNLL


class AutoregressiveNLL(ExactNLL):
    """objective=ar_nll: maximum likelihood for autoregressive models (product of conditionals); a class-conditional
    model (WaveNet with ``model.num_classes``) is trained on ``log p(x | y)`` of the batch's labels."""

    family = AutoregressiveModel

    def log_p(self, model: AutoregressiveModel, batch: Batch) -> Tensor:  # type: ignore[override]
        return model.training_log_prob(batch.x, batch.y)
