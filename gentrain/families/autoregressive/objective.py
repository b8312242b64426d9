"""objective=ar_nll: maximum likelihood for autoregressive models."""

from __future__ import annotations

from gentrain.families.autoregressive.models import AutoregressiveModel
from gentrain.objectives.likelihood import ExactNLL



class AutoregressiveNLL(ExactNLL):
    """objective=ar_nll: maximum likelihood for autoregressive models (product of conditionals)."""

    family = AutoregressiveModel
