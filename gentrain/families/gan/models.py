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

from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.families.gan.base import AdversarialModel

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


#: Hidden-unit nonlinearities of the MLP networks (``model.g_activation``, ``model.d_activation``).
ACTIVATIONS = ("relu", "leaky_relu", "maxout", "tanh")
#: Where the MLP networks put batch norm (``model.g_batchnorm``, ``model.d_batchnorm``).
BATCHNORM = ("all", "all_but_first", "none")
#: Weight initialisations (``model.init``).
INITS = ("default", "dcgan", "orthogonal")
#: LeakyReLU's negative slope (Radford et al. 2016).
LEAKY_SLOPE = 0.2


class Maxout(nn.Module):
    """Maxout units (Goodfellow et al. 2013): ``h_j = max_k (W x + b)_{j,k}`` over ``pieces`` affine pieces.

    One ``nn.Linear(in_features, out_features * pieces)`` whose outputs are read as
    ``[..., out_features, pieces]`` (piece fastest), then the maximum over the pieces, as Blocks'
    ``LinearMaxout`` that PacGAN's and ALI's released toy discriminators use.
    """

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features * pieces)
        self.out_features, self.pieces = out_features, pieces

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).unflatten(-1, (self.out_features, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, pieces={self.pieces}"


def batchnorm_placement(value: str | bool, key: str) -> str:
    """``all`` | ``all_but_first`` | ``none``; the booleans of older configs read as ``all_but_first`` (true) and ``none``."""
    if isinstance(value, bool):
        return "all_but_first" if value else "none"
    return check_choice(value, BATCHNORM, key, "all")


def mlp_hidden(
    d_in: int, widths: Sequence[int], activation: str, batchnorm: str, pieces: int = 5
) -> tuple[list[nn.Module], int]:
    """Hidden layers ``d_in -> widths...`` and the width they end with.

    Each layer: an affine map (``Maxout`` of ``pieces`` pieces for ``activation="maxout"``), then
    batch norm where ``batchnorm`` puts it (``all``, ``all_but_first``, ``none``), then the
    nonlinearity. A linear layer followed by batch norm has no bias: the normalisation subtracts it.
    """
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        norm = batchnorm == "all" or (batchnorm == "all_but_first" and i > 0)
        if activation == "maxout":
            layers.append(Maxout(d_in, width, pieces))  # each piece's bias shapes the maximum: kept
        else:
            layers.append(nn.Linear(d_in, width, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm1d(width))
        if activation == "relu":
            layers.append(nn.ReLU())
        elif activation == "leaky_relu":
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        elif activation == "tanh":
            layers.append(nn.Tanh())
        d_in = width
    return layers, d_in


def mlp_generator(
    z_dim: int,
    shape: Sequence[int],
    widths: Sequence[int],
    activation: str = "leaky_relu",
    batchnorm: str = "all_but_first",
    pieces: int = 5,
) -> nn.Sequential:
    """z [B, z_dim] -> widths... -> data [B, *shape]; see :func:`mlp_hidden`. The output layer has a bias and no norm."""
    layers, d_in = mlp_hidden(z_dim, widths, activation, batchnorm, pieces)
    layers += [nn.Linear(d_in, _numel(shape)), _output_activation(shape), _Reshape(shape)]
    return nn.Sequential(*layers)


def mlp_discriminator(
    shape: Sequence[int],
    widths: Sequence[int],
    out_features: int = 1,
    activation: str = "leaky_relu",
    batchnorm: str = "none",
    pieces: int = 5,
) -> nn.Sequential:
    """data [B, *shape] -> widths... -> logit [B, out_features]; no sigmoid (objectives work on logits)."""
    layers, d_in = mlp_hidden(_numel(shape), widths, activation, batchnorm, pieces)
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(d_in, out_features))


def packed_shape(shape: Sequence[int], pack: int) -> tuple[int, ...]:
    """The discriminator's input shape when it sees ``pack`` samples at once (PacGAN, Lin et al. 2018).

    Samples are concatenated along the first data axis: ``[pack * D]`` for vectors, ``[pack * C, H, W]``
    for images, which is what ``x.reshape(B // pack, pack * x.shape[1], ...)`` of a batch gives.
    """
    return (int(shape[0]) * pack, *(int(s) for s in shape[1:]))


def init_weights_(module: nn.Module, init: str) -> None:
    """``dcgan``: :func:`dcgan_init_`; ``orthogonal``: orthogonal weights (Saxe et al. 2014), zero biases; ``default``: PyTorch's own."""
    if init == "dcgan":
        dcgan_init_(module)
    elif init == "orthogonal":
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class GanMLP(AdversarialModel):
    """Fully connected GAN; by default G z(100) -> 128 -> 256 -> 512 -> 1024 -> data, D data -> 512 -> 256 -> 1, LeakyReLU(0.2).

    Every choice is a config key: widths and ``z_dim``; ``g_activation`` / ``d_activation``
    (``relu``, ``leaky_relu``, ``maxout`` of ``maxout_pieces`` pieces, ``tanh``); ``g_batchnorm`` /
    ``d_batchnorm`` (``all``, ``all_but_first``, ``none``); ``init`` (``default``, ``dcgan`` N(0, 0.02),
    ``orthogonal``); ``pack``, the samples D judges at once (PacGAN; follows ``objective.pack``).
    PacGAN's toy networks (``experiment=pacgan_ring``): G 4 x 400 ReLU with batch norm on every
    layer, D 3 x 200 maxout of 5 pieces, N(0, 0.02), 2-D noise.
    """

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 100,
        g_widths: Sequence[int] = (128, 256, 512, 1024),
        d_widths: Sequence[int] = (512, 256),
        g_batchnorm: str | bool = "all_but_first",
        d_batchnorm: str | bool = "none",
        g_activation: str = "leaky_relu",
        d_activation: str = "leaky_relu",
        maxout_pieces: int = 5,
        init: str = "default",
        spectral_norm: bool = False,
        pack: int = 1,
    ) -> None:
        shape = _check_shape(shape)
        g_bn, d_bn = batchnorm_placement(g_batchnorm, "model.g_batchnorm"), batchnorm_placement(d_batchnorm, "model.d_batchnorm")
        check_choice(g_activation, ACTIVATIONS, "model.g_activation", "relu")
        check_choice(d_activation, ACTIVATIONS, "model.d_activation", "maxout")
        check_choice(init, INITS, "model.init", "dcgan")
        pieces = check_int(maxout_pieces, "model.maxout_pieces", 2, example=5)
        pack = check_int(pack, "model.pack", 1, example=2)
        # first: the seeded initialisation draws D, then G
        discriminator = mlp_discriminator(packed_shape(shape, pack), list(d_widths), 1, d_activation, d_bn, pieces)
        generator = mlp_generator(z_dim, shape, list(g_widths), g_activation, g_bn, pieces)
        init_weights_(discriminator, init)
        init_weights_(generator, init)
        super().__init__(generator, discriminator, z_dim, spectral_norm, pack)


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
    return check_choice(norm, D_NORMS, "model.d_norm", "layer (WGAN-GP critics)")


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
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGAN(AdversarialModel):
    """DCGAN for square images of any side divisible by 2; on vector data (the 2-D toy sets) it uses the MLP networks.

    ``d_norm``: the discriminator's normalisation, ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP
    critics: the gradient penalty is per sample, which batch norm would couple); ``spectral_norm``
    normalises every discriminator layer (SNGAN); ``init``: ``dcgan`` (N(0, 0.02), the paper's),
    ``orthogonal`` or ``default`` (PyTorch's); ``pack``: samples D judges at once (PacGAN: D takes
    ``pack * C`` channels; follows ``objective.pack``).
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
        init: str = "dcgan",
        pack: int = 1,
    ) -> None:
        shape = _check_shape(shape)
        _check_d_norm(d_norm)
        check_choice(init, INITS, "model.init", "dcgan")
        pack = check_int(pack, "model.pack", 1, example=2)
        if len(shape) == 1:
            log.warning("model=dcgan: vector data %s has no spatial axes, so it uses the MLP networks", shape)
            generator = mlp_generator(z_dim, shape, list(mlp_g_widths))
            discriminator = mlp_discriminator(packed_shape(shape, pack), list(mlp_d_widths))
            if init != "dcgan":  # the MLP networks keep their own (PyTorch's) initialisation unless asked
                init_weights_(generator, init)
                init_weights_(discriminator, init)
        else:
            _check_square("dcgan", shape)
            generator, discriminator = dcgan_generator(z_dim, shape, g_width), dcgan_discriminator(packed_shape(shape, pack), d_width, d_norm)
            init_weights_(generator, init)
            init_weights_(discriminator, init)
        super().__init__(generator, discriminator, z_dim, spectral_norm, pack)


def _check_square(name: str, shape: tuple[int, ...]) -> None:
    if shape[1] != shape[2]:
        raise GentrainError(f"model={name} needs square images, got {shape[1]}x{shape[2]}; set dataset.size to one side")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise GentrainError(f"data shape must be [D] or [C, H, W], got {list(shape)}; check dataset.shape")
    return shape
