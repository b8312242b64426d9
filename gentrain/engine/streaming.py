"""Mini-batches from data too big for memory: :class:`StreamingBatches`, and :func:`open_stream`, which picks it or
:class:`~gentrain.engine.loader.BatchStream`.

Examples come from a map-style torch Dataset (:meth:`~gentrain.data.base.Dataset.indexed`) through a DataLoader:
worker processes decode ahead of the training step, pinned memory lets the copy to a GPU overlap it.

The batch order is :class:`BatchStream`'s, drawn the same way (one CPU generator seeded with the run's seed, one
``randperm`` per epoch, rank ``r`` taking the ``r``-th share of each global batch, the last incomplete global
batch dropped), and so is the state a checkpoint keeps: a run gets the same batches on either path, and resumes
exactly whichever its new session picks.

Workers run ahead of the training loop, so two copies of that order exist: the batch sampler's, which hands
index lists to the workers as far ahead as they prefetch, and the stream's own, which advances one batch per
:meth:`StreamingBatches.next`. Only the stream's is saved: a checkpoint taken after k batches resumes at batch
k + 1, whatever the workers had prefetched (those are decoded again after a resume).

Nothing else of the loader may touch the run's random numbers: a DataLoader draws its workers' base seed from the
global torch generator each time it starts, which shifted the noise of every later step (so a streamed run differed
from the in-memory one from step 1, and a resumed one from the uninterrupted run right after the checkpoint). It
draws from a generator of its own instead. Workers only decode (no random transforms): every random number of a
step, dequantisation noise included, is drawn in the training process from the RNG state the checkpoint keeps.

Workers die with the training process (Linux: ``PR_SET_PDEATHSIG``), so a SIGKILLed run leaves none behind to print
a ``ConnectionResetError`` on its terminal, and they ignore SIGINT, which a terminal's Ctrl-C sends the whole
process group: the training process stops the run at a step boundary and then ends them (torch's own SIGTERM
handler in the workers stays: it exits quietly when the training process sends it).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import signal
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from gentrain.data.base import DataSplit, Dataset, available_memory
from gentrain.engine.loader import BatchStream, Stream, check_global_batch, to_model_space
from gentrain.errors import GentrainError
from gentrain.objectives.base import Batch

log = logging.getLogger(__name__)

#: Batches each worker prepares ahead (DataLoader's ``prefetch_factor``).
_PREFETCH = 2


class _Order:
    """:class:`BatchStream`'s batch order as index lists, with the same state (generator, perm, pos, epoch)."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: Tensor | None = None
        self.pos = 0
        self.epoch = 0

    def take(self) -> Tensor:
        """This rank's indices of the next global batch (int64 ``[batch_size]``)."""
        step = self.batch_size * self.world_size
        if self.perm is None or self.pos + step > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        start = self.pos + self.rank * self.batch_size
        self.pos += step
        return self.perm[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.perm = None if state["perm"] is None else state["perm"].cpu()
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])

    def copy(self) -> _Order:
        other = _Order(self.n, self.batch_size, self.rank, self.world_size, seed=0)
        other.load_state_dict(self.state_dict())  # get_state copies; perm is never changed in place
        return other


class _AheadSampler:
    """The DataLoader's batch sampler: endless index lists from ``order`` on (a copy of the stream's order as the
    loader starts), as far ahead as the workers ask."""

    def __init__(self, order: _Order) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.order.take().tolist()


class StreamingBatches:
    """Endless shuffled mini-batches of a map-style dataset of ``(x uint8 [C, H, W], y int64 [] or -1)``
    examples (with a ``labelled`` attribute), decoded by ``workers`` DataLoader processes (0: this one).

    The :class:`~gentrain.engine.loader.Stream` of data that does not fit in memory; see the module docstring.
    """

    def __init__(
        self, indexed: torch.utils.data.Dataset, batch_size: int, device: torch.device, seed: int, workers: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        check_global_batch(len(indexed), batch_size, world_size)
        self.indexed = indexed
        self.device = device
        self.batch_size = batch_size
        self.order = _Order(len(indexed), batch_size, rank, world_size, seed)
        self.sampler = _AheadSampler(self.order.copy())
        self.loader = DataLoader(
            indexed, batch_sampler=self.sampler, num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=_PREFETCH if workers > 0 else None,
            # its own generator: the default one is the global torch RNG, a draw of which shifts the run's noise
            generator=torch.Generator().manual_seed(seed), worker_init_fn=functools.partial(_worker_init, os.getpid()),
        )
        self._batches: Iterator[tuple[Tensor, Tensor]] | None = None  # started by the first next(): no workers before
        # Held from outside until this stream is gone: a loader collected inside a reference cycle (a trainer's)
        # finds its queues finalized first, and waits seconds per worker for them to stop.
        weakref.finalize(self, _release, self.loader)

    @property
    def num_examples(self) -> int:
        return len(self.indexed)

    @property
    def epoch(self) -> int:
        return self.order.epoch

    def head(self, n: int) -> DataSplit:
        examples = [self.indexed[i] for i in range(min(n, self.num_examples))]
        y = torch.stack([y for _, y in examples]) if self.indexed.labelled else None
        return DataSplit(torch.stack([x for x, _ in examples]), y)

    def next(self, labels_only: bool = False) -> Batch:
        """The next batch (the loader's workers read the images whatever ``labels_only`` says: the order is theirs)."""
        if self._batches is None:
            self._batches = iter(self.loader)
        self.order.take()  # the sampler handed the workers this same index list
        try:
            x, y = next(self._batches)
        except GentrainError as e:  # from a worker, which torch re-raises with the worker's traceback as the message
            raise GentrainError(str(e).rstrip().rsplit("\n", 1)[-1].removeprefix("gentrain.errors.GentrainError: ")) from e
        x = to_model_space(x.to(self.device, non_blocking=True))
        return Batch(x, y.to(self.device, non_blocking=True) if self.indexed.labelled else None)

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
        self.sampler.order = self.order.copy()
        self._batches = None  # batches prefetched from the old state are dropped; next() restarts the loader


def _worker_init(parent: int, worker_id: int) -> None:
    """In each DataLoader worker as it starts: leave Ctrl-C to the training process ``parent`` and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # else the trainer's handler, inherited by fork, would run here too
    if sys.platform.startswith("linux"):
        try:
            # PR_SET_PDEATHSIG = 1: SIGKILL this worker when the thread that started it ends (the training loop's)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: torch's watchdog ends the worker within seconds
            pass
    if os.getppid() != parent:  # the training process died before prctl took effect
        os._exit(0)


def _release(loader: DataLoader) -> None:
    """Nothing: the finalizer's reference to ``loader`` goes when this returns, and the loader stops its workers."""


def open_stream(
    dataset: Dataset, split: str, batch_size: int, device: torch.device, seed: int, on_device: bool | str,
    rank: int = 0, world_size: int = 1,
) -> Stream:
    """The training stream of ``split``: :class:`StreamingBatches` when the dataset streams
    (:meth:`~gentrain.data.base.Dataset.streams`), else one tensor in a :class:`BatchStream`."""
    available = available_memory() / 1e6
    if dataset.streams():
        indexed = dataset.indexed(split)
        workers = dataset.workers
        log.info(
            "%s %s: %d images, %.0f MB decoded against %.0f MB of available memory: streamed by a DataLoader with %d workers",
            dataset.name, split, len(indexed), len(indexed) * math.prod(dataset.shape) / 1e6, available, workers,
        )
        return StreamingBatches(indexed, batch_size, device, seed, workers, rank, world_size)
    data = dataset.load(split)
    log.info(
        "%s %s: %d examples, %.0f MB against %.0f MB of available memory: held in memory as one tensor",
        dataset.name, split, len(data), data.x.numel() * data.x.element_size() / 1e6, available,
    )
    return BatchStream(data, batch_size, device, seed, on_device, rank, world_size)
