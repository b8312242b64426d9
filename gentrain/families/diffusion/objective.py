"""objective=ddpm: the denoising loss of diffusion models (Ho et al. 2020, ``L_simple``).

For each example a timestep ``t ~ U{0, .., T-1}`` and noise ``eps ~ N(0, I)``, ``x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps``, and the mean squared error between the network's output and its target:
``eps`` (Ho et al.), ``x0``, or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022).
The process (``timesteps``, ``schedule``, ``prediction``) is the objective's; the model follows it
(``model.timesteps: ${objective.timesteps}`` ...) so sampling a checkpoint uses the process it was trained on.
The variational bound is not the loss; ``eval.metrics=[nll<count>]`` reports it.
"""

from __future__ import annotations

import torch

from gentrain.errors import GentrainError
from gentrain.families.diffusion.model import DiffusionModel, check_process
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput


class Denoising(Objective):
    family = DiffusionModel
    phases = (Phase("main"),)

    def __init__(self, prediction: str = "eps", schedule: str = "linear", timesteps: int = 1000) -> None:
        check_process(prediction, schedule, timesteps)
        self.prediction, self.schedule, self.timesteps = prediction, schedule, timesteps

    def check_model(self, model, objective_name: str, model_name: str, fitting: list[str]) -> None:  # type: ignore[no-untyped-def]
        super().check_model(model, objective_name, model_name, fitting)
        p = model.process
        for key in ("prediction", "schedule", "timesteps"):
            if getattr(p, key) != getattr(self, key):
                raise GentrainError(
                    f"model.{key}={getattr(p, key)} but objective.{key}={getattr(self, key)}; set objective.{key} (model.{key} follows it)"
                )

    def step(self, phase: str, model: DiffusionModel, batch: Batch) -> StepOutput:
        x0 = batch.x
        p = model.process
        t = torch.randint(0, p.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        out = model.net(p.q_sample(x0, t, noise), t, model.training_labels(batch.y))
        loss = (out.float() - p.target(x0, noise, t)).pow(2).mean()
        return StepOutput(loss, {"loss": loss.detach()})
