"""GAN architectures that adapt to the dataset's shape.

``GanMLP``: the fully connected GAN of the course material (Goodfellow et al. 2014).
``DCGAN``: the architecture rules of Radford et al. 2016: strided convolutions in D, transposed
convolutions in G, batch norm everywhere except G's output and D's input layer, ReLU and tanh in G,
LeakyReLU(0.2) in D, weights from N(0, 0.02).

Images ([C, H, W]) come out of G through tanh, in [-1, 1]; vectors ([D], the 2-D toy sets) through
the identity, since their support is unbounded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from gentrain.errors import GentrainError
from gentrain.models.base import AdversarialModel

log = logging.getLogger(__name__)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _output_activation(shape: Sequence[int]) -> nn.Module:
    return nn.Tanh() if len(shape) == 3 else nn.Identity()


class _Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def mlp_generator(z_dim: int, shape: Sequence[int], widths: Sequence[int], batchnorm: bool = True) -> nn.Sequential:
    """z [B, z_dim] -> widths... -> data [B, *shape]; LeakyReLU(0.2), batch norm after every hidden layer but the first."""
    layers: list[nn.Module] = []
    d_in = z_dim
    for i, width in enumerate(widths):
        layers.append(nn.Linear(d_in, width))
        if batchnorm and i > 0:  # as in the reference MLP GAN: the first layer normalises nothing useful yet
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.LeakyReLU(0.2))
        d_in = width
    layers += [nn.Linear(d_in, _numel(shape)), _output_activation(shape), _Reshape(shape)]
    return nn.Sequential(*layers)


def mlp_discriminator(shape: Sequence[int], widths: Sequence[int], out_features: int = 1) -> nn.Sequential:
    """data [B, *shape] -> widths... -> logit [B, out_features]; LeakyReLU(0.2), no sigmoid (objectives work on logits)."""
    layers: list[nn.Module] = [nn.Flatten()]
    d_in = _numel(shape)
    for width in widths:
        layers += [nn.Linear(d_in, width), nn.LeakyReLU(0.2)]
        d_in = width
    layers.append(nn.Linear(d_in, out_features))
    return nn.Sequential(*layers)


class GanMLP(AdversarialModel):
    """Fully connected GAN: G z(100) -> 128 -> 256 -> 512 -> 1024 -> data; D data -> 512 -> 256 -> 1."""

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 100,
        g_widths: Sequence[int] = (128, 256, 512, 1024),
        d_widths: Sequence[int] = (512, 256),
        g_batchnorm: bool = True,
        spectral_norm: bool = False,
    ) -> None:
        shape = _check_shape(shape)
        discriminator = mlp_discriminator(shape, list(d_widths))  # first: the seeded initialisation draws D, then G
        super().__init__(mlp_generator(z_dim, shape, list(g_widths), g_batchnorm), discriminator, z_dim, spectral_norm)


def dcgan_layout(size: int) -> tuple[int, int]:
    """(base resolution s0, number of 2x up-samplings) for a square image side.

    Halve while even and above 4, and at least twice where the side allows, so that small images
    still get a network two layers deep: 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4), 8 -> (2, 2).
    """
    s0, n_up = size, 0
    while s0 % 2 == 0 and (s0 > 4 or n_up < 2):
        s0 //= 2
        n_up += 1
    if n_up == 0:
        raise GentrainError(
            f"model=dcgan needs an image side divisible by 2 (at least 8), got {size}; "
            "resize the data (e.g. dataset.size=32) or use model=gan_mlp"
        )
    return s0, n_up


def dcgan_generator(z_dim: int, shape: Sequence[int], width: int) -> nn.Sequential:
    """z [B, z_dim] -> [B, C, H, W]: project to s0 x s0, then transposed convolutions (4, stride 2) doubling the side."""
    channels, size = shape[0], shape[1]
    s0, n_up = dcgan_layout(size)
    ch = width * 2 ** (n_up - 1)
    layers: list[nn.Module] = [
        _Reshape((z_dim, 1, 1)),
        nn.ConvTranspose2d(z_dim, ch, s0, 1, 0, bias=False),
        nn.BatchNorm2d(ch),
        nn.ReLU(True),
    ]
    for _ in range(n_up - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    # the image layer: no batch norm (DCGAN rule), tanh into [-1, 1]
    layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


D_NORMS = ("batch", "layer", "none")


def _check_d_norm(norm: str) -> str:
    if norm not in D_NORMS:
        raise GentrainError(f"model.d_norm={norm!r} is not one of {', '.join(D_NORMS)}; e.g. model.d_norm=layer (WGAN-GP critics)")
    return norm


def _norm2d(kind: str, channels: int) -> list[nn.Module]:
    """Batch norm (DCGAN); layer norm over (C, H, W) as GroupNorm(1, C), for critics whose penalty is per sample (WGAN-GP); or none."""
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "layer":
        return [nn.GroupNorm(1, channels)]
    return []


def dcgan_discriminator(shape: Sequence[int], width: int, norm: str = "batch", out_channels: int = 1) -> nn.Sequential:
    """[B, C, H, W] -> [B, out_channels, 1, 1]: strided convolutions (4, stride 2) halving the side, then an s0 x s0 convolution.

    ``norm`` after every hidden convolution but the first; the last layer is the head (``out_channels`` logits).
    """
    channels, size = shape[0], shape[1]
    s0, n_up = dcgan_layout(size)
    # the image layer: no normalisation (DCGAN rule)
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    ch = width
    for _ in range(n_up - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm == "none"), *_norm2d(norm, ch * 2), nn.LeakyReLU(0.2, True)]
        ch *= 2
    layers.append(nn.Conv2d(ch, out_channels, s0, 1, 0))
    return nn.Sequential(*layers)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGAN(AdversarialModel):
    """DCGAN for square images of any side divisible by 2; on vector data (the 2-D toy sets) it uses the MLP networks.

    ``d_norm``: the discriminator's normalisation, ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP
    critics: the gradient penalty is per sample, which batch norm would couple); ``spectral_norm``
    normalises every discriminator layer (SNGAN).
    """

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 100,
        g_width: int = 64,
        d_width: int = 64,
        d_norm: str = "batch",
        spectral_norm: bool = False,
        mlp_g_widths: Sequence[int] = (128, 256, 512, 1024),
        mlp_d_widths: Sequence[int] = (512, 256),
    ) -> None:
        shape = _check_shape(shape)
        _check_d_norm(d_norm)
        if len(shape) == 1:
            log.warning("model=dcgan: vector data %s has no spatial axes, so it uses the MLP networks", shape)
            generator, discriminator = mlp_generator(z_dim, shape, list(mlp_g_widths)), mlp_discriminator(shape, list(mlp_d_widths))
        else:
            _check_square("dcgan", shape)
            generator, discriminator = dcgan_generator(z_dim, shape, g_width), dcgan_discriminator(shape, d_width, d_norm)
            dcgan_init_(generator)
            dcgan_init_(discriminator)
        super().__init__(generator, discriminator, z_dim, spectral_norm)


def _check_square(name: str, shape: tuple[int, ...]) -> None:
    if shape[1] != shape[2]:
        raise GentrainError(f"model={name} needs square images, got {shape[1]}x{shape[2]}; set dataset.size to one side")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise GentrainError(f"data shape must be [D] or [C, H, W], got {list(shape)}; check dataset.shape")
    return shape
