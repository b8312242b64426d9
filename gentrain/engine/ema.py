"""Exponential moving average of a model part's weights (e.g. the generator), for sampling and evaluation.

``ema = decay * ema + (1 - decay) * weights`` after every training step (Yazici et al. 2019 show
it improves GAN samples); buffers such as batch-norm statistics are copied. The model names the
part through :meth:`GenerativeModel.ema_target`; the engine never names it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel


class EMA:
    def __init__(self, model: GenerativeModel, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise GentrainError(f"trainer.ema_decay must be in (0, 1), got {decay}; e.g. trainer.ema_decay=0.999 (null turns it off)")
        name = model.ema_target()
        if name is None:
            raise GentrainError(f"{type(model).__name__} has no part to average; set trainer.ema_decay=null")
        self.name = name
        self.decay = decay
        self._source: nn.Module = getattr(model, name)
        # the copy is taken at the first update, after the first optimizer step: layers with a
        # data-dependent initialisation (Glow's actnorm) are initialised by then
        self.module: nn.Module | None = None

    def _copy(self) -> nn.Module:
        return copy.deepcopy(self._source).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self) -> None:
        if self.module is None:
            self.module = self._copy()
            return
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self._source.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), self._source.buffers()):
            b_ema.copy_(b)

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
        return None if self.module is None else {"name": self.name, "decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self.module = None
            return
        self.module = self._copy()
        self.module.load_state_dict(state["weights"])


def load_ema_weights(model: GenerativeModel, state: dict[str, Any]) -> None:
    """Put a checkpoint's averaged weights into ``model`` (for evaluation and sampling of a saved run)."""
    getattr(model, state["name"]).load_state_dict(state["weights"])
