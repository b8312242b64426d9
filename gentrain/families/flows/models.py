"""Normalizing flows: RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018), objective=flow_nll.

Both models are a bijection ``f`` from the flow's input to standard normal noise ``eps`` (all of
it: the parts factored out at each scale and the last scale's output, flattened, ``[B, D]``), so

- ``log p(h) = log N(f(h); 0, I) + log |det df/dh|`` (change of variables);
- sampling is ``f^-1(T eps)``, ``eps ~ N(0, I)``, at temperature ``T`` (Glow sec. 5: T < 1 trades
  diversity for quality; T = 0 gives the image of the zero latent).

On images (``[C, H, W]``, batches in [-1, 1]) with ``K`` levels per sub-pixel
(``model.data_levels``, from ``dataset.levels``: 256 for 8-bit images) the flow's input is
``h = logit(alpha + (1 - 2 alpha) y)`` of the dequantized pixels ``y = (u + noise) / K``, ``u`` the
levels (RealNVP sec. 4.1), and

    log_prob(x) = log p_flow(h) + log |det dh/dy| - D log K

(the discrete-data bound of :mod:`gentrain.models.likelihood`). With fewer levels than 256 the
noise fills each level's whole cell, so the flow cannot put its mass on the few values the data
takes and call that density (which a 256-cell dequantisation of 17-level data allows: it
memorises). Samples are the levels of their cells, ``floor(K y)``, for K < 256; for 8-bit data they
stay continuous as ``2 y - 1`` (less than a level from ``floor(256 y)``). On vectors (the 2-D toy
sets, ``[D]``, D even) the flow works on the data as it is.

Architectures (layers in :mod:`gentrain.families.flows.layers`):

- RealNVP, images: ``scales`` scales; each but the last is 3 checkerboard couplings, a squeeze,
  3 channel couplings, then half of the channels is factored out; the last is 4 checkerboard
  couplings. Coupling networks are ResNets of ``blocks`` blocks of ``hidden`` channels.
  Vectors: ``couplings`` MLP couplings with alternating masks.
- Glow, images: ``levels`` levels of (squeeze, ``steps`` x (ActNorm, invertible 1x1 conv (LU),
  affine coupling), split with a learned prior); the last level has no split and a standard normal
  prior. Vectors: ``steps`` x (ActNorm, invertible linear map (LU), MLP coupling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gentrain.errors import GentrainError, check_int
from gentrain.models.base import Latent, interpolate_latents
from gentrain.families.flows.layers import (
    ActNorm,
    ChannelCoupling,
    CheckerboardCoupling,
    FlowLayer,
    FlowSequence,
    GlowCoupling,
    InvertibleLinearLU,
    MultiScaleFlow,
    SplitPrior,
    Squeeze,
    VectorCoupling,
    fp32,
    standard_normal_log_prob,
)
from gentrain.models.likelihood import (
    LEVELS_8BIT,
    LikelihoodModel,
    check_levels,
    dequantize,
    from_levels,
    inverse_logit_transform,
    logit_transform,
)


class FlowModel(LikelihoodModel):
    """Normalizing flows (objective=flow_nll)."""

    likelihood_kind = "dequantized (8-bit images: a lower bound on the discrete log-likelihood)"


def _check_shape(shape: Sequence[int], name: str, levels: int, levels_key: str, squeezes: int) -> tuple[int, ...]:
    """Vectors: an even dimension >= 2. Images: sides divisible by ``2 ** squeezes``."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise GentrainError(f"model={name}: data shape must be [D] or [C, H, W], got {shape!r}; check dataset.shape") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise GentrainError(f"model={name}: data shape must be [D] or [C, H, W], got {list(shape)}; check dataset.shape")
    if len(shape) == 1:
        if shape[0] < 2 or shape[0] % 2:
            raise GentrainError(
                f"model={name} needs vectors of an even dimension >= 2 (its couplings split them in halves), got {shape[0]}; use another dataset"
            )
        return shape
    factor = 2**squeezes
    _, h, w = shape
    if h % factor or w % factor:
        raise GentrainError(
            f"model={name} with {levels_key}={levels} squeezes the image {squeezes} time(s) and needs sides divisible by {factor}, "
            f"got {h}x{w}; lower {levels_key} or resize the data (dataset.size)"
        )
    return shape


class _Flow(FlowModel, Latent):
    """What RealNVP and Glow share: dequantization and logit on images, log_prob, sampling, plots.

    Subclasses set ``self.flow``: a :class:`~gentrain.families.flows.layers.MultiScaleFlow` from the
    flow's input (``[B, *shape]``) to ``eps [B, D]``.
    """

    flow: MultiScaleFlow

    def __init__(self, shape: tuple[int, ...], temperature: float, alpha: float, name: str, data_levels: int | None) -> None:
        super().__init__()
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
            raise GentrainError(f"model.temperature must be a number >= 0, got {temperature!r}; e.g. model.temperature=0.7")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha < 0.5:
            raise GentrainError(f"model.alpha must be in [0, 0.5), got {alpha!r}; e.g. model.alpha=0.05")
        self.shape = shape
        self.image = len(shape) == 3
        self.data_levels = check_levels(data_levels, self.image)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.name = name
        if self.image:
            what = "8-bit images" if self.data_levels == LEVELS_8BIT else f"{self.data_levels}-level images"
            self.likelihood_kind = f"dequantized ({what}: a lower bound on the discrete log-likelihood)"

    @property
    def dims(self) -> int:
        """D: the number of dimensions of one example."""
        return math.prod(self.shape)

    def ema_target(self) -> str | None:
        return "flow"

    # ---- densities ------------------------------------------------------------------------------
    def flow_log_prob(self, h: Tensor) -> Tensor:
        """The continuous log-density of the flow's input (logit space for images), ``[B]`` nats."""
        eps, log_det = self.flow(h)
        return standard_normal_log_prob(eps) + log_det

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B]`` nats; for images the dequantized bound (``generator`` fixes the dequantization noise).

        Float32 under a bf16 autocast too (float64 stays float64): see :mod:`gentrain.families.flows.layers`.
        """
        x = fp32(x)
        if not self.image:
            return self.flow_log_prob(x)
        y = dequantize(x, generator, self.data_levels).to(x.dtype)
        h, log_det_logit = logit_transform(y, self.alpha)
        return self.flow_log_prob(h) + log_det_logit - self.dims * math.log(self.data_levels)

    # ---- sampling -------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def decode(self, eps: Tensor) -> Tensor:
        """Noise ``[n, D]`` -> model space: images in [-1, 1], vectors as they are."""
        h = self.flow.inverse(eps)
        if not self.image:
            return h
        y = inverse_logit_transform(h, self.alpha)
        if self.data_levels == LEVELS_8BIT:
            return y * 2 - 1
        k = self.data_levels
        return from_levels(torch.floor(y * k).clamp(0, k - 1), k).to(y.dtype)  # the level whose cell holds y

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``eps ~ N(0, I)``, ``[n, D]``."""
        return torch.randn(n, self.flow.dim, device=self.device, dtype=self._dtype(), generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` samples at ``temperature`` (default ``model.temperature``): ``f^-1(T eps)``."""
        t = self.temperature if temperature is None else float(temperature)
        return self.decode(self.noise(n, generator) * t)

    @torch.no_grad()
    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor:
        """Samples along paths between pairs of latents (at ``model.temperature``), row by row."""
        eps = interpolate_latents(self.noise(rows, generator), self.noise(rows, generator), steps, spherical)
        return self.decode(eps.reshape(rows * steps, -1) * self.temperature)

    @torch.no_grad()
    def density_grid(self, bounds: Sequence[float], size: int) -> Tensor:
        """Log-density on a ``size x size`` grid, for 2-D models: ``out[i, j] = log p(xs[j], ys[i])``.

        ``bounds``: ``(lo, hi)`` for both axes or ``(x_min, x_max, y_min, y_max)``; ``xs`` and ``ys``
        are ``linspace`` over them, so row 0 is ``y_min`` (flip the rows for a picture with y up).
        """
        if self.shape != (2,):
            raise GentrainError(f"density_grid draws 2-D densities and model={self.name} models data of shape {list(self.shape)}")
        b = [float(v) for v in bounds]
        if len(b) == 2:
            b = b * 2
        if len(b) != 4:
            raise GentrainError(f"density_grid bounds must be (lo, hi) or (x_min, x_max, y_min, y_max), got {list(bounds)}")
        xs = torch.linspace(b[0], b[1], size, device=self.device, dtype=self._dtype())
        ys = torch.linspace(b[2], b[3], size, device=self.device, dtype=self._dtype())
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=1)
        # the grid is no data: an ActNorm that has not seen a batch yet must not initialise on it
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]
        checked = [m._checked for m in norms]
        for m in norms:
            m._checked = True
        try:
            out = torch.cat([self.log_prob(chunk) for chunk in points.split(65536)])
        finally:
            for m, c in zip(norms, checked):
                m._checked = c
        return out.view(size, size)


class RealNVP(_Flow):
    """RealNVP (Dinh et al. 2017): affine couplings with checkerboard and channel masks, multi-scale.

    Args:
        shape: the data shape, ``[C, H, W]`` (sides divisible by ``2 ** (scales - 1)``) or ``[D]`` (D even).
        hidden: channels of the coupling ResNets (units of the MLPs on vectors).
        blocks: residual blocks per coupling ResNet.
        scales: scales of the multi-scale architecture (``scales - 1`` squeezes).
        couplings: vectors only: the number of MLP couplings (masks alternate).
        temperature: sampling temperature (base noise scaled by it).
        alpha: the logit transform's margin (images).
        data_levels: images: the data's levels per sub-pixel (``${dataset.levels}``; None: 256); vectors: None.
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: int = 64,
        blocks: int = 4,
        scales: int = 2,
        couplings: int = 8,
        temperature: float = 1.0,
        alpha: float = 0.05,
        data_levels: int | None = None,
    ) -> None:
        hidden = check_int(hidden, "model.hidden", 1, example=2)
        blocks = check_int(blocks, "model.blocks", 0, example=2)
        scales = check_int(scales, "model.scales", 1, example=2)
        couplings = check_int(couplings, "model.couplings", 1, example=2)
        shape = _check_shape(shape, "realnvp", scales, "model.scales", scales - 1)
        super().__init__(shape, temperature, alpha, "realnvp", data_levels)
        self.hidden, self.blocks, self.scales, self.couplings = hidden, blocks, scales, couplings
        if not self.image:
            layers: list[FlowLayer] = [VectorCoupling(shape[0], hidden, flip=i % 2 == 1) for i in range(couplings)]
            self.flow = MultiScaleFlow([FlowSequence(layers)], [shape])
            return
        c, h, w = shape
        stages: list[FlowLayer] = []
        out_shapes: list[tuple[int, int, int]] = []
        for scale in range(scales):
            if scale == scales - 1:  # the last scale: 4 checkerboard couplings
                stages.append(FlowSequence([CheckerboardCoupling(c, (h, w), hidden, blocks, parity=i % 2) for i in range(4)]))
                out_shapes.append((c, h, w))
                break
            layers = [CheckerboardCoupling(c, (h, w), hidden, blocks, parity=i % 2) for i in range(3)]
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            layers += [ChannelCoupling(c, hidden, blocks, flip=i % 2 == 1) for i in range(3)]
            stages.append(FlowSequence(layers))
            out_shapes.append((c, h, w))
            c //= 2  # half of the channels is factored out
        self.flow = MultiScaleFlow(stages, out_shapes)


class Glow(_Flow):
    """Glow (Kingma & Dhariwal 2018): ActNorm, invertible 1x1 convolutions (LU) and affine couplings, multi-scale with split priors.

    Args:
        shape: the data shape, ``[C, H, W]`` (sides divisible by ``2 ** levels``) or ``[D]`` (D even).
        hidden: channels of the coupling networks (units of the MLPs on vectors).
        steps: flow steps per level (K).
        levels: levels (L), each starting with a squeeze; images only (the data's grey levels are ``data_levels``).
        temperature: sampling temperature (base noise scaled by it).
        alpha: the logit transform's margin (images).
        data_levels: images: the data's levels per sub-pixel (``${dataset.levels}``; None: 256); vectors: None.
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: int = 128,
        steps: int = 8,
        levels: int = 2,
        temperature: float = 1.0,
        alpha: float = 0.05,
        data_levels: int | None = None,
    ) -> None:
        hidden = check_int(hidden, "model.hidden", 1, example=2)
        steps = check_int(steps, "model.steps", 1, example=2)
        levels = check_int(levels, "model.levels", 1, example=2)
        shape = _check_shape(shape, "glow", levels, "model.levels", levels)
        super().__init__(shape, temperature, alpha, "glow", data_levels)
        self.hidden, self.steps, self.levels = hidden, steps, levels
        if not self.image:
            d = shape[0]
            layers: list[FlowLayer] = []
            for _ in range(steps):
                layers += [ActNorm(d), InvertibleLinearLU(d), VectorCoupling(d, hidden, flip=False)]
            self.flow = MultiScaleFlow([FlowSequence(layers)], [shape])
            return
        c, h, w = shape
        stages: list[FlowLayer] = []
        out_shapes: list[tuple[int, int, int]] = []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            layers = [Squeeze()]
            for _ in range(steps):
                layers += [ActNorm(c), InvertibleLinearLU(c), GlowCoupling(c, hidden)]
            if level < levels - 1:
                layers.append(SplitPrior(c))
            stages.append(FlowSequence(layers))
            out_shapes.append((c, h, w))
            c //= 2
        self.flow = MultiScaleFlow(stages, out_shapes)


__all__ = ["Glow", "RealNVP"]
