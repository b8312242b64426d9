"""The adversarial family's model interface: a generator and a discriminator (critic), two phases "G" and "D"."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel, Latent, SamplerOptions, check_labels, interpolate_latents


def spectral_norm_(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every convolution and linear layer of ``module``, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            spectral_norm_(child)
    return module


def truncated_normal(shape: tuple[int, ...], truncation: float, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) draws truncated to [-t, t] by redrawing the entries outside (rejection: the truncated normal exactly).

    Each round draws a whole fresh tensor from ``generator`` and keeps it where the current entries are out of range, so
    the result depends only on the generator's state. BigGAN's code samples ``scipy.stats.truncnorm(-t, t)``: the same law.
    """
    z = torch.randn(shape, device=device, generator=generator)
    while True:
        out = z.abs() > truncation
        if not bool(out.any()):
            return z
        z = torch.where(out, torch.randn(shape, device=device, generator=generator), z)


class AdversarialModel(GenerativeModel, Latent, SamplerOptions):
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
        #: ``sampler=latent sampler.truncation=t``: sampling draws z truncated to [-t, t]; None: z ~ N(0, I) (training always)
        self.truncation: float | None = None

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def param_groups(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "D": self.discriminator}

    def ema_target(self) -> str | None:
        return "generator"

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor:
        z = interpolate_latents(self.sampling_noise(rows, generator), self.sampling_noise(rows, generator), steps, spherical)
        return self.generate(z.reshape(rows * steps, -1), self.path_labels(rows, steps, generator))

    def noise(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Latent codes z ~ N(0, I), [n, z_dim]."""
        return torch.randn(n, self.z_dim, device=device or self.device, generator=generator)

    def set_sampler(self, spec: Any) -> None:
        """``sampler=latent``: ``truncation`` null (z ~ N(0, I)) or t > 0 (z from N(0, I) truncated to [-t, t], the truncation
        trick of Brock et al. 2019, section 3.1) for pictures, evaluation and ``task=sample``; training is never truncated."""
        if spec is None:
            return
        values = dict(spec)
        name = values.pop("name", "latent")
        if name != "latent":
            raise GentrainError(f"a GAN samples with sampler=latent (its option: sampler.truncation), got sampler={name}; e.g. sampler=latent sampler.truncation=0.5")
        truncation = values.pop("truncation", None)
        if values:
            raise GentrainError(f"sampler=latent has no key(s) {sorted(values)}; its key is truncation (e.g. sampler.truncation=0.5)")
        if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not truncation > 0):
            raise GentrainError(
                f"sampler.truncation must be a number > 0 (z is truncated to [-t, t]) or null (no truncation), got {truncation!r}; "
                "e.g. sampler.truncation=0.5"
            )
        self.truncation = None if truncation is None else float(truncation)

    def sampling_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The latent codes of samples (pictures, evaluation, ``task=sample``), [n, z_dim]: :meth:`noise`, or with
        ``sampler.truncation`` z truncated to [-t, t]. Training never calls it: the objectives draw ``model.noise(n, device=...)``."""
        if self.truncation is None:
            return self.noise(n, generator=generator)
        return truncated_normal((n, self.z_dim), self.truncation, self.device, generator)

    def ortho_weights(self) -> list[Tensor]:
        """The generator's weights that orthogonal regularisation (``objective.ortho_reg``, Brock et al. 2019) acts on.

        Every generator parameter with at least two axes (read as ``[shape[0], -1]``), not an embedding table: BigGAN-PyTorch's
        ``utils.ortho`` skips 1-D parameters (biases, batch-norm gains) and its blacklist, G's shared class embedding. Under
        spectral norm these are the original (unnormalised) weights, as in BigGAN-PyTorch, whose SN layers keep the raw weight.
        """
        tables = {id(p) for m in self.generator.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
        return [p for p in self.generator.parameters() if p.dim() >= 2 and id(p) not in tables]

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z)

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return self.discriminator(x).flatten(), None

    def training_logs(self) -> dict[str, Tensor]:
        """Device scalars the G phase logs beside its losses (a growing network's resolution and fade-in alpha); none by default."""
        return {}

    def reals(self, x: Tensor) -> Tensor:
        """Real images as the discriminator is to see them now (at the data's shape): ``x`` itself by default. A growing
        network (Progressive GAN) shows them at its current resolution and fade-in. Every objective's D phase asks."""
        return x

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
        z = self.sampling_noise(n, generator)
        y = self.random_labels(n, generator)
        return self.generate(z, y), y

    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = self.sampling_noise(y.shape[0], generator)
        self.random_labels(y.shape[0], generator)  # drawn and dropped: the noise stream of an unlabelled draw
        return self.generate(z, y)

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        if self.num_classes is None:
            return self.sample(n, generator), None
        y, per_class = self.grid_labels(n)
        return self.generate(self.sampling_noise(y.shape[0], generator), y), per_class

    def check_data(self, data: DataSplit, dataset: str) -> None:
        check_labels(self.num_classes, data, dataset, "an unconditional model (e.g. model=dcgan)")
