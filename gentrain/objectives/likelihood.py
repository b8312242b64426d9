"""Likelihood objectives: one "main" phase minimising the negative log-likelihood (or the negative ELBO).

The loss is in bits per dimension, so learning rates carry across datasets of different sizes;
logs hold nats per example as well. On images the likelihood is of the data's own levels
(``model.data_levels`` from ``dataset.levels``), so bits/dim compare with ``log2 K`` (4.09 for
the 17-level digits, 8 for 8-bit images), not with 8 everywhere.
"""

from __future__ import annotations

from gentrain.errors import GentrainError
from gentrain.models.likelihood import AutoregressiveModel, FlowModel, LikelihoodModel, bits_per_dim
from gentrain.models.vae import LatentVariableModel
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput, mean_scalar


class ExactNLL(Objective):
    """``-log p(x)``: exact for autoregressive models, dequantized over the data's levels for flows on images."""

    family = LikelihoodModel
    phases = (Phase("main"),)

    def step(self, phase: str, model: LikelihoodModel, batch: Batch) -> StepOutput:
        log_p = model.log_prob(batch.x)  # [B] nats
        bpd = bits_per_dim(log_p, batch.x[0].numel())
        loss = bpd.mean()
        return StepOutput(loss, {"loss": loss.detach(), "nll": mean_scalar(-log_p), "bits_per_dim": mean_scalar(bpd)})


class FlowNLL(ExactNLL):
    """objective=flow_nll: maximum likelihood for normalizing flows (change of variables)."""

    family = FlowModel


class AutoregressiveNLL(ExactNLL):
    """objective=ar_nll: maximum likelihood for autoregressive models (product of conditionals)."""

    family = AutoregressiveModel


class ELBO(Objective):
    """objective=elbo: maximise ``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))`` (Kingma & Welling 2014; beta: Higgins et al. 2017).

    One reparameterised sample per example. The loss is the negative ELBO in bits/dim; logs: elbo
    (nats), reconstruction term, KL, bits/dim of the ELBO.
    """

    family = LatentVariableModel
    phases = (Phase("main"),)

    def __init__(self, beta: float = 1.0) -> None:
        if not float(beta) >= 0:
            raise GentrainError(f"objective.beta must be >= 0, got {beta!r}; e.g. objective.beta=1.0 (the ELBO)")
        self.beta = float(beta)

    def step(self, phase: str, model: LatentVariableModel, batch: Batch) -> StepOutput:
        recon, kl = model.elbo_terms(batch.x)  # [B], [B]
        dims = batch.x[0].numel()
        elbo = recon - kl
        loss = bits_per_dim(recon - self.beta * kl, dims).mean()
        logs = {"loss": loss.detach(), "elbo": mean_scalar(elbo), "recon": mean_scalar(recon), "kl": mean_scalar(kl), "bits_per_dim": mean_scalar(bits_per_dim(elbo, dims))}
        return StepOutput(loss, logs)
