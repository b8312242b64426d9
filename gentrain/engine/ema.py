"""Exponential moving average of a model part's weights (e.g. the generator), for sampling and evaluation.

After every training step ``ema = d_t * ema + (1 - d_t) * weights`` (Yazici et al. 2019 show it
improves GAN samples). The model names the part through :meth:`GenerativeModel.ema_target`; the
engine never names it.

- Warm-up (``trainer.ema_warmup``, on by default): ``d_t = min(decay, (1 + t) / (10 + t))`` with
  ``t`` the number of updates so far, the schedule of TensorFlow's ``ExponentialMovingAverage``
  with ``num_updates`` (also timm's and diffusers' default). Without it the average of a short run
  is dominated by its first weights: at decay 0.999, after 1,000 steps the initial weights still
  carry ``0.999^1000 = 37%`` of it; with the warm-up they carry ``(1 / 10) * prod d_t``, below 1%.
- Buffers are averaged with the same ``d_t`` when they are floating point (batch-norm running
  means and variances: the averaged weights get statistics of their own instead of the live
  model's, which belong to other weights) and copied otherwise (``num_batches_tracked``, flags).
  Constant buffers (masks, permutations) stay exactly constant: ``lerp(a, a, w) = a``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel


class EMA:
    def __init__(self, model: GenerativeModel, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise GentrainError(f"trainer.ema_decay must be in (0, 1), got {decay}; e.g. trainer.ema_decay=0.999 (null turns it off)")
        name = model.ema_target()
        if name is None:
            raise GentrainError(f"{type(model).__name__} has no part to average; set trainer.ema_decay=null")
        self.name = name
        self.decay = decay
        self.warmup = warmup
        self.updates = 0  # updates since the copy was taken (the warm-up's t)
        self._source: nn.Module = getattr(model, name)
        # the copy is taken at the first update, after the first optimizer step: layers with a
        # data-dependent initialisation (Glow's actnorm) are initialised by then
        self.module: nn.Module | None = None

    def _copy(self) -> nn.Module:
        return copy.deepcopy(self._source).requires_grad_(False).eval()

    def current_decay(self) -> float:
        """``d_t`` of the next update (a host float: no device sync)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def _pairs(self) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
        """(averaged tensors, their live sources, copied (average, source) buffer pairs)."""
        assert self.module is not None
        averaged, sources, copied = list(self.module.parameters()), [p.detach() for p in self._source.parameters()], []
        for b_avg, b in zip(self.module.buffers(), self._source.buffers()):
            if b_avg.is_floating_point():
                averaged.append(b_avg)
                sources.append(b)
            else:
                copied.append((b_avg, b))
        return averaged, sources, copied

    @torch.no_grad()
    def update(self) -> None:
        if self.module is None:
            self.module = self._copy()
            self.updates = 0
            return
        averaged, sources, copied = self._pairs()
        torch._foreach_lerp_(averaged, sources, 1.0 - self.current_decay())
        for b_avg, b in copied:
            b_avg.copy_(b)
        self.updates += 1

    def update_in_step(self) -> None:
        """The update as device work only, for a captured step (``trainer.compile=step``): ``d_t`` comes from a device
        copy of the update count (made by :meth:`start_in_step`, before the region is traced), which the region advances;
        :meth:`counted` keeps the host's count beside it."""
        assert self._count is not None, "start_in_step() first"
        averaged, sources, copied = self._pairs()
        if self.warmup:
            # a + w (b - a): _foreach_lerp_ has no overload for a device weight (a 0-d tensor would be read on the host)
            weight = 1.0 - torch.clamp((1.0 + self._count) / (10.0 + self._count), max=self.decay)
            steps = torch._foreach_sub(sources, averaged)
            torch._foreach_mul_(steps, weight)
            torch._foreach_add_(averaged, steps)
        else:
            torch._foreach_lerp_(averaged, sources, 1.0 - self.decay)
        for b_avg, b in copied:
            b_avg.copy_(b)
        self._count.add_(1.0)

    def start_in_step(self) -> None:
        """The device copy of the update count, from the host's (a resumed run's included)."""
        assert self.module is not None
        self._count = torch.tensor(float(self.updates), device=next(iter(self.module.parameters())).device)

    def counted(self) -> None:
        """The host's count of an update a captured step made."""
        self.updates += 1

    _count: Tensor | None = None

    @contextlib.contextmanager
    def applied(self, model: GenerativeModel) -> Iterator[None]:
        """Within the block, ``model.<part>`` is the averaged copy (the live weights before the first update)."""
        if self.module is None:
            yield
            return
        live = getattr(model, self.name)
        setattr(model, self.name, self.module)
        try:
            yield
        finally:
            setattr(model, self.name, live)

    def state_dict(self) -> dict[str, Any] | None:
        if self.module is None:
            return None
        return {"name": self.name, "decay": self.decay, "warmup": self.warmup, "updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self.module = None
            self.updates = 0
            return
        self.module = self._copy()
        self.module.load_state_dict(state["weights"])
        self._count = None
        # checkpoints written before the warm-up existed: their average is past any warm-up
        self.updates = int(state.get("updates", 10**9))

    @classmethod
    def from_checkpoint(cls, model: GenerativeModel, state: dict[str, Any] | None) -> "EMA | None":
        """The weight average a checkpoint holds (None when it has none), ready for :func:`gentrain.sampling.sampling_state`."""
        if state is None:
            return None
        ema = cls(model, float(state["decay"]), bool(state.get("warmup", False)))
        ema.load_state_dict(state)
        return ema
