"""Mode collapse on Gaussian-mixture toy data: modes covered and the share of high-quality samples.

The standard measures of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018) for the
2-D ring and grid mixtures (``dataset=ring8``, ``dataset=grid25``):

- A generated sample is *high quality* (HQ) if it lies within ``n_sigma`` (default 3) standard
  deviations of its NEAREST mode centre; the mixture is isotropic with one ``mode_std``.
  In 2-D the distance of a true sample to its centre is Rayleigh distributed, so even the data
  itself is only ``1 - exp(-n_sigma^2 / 2)`` HQ: 98.9% at 3 sigma (not 99.7%, the 1-D figure).
- Each HQ sample is assigned to that nearest mode. A mode is *covered* if at least ``min_count``
  HQ samples are assigned to it.

The coverage threshold is a fraction of the count a perfect generator gives each mode::

    min_count = max(1, ceil(min_fraction * n / K))      default min_fraction = 0.2

i.e. a mode is covered iff it receives at least 20% of its fair share ``n / K`` of the ``n``
samples. This is PacGAN's 2-D grid rule (2,500 samples, 25 modes: a mode is lost if fewer than
20 samples, 1/5 of the 100 a perfect generator produces, fall in it) written so that it scales
with ``n`` and ``K``: 20 of 2,500 on grid25, 63 of 2,500 on ring8. A single stray sample near a
mode (VEEGAN's looser "at least one" reading, ``min_count=1``) does not count as learning the
mode. Pass ``min_fraction`` or ``min_count`` to use another rule; every result states the
``min_count`` it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gentrain.errors import GentrainError

#: Default coverage threshold as a share of the expected per-mode count ``n / K`` (PacGAN: 20 of 100).
MIN_FRACTION = 0.2
#: Default radius of the high-quality region, in mode standard deviations (VEEGAN, PacGAN).
N_SIGMA = 3.0


@dataclass
class ModeStats:
    """Mode coverage of ``n_samples`` generated points against ``num_modes`` mixture components.

    ``counts`` [K] (int64, CPU) holds the HQ samples assigned to each mode; a mode is covered iff
    its count is at least ``min_count``. ``high_quality`` is the HQ share of all samples, in [0, 1].
    """

    modes_covered: int
    num_modes: int
    high_quality: float
    counts: Tensor
    n_samples: int
    min_count: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``counts`` as a list)."""
        return {
            "modes_covered": self.modes_covered,
            "num_modes": self.num_modes,
            "high_quality": self.high_quality,
            "counts": [int(c) for c in self.counts.tolist()],
            "n_samples": self.n_samples,
            "min_count": self.min_count,
        }


def coverage_threshold(n: int, num_modes: int, min_fraction: float = MIN_FRACTION) -> int:
    """``max(1, ceil(min_fraction * n / K))``: the fewest HQ samples that make a mode covered.

    ``ceil`` makes "at least ``min_fraction`` of the fair share" exact for integer counts; the small
    tolerance keeps float noise just above a whole number (``min_fraction`` is a binary fraction)
    from adding one.
    """
    if n < 1 or num_modes < 1:
        raise ValueError(f"need n >= 1 and num_modes >= 1, got n={n}, num_modes={num_modes}")
    if not (math.isfinite(min_fraction) and min_fraction >= 0):
        raise ValueError(f"min_fraction must be a finite number >= 0, got {min_fraction}")
    return max(1, math.ceil(min_fraction * n / num_modes - 1e-9))


def mode_stats(
    samples: Tensor,
    modes: Tensor,
    std: float,
    n_sigma: float = N_SIGMA,
    min_fraction: float = MIN_FRACTION,
    min_count: int | None = None,
) -> ModeStats:
    """Modes covered and HQ share of ``samples`` [N, D] for a mixture with centres ``modes`` [K, D].

    Args:
        samples: generated points [N, D] (D = 2 for the toy sets), on any device.
        modes: mode centres [K, D]; moved to ``samples``' device.
        std: the isotropic standard deviation of every mode (the dataset's ``mode_std``).
        n_sigma: a sample is HQ if its distance to the nearest centre is <= ``n_sigma * std``.
        min_fraction: coverage threshold as a share of ``N / K`` (see the module docstring).
        min_count: an explicit threshold in samples; overrides ``min_fraction``.

    Non-finite samples (a diverged generator) are never HQ but still count in ``N``.
    Raises ValueError for wrong shapes or parameters (programming errors).
    """
    if not isinstance(samples, Tensor) or not isinstance(modes, Tensor):
        raise ValueError("samples and modes must be tensors")
    if samples.dim() != 2 or modes.dim() != 2:
        raise ValueError(f"samples must be [N, D] and modes [K, D], got {tuple(samples.shape)} and {tuple(modes.shape)}")
    if samples.shape[1] != modes.shape[1]:
        raise ValueError(f"samples have dimension {samples.shape[1]} but modes {modes.shape[1]}")
    n, k = int(samples.shape[0]), int(modes.shape[0])
    if n < 1 or k < 1:
        raise ValueError(f"need at least one sample and one mode, got N={n}, K={k}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a finite number > 0, got {std}")
    if not (math.isfinite(n_sigma) and n_sigma > 0):
        raise ValueError(f"n_sigma must be a finite number > 0, got {n_sigma}")
    if min_count is not None and int(min_count) < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    threshold = int(min_count) if min_count is not None else coverage_threshold(n, k, min_fraction)

    # at least float32 (bf16 samples would blur the 3-sigma boundary); float64 stays float64
    dtype = torch.promote_types(samples.dtype, torch.float32) if samples.is_floating_point() else torch.float32
    x = samples.detach().to(dtype)
    centres = modes.detach().to(device=x.device, dtype=dtype)
    # direct differences, not the |x|^2 + |c|^2 - 2 x.c matmul form: that loses precision for
    # points far from the origin relative to the small mode std (ring radius 2 vs std 0.02)
    dist = torch.cdist(x, centres, compute_mode="donot_use_mm_for_euclid_dist")  # [N, K]
    nearest_dist, nearest = dist.min(dim=1)  # ties go to the lower mode index
    hq = nearest_dist <= n_sigma * std  # NaN compares False: non-finite samples are never HQ
    counts = torch.bincount(nearest[hq], minlength=k).cpu()
    return ModeStats(
        modes_covered=int((counts >= threshold).sum()),
        num_modes=k,
        high_quality=float(hq.sum()) / n,
        counts=counts,
        n_samples=n,
        min_count=threshold,
    )


def dataset_modes(dataset: object) -> tuple[Tensor, float]:
    """The mode centres [K, 2] and the mode std of a Gaussian-mixture toy set (``Ring8``, ``Grid25``)."""
    name = getattr(dataset, "name", type(dataset).__name__)
    try:
        modes = getattr(dataset, "modes", None)
    except NotImplementedError:  # the GaussianMixture base class declares modes without centres
        modes = None
    std = getattr(dataset, "mode_std", None)
    if not isinstance(modes, Tensor) or std is None:
        raise GentrainError(
            f"mode coverage needs a Gaussian-mixture toy set (dataset=ring8 or grid25); dataset={name} has no mode centres"
        )
    return modes, float(std)
