"""Mini-batches for the training loop: the :class:`Stream` protocol and its in-memory implementation.

:class:`BatchStream` serves a dataset held as one tensor, on the training device when it fits.

No DataLoader, no worker processes, no host round-trip per step: once an epoch a permutation is
drawn and moved to the data's device (one small copy), and each batch is one ``index_select``.
uint8 images stay uint8 in memory (4x smaller) and are scaled to [-1, 1] per batch.

The permutation is always drawn by a CPU generator: where the data is stored (GPU or pinned host
memory, which ``device.data_on_device=auto`` picks by free GPU memory) never changes the batch
order of a seed, and a run resumes exactly whichever storage its new session picks.

Under DDP every rank draws the same permutation (same seed) and takes its own disjoint slice of
each *global* batch (``batch_size * world_size`` examples, rank ``r`` the ``r``-th share), so the
ranks never see the same example within an epoch and the stream's state is the same on every rank.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
from torch import Tensor

from gentrain.data.base import DataSplit
from gentrain.errors import GentrainError
from gentrain.objectives.base import Batch
from gentrain.shared import to_model_space

log = logging.getLogger(__name__)

#: Share of free GPU memory the data may take when ``device.data_on_device=auto``.
_GPU_MEMORY_SHARE = 0.5


def decide_on_device(x: Tensor, device: torch.device, setting: bool | str) -> bool:
    if device.type != "cuda":
        return True  # on the CPU "the device" is host memory already
    if setting == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        return x.numel() * x.element_size() < _GPU_MEMORY_SHARE * free
    if isinstance(setting, bool):
        return setting
    raise GentrainError(f"device.data_on_device must be auto, true or false, got {setting!r}")


class Stream(Protocol):
    """What the engine needs of its training data: endless batches on the device, and resumable state."""

    batch_size: int  # per rank
    epoch: int  # epochs started so far (1 during the first)

    @property
    def num_examples(self) -> int: ...

    def next(self) -> Batch:
        """The next batch of this rank, on the training device, in model space."""
        ...

    def head(self, n: int) -> DataSplit:
        """The first ``n`` training examples as stored (CPU; uint8 images), for fixed pictures and data checks."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_global_batch(n: int, batch_size: int, world_size: int) -> None:
    """Refuse a (per-rank) batch size whose global batch does not fit in one epoch, with one line."""
    if batch_size * world_size > n:
        across = f" x {world_size} ranks" if world_size > 1 else ""
        raise GentrainError(
            f"trainer.batch_size={batch_size}{across} is larger than the {n} training examples; "
            f"use trainer.batch_size<={max(1, n // world_size)}"
        )


class BatchStream:
    """Endless shuffled mini-batches (each epoch a fresh permutation; the last incomplete global batch is dropped)."""

    def __init__(
        self, data: DataSplit, batch_size: int, device: torch.device, seed: int, on_device: bool | str = "auto", rank: int = 0, world_size: int = 1,
    ) -> None:
        n = data.x.shape[0]
        check_global_batch(n, batch_size, world_size)
        self.device = device
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        store = device if decide_on_device(data.x, device, on_device) else torch.device("cpu")
        if store != device:
            log.info("data (%.0f MB) stays in host memory; batches are copied to %s", data.x.numel() * data.x.element_size() / 1e6, device)
        pin = store.type == "cpu" and device.type == "cuda"
        self.x = data.x.to(store).pin_memory() if pin else data.x.to(store)
        self.y = None if data.y is None else (data.y.to(store).pin_memory() if pin else data.y.to(store))
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU whatever the storage: see the module docstring
        self.perm: Tensor | None = None
        self.pos = 0
        self.epoch = 0

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    def head(self, n: int) -> DataSplit:
        return DataSplit(self.x[:n].cpu(), None if self.y is None else self.y[:n].cpu())

    def next(self) -> Batch:
        n, step = self.num_examples, self.batch_size * self.world_size
        if self.perm is None or self.pos + step > n:
            self.perm = torch.randperm(n, generator=self.generator).to(self.x.device, non_blocking=True)
            self.pos = 0
            self.epoch += 1
        start = self.pos + self.rank * self.batch_size
        idx = self.perm[start : start + self.batch_size]
        self.pos += step
        x = self.x.index_select(0, idx).to(self.device, non_blocking=True)
        y = None if self.y is None else self.y.index_select(0, idx).to(self.device, non_blocking=True)
        return Batch(to_model_space(x), y)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "perm": None if self.perm is None else self.perm.cpu(),
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.generator.set_state(state["generator"].cpu())
        except RuntimeError:  # a checkpoint of gentrain <= 0.1 whose order was drawn on a GPU generator
            log.warning("the checkpoint's batch order was drawn on a GPU generator (an older gentrain); this epoch continues exactly, later epochs are drawn afresh")
        self.perm = None if state["perm"] is None else state["perm"].to(self.x.device)
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
