"""Generated 2-D toy distributions: float32 vectors ``[N, 2]``, sampled on the fly.

Every sample comes from a local ``torch.Generator`` seeded from the ``seed`` key, never from
the global RNG, so a set is the same on every run and every device. The train split uses
generator seed ``2 * seed`` and the test split ``2 * seed + 1``: the two splits are
independent samples, and no (seed, split) pair reuses another's stream. "val" is held out of
the ``n_train`` training points (``val_fraction``, see :class:`~gentrain.data.base.Dataset`),
so "train" has ``n_train`` points minus the "val" ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gentrain.data.base import DataSplit, Dataset
from gentrain.errors import GentrainError


class ToyDataset(Dataset):
    """Base for the 2-D toy sets: sizes, seeding and the ``[N, 2]`` shape check.

    Args:
        name, shape, num_classes, val_fraction: see :class:`~gentrain.data.base.Dataset`; shape
            must be [2].
        n_train: number of training samples, the "val" ones included.
        n_test: number of test samples.
        seed: seed of the sampler; the same seed gives the same points.
    """

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        num_classes: int | None,
        n_train: int = 50000,
        n_test: int = 10000,
        seed: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction)
        for key, n in (("n_train", n_train), ("n_test", n_test)):
            if int(n) < 1:
                raise GentrainError(f"dataset.{key}={n} must be at least 1; set dataset.{key}=<positive count>")
        self.n_train = int(n_train)
        self.n_test = int(n_test)
        self.seed = int(seed)

    def _load(self, split: str) -> DataSplit:
        n = self.n_train if split == "train" else self.n_test
        generator = torch.Generator().manual_seed(2 * self.seed + (split == "test"))
        x, y = self._sample(n, generator)
        return DataSplit(x=x.to(torch.float32), y=y)

    def _sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw ``n`` points ``[n, 2]`` and their labels ``[n]`` (or None) from ``generator``."""
        raise NotImplementedError


class GaussianMixture(ToyDataset):
    """Equal-weight isotropic Gaussian mixture; the label of a point is the index of its mode.

    Subclasses provide the mode centres; :attr:`modes` and :attr:`mode_std` are public so that
    metrics can measure mode coverage (e.g. a sample within 3 std of a centre hits that mode).
    """

    mode_std: float

    @property
    def modes(self) -> torch.Tensor:
        """Mode centres, float32 ``[K, 2]``; mode ``k`` has label ``k``."""
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        modes = self.modes
        y = torch.randint(len(modes), (n,), generator=generator)
        x = modes[y] + self.mode_std * torch.randn(n, 2, generator=generator)
        return x, y


class Ring8(GaussianMixture):
    """Gaussians evenly spaced on a circle (8 by default: ``num_classes`` sets the count).

    Mode ``k`` is centred at ``radius * (cos(2 pi k / K), sin(2 pi k / K))``.

    Args:
        radius: radius of the circle of centres.
        std: standard deviation of every mode (``mode_std``).
        (others: see :class:`ToyDataset`)
    """

    def __init__(
        self,
        name: str = "ring8",
        shape: Sequence[int] = (2,),
        num_classes: int = 8,
        n_train: int = 50000,
        n_test: int = 10000,
        seed: int = 0,
        radius: float = 2.0,
        std: float = 0.02,
        val_fraction: float = 0.0,
    ) -> None:
        if num_classes is None:
            raise GentrainError("dataset.num_classes sets the number of ring modes; set dataset.num_classes=8")
        super().__init__(name, shape, num_classes, n_train, n_test, seed, val_fraction)
        self.radius = float(radius)
        self.mode_std = _positive("std", std)

    @property
    def modes(self) -> torch.Tensor:
        k = torch.arange(self._num_classes, dtype=torch.float64)
        angle = 2 * math.pi * k / self._num_classes
        return (self.radius * torch.stack([angle.cos(), angle.sin()], dim=1)).to(torch.float32)


class Grid25(GaussianMixture):
    """Gaussians on a square grid centred at the origin (5 x 5 by default).

    ``num_classes`` must be a square ``s * s``; the centres are ``{(i - (s-1)/2) * spacing}^2``,
    i.e. ``{-4, -2, 0, 2, 4}^2`` for the defaults. Mode index ``k = row * s + col`` with the
    first coordinate given by ``row``.

    Args:
        spacing: distance between neighbouring centres.
        std: standard deviation of every mode (``mode_std``).
        (others: see :class:`ToyDataset`)
    """

    def __init__(
        self,
        name: str = "grid25",
        shape: Sequence[int] = (2,),
        num_classes: int = 25,
        n_train: int = 50000,
        n_test: int = 10000,
        seed: int = 0,
        spacing: float = 2.0,
        std: float = 0.05,
        val_fraction: float = 0.0,
    ) -> None:
        side = math.isqrt(int(num_classes)) if num_classes is not None and num_classes > 0 else 0
        if side < 1 or side * side != num_classes:
            raise GentrainError(
                f"dataset.num_classes={num_classes} is not a square number of grid modes; "
                "set dataset.num_classes=25 (5 x 5) or another square"
            )
        super().__init__(name, shape, num_classes, n_train, n_test, seed, val_fraction)
        self.side = side
        self.spacing = float(spacing)
        self.mode_std = _positive("std", std)

    @property
    def modes(self) -> torch.Tensor:
        coords = (torch.arange(self.side, dtype=torch.float64) - (self.side - 1) / 2) * self.spacing
        rows, cols = torch.meshgrid(coords, coords, indexing="ij")
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).to(torch.float32)


class SwissRoll(ToyDataset):
    """2-D swiss roll without labels: sklearn's ``make_swiss_roll`` projected onto (x, z).

    ``t ~ 1.5 pi (1 + 2 U(0, 1))``, point ``(t cos t, t sin t)``, scaled by ``2 / (4.5 pi)`` so
    the noiseless roll fits in ``[-2, 2]^2``; then Gaussian noise of std ``noise`` (in those
    scaled units) is added.

    Args:
        noise: standard deviation of the added Gaussian noise.
        (others: see :class:`ToyDataset`; num_classes must be null)
    """

    def __init__(
        self,
        name: str = "swissroll",
        shape: Sequence[int] = (2,),
        num_classes: int | None = None,
        n_train: int = 50000,
        n_test: int = 10000,
        seed: int = 0,
        noise: float = 0.05,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__(name, shape, num_classes, n_train, n_test, seed, val_fraction)
        self.noise = _non_negative("noise", noise)

    def _sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
        x = torch.stack([t * t.cos(), t * t.sin()], dim=1) * (2 / (4.5 * math.pi))
        x = x + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x, None


class Moons(ToyDataset):
    """Two interleaved half circles in sklearn's ``make_moons`` coordinates, with random angles.

    Label 0 (upper moon): ``(cos a, sin a)``; label 1 (lower moon): ``(1 - cos a, 0.5 - sin a)``,
    ``a ~ U(0, pi)``, labels equally likely; then Gaussian noise of std ``noise`` is added.

    Args:
        noise: standard deviation of the added Gaussian noise.
        (others: see :class:`ToyDataset`; num_classes must be 2)
    """

    def __init__(
        self,
        name: str = "moons",
        shape: Sequence[int] = (2,),
        num_classes: int = 2,
        n_train: int = 50000,
        n_test: int = 10000,
        seed: int = 0,
        noise: float = 0.05,
        val_fraction: float = 0.0,
    ) -> None:
        if num_classes != 2:
            raise GentrainError(f"dataset.num_classes={num_classes} but moons has 2 classes; set dataset.num_classes=2")
        super().__init__(name, shape, num_classes, n_train, n_test, seed, val_fraction)
        self.noise = _non_negative("noise", noise)

    def _sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(2, (n,), generator=generator)
        a = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        upper = torch.stack([a.cos(), a.sin()], dim=1)
        lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], dim=1)
        x = torch.where((y == 1)[:, None], lower, upper)
        x = x + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x, y


def _positive(key: str, value: float) -> float:
    if not float(value) > 0:
        raise GentrainError(f"dataset.{key}={value} must be positive; set dataset.{key}=<number > 0>")
    return float(value)


def _non_negative(key: str, value: float) -> float:
    if not float(value) >= 0:
        raise GentrainError(f"dataset.{key}={value} must be >= 0; set dataset.{key}=<number >= 0>")
    return float(value)
