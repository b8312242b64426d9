"""objective=elbo: the evidence lower bound of latent-variable models."""

from __future__ import annotations

from gentrain.errors import GentrainError
from gentrain.families.vae.model import LatentVariableModel
from gentrain.models.likelihood import bits_per_dim
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput, mean_scalar



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
