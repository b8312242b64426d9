"""objective=flow_nll: maximum likelihood for normalizing flows."""

from __future__ import annotations

from gentrain.families.flows.models import FlowModel
from gentrain.objectives.likelihood import ExactNLL



class FlowNLL(ExactNLL):
    """objective=flow_nll: maximum likelihood for normalizing flows (change of variables)."""

    family = FlowModel
