"""The engine's one gradient rule, for eager steps and the captured step alike: measure the norm, clip when asked."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def total_norm(grads: list[Tensor]) -> Tensor:
    """The L2 norm of all ``grads`` together (torch's ``get_total_norm`` where it exists: torch >= 2.6)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def norm_and_clip(params: list[Tensor], max_norm: float, device: torch.device) -> Tensor:
    """The norm of ``params``' gradients before clipping; with a finite ``max_norm`` they are clipped to it
    (``clip_grad_norm_``: scaled by min(1, max / (norm + 1e-6))). No multiply of every gradient by 1.0 when inf."""
    if not math.isinf(max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    return total_norm(grads) if grads else torch.zeros((), device=device)
