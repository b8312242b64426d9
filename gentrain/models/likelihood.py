"""Likelihood model families: flows and autoregressive models (exact), VAEs (a bound).

Contract (what objectives and evaluation rely on):

- ``log_prob(x) -> [B]`` in nats, of ``x`` as a batch gives it (model space: images in [-1, 1]
  from 8-bit data, points as they are). For 8-bit images it is the log-probability of the
  *discrete* values: exact for autoregressive models over 256 levels; for flows on dequantized
  data, ``log p(x + u) - D log 256`` with u ~ U[0, 1)^D, an unbiased estimate of a lower bound
  (Theis et al. 2016). For continuous data (2-D toy sets) it is the log-density.
- ``log_likelihood(x, k) -> [B]``: the number evaluation reports; ``log_prob`` for exact models,
  the importance-weighted bound with ``k`` samples for VAEs.
- bits/dim = ``-log_prob / (D log 2)`` with ``D`` the number of dimensions of one example.
- One parameter group, "main"; ``sample(n, generator)`` in model space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gentrain.models.base import GenerativeModel

LOG_256 = math.log(256.0)
LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(x: Tensor) -> Tensor:
    """``[B, ...] -> [B]``."""
    return x.flatten(1).sum(1)


def gaussian_log_density(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, exp(log_std)^2) summed over all but the first axis: [B]."""
    return sum_except_batch(-0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * LOG_2PI)


class LikelihoodModel(GenerativeModel):
    """Base of models trained on (a bound of) the log-likelihood, in one phase."""

    #: What the reported likelihood is, for reports ("exact", "dequantized bound", "IWAE bound" ...).
    likelihood_kind: str = "exact"

    def param_groups(self) -> dict[str, nn.Module]:
        return {"main": self}

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, k: int = 1) -> Tensor:
        return self.log_prob(x)

    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """For 2-D points: the learned density on the data's bounding box."""
        if x.dim() != 2 or x.shape[1] != 2:
            return {}
        from gentrain.visual import density_image

        return {"density": (density_image(self.log_prob, x)[None], 1)}


class FlowModel(LikelihoodModel):
    """Normalizing flows (objective=flow_nll)."""

    likelihood_kind = "dequantized (8-bit images: a lower bound on the discrete log-likelihood)"


class AutoregressiveModel(LikelihoodModel):
    """Autoregressive models (objective=ar_nll)."""


def bits_per_dim(log_p: Tensor, dims: int) -> Tensor:
    """``-log_p / (dims ln 2)``: nats per example -> bits per dimension."""
    return -log_p / (dims * math.log(2.0))


def to_levels(x: Tensor) -> Tensor:
    """Model-space images in [-1, 1] (from 8-bit data) -> integer levels 0..255 (long)."""
    return torch.round((x + 1.0) * 127.5).clamp(0, 255).long()


def from_levels(u: Tensor) -> Tensor:
    """Levels 0..255 -> model space [-1, 1]."""
    return u.float() / 127.5 - 1.0


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization of 8-bit images: ``(u + noise) / 256`` in [0, 1), noise ~ U[0, 1)^D.

    ``log p_discrete(u) >= E_noise[log p(y)] - D log 256`` for a density p on [0, 1)^D (Theis et al. 2016).
    """
    u = to_levels(x).float()
    noise = torch.rand(u.shape, device=u.device, dtype=u.dtype, generator=generator)
    return (u + noise) / 256.0


def logit_transform(y: Tensor, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    """``s = alpha + (1 - 2 alpha) y``, ``z = log s - log(1 - s)`` (RealNVP, Dinh et al. 2017). Returns (z, log|det dz/dy| [B])."""
    s = alpha + (1 - 2 * alpha) * y
    z = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return z, log_det


def inverse_logit_transform(z: Tensor, alpha: float = 0.05) -> Tensor:
    """The inverse of :func:`logit_transform`: z -> y in [0, 1] (clamped)."""
    return ((torch.sigmoid(z) - alpha) / (1 - 2 * alpha)).clamp(0, 1)
