"""Autoregressive models: exact likelihoods as products of conditionals (objective=ar_nll).

``PixelCNN``: masked convolutions over an image in raster order (van den Oord et al. 2016, "Pixel
Recurrent Neural Networks"), and with ``gated=True`` the Gated PixelCNN's vertical and horizontal
stacks (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"), which
removes the plain model's blind spot. Within a pixel, channels are generated R -> G -> B: every
hidden layer's channels are split into C groups and group g only sees the current pixel's groups
< g (mask A, the first layer) or <= g (mask B, the later ones).

``MADE``: a masked MLP over the D flattened dimensions (Germain et al. 2015); the masks come from
the degrees of the units, so output d only depends on the inputs before d in ``ordering``.

For images both output a K-way categorical per sub-pixel, K the data's levels (``model.data_levels``,
from ``dataset.levels``: 256 for 8-bit images, 17 for the digits), so ``log_prob`` is the exact
log-probability of the discrete levels and samples are levels of the data; on vector data (the 2-D toy sets) MADE outputs a Gaussian
per dimension (mean, log-std) and ``log_prob`` is a log-density. Sampling runs one network pass per
dimension (H * W * C for PixelCNN, D for MADE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.engine.progress import phase, tick
from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.models.likelihood import LEVELS_8BIT, LikelihoodModel, check_levels, from_levels, gaussian_log_density, to_levels

#: The softmax size of 8-bit images (the default; models use their ``data_levels``).
LEVELS = LEVELS_8BIT
ORDERINGS = ("natural", "reverse", "random")
LOG_STD_MIN, LOG_STD_MAX = -9.0, 5.0



class AutoregressiveModel(LikelihoodModel):
    """Autoregressive models (objective=ar_nll)."""

    def training_log_prob(self, x: Tensor, y: Tensor | None) -> Tensor:
        """What ``objective=ar_nll`` maximises for a batch with labels ``y`` (None: unlabelled): ``log_prob(x)`` here;
        a class-conditional model gives ``log p(x | y)``."""
        return self.log_prob(x)


# ----------------------------------------------------------------------------- validation


def _shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise GentrainError(f"model.shape={shape!r} is not a list of sizes; leave model.shape=${{dataset.shape}}") from None
    if len(out) not in (1, 3) or any(s < 1 for s in out):
        raise GentrainError(f"model.shape={list(out)} is neither [C, H, W] nor [D]; leave model.shape=${{dataset.shape}}")
    return out


def image_shape(shape: Any, model: str) -> tuple[int, int, int]:
    """``model.shape`` as [C, H, W] for an image-only model (``model=<model>``); vectors [D] and sequences [C, T] are
    refused in one line naming the model that fits them."""
    try:
        sizes = [int(s) for s in shape]
    except (TypeError, ValueError):
        sizes = None  # _shape says what is wrong with it
    if sizes is not None and len(sizes) == 1:
        raise GentrainError(f"model={model} needs images and the data has shape {sizes}; use model=made for vectors")
    if sizes is not None and len(sizes) == 2:
        raise GentrainError(f"model={model} needs images [C, H, W] and the data has shape {sizes}, a sequence [C, T]; use model=wavenet for sequences")
    c, h, w = _shape(shape)
    return c, h, w


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise GentrainError(f"model.temperature must be a number > 0, got {value!r}; e.g. model.temperature=1.0")
    return float(value)


# ----------------------------------------------------------------------------- PixelCNN


def channel_groups(n: int, c: int) -> Tensor:
    """The colour group of each of ``n`` feature channels: contiguous, near-equal blocks, ``i * c // n`` (``n`` >= ``c``)."""
    return torch.arange(n) * c // n


def causal_mask(kh: int, kw: int, cy: int, cx: int, in_groups: Tensor, out_groups: Tensor, mask_type: str) -> Tensor:
    """A convolution mask [out, in, kh, kw] centred at (cy, cx): rows above and the columns left of the centre pass;
    the centre passes from input group g_in to output group g_out when g_out > g_in (type A) or g_out >= g_in (type B)."""
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    mask[:, :, :cy, :] = 1
    mask[:, :, cy, :cx] = 1
    centre = out_groups[:, None] > in_groups[None, :] if mask_type == "A" else out_groups[:, None] >= in_groups[None, :]
    mask[:, :, cy, cx] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed causal mask (:func:`causal_mask`), centred on the output pixel."""

    def __init__(
        self, in_groups: Tensor, out_groups: Tensor, kernel: tuple[int, int], mask_type: str, centre: tuple[int, int] | None = None
    ) -> None:
        kh, kw = kernel
        cy, cx = centre if centre is not None else (kh // 2, kw // 2)
        super().__init__(len(in_groups), len(out_groups), kernel, padding=(cy, cx))
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kh, kw, cy, cx, in_groups, out_groups, mask_type), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self._conv_forward(x, self.weight * self.mask, self.bias)
        # a kernel centred off its middle (the horizontal stack's 1 x k) pads both sides by the centre offset: keep the input's size
        return out[..., : x.shape[-2], : x.shape[-1]]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask={self.mask_type}"


class ResidualBlock(nn.Module):
    """PixelCNN's residual block (Pixel RNN paper, Fig. 5): ReLU, 1x1 (h -> h/2), ReLU, 3x3, ReLU, 1x1 (h/2 -> h), plus the input; masks B."""

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__()
        g, g2 = channel_groups(hidden, channels), channel_groups(hidden // 2, channels)
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(g, g2, (1, 1), "B"),
            nn.ReLU(),
            MaskedConv2d(g2, g2, (3, 3), "B"),
            nn.ReLU(),
            MaskedConv2d(g2, g, (1, 1), "B"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def _output_head(hidden: int, channels: int, levels: int) -> nn.Sequential:
    """ReLU, 1x1, ReLU, 1x1 -> ``levels`` logits per channel (channel c's logits are output channels c*K .. c*K+K-1); masks B."""
    g = channel_groups(hidden, channels)
    return nn.Sequential(
        nn.ReLU(),
        MaskedConv2d(g, g, (1, 1), "B"),
        nn.ReLU(),
        MaskedConv2d(g, channel_groups(levels * channels, channels), (1, 1), "B"),
    )


class PlainPixelCNNNet(nn.Module):
    """A 7x7 mask-A convolution, ``layers`` residual blocks, the output head: [B, C, H, W] -> [B, K C, H, W]."""

    def __init__(self, channels: int, hidden: int, layers: int, first_kernel: int, levels: int = LEVELS) -> None:
        super().__init__()
        self.first = MaskedConv2d(torch.arange(channels), channel_groups(hidden, channels), (first_kernel, first_kernel), "A")
        self.blocks = nn.Sequential(*(ResidualBlock(hidden, channels) for _ in range(layers)))
        self.head = _output_head(hidden, channels, levels)

    def features(self, x: Tensor) -> Tensor:
        return self.blocks(self.first(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _gate(x: Tensor) -> Tensor:
    """The gated activation unit: tanh(a) * sigmoid(b), with (a, b) the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: Tensor) -> Tensor:
    """Move every row one down (a zero row on top): row r then holds what was computed at row r - 1."""
    return F.pad(x, (0, 0, 1, 0))[..., : x.shape[-2], :]


class GatedLayer(nn.Module):
    """One layer of the Gated PixelCNN (van den Oord et al. 2016b, Fig. 2).

    Vertical stack: a (k//2 + 1) x k convolution over the rows up to and including the current one
    (padded on top), gated. Its pre-activations, shifted one row down so that they only carry the rows
    strictly above, go through a 1x1 convolution into the horizontal stack: a 1 x (k//2 + 1)
    convolution over the current row up to the current pixel (mask A in the first layer, B later;
    the channel groups order R -> G -> B), gated, a 1x1 convolution, and a residual connection (not
    in the first layer, whose input is the image).
    """

    def __init__(self, in_channels: int, hidden: int, channels: int, kernel: int, first: bool) -> None:
        super().__init__()
        self.k = kernel
        self.first = first
        in_groups = torch.arange(channels) if first else channel_groups(hidden, channels)
        g = channel_groups(hidden, channels)
        g2 = torch.cat([g, g])  # (a, b) halves of a gate: a_i and b_i belong to the same group
        self.v_conv = nn.Conv2d(in_channels, 2 * hidden, (kernel // 2 + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_conv = MaskedConv2d(in_groups, g2, (1, kernel // 2 + 1), "A" if first else "B", centre=(0, kernel // 2))
        self.h_out = MaskedConv2d(g, g, (1, 1), "B")

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        p = self.k // 2
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # row r sees rows r - p .. r
        h_pre = self.h_conv(h) + self.v_to_h(_shift_down(v_pre))  # rows < r from the vertical stack
        h_new = self.h_out(_gate(h_pre))
        return _gate(v_pre), h_new if self.first else h + h_new


class GatedPixelCNNNet(nn.Module):
    """``layers`` gated layers (the first with a ``first_kernel``-wide field, the rest 3), the output head on the horizontal stack."""

    def __init__(self, channels: int, hidden: int, layers: int, first_kernel: int, levels: int = LEVELS) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GatedLayer(channels if i == 0 else hidden, hidden, channels, first_kernel if i == 0 else 3, first=i == 0) for i in range(layers)
        )
        self.head = _output_head(hidden, channels, levels)

    def features(self, x: Tensor) -> Tensor:
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class SubpixelModel(AutoregressiveModel):
    """An image model with a K-way categorical per sub-pixel in raster order, channels R -> G -> B inside a pixel
    (PixelCNN, PixelRNN): its ``net`` maps [B, C, H, W] to [B, C K, H, W] logits as ``head(features(x))``, with a
    1x1 ``head`` and ``features`` causal along the rows (row i's features depend on the rows up to i only)."""

    shape: tuple[int, ...]
    data_levels: int
    temperature: float
    net: nn.Module

    def ema_target(self) -> str | None:
        return "net"

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> logits [B, K, C, H, W]; those at (c, i, j) depend only on earlier sub-pixels."""
        b, c, h, w = x.shape
        out = self.net(x)  # [B, C * K, H, W], channel c's logits in block c
        return out.view(b, c, self.data_levels, h, w).transpose(1, 2)

    def log_prob(self, x: Tensor) -> Tensor:
        """``sum_{c,i,j} log softmax(logits)[level of x_{c,i,j}]``: [B], nats (in float32 at least: float64 models stay float64)."""
        logits = self(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nll = F.cross_entropy(logits, to_levels(x, self.data_levels), reduction="none")  # [B, C, H, W]
        return -nll.flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` images, sub-pixel by sub-pixel in raster order (H W C network passes, each over the rows up to the current one)."""
        t = self.temperature if temperature is None else _temperature(temperature)
        c, h, w = self.shape
        p = next(self.parameters())
        x = torch.zeros(n, c, h, w, device=p.device, dtype=p.dtype)
        with phase("sub-pixels", c * h * w):
            for i in range(h):
                for j in range(w):
                    for k in range(c):
                        # causal: rows after i change nothing at row i, so the pass covers rows 0..i only;
                        # the head is 1x1, so it runs on pixel (i, j) alone
                        feats = self.net.features(x[:, :, : i + 1])[:, :, i : i + 1, j : j + 1]
                        logits = self.net.head(feats).view(n, c, self.data_levels)[:, k].float() / t
                        level = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
                        x[:, k, i, j] = from_levels(level, self.data_levels).to(x.dtype)
                        tick()
        return x


class PixelCNN(SubpixelModel):
    """PixelCNN over images [C, H, W]: a K-way categorical per sub-pixel (K = ``data_levels``), in raster order, channels R -> G -> B.

    Args:
        shape: ``[C, H, W]`` (``${dataset.shape}``).
        hidden: channels of the residual stream (split into C colour groups; at least 2 C).
        layers: residual blocks (plain) or gated layers (``gated=True``) after the first.
        gated: the Gated PixelCNN (vertical and horizontal stacks, tanh * sigmoid units): no blind spot.
        first_kernel: the side of the first (mask A) convolution, odd; 7 in the papers.
        temperature: sampling temperature (logits / temperature); 1 samples the model.
        data_levels: the data's levels per sub-pixel, the softmax size (``${dataset.levels}``; None: 256).
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: int = 64,
        layers: int = 7,
        gated: bool = False,
        first_kernel: int = 7,
        temperature: float = 1.0,
        data_levels: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = shape = image_shape(shape, "pixelcnn")
        self.data_levels = check_levels(data_levels, True)
        if self.data_levels != LEVELS:
            self.likelihood_kind = f"exact ({self.data_levels} levels)"
        channels = shape[0]
        hidden = check_int(hidden, "model.hidden", example=64)
        if hidden < 2 * channels:
            raise GentrainError(f"model.hidden={hidden} is too small for {channels} colour groups; use model.hidden >= {2 * channels}")
        layers = check_int(layers, "model.layers", example=64)
        first_kernel = check_int(first_kernel, "model.first_kernel", example=64)
        if first_kernel % 2 == 0:
            raise GentrainError(f"model.first_kernel={first_kernel} must be odd; e.g. model.first_kernel=7")
        self.gated = bool(gated)
        self.temperature = _temperature(temperature)
        net_cls = GatedPixelCNNNet if self.gated else PlainPixelCNNNet
        self.net = net_cls(channels, hidden, layers, first_kernel, self.data_levels)



# ----------------------------------------------------------------------------- MADE


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask)  # [out, in]; saved: it comes from the ordering and the sampled degrees

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def ordering_of(name: str, d: int, seed: int) -> Tensor:
    """The order [D] in which dimensions are generated: ``order[k]`` is the k-th dimension."""
    if name == "natural":
        return torch.arange(d)
    if name == "reverse":
        return torch.arange(d - 1, -1, -1)
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))


def made_degrees(order: Tensor, hidden: Sequence[int], seed: int) -> list[Tensor]:
    """Degrees of the input units (1..D: the position of each dimension in the ordering) and of each hidden layer,
    sampled uniformly from [min of the previous layer, D - 1] as in Germain et al. (2015), with a fixed seed."""
    d = len(order)
    degrees = [torch.empty(d, dtype=torch.long)]
    degrees[0][order] = torch.arange(1, d + 1)
    g = torch.Generator().manual_seed(seed + 1)
    for width in hidden:
        low = min(int(degrees[-1].min()), d - 1)
        degrees.append(torch.randint(low, max(d - 1, low) + 1, (width,), generator=g))
    return degrees


class MADE(AutoregressiveModel):
    """MADE: a masked MLP over the flattened data; output d only depends on the inputs before d in ``ordering``.

    On images ([C, H, W]) every dimension gets a K-way categorical, K the data's levels (exact
    discrete likelihood); the output layer then has ``hidden[-1] * D * K`` weights (D = C H W): 0.56 M
    for the 8x8 digits (K = 17) with hidden 512, 103 M (0.4 GB, 1.6 GB with Adam's state) for 28x28
    8-bit images; use smaller ``hidden`` there. On vectors ([D], the toy sets) every dimension gets a Gaussian, mean and
    log-std (clamped to [-9, 5]) from the network; ``log_prob`` is then a log-density.

    Args:
        shape: ``[C, H, W]`` or ``[D]`` (``${dataset.shape}``).
        hidden: widths of the hidden layers (ReLU).
        ordering: ``natural``, ``reverse`` or ``random`` (a permutation fixed by ``seed``); a buffer, saved in checkpoints.
        seed: seeds the random ordering and the hidden units' degrees (the masks are buffers too).
        temperature: sampling temperature (logits / t for images, std * t for vectors).
        data_levels: images: the data's levels per sub-pixel, the softmax size (``${dataset.levels}``; None: 256); vectors: None.
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: Sequence[int] = (512, 512),
        ordering: str = "natural",
        seed: int = 0,
        temperature: float = 1.0,
        data_levels: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = _shape(shape)
        self.images = len(self.shape) == 3
        self.data_levels = check_levels(data_levels, self.images)
        if self.images and self.data_levels != LEVELS:
            self.likelihood_kind = f"exact ({self.data_levels} levels)"
        try:
            widths = [int(w) for w in hidden]
        except (TypeError, ValueError):
            raise GentrainError(f"model.hidden={hidden!r} is not a list of widths; e.g. model.hidden=[512,512]") from None
        if not widths or any(w < 1 for w in widths):
            raise GentrainError(f"model.hidden={widths} needs at least one width >= 1; e.g. model.hidden=[512,512]")
        check_choice(ordering, ORDERINGS, "model.ordering", "random")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise GentrainError(f"model.seed must be an integer, got {seed!r}; e.g. model.seed=0")
        self.ordering = ordering
        self.temperature = _temperature(temperature)
        d = math.prod(self.shape)
        self.dims = d
        self.per_dim = self.data_levels if self.images else 2  # K logits, or (mean, log-std)
        order = ordering_of(ordering, d, seed)
        self.register_buffer("order", order)
        degrees = made_degrees(order, widths, seed)
        layers: list[nn.Module] = []
        for (m_in, m_out), width in zip(zip(degrees[:-1], degrees[1:]), widths):
            layers += [MaskedLinear(len(m_in), width, (m_out[:, None] >= m_in[None, :]).float()), nn.ReLU()]
        # output unit j belongs to dimension j // per_dim and sees hidden units of a strictly lower degree
        out_degree = degrees[0].repeat_interleave(self.per_dim)
        layers.append(MaskedLinear(widths[-1], d * self.per_dim, (out_degree[:, None] > degrees[-1][None, :]).float()))
        self.net = nn.Sequential(*layers)

    def ema_target(self) -> str | None:
        return "net"

    def forward(self, x: Tensor) -> Tensor:
        """Data [B, *shape] -> [B, D, K] logits (images) or [B, D, 2] (mean, log-std) for the flattened dimensions."""
        return self.net(x.flatten(1)).view(x.shape[0], self.dims, self.per_dim)

    def gaussian(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-std) [B, D] from the output [B, D, 2]."""
        return out[..., 0], out[..., 1].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, x: Tensor) -> Tensor:
        out = self(x).float()
        if self.images:
            return -F.cross_entropy(out.transpose(1, 2), to_levels(x, self.data_levels).flatten(1), reduction="none").sum(1)
        mean, log_std = self.gaussian(out)
        return gaussian_log_density(x.flatten(1).float(), mean, log_std)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` samples, one dimension at a time in the ordering (D network passes)."""
        t = self.temperature if temperature is None else _temperature(temperature)
        p = next(self.parameters())
        x = torch.zeros(n, self.dims, device=p.device, dtype=p.dtype)
        with phase("dimensions", self.dims):
            for d in self.order.tolist():
                out = self(x)[:, d].float()
                if self.images:
                    level = torch.multinomial(F.softmax(out / t, dim=1), 1, generator=generator).squeeze(1)
                    x[:, d] = from_levels(level, self.data_levels).to(x.dtype)
                else:
                    mean, log_std = self.gaussian(out)
                    noise = torch.randn(n, device=x.device, dtype=mean.dtype, generator=generator)
                    x[:, d] = (mean + t * torch.exp(log_std) * noise).to(x.dtype)
                tick()
        return x.view(n, *self.shape)


__all__ = ["MADE", "PixelCNN", "SubpixelModel", "MaskedConv2d", "MaskedLinear", "causal_mask", "channel_groups", "made_degrees", "ordering_of"]
