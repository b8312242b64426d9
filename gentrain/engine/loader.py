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

    def next(self, labels_only: bool = False) -> Batch:
        """The next batch of this rank, on the training device, in model space; ``labels_only``: a phase that reads only
        the labels and the size (``Phase.batch == "labels"``), whose images the stream may leave ungathered."""
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
        self._staging: list[list[Any]] | None = None  # pinned host buffers for batches copied from host memory
        self._shift = False

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    def head(self, n: int) -> DataSplit:
        return DataSplit(self.x[:n].cpu(), None if self.y is None else self.y[:n].cpu())

    def _draw(self) -> None:
        """A new epoch: a fresh permutation (CPU generator), on the data's device."""
        self.perm = torch.randperm(self.num_examples, generator=self.generator).to(self.x.device, non_blocking=True)
        self.pos = 0
        self.epoch += 1

    def next(self, labels_only: bool = False) -> Batch:
        n, step = self.num_examples, self.batch_size * self.world_size
        if self.perm is None or self.pos + step > n:
            self._draw()
        start = self.pos + self.rank * self.batch_size
        idx = self.perm[start : start + self.batch_size]
        self.pos += step
        y = None if self.y is None else self._gather(self.y, idx, 1)
        if labels_only:
            return Batch(None, y, n=self.batch_size, on=self.device)
        return Batch(to_model_space(self._gather(self.x, idx, 0)), y)

    def _gather(self, source: Tensor, idx: Tensor, which: int) -> Tensor:
        """``source[idx]`` on the training device. From host memory it is gathered into a pinned staging buffer (two per
        tensor, used in turn) and copied asynchronously: a pageable copy would make every batch wait on the host. A buffer
        is reused only after the copy that read it two batches ago has finished (its event)."""
        if source.device == self.device:
            return source.index_select(0, idx)
        if self._staging is None:
            self._staging = [[None, None], [None, None]]  # [x or y][slot]: (pinned buffer, copy-done event)
            self._slot = [0, 0]
        slot = self._slot[which]
        self._slot[which] = 1 - slot
        entry = self._staging[which][slot]
        shape = (self.batch_size, *source.shape[1:])
        if entry is None:
            entry = (torch.empty(shape, dtype=source.dtype).pin_memory(), torch.cuda.Event())
            self._staging[which][slot] = entry
        buffer, done = entry
        done.synchronize()  # the copy out of this buffer two batches ago (long finished in a running loop)
        torch.index_select(source, 0, idx, out=buffer)
        out = buffer.to(self.device, non_blocking=True)
        done.record()
        return out

    # ---- the whole-step mode (trainer.compile=step): batches gathered inside the captured step ----------------------
    def open_window(self) -> tuple[Tensor, Tensor]:
        """Device buffers for a captured step: ``window`` (this epoch's order, then the next one's, each cut to whole
        global batches) and ``offset`` (the window position of the next batch, a device scalar the step advances).
        The step's ``k``-th batch is ``window[offset + k * batch_size + arange(batch_size)]``; :meth:`reserve` keeps the
        stream's state (order, position, epoch: what a checkpoint saves) exactly as :meth:`next` would leave it."""
        if self.world_size != 1 or self.x.device != self.device:
            raise GentrainError("the whole-step mode needs one process and the data on the training device")
        self.whole = (self.num_examples // self.batch_size) * self.batch_size  # examples of one epoch's whole batches
        if self.perm is None or self.pos + self.batch_size > self.num_examples:
            self._draw()
        self.window = torch.empty(2 * self.whole, dtype=torch.long, device=self.device)
        self.window[: self.whole].copy_(self.perm[: self.whole])
        self.offset = torch.full((), self.pos, dtype=torch.long, device=self.device)
        return self.window, self.offset

    def reserve(self, batches: int) -> None:
        """Claim the next ``batches`` batches for one captured step (host bookkeeping, no sync): where they run past the
        epoch, the next order is drawn into the window's second half, as :meth:`next` would draw it."""
        end = self.pos + batches * self.batch_size
        if end > self.whole:  # the step crosses into the next epoch
            self._draw()
            self.window[self.whole :].copy_(self.perm[: self.whole])
            self.pos = end - self.whole
            self._shift = True
        else:
            self.pos = end
            self._shift = False

    def settle(self) -> None:
        """After a captured step that crossed an epoch: the new order moves to the window's front, the offset back by one epoch."""
        if self._shift:
            self.window[: self.whole].copy_(self.window[self.whole :])
            self.offset.sub_(self.whole)
            self._shift = False

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
