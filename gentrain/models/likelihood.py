"""Likelihood model families: flows and autoregressive models (exact), VAEs (a bound).

Contract (what objectives and evaluation rely on):

- ``log_prob(x) -> [B]`` in nats, of ``x`` as a batch gives it (model space: images in [-1, 1]
  from uint8 data, points as they are). For images it is the log-probability of the *discrete*
  values over the data's ``K`` levels per sub-pixel (``dataset.levels``: 256 for 8-bit images, 17
  for the 8x8 digits; the models get it as ``model.data_levels``): exact for autoregressive
  models (a K-way softmax); for flows on dequantized data, ``log p((u + v) / K) - D log K`` with
  ``u`` the levels and ``v ~ U[0, 1)^D``, an unbiased estimate of a lower bound (Theis et al.
  2016). For continuous data (2-D toy sets) it is the log-density.
- ``log_likelihood(x, k) -> [B]``: the number evaluation reports; ``log_prob`` for exact models,
  the importance-weighted bound with ``k`` samples for VAEs.
- bits/dim = ``-log_prob / (D log 2)`` with ``D`` the number of dimensions of one example; on
  K-level images a model that knows nothing (uniform over the levels) gets ``log2 K``.
- One parameter group, "main"; ``sample(n, generator)`` in model space.

Levels and model space: level ``k`` of ``K`` is stored as the uint8 value ``round(255 k / (K - 1))``
(every value for K = 256; 0, 16, 32, ..., 255 for K = 17), which the loader maps to
``value / 127.5 - 1``. :func:`to_levels` inverts that, :func:`from_levels` gives the model-space
value of a level's stored value, so samples lie exactly where the data does. A model whose
``data_levels`` do not fit the training data is refused at start-up (:meth:`LikelihoodModel.check_data`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gentrain.data.base import MAX_LEVELS, DataSplit, value_off_levels
from gentrain.data.base import check_levels as check_data_levels
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel, Likelihood

#: The levels of 8-bit images: the default of image data.
LEVELS_8BIT = MAX_LEVELS
LOG_256 = math.log(256.0)
LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(x: Tensor) -> Tensor:
    """``[B, ...] -> [B]``."""
    return x.flatten(1).sum(1)


def gaussian_log_density(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, exp(log_std)^2) summed over all but the first axis: [B]."""
    return sum_except_batch(-0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * LOG_2PI)


class LikelihoodModel(GenerativeModel, Likelihood):
    """Base of models trained on (a bound of) the log-likelihood, in one phase."""

    #: The levels per sub-pixel of the image data it models (``model.data_levels``); None: continuous data (vectors).
    data_levels: int | None = None

    def param_groups(self) -> dict[str, nn.Module]:
        return {"main": self}

    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """For 2-D points: the learned density on the data's bounding box."""
        if x.dim() != 2 or x.shape[1] != 2:
            return {}
        from gentrain.visual import density_image

        return {"density": (density_image(self.log_prob, x)[None], 1)}

    def check_data(self, data: DataSplit, dataset: str) -> None:
        """Images: every training value must be one of the model's levels (``model.data_levels``)."""
        levels = self.data_levels
        if levels is None or data.x.dtype != torch.uint8:
            return
        bad = value_off_levels(data.x, levels)
        if bad is not None:
            raise GentrainError(
                f"model.data_levels={levels} but dataset={dataset} has the pixel value {bad}, which is not one of {levels} levels "
                f"(level k is stored as round(255 k / {levels - 1})); leave model.data_levels=${{dataset.levels}}"
            )






def bits_per_dim(log_p: Tensor, dims: int) -> Tensor:
    """``-log_p / (dims ln 2)``: nats per example -> bits per dimension."""
    return -log_p / (dims * math.log(2.0))


def check_levels(value: Any, images: bool) -> int | None:
    """``model.data_levels``: see :func:`gentrain.data.base.check_levels` (it follows ``${dataset.levels}``)."""
    return check_data_levels(value, images, "model.data_levels", follows="${dataset.levels}")


def to_levels(x: Tensor, levels: int = LEVELS_8BIT) -> Tensor:
    """Model-space images in [-1, 1] -> integer levels 0..levels-1 (long): ``round((x + 1) (levels - 1) / 2)``.

    For 256 levels, ``round((x + 1) 127.5)``. For fewer, the stored value ``round(255 k / (K - 1))``
    of level k lies within ``0.5 (K - 1) / 255`` of ``k`` on this scale, so it comes back as k.
    """
    return torch.round((x + 1.0) * ((levels - 1) / 2.0)).clamp(0, levels - 1).long()


def from_levels(u: Tensor, levels: int = LEVELS_8BIT) -> Tensor:
    """Levels 0..levels-1 -> model space [-1, 1]: the value the loader gives the level's stored uint8 value.

    ``round(255 u / (K - 1)) / 127.5 - 1``; for 256 levels ``u / 127.5 - 1``.
    """
    u = u.float()
    if levels != LEVELS_8BIT:
        u = torch.round(u * (255.0 / (levels - 1)))
    return u / 127.5 - 1.0


def dequantize(x: Tensor, generator: torch.Generator | None = None, levels: int = LEVELS_8BIT) -> Tensor:
    """Uniform dequantization of K-level images: ``(u + noise) / K`` in [0, 1), u the levels, noise ~ U[0, 1)^D.

    Level u owns the cell ``[u / K, (u + 1) / K)`` of volume ``K^-D``, so for a density p on [0, 1)^D
    ``P(u) = int_cell p = K^-D E_noise[p(y)]`` and, by Jensen, ``log P(u) >= E_noise[log p(y)] - D log K``
    (Theis et al. 2016); the cells tile [0, 1)^D, so the ``P(u)`` sum to at most 1.
    """
    u = to_levels(x, levels).float()
    noise = torch.rand(u.shape, device=u.device, dtype=u.dtype, generator=generator)
    return (u + noise) / float(levels)


def logit_transform(y: Tensor, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    """``s = alpha + (1 - 2 alpha) y``, ``z = log s - log(1 - s)`` (RealNVP, Dinh et al. 2017). Returns (z, log|det dz/dy| [B])."""
    s = alpha + (1 - 2 * alpha) * y
    z = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return z, log_det


def inverse_logit_transform(z: Tensor, alpha: float = 0.05) -> Tensor:
    """The inverse of :func:`logit_transform`: z -> y in [0, 1] (clamped)."""
    return ((torch.sigmoid(z) - alpha) / (1 - 2 * alpha)).clamp(0, 1)
