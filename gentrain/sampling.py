"""The one place that owns how a model is sampled: which weights, which mode, which noise.

Every consumer of samples goes through it: the training engine's pictures, in-training and
final evaluation, ``task=eval`` and ``task=sample``.

- :func:`sampling_state`: inside the block the model samples with the averaged weights (when a
  weight average is given) and every module in eval mode (batch norm uses its running
  statistics, dropout is off); on exit the live weights and *each module's own* training flag
  come back. Restoring per module (not ``model.train(was)``) matters: a flag restored while the
  averaged copy is swapped in would leave that copy in train mode for every later sample.
- :func:`sample_batches`: ``n`` samples drawn in fixed batches from one seeded generator, so the
  same ``(seed, batch_size)`` gives the same samples whoever asks (``task=sample n=500`` and an
  evaluation of 500 samples draw identical images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from gentrain.engine.progress import phase, tick
from gentrain.models.base import GenerativeModel


class WeightAverage(Protocol):
    """What :func:`sampling_state` needs of a weight average (``gentrain.engine.ema.EMA``)."""

    def applied(self, model: GenerativeModel) -> contextlib.AbstractContextManager[None]: ...


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode inside the block; each module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def sampling_state(model: GenerativeModel, average: WeightAverage | None = None) -> Iterator[GenerativeModel]:
    """The weights and mode we sample with: ``average`` swapped in (when given) and eval mode; both undone after.

    The global RNG is left as it was: samples and pictures draw from their own seeded generators,
    and anything else a model draws inside the block (e.g. dequantisation noise) is forked off, so
    sampling never changes a training run's random stream.
    """
    swap = average.applied(model) if average is not None else contextlib.nullcontext()
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), swap, eval_mode(model):
        yield model


@torch.no_grad()
def sample_batches(model: GenerativeModel, n: int, seed: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(x, labels or None)`` in batches of ``batch_size`` (the last may be smaller), ``n`` in all, from one generator seeded with ``seed``."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    for start in range(0, n, batch_size):
        yield model.sample_with_labels(min(batch_size, n - start), generator=generator)


def draw_samples(model: GenerativeModel, n: int, seed: int, batch_size: int) -> list[tuple[Tensor, Tensor | None]]:
    """Every batch of :func:`sample_batches`, counted as the phase ``sampling`` (``n`` samples)."""
    drawn = []
    with phase("sampling", n):
        for batch in sample_batches(model, n, seed, batch_size):
            drawn.append(batch)
            tick(batch[0].shape[0])
    return drawn


__all__ = ["draw_samples", "eval_mode", "sample_batches", "sampling_state"]
