"""Invertible layers of RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018).

Every layer maps ``x -> (y, log_det)`` in :meth:`forward` (``log_det [B]``: ``log |det dy/dx|`` of
each example) and back in :meth:`inverse`. Images are ``[B, C, H, W]``, vectors ``[B, D]``.

- :class:`Squeeze`: space-to-depth, ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (RealNVP sec. 3.6).
- :class:`CheckerboardCoupling`, :class:`ChannelCoupling`: RealNVP's affine couplings with a spatial
  checkerboard mask and with a channel mask; coupling networks are small ResNets.
- :class:`ActNorm`: per-channel affine with data-dependent initialisation (Glow sec. 3.1).
- :class:`InvertibleLinearLU`: Glow's invertible 1x1 convolution in the LU parameterisation (sec. 3.2);
  on vectors it is the invertible linear map it is the analogue of.
- :class:`GlowCoupling`: Glow's affine coupling (sec. 3.3): channel split, zero-initialised last
  convolution, so that a step starts as the identity.
- :class:`SplitPrior`: Glow's learned conditional prior of the half that a level factors out,
  written as a bijection (half -> standardised noise) so that the base distribution stays N(0, I).
- :class:`VectorCoupling`: the affine coupling on vectors (an MLP on one half scales and shifts the other).
- :class:`FlowSequence`, :class:`MultiScaleFlow`: composition, and the multi-scale architecture
  that factors out half of the variables after each scale (RealNVP sec. 3.6).

Affine couplings use ``y = x * exp(s) + t`` with ``s = scale * tanh(raw)`` (a learned per-channel
``scale``, initially 1): the log-scale stays bounded, which keeps early training and sampling stable.

Precision. Under a bf16 autocast (``device.precision=bf16``) everything that defines the density
runs in float32: a log-density is only correct if each log-determinant is that of the map actually
applied, and a sum of 16 LU log-dets taken from fp32 parameters while the weight is applied in bf16
was off by ~4 nats per 8x8 image. So

- the data stream through the layers is float32 (:func:`fp32` on entry to :class:`FlowSequence` and
  :class:`MultiScaleFlow`; float64 stays float64), and so are the log-determinants and their sums;
- :class:`InvertibleLinearLU` builds ``W`` and applies it with autocast off (:func:`autocast_off`),
  the only matrix products of the flow itself (ActNorm, squeeze, couplings' affine maps, splits are
  elementwise, which autocast leaves in float32);
- the coupling networks (and SplitPrior's convolution) may run in bf16, for speed: they only
  *parameterise* the map, and their outputs are cast to float32 once, before the same values
  give both the transform and its log-determinant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.models.likelihood import LOG_2PI, sum_except_batch


def fp32(t: Tensor) -> Tensor:
    """``t`` in float32 at least: half precision (autocast's outputs) becomes float32, float32 and float64 stay."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def autocast_off(t: Tensor) -> torch.autocast:
    """A context with autocast off on ``t``'s device: matrix products and convolutions run in their inputs' dtype."""
    return torch.autocast(t.device.type, enabled=False)


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """``log N(eps; 0, I)`` per example: ``[B, ...] -> [B]``."""
    return sum_except_batch(-0.5 * (eps**2 + LOG_2PI))


class FlowLayer(nn.Module):
    """An invertible map: ``forward(x) -> (y, log|det dy/dx| [B])``, ``inverse(y) -> x``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """Layers applied in order; log-determinants add up (in float32 at least, whatever the input's dtype)."""

    def __init__(self, layers: Sequence[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = fp32(x)
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y: Tensor) -> Tensor:
        y = fp32(y)
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


# ---- RealNVP -----------------------------------------------------------------------------------


class Squeeze(FlowLayer):
    """Space-to-depth (RealNVP, Dinh et al. 2017, sec. 3.6): each 2x2 block of a channel becomes 4 channels.

    ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, channel ``4c + 2i + j`` holding pixel ``(2h + i, 2w + j)`` of
    channel ``c``. A permutation: ``log_det = 0``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c4, h, w = y.shape
        c = c4 // 4
        return y.view(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class ResNetCouplingNet(nn.Module):
    """RealNVP's coupling network: ``[B, in, H, W] -> [B, out, H, W]``.

    3x3 convolution to ``hidden`` channels, ``blocks`` residual blocks (ReLU, 3x3 conv, ReLU, 3x3 conv,
    plus the skip), ReLU, and a zero-initialised 3x3 output convolution (the coupling starts as the identity).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1))
            for _ in range(blocks)
        )
        self.conv_out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = h + block(h)
        return self.conv_out(F.relu(h))


def _bounded_log_scale(raw: Tensor, scale: Tensor) -> Tensor:
    """``s = scale * tanh(raw)``: a log-scale bounded by the learned ``scale`` (RealNVP sec. 4.1 uses a tanh-bounded scale too)."""
    return scale * torch.tanh(raw)


class CheckerboardCoupling(FlowLayer):
    """RealNVP affine coupling with a spatial checkerboard mask ``b`` (Dinh et al. 2017, eq. 9).

    ``y = b x + (1 - b) (x exp(s(b x)) + t(b x))`` on ``[B, C, H, W]``; ``log_det = sum (1 - b) s``.
    ``parity`` (0 or 1) picks which pixels condition (``b = 1`` where ``(i + j + parity)`` is even).
    """

    def __init__(self, channels: int, size: tuple[int, int], hidden: int, blocks: int, parity: int) -> None:
        super().__init__()
        h, w = size
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = ((ii + jj + parity) % 2 == 0).float().view(1, 1, h, w)
        self.register_buffer("mask", mask, persistent=False)
        self.net = ResNetCouplingNet(channels, 2 * channels, hidden, blocks)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def _st(self, x_cond: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = fp32(self.net(x_cond)).chunk(2, dim=1)
        inv = 1 - self.mask
        return _bounded_log_scale(raw, self.scale) * inv, t * inv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x * self.mask)
        return x * torch.exp(s) + t, sum_except_batch(s)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._st(y * self.mask)  # the conditioning pixels pass through unchanged
        return (y - t) * torch.exp(-s)


class HalfCoupling(FlowLayer):
    """Affine coupling on a split along axis 1: one half conditions a scale and shift of the other.

    ``flip`` swaps the halves' roles, so that consecutive couplings transform each half in turn.
    Subclasses set ``net`` (half -> 2 * half along axis 1) and ``scale`` (the bound of the log-scale).
    """

    flip: bool
    net: nn.Module
    scale: nn.Parameter

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.chunk(2, dim=1)
        return (b, a) if self.flip else (a, b)

    def _join(self, cond: Tensor, other: Tensor) -> Tensor:
        return torch.cat((other, cond) if self.flip else (cond, other), dim=1)

    def _st(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = fp32(self.net(cond)).chunk(2, dim=1)
        return _bounded_log_scale(raw, self.scale), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cond, other = self._split(x)
        s, t = self._st(cond)
        return self._join(cond, other * torch.exp(s) + t), sum_except_batch(s)

    def inverse(self, y: Tensor) -> Tensor:
        cond, other = self._split(y)
        s, t = self._st(cond)
        return self._join(cond, (other - t) * torch.exp(-s))


class ChannelCoupling(HalfCoupling):
    """RealNVP affine coupling with a channel mask (Dinh et al. 2017, sec. 3.4) on ``[B, C, H, W]``, C even."""

    def __init__(self, channels: int, hidden: int, blocks: int, flip: bool) -> None:
        super().__init__()
        half = channels // 2
        self.flip = flip
        self.net = ResNetCouplingNet(half, 2 * half, hidden, blocks)
        self.scale = nn.Parameter(torch.ones(1, half, 1, 1))


class VectorCoupling(HalfCoupling):
    """Affine coupling on vectors ``[B, D]`` (D even): an MLP of one half gives the scale and shift of the other.

    RealNVP's coupling with alternating masks (``flip`` picks the half that is transformed); Glow's 1-D
    coupling is the same layer after an invertible linear map. The MLP: ``layers`` hidden layers of
    ``hidden`` units with SiLU (smooth densities for 2-D plots), zero-initialised output.
    """

    def __init__(self, dim: int, hidden: int, flip: bool, layers: int = 2) -> None:
        super().__init__()
        half = dim // 2
        self.flip = flip
        mods: list[nn.Module] = []
        d_in = half
        for _ in range(layers):
            mods += [nn.Linear(d_in, hidden), nn.SiLU()]
            d_in = hidden
        out = nn.Linear(d_in, 2 * half)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*mods, out)
        self.scale = nn.Parameter(torch.ones(1, half))


# ---- Glow --------------------------------------------------------------------------------------


class ActNorm(FlowLayer):
    """Activation normalisation (Glow, Kingma & Dhariwal 2018, sec. 3.1): ``y = (x + bias) * exp(log_scale)`` per channel.

    Works on ``[B, C, H, W]`` and ``[B, C]``; ``log_det = H W sum(log_scale)`` (``H W = 1`` for vectors).
    Data-dependent initialisation: the first forward pass sets ``bias = -mean`` and
    ``log_scale = -log(std)`` per channel over that batch, so its outputs have zero mean and unit
    variance. The ``initialized`` buffer is part of the state dict: a model restored from a checkpoint
    does not initialise again.
    """

    initialized: Tensor

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels))
        self.log_scale = nn.Parameter(torch.zeros(1, channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))
        self._checked = False  # the buffer has been read since construction or the last load (one host sync, not one per step)

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and scale from the batch ``x`` (per-channel mean and standard deviation)."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1)
        std = flat.std(1, unbiased=False) if flat.shape[1] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean.view(1, -1))
        self.log_scale.copy_(-torch.log(std + self.eps).view(1, -1))
        self.initialized.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._checked = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self._checked:
            if not bool(self.initialized):
                self.initialize(x)
            self._checked = True
        pixels = x[0, 0].numel()
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        return y, (pixels * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)


class InvertibleLinearLU(FlowLayer):
    """Glow's invertible 1x1 convolution, LU-parameterised (Kingma & Dhariwal 2018, sec. 3.2).

    ``W = P L (U + diag(sign(s) exp(log|s|)))`` with P a fixed permutation, L unit lower triangular,
    U strictly upper triangular; ``log|det W| = sum(log|s|)``. On ``[B, C, H, W]`` it is a 1x1
    convolution (``log_det = H W sum(log|s|)``); on vectors ``[B, C]`` the linear map ``y = W x``
    (the 1-D analogue). Initialised from a random rotation, as in Glow.

    ``W`` is built and applied with autocast off, in the parameters' dtype: the log-determinant
    ``sum(log|s|)`` is then that of the map applied (a bf16 ``W`` is not).
    """

    P: Tensor
    sign_s: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("P", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.L = nn.Parameter(lower * self.lower_mask)
        self.U = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> Tensor:
        """The ``[C, C]`` matrix ``W`` built from P, L and U, in the parameters' dtype."""
        with autocast_off(self.L):
            eye = torch.eye(self.P.shape[0], device=self.P.device, dtype=self.L.dtype)
            lower = self.L * self.lower_mask + eye
            upper = self.U * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
            return self.P @ lower @ upper

    def _mix(self, x: Tensor, w: Tensor) -> Tensor:
        x = fp32(x)
        with autocast_off(x):
            if x.dim() == 4:
                return F.conv2d(x, w.view(*w.shape, 1, 1))
            return x @ w.T

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pixels = x[0, 0].numel()
        return self._mix(x, self.weight()), (pixels * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        with autocast_off(y):
            return self._mix(y, torch.linalg.inv(self.weight()))


class ZeroConv2d(nn.Module):
    """Glow's zero-initialised 3x3 convolution, its output scaled by ``exp(3 log_scale)`` (per channel, zero-initialised)."""

    def __init__(self, in_channels: int, out_channels: int, log_scale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.log_scale_factor = log_scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.log_scale * self.log_scale_factor)


class GlowCouplingNet(nn.Module):
    """Glow's coupling network ``NN()``: 3x3 conv, ActNorm, ReLU, 1x1 conv, ActNorm, ReLU, zero-initialised 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, out_channels)
        nn.init.normal_(self.conv1.weight, 0.0, 0.05)
        nn.init.normal_(self.conv2.weight, 0.0, 0.05)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x))[0])
        h = F.relu(self.norm2(self.conv2(h))[0])
        return self.out(h)


class GlowCoupling(HalfCoupling):
    """Glow's affine coupling (Kingma & Dhariwal 2018, sec. 3.3) on ``[B, C, H, W]``, C even.

    ``x_a, x_b = split(x)``; ``(s, t) = NN(x_a)``; ``y = concat(x_a, x_b exp(s) + t)``; ``log_det = sum s``.
    NN's last convolution is zero-initialised, so the step starts as the identity. The split is
    fixed (never flipped): the invertible 1x1 convolution before it mixes the channels.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        half = channels // 2
        self.flip = False
        self.net = GlowCouplingNet(half, 2 * half, hidden)
        self.scale = nn.Parameter(torch.ones(1, half, 1, 1))


class SplitPrior(FlowLayer):
    """Glow's split with a learned prior (Kingma & Dhariwal 2018, sec. 3 and the reference ``split2d``).

    The half ``z_b`` that a level factors out gets ``N(mean(z_a), exp(log_std(z_a))^2)`` from the kept
    half ``z_a`` (a zero-initialised convolution). Written as a bijection onto standardised noise:
    ``y = concat(z_a, (z_b - mean) exp(-log_std))``, ``log_det = -sum(log_std)``; the multi-scale
    flow then factors out the second half of ``y`` against N(0, I). Sampling at temperature T scales
    that noise, i.e. ``z_b = mean + T exp(log_std) eps``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv = ZeroConv2d(half, 2 * half)

    def _prior(self, z_a: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = fp32(self.conv(z_a)).chunk(2, dim=1)
        return mean, log_std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z_a, z_b = x.chunk(2, dim=1)
        mean, log_std = self._prior(z_a)
        return torch.cat((z_a, (z_b - mean) * torch.exp(-log_std)), dim=1), -sum_except_batch(log_std)

    def inverse(self, y: Tensor) -> Tensor:
        z_a, eps = y.chunk(2, dim=1)
        mean, log_std = self._prior(z_a)
        return torch.cat((z_a, mean + eps * torch.exp(log_std)), dim=1)


# ---- the multi-scale architecture --------------------------------------------------------------


class MultiScaleFlow(nn.Module):
    """Stages of a multi-scale flow (RealNVP sec. 3.6; Glow's levels): ``x -> (eps [B, D], log_det [B])``.

    After every stage but the last, the second half of the channels is factored out: it is final
    (standard normal noise) and the next stage works on the first half. ``eps`` concatenates the
    factored parts in order, then the last stage's output, each flattened. ``out_shapes[i]`` is the
    per-example shape stage ``i`` produces (before factoring out).
    """

    def __init__(self, stages: Sequence[FlowLayer], out_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.out_shapes = [tuple(int(s) for s in shape) for shape in out_shapes]
        sizes = [int(np.prod(shape)) // 2 for shape in self.out_shapes[:-1]]
        self.sizes = [*sizes, int(np.prod(self.out_shapes[-1]))]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = fp32(x)
        log_det = x.new_zeros(x.shape[0])
        parts = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x, ld = stage(x)
            log_det = log_det + ld
            if i < last:
                x, z = x.chunk(2, dim=1)
                parts.append(z.flatten(1))
        parts.append(x.flatten(1))
        return torch.cat(parts, dim=1), log_det

    def inverse(self, eps: Tensor) -> Tensor:
        parts = fp32(eps).split(self.sizes, dim=1)
        b = eps.shape[0]
        x = parts[-1].reshape(b, *self.out_shapes[-1])
        x = self.stages[-1].inverse(x)
        for i in range(len(self.stages) - 2, -1, -1):
            c, *rest = self.out_shapes[i]
            z = parts[i].reshape(b, c // 2, *rest)
            x = self.stages[i].inverse(torch.cat((x, z), dim=1))
        return x


__all__ = [
    "ActNorm",
    "ChannelCoupling",
    "CheckerboardCoupling",
    "FlowLayer",
    "FlowSequence",
    "GlowCoupling",
    "GlowCouplingNet",
    "InvertibleLinearLU",
    "MultiScaleFlow",
    "ResNetCouplingNet",
    "SplitPrior",
    "Squeeze",
    "VectorCoupling",
    "ZeroConv2d",
    "autocast_off",
    "fp32",
    "standard_normal_log_prob",
    "sum_except_batch",
]
