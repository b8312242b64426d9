"""What a model is, and what it can do, by type.

Every model is a :class:`GenerativeModel`: it maps phase names to parameter groups (the engine builds
one optimizer per group) and samples. What else it can do it declares by the capability types it
inherits, and shared code asks ``isinstance``, never ``hasattr`` or a list of names:

- :class:`Likelihood`: ``log_prob`` and the number evaluation reports (``nll<count>``, ``Loaded.log_prob``),
  with ``likelihood_kind`` saying which bound it is;
- :class:`Conditional`: samples of requested classes, ``num_classes`` of them;
- :class:`Latent`: paths through a latent space (interpolation pictures, ``task=sample interpolate=``);
- :class:`SamplerOptions`: takes the ``sampler`` config group (``sampler=ddim sampler.steps=50``).

An objective names the model type it needs (``Objective.family``); an incompatible pair is refused at
start-up. Lists of models in messages come from ``configs/model/*.yaml`` (:func:`gentrain.build.models_with`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.errors import GentrainError


def interpolate_latents(z0: Tensor, z1: Tensor, steps: int, spherical: bool) -> Tensor:
    """Paths from z0 [R, D] to z1 [R, D] in ``steps`` points: [R, steps, D].

    Linear: ``(1 - t) z0 + t z1``. Spherical (slerp, Shoemake 1985; White 2016 for GAN latents):
    ``sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1`` with ``w`` the angle between z0 and z1, which
    keeps the norm typical of a Gaussian latent instead of cutting through the low-norm interior.
    """
    t = torch.linspace(0, 1, steps, device=z0.device, dtype=z0.dtype).view(1, steps, 1)
    a, b = z0.unsqueeze(1), z1.unsqueeze(1)
    if not spherical:
        return (1 - t) * a + t * b
    cos = (F.normalize(z0, dim=1) * F.normalize(z1, dim=1)).sum(1).clamp(-1 + 1e-7, 1 - 1e-7).view(-1, 1, 1)
    omega = torch.acos(cos)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def check_labels(num_classes: int | None, data: DataSplit, dataset: str, unconditional: str) -> None:
    """Refuse data a conditional model (``num_classes`` set) cannot train on: no labels, or more classes than the model has."""
    if num_classes is None:
        return
    if data.y is None:
        raise GentrainError(f"a conditional model needs class labels and dataset={dataset} has none; use {unconditional}")
    if int(data.y.max()) >= num_classes:
        raise GentrainError(f"dataset={dataset} has {int(data.y.max()) + 1} classes but the model has {num_classes}; set model.num_classes")


class GenerativeModel(nn.Module):
    """Base of every gentrain model."""

    #: Class-conditional models set the number of classes; None: unconditional.
    num_classes: int | None = None

    def param_groups(self) -> dict[str, nn.Module]:
        """Phase name -> the module whose parameters that phase's optimizer updates."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples in data space ([n, C, H, W] in [-1, 1], or [n, D]); ``generator`` fixes the noise."""
        raise NotImplementedError

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Samples and their class labels [n] (None for unconditional models)."""
        return self.sample(n, generator=generator), None

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        """About ``n`` samples for a picture and the images per row (None: square); conditional models give one row per class."""
        return self.sample(n, generator=generator), None

    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """Extra pictures for TensorBoard and samples/: name -> (images [N, C, H, W] in [-1, 1], images per row).

        ``x`` is a fixed batch of real data in model space (for reconstructions, density plots ...). None by default.
        """
        return {}

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Uniform class labels [n] for conditional models, else None."""
        if self.num_classes is None:
            return None
        return torch.randint(0, self.num_classes, (n,), device=self.device, generator=generator)

    def grid_labels(self, n: int) -> tuple[Tensor, int]:
        """The labels of a conditional sample grid of about ``n`` samples, one row per class, and the samples per row."""
        assert self.num_classes is not None
        per_class = max(1, n // self.num_classes)
        return torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class), per_class

    def path_labels(self, rows: int, steps: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Labels of ``rows`` interpolation paths of ``steps`` points: one random class per path (None: unconditional)."""
        y = self.random_labels(rows, generator)
        return None if y is None else y.repeat_interleave(steps)

    def picture_sampler(self) -> str | None:
        """What draws the sample pictures when it is not what evaluation draws with (a cheaper sampler, said in the log and
        the report); None (the default): pictures and evaluation sample alike."""
        return None

    @contextmanager
    def drawing_pictures(self) -> Iterator[None]:
        """Inside: :meth:`sample_grid`, :meth:`interpolate` and :meth:`pictures` draw as :meth:`picture_sampler` says (the
        engine's sample pictures; evaluation never enters it). Nothing changes by default."""
        yield

    def ema_target(self) -> str | None:
        """The attribute name of the part whose weights an exponential moving average tracks (None: no such part)."""
        return None

    def check_data(self, data: DataSplit, dataset: str) -> None:
        """Refuse training data the model cannot use (e.g. a conditional model on unlabelled data); nothing by default."""

    def unfinished(self) -> str | None:
        """Why this model is not yet the model it trains towards (a growing network below its final resolution), in words;
        evaluation reports no numbers while it says so, only this reason. None (the default): it is."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# ---- capabilities: declared by type ----------------------------------------------------------------------------------
class Likelihood(ABC):
    """A model with a log-likelihood (or a bound on it): ``nll<count>`` metrics, ``Loaded.log_prob``, bits/dim.

    ``log_prob(x) -> [B]`` nats of a batch in model space (the training objective's number);
    ``log_likelihood(x, **options) -> [B]`` the number evaluation reports (``log_prob`` for exact models,
    a tighter bound for some: the VAE's IWAE bound takes ``k``); ``likelihood_kind`` says in words which
    it is, with the options it uses (the report's note).
    """

    likelihood_kind: str = "exact"

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor: ...

    def log_likelihood(self, x: Tensor, **options: Any) -> Tensor:
        if options:
            raise GentrainError(f"{type(self).__name__} takes no likelihood options, got {sorted(options)}; leave them out")
        return self.log_prob(x)


class Conditional(ABC):
    """A class-conditional model: samples of requested classes ``0..num_classes-1``."""

    num_classes: int

    @abstractmethod
    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Samples of the classes ``y``, drawing from ``generator`` as ``sample_with_labels`` does (the labels it would draw
        are drawn and dropped), so only the classes differ from an unlabelled draw."""


class Latent(ABC):
    """A model with a latent space to walk: interpolation pictures and ``task=sample interpolate=``."""

    @abstractmethod
    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor | None:
        """Samples along ``rows`` latent paths of ``steps`` points, [rows * steps, ...] row by row; None where this instance
        has no such picture (e.g. a diffusion model on vectors)."""


class Scheduled(ABC):
    """A model whose networks change with the training step (a growing network): the engine calls ``set_step(step)``
    before every step (a resumed session too), so its form is a function of the step and a resume continues it exactly.
    Its state dict must hold what sampling from a checkpoint needs (``get_extra_state``). A captured step
    (``trainer.compile=step``) would freeze its form, so such a run trains eager."""

    @abstractmethod
    def set_step(self, step: int) -> None:
        """Take the form of training step ``step`` (0-based: before its update)."""


class SamplerOptions(ABC):
    """A model whose sampling takes options: the ``sampler`` config group (``sampler=ddim sampler.steps=50``)."""

    @abstractmethod
    def set_sampler(self, spec: Any) -> None:
        """Sample as ``spec`` (the group's keys as a dict) says from now on."""


def apply_sampler(model: GenerativeModel, spec: Any, model_name: str) -> None:
    """Give ``model`` the ``sampler`` group's choice; a model without sampler options refuses one in one line."""
    if spec is None:
        return
    if not isinstance(model, SamplerOptions):
        from gentrain.build import models_with

        raise GentrainError(f"model={model_name} has no sampler options; sampler= applies to {', '.join(models_with(SamplerOptions)) or 'none'}")
    model.set_sampler(spec)
