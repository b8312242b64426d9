"""The dataset interface every model and trainer codes against.

A dataset is a small object built by ``hydra.utils.instantiate(cfg.dataset)``. Its
``load(split)`` returns the whole split as CPU tensors in a :class:`DataSplit`:

* images: ``x`` uint8 ``[N, C, H, W]`` with values 0..255; a dataset declares its number of
  levels per sub-pixel, ``levels`` (``dataset.levels``: 256 for 8-bit images, 17 for the 8x8
  digits), and level ``k`` of ``K`` is stored as the value ``round(255 k / (K - 1))``. Likelihood
  models get it (``model.data_levels: ${oc.select:dataset.levels,null}``), so their likelihoods
  are of the data as it is,
* vectors (toy sets): ``x`` float32 ``[N, D]``,
* sequences (1-D data: audio, generated waveforms): ``x`` float32 ``[N, C, T]``, amplitudes in
  [-1, 1], ``C`` channels (1: mono) of ``T`` time steps; a sequence dataset says its sampling
  rate (:attr:`Dataset.rate`, samples per second), which sample files and audio logs use.
  Models quantise the amplitude themselves (WaveNet's mu-law), so ``levels`` is None,
* ``y`` int64 ``[N]`` class labels, or ``None`` when the set has none.

Three splits (:data:`SPLITS`):

* ``"train"``: what the model is fitted on - the dataset's own training data minus the
  validation examples;
* ``"val"``: ``round(N * val_fraction)`` examples (at least one) held out from the dataset's own
  training data. In-training evaluation and the choice of ``best.pt`` use it, so that model
  selection never looks at the test split;
* ``"test"``: the dataset's own test data, untouched, for the final report and ``task=eval``.

The validation examples are chosen by a permutation seeded with the fixed :data:`VAL_SEED`,
never by a trainer seed, so every run on a dataset (with the same ``val_fraction``) is
selected on the same examples. ``val_fraction=0`` (the class default, so configs from before
the split existed keep their meaning) means no "val" split and "train" is all the training data.

A set too big for memory may also serve a split example by example to a DataLoader
(:meth:`Dataset.indexed`), and says by :meth:`Dataset.streams` whether training should.

Subclasses implement :meth:`Dataset._load` for their own ``"train"`` and ``"test"`` data;
:meth:`Dataset.load` carves "val" out of "train" and adds the checks that turn a wrong config
or wrong files into a one-line :class:`GentrainError`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gentrain.errors import GentrainError

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: The most levels uint8 images can have, and the default of image datasets (8-bit data).
MAX_LEVELS: int = 256

#: Seed of the permutation that picks the validation examples. Fixed, and independent of every
#: trainer seed, so a dataset's validation set is the same in every run; changing it changes
#: every dataset's "train" and "val". The permutation comes from numpy's ``RandomState``, whose
#: stream numpy keeps frozen across versions (NEP 19), so upgrades do not move the split either.
VAL_SEED: int = 2_718_281


@dataclass
class DataSplit:
    """One split of a dataset, held in memory on the CPU.

    x: images uint8 ``[N, C, H, W]`` (0..255), sequences float32 ``[N, C, T]`` in [-1, 1] or vectors float32 ``[N, D]``.
    y: int64 ``[N]`` class labels, or ``None`` when the dataset has no labels.
    """

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Dataset:
    """Base class: holds the config keys shared by every dataset, serves the three splits and
    checks what ``load`` returns.

    The subclass's own training data (the "raw train split") is read once per object and kept
    in memory: "train" and "val" are both cut from it, so loading both costs one read.

    Args:
        name: short identifier used in run names and logs, e.g. ``"fashion_mnist"``.
        shape: shape of one sample, ``(C, H, W)`` for images, ``(C, T)`` for sequences or ``(D,)`` for vectors.
        num_classes: number of classes, or ``None`` when the set has no labels.
        val_fraction: fraction of the raw train split held out as "val", in [0, 1); 0 means
            no validation split.
        levels: images only: the number of levels per sub-pixel, an integer in 2..256 (None:
            256, 8-bit data); every loaded value must be a level's stored value
            ``round(255 k / (levels - 1))``. Vectors and sequences: None (not applicable).
    """

    #: Sequences: samples per second (audio; a generated waveform's nominal rate), for WAV files and audio logs.
    #: None for images and vectors.
    rate: int | None = None

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        num_classes: int | None,
        val_fraction: float = 0.0,
        levels: int | None = None,
    ) -> None:
        self.name = str(name)
        # YAML gives a list (a ListConfig under Hydra); a tuple of plain ints is hashable and
        # compares equal to ``tensor.shape[1:]``.
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self._num_classes = None if num_classes is None else int(num_classes)
        if len(self.shape) not in (1, 2, 3) or any(s < 1 for s in self.shape):
            raise GentrainError(
                f"dataset.shape={list(self.shape)} is not valid for dataset '{self.name}'; "
                "use [C, H, W] for images, [C, T] for sequences or [D] for vectors, all positive"
            )
        if self._num_classes is not None and self._num_classes < 1:
            raise GentrainError(
                f"dataset.num_classes={self._num_classes} must be positive; "
                "set dataset.num_classes=null for a set without labels"
            )
        self.val_fraction = _check_val_fraction(val_fraction)
        self.levels: int | None = check_levels(levels, len(self.shape) == 3)
        self._raw_train: DataSplit | None = None

    @property
    def num_classes(self) -> int | None:
        """Number of classes (labels are ``0..num_classes-1``), or ``None`` if unlabelled."""
        return self._num_classes

    def has_split(self, split: str) -> bool:
        """Whether ``load(split)`` can succeed by config: "train" and "test" always, "val" only
        when ``val_fraction > 0``. Does not read any data."""
        return split in SPLITS and (split != "val" or self.val_fraction > 0)

    def split_note(self, split: str) -> str | None:
        """A caveat that evaluation attaches to every result computed against ``split``, or None.

        None here; a dataset whose split is not what its name promises (e.g. an image folder
        whose "test" is its training images) says so.
        """
        return None

    def load(self, split: str) -> DataSplit:
        """Return the whole ``split`` (``"train"``, ``"val"`` or ``"test"``) as CPU tensors.

        "train" and "val" are disjoint, keep the raw order within each, and together are exactly
        the raw train split (labels follow their samples). Every call returns new tensors, so a
        caller may change them in place.

        Raises GentrainError for an unknown split, "val" without ``val_fraction``, a
        ``val_fraction`` that leaves no training example, missing or broken data, or data that
        does not match ``shape`` / ``num_classes``.
        """
        self._check_split(split)
        if split == "test":
            data = self._load("test")
            self._check(data)
            return data
        raw = self._raw_train_split()
        if self.val_fraction == 0:
            return DataSplit(x=raw.x.clone(), y=None if raw.y is None else raw.y.clone())
        keep = self._val_mask(len(raw))
        if split == "train":
            keep = ~keep
        # Boolean indexing copies and keeps the raw order: the cache stays private.
        return DataSplit(x=raw.x[keep], y=None if raw.y is None else raw.y[keep])

    def streams(self) -> bool:
        """Whether training should stream this dataset from disk (:meth:`indexed`) rather than hold it
        in memory (:meth:`load`). False here: sets that fit in memory train fastest from one tensor."""
        return False

    def indexed(self, split: str) -> torch.utils.data.Dataset:
        """``split`` as a map-style torch Dataset of ``(x, y)`` examples, for a DataLoader with workers.

        Only datasets that may stream implement it (see :meth:`streams`): the same examples in the
        same order as :meth:`load`, ``y`` -1 when unlabelled and a ``labelled`` attribute saying which.
        """
        raise NotImplementedError(f"dataset '{self.name}' is held in memory only; use load({split!r})")

    def _check_split(self, split: str) -> None:
        """One line for an unknown split, or "val" without ``val_fraction``."""
        if split not in SPLITS:
            raise GentrainError(
                f"unknown split {split!r} for dataset '{self.name}'; use one of {', '.join(SPLITS)}"
            )
        if not self.has_split(split):
            raise GentrainError(
                f"dataset '{self.name}' has no validation split (dataset.val_fraction=0); "
                "set dataset.val_fraction=0.1"
            )

    def _raw_train_split(self) -> DataSplit:
        """The subclass's whole training data, read and checked on first use, then cached."""
        if self._raw_train is None:
            raw = self._load("train")
            self._check(raw)
            self._raw_train = raw
        return self._raw_train

    def _val_mask(self, n: int) -> torch.Tensor:
        """Bool ``[n]``: True for the raw train examples held out as "val" (``val_fraction > 0``).

        ``round(n * val_fraction)`` of them (at least one), picked by a permutation seeded with
        :data:`VAL_SEED`, so the choice depends on ``n`` and ``val_fraction`` only (and leaves the
        global RNGs alone).
        """
        n_val = max(1, round(n * self.val_fraction))
        if n_val >= n:
            raise GentrainError(
                f"dataset.val_fraction={self.val_fraction} holds out {n_val} of the {n} training examples of "
                f"dataset '{self.name}' and leaves none to train on; lower dataset.val_fraction (or set it to 0)"
            )
        permutation = np.random.RandomState(VAL_SEED).permutation(n)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.from_numpy(permutation[:n_val])] = True
        return mask

    def _load(self, split: str) -> DataSplit:
        """Produce the subclass's own ``"train"`` (all of it, "val" included) or ``"test"`` data."""
        raise NotImplementedError

    def _check(self, data: DataSplit) -> None:
        """Make sure the loaded data agrees with the configured ``shape``, ``levels`` and ``num_classes``."""
        got = tuple(data.x.shape[1:])
        if got != self.shape:
            raise GentrainError(
                f"dataset '{self.name}' loaded samples of shape {list(got)} but dataset.shape="
                f"{list(self.shape)}; set dataset.shape={list(got)} or point the dataset at the right files"
            )
        if self.levels is not None and data.x.dtype == torch.uint8:
            bad = value_off_levels(data.x, self.levels)
            if bad is not None:
                raise GentrainError(
                    f"dataset '{self.name}' has the pixel value {bad}, which is not one of the dataset.levels={self.levels} levels "
                    f"(level k is stored as round(255 k / {self.levels - 1})); set dataset.levels=256 (8-bit data)"
                )
        num_classes = self.num_classes
        if data.y is None:
            if num_classes is not None:
                raise GentrainError(
                    f"dataset '{self.name}' has no labels but dataset.num_classes={num_classes}; "
                    "set dataset.num_classes=null"
                )
            return
        if data.y.shape != (len(data),):
            # Our own loaders pair x and y; a mismatch means broken files, not a config problem.
            raise GentrainError(
                f"dataset '{self.name}' has {len(data)} samples but {data.y.numel()} labels; "
                "the data files are inconsistent, delete and re-download them"
            )
        if num_classes is None:
            raise GentrainError(
                f"dataset '{self.name}' has labels but dataset.num_classes=null; "
                f"set dataset.num_classes={int(data.y.max()) + 1 if len(data) else 0}"
            )
        if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= num_classes):
            raise GentrainError(
                f"dataset '{self.name}' has labels {int(data.y.min())}..{int(data.y.max())} but "
                f"dataset.num_classes={num_classes}; set dataset.num_classes={int(data.y.max()) + 1}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, "
            f"num_classes={self._num_classes}, val_fraction={self.val_fraction}, levels={self.levels})"
        )


def available_memory() -> int:
    """Bytes of memory a new allocation can have: ``MemAvailable`` of /proc/meminfo (Linux; it counts
    the page cache the kernel can drop), else the free pages os.sysconf reports."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def value_off_levels(x: torch.Tensor, levels: int) -> int | None:
    """The smallest uint8 value of ``x`` that is no level's stored value, or None when every value fits ``levels``.

    Level ``k`` of ``K`` is stored as ``round(255 k / (K - 1))``: a value fits when it lies within 0.5 of
    ``255 k / (K - 1)`` for some k (a tie may round either way). Every uint8 value fits 256 levels.
    """
    if levels >= MAX_LEVELS or x.numel() == 0:
        return None
    present = torch.zeros(MAX_LEVELS, dtype=torch.bool)
    for chunk in x.reshape(-1).split(1 << 24):
        present |= torch.bincount(chunk.cpu(), minlength=MAX_LEVELS) > 0
    v = torch.arange(MAX_LEVELS, dtype=torch.float64)
    k = torch.round(v * (levels - 1) / 255.0)
    fits = (2 * (v * (levels - 1) - k * 255)).abs() <= levels - 1  # |v - 255 k / (K - 1)| <= 0.5
    off = present & ~fits
    return int(off.nonzero()[0]) if bool(off.any()) else None


def check_levels(value: Any, images: bool, key: str = "dataset.levels", follows: str | None = None) -> int | None:
    """The levels per sub-pixel of ``key``: an integer in 2..256 for images (None: 256, 8-bit data), None for vectors.

    Anything else is one line naming the fix; ``follows`` is the value the key normally takes
    (``${dataset.levels}`` for ``model.data_levels``), which the fix then says to leave in place.
    """
    if not images:
        if value is not None:
            fix = f"set {key}=null" if follows is None else f"leave {key}={follows} (null for vectors)"
            raise GentrainError(f"{key}={value!r} applies to images (levels per sub-pixel) and this data is not images; {fix}")
        return None
    if value is None:
        return MAX_LEVELS
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 2 <= value <= MAX_LEVELS:
        fix = (
            f"e.g. {key}=256 (8-bit images) or {key}=17 (the 8x8 digits, values 0..16)"
            if follows is None
            else f"leave {key}={follows} and set dataset.levels (256 for 8-bit images)"
        )
        raise GentrainError(f"{key} must be an integer in 2..256 (levels per sub-pixel of uint8 images), got {value!r}; {fix}")
    return int(value)


def _check_val_fraction(value: Any) -> float:
    """``value`` as a float if it is a number in [0, 1) (booleans are not); else one line naming the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise GentrainError(f"dataset.val_fraction must be in [0, 1), got {value!r}; e.g. dataset.val_fraction=0.1")
    return float(value)
