"""The contract between objectives and the engine.

An objective says which *phases* a training step has (the discriminator ``k`` times, then the
generator once; or a single likelihood phase), computes one loss per phase and returns it with
detached scalars to log. The engine does everything else: backward, optimizer steps, mixed
precision, logging, checkpoints. It never calls ``backward()`` or ``optimizer.step()`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from gentrain.errors import GentrainError


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a step.

    ``name`` keys the optimizer and the model's parameter group ("D", "G", "main");
    ``repeats`` is how often the phase runs per step (``n_critic``, ``k`` discriminator steps).
    """

    name: str
    repeats: int = 1


@dataclass
class Batch:
    """A batch on the training device: ``x`` in model space ([B, C, H, W] in [-1, 1] or [B, D]); ``y`` labels [B] or None."""

    x: Tensor
    y: Tensor | None = None


@dataclass
class StepOutput:
    """``loss``: scalar with grad, for the engine to back-propagate; ``logs``: detached scalars for TensorBoard."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class: subclasses set ``phases`` and ``family`` and implement :meth:`step`."""

    #: The model interface the objective needs (a class models inherit from); checked at start-up.
    family: ClassVar[type[nn.Module]] = nn.Module
    phases: tuple[Phase, ...] = (Phase("main"),)
    #: Phases ``trainer.compile`` leaves eager (e.g. a double backward, which compiled autograd lacks), and why.
    eager_phases: ClassVar[frozenset[str]] = frozenset()
    eager_reason: ClassVar[str] = ""

    def step(self, phase: str, model: nn.Module, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_update(self, phase: str, model: nn.Module) -> None:
        """Hook after the optimizer step of ``phase`` (e.g. weight clipping); nothing by default."""

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a ``trainer.batch_size`` the objective cannot split (e.g. into packs) with one line; any size by default."""

    def check_model(self, model: nn.Module, objective_name: str, model_name: str, fitting: Callable[[], list[str]]) -> None:
        """Refuse an incompatible model at start-up, naming the objectives that do fit it (``fitting()``, read only then)."""
        if not isinstance(model, self.family):
            options = ", ".join(f"objective={n}" for n in fitting()) or "none yet"
            raise GentrainError(
                f"objective={objective_name} needs a {self.family.__name__} and model={model_name} is not one; "
                f"objectives that fit model={model_name}: {options}"
            )


def mean_scalar(t: Tensor) -> Tensor:
    """Detached float32 mean, for logging without a host sync."""
    return t.detach().float().mean()


__all__ = ["Batch", "Objective", "Phase", "StepOutput", "mean_scalar"]
