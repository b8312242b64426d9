"""Model families: what objectives may rely on.

Every model maps phase names to parameter groups (the engine builds one optimizer per group) and
samples. A family is a base class: an objective declares the family it needs, and an incompatible
pair is refused at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.errors import GentrainError


def interpolate_latents(z0: Tensor, z1: Tensor, steps: int, spherical: bool) -> Tensor:
    """Paths from z0 [R, D] to z1 [R, D] in ``steps`` points: [R, steps, D].

    Linear: ``(1 - t) z0 + t z1``. Spherical (slerp, Shoemake 1985; White 2016 for GAN latents):
    ``sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1`` with ``w`` the angle between z0 and z1, which
    keeps the norm typical of a Gaussian latent instead of cutting through the low-norm interior.
    """
    t = torch.linspace(0, 1, steps, device=z0.device, dtype=z0.dtype).view(1, steps, 1)
    a, b = z0.unsqueeze(1), z1.unsqueeze(1)
    if not spherical:
        return (1 - t) * a + t * b
    cos = (F.normalize(z0, dim=1) * F.normalize(z1, dim=1)).sum(1).clamp(-1 + 1e-7, 1 - 1e-7).view(-1, 1, 1)
    omega = torch.acos(cos)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def check_labels(num_classes: int | None, data: DataSplit, dataset: str, unconditional: str) -> None:
    """Refuse data a conditional model (``num_classes`` set) cannot train on: no labels, or more classes than the model has."""
    if num_classes is None:
        return
    if data.y is None:
        raise GentrainError(f"a conditional model needs class labels and dataset={dataset} has none; use {unconditional}")
    if int(data.y.max()) >= num_classes:
        raise GentrainError(f"dataset={dataset} has {int(data.y.max()) + 1} classes but the model has {num_classes}; set model.num_classes")


class GenerativeModel(nn.Module):
    """Base of every gentrain model."""

    #: Class-conditional models set the number of classes; None: unconditional.
    num_classes: int | None = None

    def param_groups(self) -> dict[str, nn.Module]:
        """Phase name -> the module whose parameters that phase's optimizer updates."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples in data space ([n, C, H, W] in [-1, 1], or [n, D]); ``generator`` fixes the noise."""
        raise NotImplementedError

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Samples and their class labels [n] (None for unconditional models)."""
        return self.sample(n, generator=generator), None

    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Samples of the classes ``y`` (conditional models), drawing from ``generator`` as :meth:`sample_with_labels` does
        (the labels it would draw are drawn and dropped), so only the classes differ from an unlabelled draw."""
        raise GentrainError(f"{type(self).__name__} is not class-conditional; leave labels out")

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        """About ``n`` samples for a picture and the images per row (None: square); conditional models give one row per class."""
        return self.sample(n, generator=generator), None

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor | None:
        """Samples along latent paths, [rows * steps, ...] row by row; None for models without a latent space."""
        return None

    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """Extra pictures for TensorBoard and samples/: name -> (images [N, C, H, W] in [-1, 1], images per row).

        ``x`` is a fixed batch of real data in model space (for reconstructions, density plots ...). None by default.
        """
        return {}

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Uniform class labels [n] for conditional models, else None."""
        if self.num_classes is None:
            return None
        return torch.randint(0, self.num_classes, (n,), device=self.device, generator=generator)

    def grid_labels(self, n: int) -> tuple[Tensor, int]:
        """The labels of a conditional sample grid of about ``n`` samples, one row per class, and the samples per row."""
        assert self.num_classes is not None
        per_class = max(1, n // self.num_classes)
        return torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class), per_class

    def path_labels(self, rows: int, steps: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Labels of ``rows`` interpolation paths of ``steps`` points: one random class per path (None: unconditional)."""
        y = self.random_labels(rows, generator)
        return None if y is None else y.repeat_interleave(steps)

    def set_sampler(self, spec: Any) -> None:
        """Take the ``sampler`` config group's choice (``sampler=ddim sampler.steps=50``); models without sampler options refuse one."""
        if spec is not None:
            raise GentrainError(f"{type(self).__name__} has no sampler options; sampler= applies to diffusion models (model=ddpm)")

    def picture_sampler(self) -> str | None:
        """What draws the sample pictures when it is not what evaluation draws with (a cheaper sampler, said in the log and
        the report); None (the default): pictures and evaluation sample alike."""
        return None

    @contextmanager
    def drawing_pictures(self) -> Iterator[None]:
        """Inside: :meth:`sample_grid`, :meth:`interpolate` and :meth:`pictures` draw as :meth:`picture_sampler` says (the
        engine's sample pictures; evaluation never enters it). Nothing changes by default."""
        yield

    def ema_target(self) -> str | None:
        """The attribute name of the part whose weights an exponential moving average tracks (None: no such part)."""
        return None

    def check_data(self, data: DataSplit, dataset: str) -> None:
        """Refuse training data the model cannot use (e.g. a conditional model on unlabelled data); nothing by default."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def spectral_norm_(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every convolution and linear layer of ``module``, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            spectral_norm_(child)
    return module


class AdversarialModel(GenerativeModel):
    """A generator ``G(z, y) -> x`` and a discriminator (critic) ``D(x, y) -> (logit [B], class logits [B, K] or None)``.

    Unconditional models ignore ``y``. A model built with ``pack > 1`` has a discriminator that takes
    ``pack`` samples concatenated (PacGAN); the objective packs the batches it feeds it. Conditional models set ``num_classes`` and override
    :meth:`generate` and :meth:`discriminate`; auxiliary-classifier models return class logits.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, z_dim: int, spectral_norm: bool = False, pack: int = 1) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = spectral_norm_(discriminator) if spectral_norm else discriminator
        self.z_dim = z_dim
        #: How many samples the discriminator judges at once (PacGAN, Lin et al. 2018): its input is
        #: ``pack`` samples concatenated along the first data axis (see ``objective.pack``).
        self.pack = pack

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def param_groups(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "D": self.discriminator}

    def ema_target(self) -> str | None:
        return "generator"

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor:
        z = interpolate_latents(self.noise(rows, generator=generator), self.noise(rows, generator=generator), steps, spherical)
        return self.generate(z.reshape(rows * steps, -1), self.path_labels(rows, steps, generator))

    def noise(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Latent codes z ~ N(0, I), [n, z_dim]."""
        return torch.randn(n, self.z_dim, device=device or self.device, generator=generator)

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z)

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return self.discriminator(x).flatten(), None

    def critic_weights(self) -> list[Tensor]:
        """The weights of the critic ``f(x)`` whose Lipschitz constant in ``x`` WGAN's clipping bounds.

        WGAN (Arjovsky et al. 2017) keeps ``f`` K-Lipschitz by clamping these tensors to [-c, c] in
        place after every critic step. Here: every discriminator parameter (batch-norm affine
        parameters and spectral norm's original weights included), as the paper's released code
        clamps every parameter of its critic (``for p in netD.parameters(): p.data.clamp_(...)``,
        github.com/martinarjovsky/WassersteinGAN, main.py). Models whose discriminator holds
        tensors that are not weights of ``f`` (a label embedding, a class head) leave them out or
        return views of the parameters (sharing their storage, so clamping a view clamps the
        parameter).
        """
        return list(self.discriminator.parameters())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_with_labels(n, generator)[0]

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        z = self.noise(n, generator=generator)
        y = self.random_labels(n, generator)
        return self.generate(z, y), y

    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = self.noise(y.shape[0], generator=generator)
        self.random_labels(y.shape[0], generator)  # drawn and dropped: the noise stream of an unlabelled draw
        return self.generate(z, y)

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        if self.num_classes is None:
            return self.sample(n, generator), None
        y, per_class = self.grid_labels(n)
        return self.generate(self.noise(y.shape[0], generator=generator), y), per_class

    def check_data(self, data: DataSplit, dataset: str) -> None:
        check_labels(self.num_classes, data, dataset, "an unconditional model (e.g. model=dcgan)")
