"""Model families: what objectives may rely on.

Every model maps phase names to parameter groups (the engine builds one optimizer per group) and
samples. A family is a base class: an objective declares the family it needs, and an incompatible
pair is refused at start-up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GenerativeModel(nn.Module):
    """Base of every gentrain model."""

    def param_groups(self) -> dict[str, nn.Module]:
        """Phase name -> the module whose parameters that phase's optimizer updates."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples in data space ([n, C, H, W] in [-1, 1], or [n, D]); ``generator`` fixes the noise."""
        raise NotImplementedError

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Samples and their class labels [n] (None for unconditional models)."""
        return self.sample(n, generator=generator), None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class AdversarialModel(GenerativeModel):
    """A generator ``G: z -> x`` and a discriminator (or critic) ``D: x -> logit [B]``."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.z_dim = z_dim

    def param_groups(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "D": self.discriminator}

    def noise(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Latent codes z ~ N(0, I), [n, z_dim]."""
        return torch.randn(n, self.z_dim, device=device or self.device, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.generator(self.noise(n, generator=generator))
