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

import torch
from torch import Tensor, nn

from gentrain.errors import GentrainError


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a step.

    ``name`` keys the optimizer and the model's parameter group ("D", "G", "main");
    ``repeats`` is how often the phase runs per step (``n_critic``, ``k`` discriminator steps);
    ``batch`` is what the phase reads of its batch: ``"data"`` (images and labels) or ``"labels"``
    (the labels and the batch size only, e.g. a generator's phase, which draws its own noise; the
    engine then gathers no images for it). Either way the phase takes its turn in the batch order.
    """

    name: str
    repeats: int = 1
    batch: str = "data"

    def __post_init__(self) -> None:
        if self.batch not in ("data", "labels"):
            raise GentrainError(f"Phase({self.name!r}).batch must be 'data' or 'labels', got {self.batch!r}")


@dataclass
class Batch:
    """A batch on the training device: ``x`` in model space ([B, C, H, W] in [-1, 1] or [B, D]); ``y`` labels [B] or None.

    For a phase that reads only labels (``Phase.batch == "labels"``) ``x`` is None; ``size`` and
    ``device`` hold for every batch.
    """

    x: Tensor | None
    y: Tensor | None = None
    n: int = 0  # the batch size when neither x nor y is given
    on: torch.device | None = None  # the device then

    @property
    def size(self) -> int:
        ref = self.x if self.x is not None else self.y
        return int(ref.shape[0]) if ref is not None else self.n

    @property
    def device(self) -> torch.device:
        ref = self.x if self.x is not None else self.y
        return ref.device if ref is not None else (self.on or torch.device("cpu"))


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
    #: Phases ``trainer.compile=true`` leaves eager (e.g. a double backward, which compiled autograd lacks), and why.
    eager_phases: ClassVar[frozenset[str]] = frozenset()
    eager_reason: ClassVar[str] = ""
    #: Why this objective cannot run as one captured step (``trainer.compile=step``); "" where it can: its ``step``
    #: and ``after_update`` are device work only (no ``.item()``, no data-dependent Python branches).
    whole_step_unsupported: ClassVar[str] = ""

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
