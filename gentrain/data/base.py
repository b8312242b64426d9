"""The dataset interface every model and trainer codes against.

A dataset is a small object built by ``hydra.utils.instantiate(cfg.dataset)``. Its
``load(split)`` returns the whole split as CPU tensors in a :class:`DataSplit`:

* images: ``x`` uint8 ``[N, C, H, W]`` with values 0..255,
* vectors (toy sets): ``x`` float32 ``[N, D]``,
* ``y`` int64 ``[N]`` class labels, or ``None`` when the set has none.

Subclasses implement :meth:`Dataset._load`; :meth:`Dataset.load` wraps it with the
checks that turn a wrong config or wrong files into a one-line :class:`GentrainError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gentrain.errors import GentrainError

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass
class DataSplit:
    """One split of a dataset, held in memory on the CPU.

    x: images uint8 ``[N, C, H, W]`` (0..255) or vectors float32 ``[N, D]``.
    y: int64 ``[N]`` class labels, or ``None`` when the dataset has no labels.
    """

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Dataset:
    """Base class: holds the config keys shared by every dataset and checks what ``load`` returns.

    Args:
        name: short identifier used in run names and logs, e.g. ``"fashion_mnist"``.
        shape: shape of one sample, ``(C, H, W)`` for images or ``(D,)`` for vectors.
        num_classes: number of classes, or ``None`` when the set has no labels.
    """

    def __init__(self, name: str, shape: Sequence[int], num_classes: int | None) -> None:
        self.name = str(name)
        # YAML gives a list (a ListConfig under Hydra); a tuple of plain ints is hashable and
        # compares equal to ``tensor.shape[1:]``.
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self._num_classes = None if num_classes is None else int(num_classes)
        if len(self.shape) not in (1, 3) or any(s < 1 for s in self.shape):
            raise GentrainError(
                f"dataset.shape={list(self.shape)} is not valid for dataset '{self.name}'; "
                "use [C, H, W] for images or [D] for vectors, all positive"
            )
        if self._num_classes is not None and self._num_classes < 1:
            raise GentrainError(
                f"dataset.num_classes={self._num_classes} must be positive; "
                "set dataset.num_classes=null for a set without labels"
            )

    @property
    def num_classes(self) -> int | None:
        """Number of classes (labels are ``0..num_classes-1``), or ``None`` if unlabelled."""
        return self._num_classes

    def load(self, split: str) -> DataSplit:
        """Return the whole ``split`` (``"train"`` or ``"test"``) as CPU tensors.

        Raises GentrainError for an unknown split, missing or broken data, or data that
        does not match ``shape`` / ``num_classes``.
        """
        if split not in SPLITS:
            raise GentrainError(
                f"unknown split {split!r} for dataset '{self.name}'; use one of {', '.join(SPLITS)}"
            )
        data = self._load(split)
        self._check(data)
        return data

    def _load(self, split: str) -> DataSplit:
        """Produce the split; ``split`` is already validated."""
        raise NotImplementedError

    def _check(self, data: DataSplit) -> None:
        """Make sure the loaded data agrees with the configured ``shape`` and ``num_classes``."""
        got = tuple(data.x.shape[1:])
        if got != self.shape:
            raise GentrainError(
                f"dataset '{self.name}' loaded samples of shape {list(got)} but dataset.shape="
                f"{list(self.shape)}; set dataset.shape={list(got)} or point the dataset at the right files"
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
            f"num_classes={self._num_classes})"
        )
