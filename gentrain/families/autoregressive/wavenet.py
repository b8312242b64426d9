"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio"): dilated causal convolutions.

A sample is a 1-D sequence of L values: a sequence ``[C, T]`` (audio, generated waveforms) read time-major
(``x[0, 0], x[1, 0], ..., x[C-1, T-1]``), or an image ``[C, H, W]`` in raster order with the channels inside a
pixel (the 64 pixels of the digits). Every value is one of K levels:

- sequences (continuous amplitudes in [-1, 1]): mu-law companded, ``F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)``
  with ``mu = K - 1`` (ITU-T G.711; the paper's Sec. 2.2), then quantised uniformly to K = ``model.levels`` (256)
  levels; ``model.mu_law=false`` quantises the amplitude itself. The likelihood is then that of the quantised
  value (the paper's "8-bit mu-law audio"), and a sample decodes a level to the centre of its bin;
- images: the data's own levels (``model.data_levels`` from ``dataset.levels``), as the other autoregressive models.

The network (Sec. 2.1-2.4, Fig. 4): the previous value's level is embedded (``residual_channels``; equal to a
one-hot input and a 1x1 convolution, a learned start vector before the first value), then ``stacks`` repeats of the
``dilations``, each layer a kernel-2 causal convolution of its dilation d, ``z = tanh(W_f * h + V_f y) ⊙
sigmoid(W_g * h + V_g y)`` (``V y``: global conditioning on the label, ``model.num_classes``), a 1x1 residual
connection back to ``h`` (not in the last layer, whose residual would feed nothing) and a 1x1 skip connection; the skips are summed, ReLU, 1x1, ReLU, 1x1 to K logits. The
logits at position t see the values before t only: the receptive field is ``sum(dilations) * stacks + 1`` values.

Sampling (``model.fast_generation``): the cached generator of Paine et al. (2016, "Fast Wavenet Generation
Algorithm") keeps, per layer of dilation d, a queue of its last d inputs, so each new value costs one step of every
layer (O(layers) instead of a pass over the receptive field); the naive generator reruns the network over the whole
prefix for every value (O(L) passes). Both read one uniform per value from the same generator and invert the
categorical CDF, so for the same noise they draw the same values (a test checks it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.audio import mu_law_decode, mu_law_encode
from gentrain.data.base import DataSplit
from gentrain.engine.progress import phase, tick
from gentrain.errors import GentrainError, check_int, check_int_list
from gentrain.families.autoregressive.models import AutoregressiveModel, _temperature
from gentrain.models.base import Conditional, check_labels
from gentrain.models.likelihood import LEVELS_8BIT, check_levels, from_levels, to_levels

log = logging.getLogger(__name__)

#: The paper's dilations: 1, 2, ..., 512, repeated (``model.stacks``).
DILATIONS = tuple(2**i for i in range(10))


def quantize(x: Tensor, levels: int, mu_law: bool) -> Tensor:
    """Amplitudes in [-1, 1] -> levels 0..K-1 (long): ``round((F(x) + 1) (K - 1) / 2)``, F mu-law (mu = K - 1) or the identity."""
    v = mu_law_encode(x.clamp(-1, 1), levels - 1) if mu_law else x.clamp(-1, 1)
    return torch.round((v + 1) * ((levels - 1) / 2)).clamp(0, levels - 1).long()


def dequantize_levels(u: Tensor, levels: int, mu_law: bool) -> Tensor:
    """Levels 0..K-1 -> amplitudes: the companded value ``2 u / (K - 1) - 1`` expanded by F^-1 (or as it is)."""
    v = u.float() * (2.0 / (levels - 1)) - 1.0
    return mu_law_decode(v, levels - 1) if mu_law else v


def draw(logits: Tensor, u: Tensor) -> Tensor:
    """One level per row of ``logits`` [n, K] by inverting the categorical CDF at the uniforms ``u`` [n] (long [n])."""
    cdf = torch.cumsum(F.softmax(logits.double(), dim=-1), dim=-1)
    return (cdf < u.double()[:, None]).sum(-1).clamp_max(logits.shape[-1] - 1)


class ResidualLayer(nn.Module):
    """One WaveNet layer: a kernel-2 causal convolution of dilation d, the gated unit, 1x1 residual and skip outputs."""

    def __init__(self, residual: int, dilation_channels: int, skip: int, dilation: int, num_classes: int | None, last: bool = False) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(residual, 2 * dilation_channels, kernel_size=2, dilation=dilation)  # filter and gate
        self.label = nn.Embedding(num_classes, 2 * dilation_channels) if num_classes is not None else None
        # the last layer's residual output would feed nothing (only the skips reach the head): it has none
        self.residual = None if last else nn.Conv1d(dilation_channels, residual, 1)
        self.skip = nn.Conv1d(dilation_channels, skip, 1)

    def _gate(self, z: Tensor) -> Tensor:
        a, b = z.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """h [B, R, L] -> (h + residual [B, R, L], skip [B, S, L]); position t reads positions t - d and t."""
        z = self.conv(F.pad(h, (self.dilation, 0)))
        if self.label is not None and y is not None:
            z = z + self.label(y)[:, :, None]
        g = self._gate(z)
        return (h if self.residual is None else h + self.residual(g)), self.skip(g)

    def step(self, h: Tensor, past: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """One position: the input now [n, R] and d positions ago ``past`` [n, R] -> (output [n, R], skip [n, S])."""
        w = self.conv.weight  # [2D, R, 2]: tap 0 reads t - d, tap 1 reads t
        z = past @ w[:, :, 0].T + h @ w[:, :, 1].T + self.conv.bias
        if self.label is not None and y is not None:
            z = z + self.label(y)
        g = self._gate(z)
        skip = g @ self.skip.weight[:, :, 0].T + self.skip.bias
        return (h if self.residual is None else h + g @ self.residual.weight[:, :, 0].T + self.residual.bias), skip


class WaveNetNet(nn.Module):
    """Levels [B, L] -> logits [B, K, L]; position t depends on levels before t only."""

    def __init__(self, levels: int, residual: int, dilation_channels: int, skip: int, dilations: Sequence[int], num_classes: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(levels, residual)
        self.start = nn.Parameter(torch.zeros(residual))  # the input before the first value
        self.layers = nn.ModuleList(
            ResidualLayer(residual, dilation_channels, skip, d, num_classes, last=i == len(dilations) - 1) for i, d in enumerate(dilations)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(), nn.Conv1d(skip, levels, 1))

    def inputs(self, u: Tensor) -> Tensor:
        """[B, L] levels -> [B, R, L]: position t holds the embedding of level t - 1 (the start vector at t = 0)."""
        e = self.embed(u[:, :-1]).transpose(1, 2)
        return torch.cat([self.start.to(e.dtype).expand(u.shape[0], -1)[:, :, None], e], dim=2)

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        h, skips = self.inputs(u), 0
        for layer in self.layers:
            h, s = layer(h, y)
            skips = skips + s
        return self.head(skips)

    def head_step(self, skips: Tensor) -> Tensor:
        """The output head on one position's summed skips [n, S] -> [n, K] (its convolutions are 1x1)."""
        return self.head(skips[:, :, None])[:, :, 0]


class WaveNet(AutoregressiveModel):
    """WaveNet over sequences [C, T] (mu-law levels of the amplitude) or images [C, H, W] in raster order (their levels).

    With ``num_classes`` set it builds a :class:`ConditionalWaveNet` (global conditioning on the label).

    Args:
        shape: ``[C, T]`` or ``[C, H, W]`` (``${dataset.shape}``); vectors are refused.
        data_levels: images: the data's levels per sub-pixel (``${dataset.levels}``); sequences: None.
        levels: sequences: the softmax size K (256: 8-bit mu-law, as the paper); images use ``data_levels``.
        mu_law: sequences: compand with mu = K - 1 before quantising (false: quantise the amplitude linearly).
        dilations: the dilations of one stack (the paper: 1, 2, ..., 512).
        stacks: how many times the stack of ``dilations`` repeats.
        residual_channels, dilation_channels, skip_channels: widths of the residual stream, the gated units, the skips.
        num_classes: global conditioning on labels 0..K-1 (``${dataset.num_classes}``); None: unconditional.
        fast_generation: sample with the per-layer queues (Paine et al. 2016); False: rerun the net over the prefix.
        temperature: sampling temperature (logits / temperature).
    """

    def __new__(cls, *args: Any, num_classes: int | None = None, **kwargs: Any) -> WaveNet:
        return super().__new__(ConditionalWaveNet if num_classes is not None and cls is WaveNet else cls)

    def __init__(
        self,
        shape: Sequence[int],
        data_levels: int | None = None,
        levels: int = LEVELS_8BIT,
        mu_law: bool = True,
        dilations: Sequence[int] = DILATIONS,
        stacks: int = 2,
        residual_channels: int = 32,
        dilation_channels: int = 32,
        skip_channels: int = 64,
        num_classes: int | None = None,
        fast_generation: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        try:
            self.shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise GentrainError(f"model.shape={shape!r} is not a list of sizes; leave model.shape=${{dataset.shape}}") from None
        if len(self.shape) not in (2, 3) or any(s < 1 for s in self.shape):
            raise GentrainError(
                f"model=wavenet models sequences [C, T] (audio, waveforms) or images in raster order, and the data has shape "
                f"{list(self.shape)}; use model=made for vectors"
            )
        self.images = len(self.shape) == 3
        self.data_levels = check_levels(data_levels, self.images)
        self.levels = self.data_levels if self.images else check_int(levels, "model.levels", minimum=2, example=256)
        self.mu_law = bool(mu_law) and not self.images
        if self.images:
            if self.data_levels != LEVELS_8BIT:
                self.likelihood_kind = f"exact ({self.data_levels} levels)"
        else:
            self.likelihood_kind = f"exact, of the amplitude quantised to {self.levels} {'mu-law' if self.mu_law else 'linear'} levels"
        example = "[1,2,4,8,16,32,64,128,256,512]"
        one = check_int_list(dilations, "model.dilations", example)
        if not one or min(one) < 1:
            raise GentrainError(f"model.dilations={one} needs at least one positive integer; e.g. model.dilations={example}")
        stacks = check_int(stacks, "model.stacks", example=2)
        widths = [check_int(w, f"model.{k}", example=32) for w, k in
                  ((residual_channels, "residual_channels"), (dilation_channels, "dilation_channels"), (skip_channels, "skip_channels"))]
        if num_classes is not None:
            num_classes = check_int(num_classes, "model.num_classes", example=10)
        self.num_classes = num_classes
        self.dilations = one * stacks
        self.length = math.prod(self.shape)
        self.fast_generation = bool(fast_generation)
        self.temperature = _temperature(temperature)
        self.net = WaveNetNet(self.levels, *widths, self.dilations, num_classes)
        log.info("model=wavenet: %d layers, receptive field %d values (one sample is %d values)", len(self.dilations), self.receptive_field, self.length)

    @property
    def receptive_field(self) -> int:
        """How many earlier values the logits at a position see: ``sum(dilations) + 1``."""
        return sum(self.dilations) + 1

    def ema_target(self) -> str | None:
        return "net"

    def check_data(self, data: DataSplit, dataset: str) -> None:
        super().check_data(data, dataset)
        check_labels(self.num_classes, data, dataset, "model.num_classes=null")

    # ---- a sample <-> its sequence of levels
    def to_sequence(self, x: Tensor) -> Tensor:
        """Model-space samples [B, *shape] -> levels [B, L] in generation order (time-major; images raster, channels inside)."""
        if self.images:
            return to_levels(x, self.levels).permute(0, 2, 3, 1).flatten(1)
        return quantize(x, self.levels, self.mu_law).transpose(1, 2).flatten(1)

    def from_sequence(self, u: Tensor) -> Tensor:
        """Levels [B, L] -> model-space samples [B, *shape]: the inverse of :meth:`to_sequence` on the levels' values."""
        n = u.shape[0]
        if self.images:
            c, h, w = self.shape
            return from_levels(u, self.levels).view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        c, t = self.shape
        return dequantize_levels(u, self.levels, self.mu_law).view(n, t, c).transpose(1, 2).contiguous()

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Samples [B, *shape] -> logits [B, K, L] over the levels in generation order; position t sees values < t only."""
        return self.net(self.to_sequence(x), y)

    def conditional_log_prob(self, x: Tensor, y: Tensor | None) -> Tensor:
        """log p(x | y) [B] in nats (y None: unconditional)."""
        return -F.cross_entropy(self(x, y).float(), self.to_sequence(x), reduction="none").sum(1)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.conditional_log_prob(x, None)

    # ---- sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` samples, value by value (cached: one step of every layer per value; naive: a pass over the prefix)."""
        return self._sample(n, None, generator, temperature)

    def _sample(self, n: int, y: Tensor | None, generator: torch.Generator | None, temperature: float | None) -> Tensor:
        t = self.temperature if temperature is None else _temperature(temperature)
        p = next(self.parameters())
        noise = torch.rand(n, self.length, device=p.device, generator=generator, dtype=torch.float64)
        levels = self._cached(noise, y, t) if self.fast_generation else self._naive(noise, y, t)
        return self.from_sequence(levels).to(p.dtype)

    def _naive(self, noise: Tensor, y: Tensor | None, t: float) -> Tensor:
        n, length = noise.shape
        u = torch.zeros(n, length, dtype=torch.long, device=noise.device)
        with phase("values", length):
            for i in range(length):
                logits = self.net(u[:, : i + 1], y)[:, :, i]  # the value at i does not reach position i's logits
                u[:, i] = draw(logits.float() / t, noise[:, i])
                tick()
        return u

    def _cached(self, noise: Tensor, y: Tensor | None, t: float) -> Tensor:
        n, length = noise.shape
        net = self.net
        p = net.start
        u = torch.zeros(n, length, dtype=torch.long, device=noise.device)
        # queue of layer l: its inputs at the last d positions, slot (t mod d) holding position t - d (zeros before 0,
        # as the convolution's left padding)
        queues = [torch.zeros(n, p.shape[0], layer.dilation, device=p.device, dtype=p.dtype) for layer in net.layers]
        h0 = p.expand(n, -1)
        with phase("values", length):
            for i in range(length):
                h = h0 if i == 0 else net.embed(u[:, i - 1])
                skips = 0
                for layer, queue in zip(net.layers, queues):
                    slot = i % layer.dilation
                    past = queue[:, :, slot].clone()
                    queue[:, :, slot] = h
                    h, s = layer.step(h, past, y)
                    skips = skips + s
                u[:, i] = draw(net.head_step(skips).float() / t, noise[:, i])
                tick()
        return u

class ConditionalWaveNet(WaveNet, Conditional):
    """model=wavenet with ``model.num_classes``: global conditioning on the label (the paper's Sec. 2.5).

    Training maximises log p(x | y). ``log_prob(x)`` (what evaluation reports) is the exact marginal
    ``log (1/K) sum_y p(x | y)`` under a uniform class prior, so it compares with unconditional models' numbers.
    """

    num_classes: int

    def training_log_prob(self, x: Tensor, y: Tensor | None) -> Tensor:
        return self.conditional_log_prob(x, y)

    def log_prob(self, x: Tensor) -> Tensor:
        per_class = torch.stack(
            [self.conditional_log_prob(x, torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)) for k in range(self.num_classes)], 1
        )
        return torch.logsumexp(per_class, 1) - math.log(self.num_classes)

    @torch.no_grad()
    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self.random_labels(y.shape[0], generator)  # drawn and dropped, as sample_with_labels draws them
        return self._sample(y.shape[0], y, generator, None)

    @torch.no_grad()
    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        y = self.random_labels(n, generator)
        assert y is not None
        return self._sample(n, y, generator, None), y

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        y = self.random_labels(n, generator)
        return self._sample(n, y, generator, temperature)

    @torch.no_grad()
    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        y, per_class = self.grid_labels(n)
        return self._sample(y.shape[0], y, generator, None), per_class


__all__ = ["ConditionalWaveNet", "WaveNet", "draw", "quantize", "dequantize_levels"]
