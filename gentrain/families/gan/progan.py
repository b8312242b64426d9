"""Progressive GAN (Karras, Aila, Laine & Lehtinen 2018, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation"), following the authors' released code (github.com/tkarras/progressive_growing_of_gans,
``networks.py`` ``G_paper`` / ``D_paper``, ``train.py``, ``loss.py``).

G and D start at 4x4 and grow by doubling the side up to the data's (a power of two: 8, 16, 32, 64 ...;
other sides are padded to the next one with -1, black in model space, and G's output is cropped back).
Each new block is faded in: while ``alpha`` goes 0 -> 1 over ``model.fade_steps`` G's image is
``(1 - alpha) * upsample(toRGB_old(h_old)) + alpha * toRGB_new(h_new)`` and D's features
``(1 - alpha) * fromRGB_old(downsample(x)) + alpha * block_new(fromRGB_new(x))``; then ``model.stable_steps``
at that resolution. The first resolution trains ``stable_steps`` alone.

The pieces of the paper, as the code has them:

- equalised learning rate: weights drawn from N(0, 1) and scaled at run time by He's constant
  ``gain / sqrt(fan_in)`` (gain sqrt(2); 1 for toRGB and D's output; sqrt(2)/4 for G's first dense layer,
  "to match the original Theano implementation"), biases from 0;
- pixelwise feature normalisation after every G convolution, and of the latent (``normalize_latents``);
- leaky ReLU 0.2 everywhere; G's output is linear (no tanh: samples are clamped to [-1, 1] when drawn);
- the minibatch standard deviation layer before D's last block (groups of ``model.mbstd_group``; the
  group of sample ``i`` is ``i mod (B / group)``, as the code's reshape to [group, M, ...] puts it);
- nearest-neighbour upsampling and 2x2 box-filter (average) downsampling;
- real images are shown to D at the current resolution: box-filtered down from the data, and during a
  fade-in blended the same way as G's output, ``(1 - alpha) * upsample(downsample(x_r)) + alpha * x_r``
  (``process_reals``'s FadeLOD);
- the loss (``objective=progan``): WGAN-GP with lambda 10 and the drift term ``0.001 E[D(x)^2]``
  (``wgan_epsilon``), one D step per G step (``D_repeats = 1``);
- Adam (lr 0.001, betas (0, 0.99), eps 1e-8) and an average of G's weights (``G_smoothing = 0.999``).

Where gentrain differs from the code, and why:

- growth is counted in training steps (``fade_steps``, ``stable_steps``), not in thousands of real images
  (the code's ``lod_training_kimg = lod_transition_kimg = 600``; the paper's text says 800k images and the
  code's "preset-v1" uses 800): images = steps x ``trainer.batch_size``;
- the optimizers keep their state across a new resolution and a new block's parameters gain theirs at
  their first update; the code resets Adam at every change of level (``reset_opt_for_new_lod = True``);
- one batch size at every resolution (the code's ``minibatch_dict`` changes it with the resolution);
- the weight average is updated once per step; the code updates ``Gs`` with every D step (the same with one D step);
- the separate upscale + conv layers (the code's ``fused_scale=False`` path), which compute the same functions
  as its fused transposed convolutions up to the code's 4-tap weight smoothing.

The model is :class:`~gentrain.models.base.Scheduled`: the engine gives it the step before each one, so
its resolution and ``alpha`` are a function of the step (a resume inside a fade-in continues it exactly),
and its state dict holds both. It is :meth:`~gentrain.models.base.GenerativeModel.unfinished` until it
reaches the data's resolution with ``alpha = 1``: evaluation reports no numbers before then.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import GentrainError, check_int
from gentrain.families.gan.base import AdversarialModel
from gentrain.families.gan.models import _check_square
from gentrain.families.gan.wasserstein import WassersteinGP
from gentrain.models.base import Scheduled
from gentrain.objectives.base import mean_scalar

log = logging.getLogger(__name__)

LEAKY_SLOPE = 0.2
#: The first (lowest) resolution.
BASE = 4


# ---- layers ------------------------------------------------------------------------------------------------------------
class EqualizedLinear(nn.Module):
    """``x @ (W * gain / sqrt(fan_in)).T + b`` with ``W ~ N(0, 1)``, ``b = 0``: He's constant applied at run time."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2), bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, scale={self.scale:.4g}"


class EqualizedConv2d(nn.Module):
    """A ``kernel``x``kernel`` convolution ('same' padding) with the equalised learning rate of :class:`EqualizedLinear`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel={k}, scale={self.scale:.4g}"


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Each pixel's feature vector scaled to unit mean square over the channels (dim 1)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: Tensor, group: int) -> Tensor:
    """``[B, C, H, W] -> [B, C + 1, H, W]``: the mean over features and pixels of the standard deviation over each group.

    As the released code: the batch is read as ``[group, B / group, C, H, W]`` (sample ``i`` is in group ``i mod (B / group)``),
    the biased standard deviation over the group (with 1e-8 inside the root), averaged, in float32, and appended as a constant
    feature map. ``group`` is made the largest divisor of ``B`` not above it (the code requires B divisible by it).
    """
    b = x.shape[0]
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, -1, *x.shape[1:])
    y = (y - y.mean(dim=0, keepdim=True)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3), keepdim=True)  # [M, 1, 1, 1]
    y = y.to(x.dtype).repeat(g, 1, x.shape[2], x.shape[3])
    return torch.cat([x, y], dim=1)


def upsample(x: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upsampling by an integer factor."""
    return x if factor == 1 else x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def downsample(x: Tensor, factor: int) -> Tensor:
    """Box-filter (average) downsampling by an integer factor."""
    return x if factor == 1 else F.avg_pool2d(x, factor)


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def nf(stage: int, fmap_base: int, fmap_max: int) -> int:
    """The code's feature-map count ``min(fmap_base / 2^stage, fmap_max)``; resolution ``2^r`` has ``nf(r - 1)`` maps,
    the latent and D's last dense layer ``nf(0)``."""
    return max(1, min(int(fmap_base / 2.0**stage), fmap_max))


def channels(fmap_base: int, fmap_max: int, levels: int) -> list[int]:
    """Feature maps at each resolution 4 * 2^k, k = 0 .. levels - 1 (``nf(k + 1)``)."""
    return [nf(k + 1, fmap_base, fmap_max) for k in range(levels)]


# ---- networks ----------------------------------------------------------------------------------------------------------
class _GFirst(nn.Module):
    """4x4: pixel norm of the latent, dense to [C, 4, 4] (gain sqrt(2)/4), conv 3x3; leaky ReLU and pixel norm after each."""

    def __init__(self, z_dim: int, c: int, normalize_latents: bool) -> None:
        super().__init__()
        # the code's dense layer has no bias of its own: apply_bias after the reshape adds one per feature map
        self.dense = EqualizedLinear(z_dim, c * BASE * BASE, gain=math.sqrt(2) / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(c))
        self.conv = EqualizedConv2d(c, c, 3)
        self.c, self.normalize_latents = c, normalize_latents

    def forward(self, z: Tensor) -> Tensor:
        x = pixel_norm(z) if self.normalize_latents else z
        x = self.dense(x).view(-1, self.c, BASE, BASE)
        x = pixel_norm(_act(x + self.bias.view(1, -1, 1, 1)))
        return pixel_norm(_act(self.conv(x)))


class _GBlock(nn.Module):
    """Upsample x2, then two 3x3 convolutions, each with leaky ReLU and pixel norm."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(c_in, c_out, 3)
        self.conv1 = EqualizedConv2d(c_out, c_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = pixel_norm(_act(self.conv0(upsample(x, 2))))
        return pixel_norm(_act(self.conv1(x)))


class ProGenerator(nn.Module):
    """``(z, level, alpha, fading) -> image [B, C, 4 * 2^level, 4 * 2^level]`` (linear output)."""

    def __init__(self, z_dim: int, widths: Sequence[int], out_channels: int, normalize_latents: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_GFirst(z_dim, widths[0], normalize_latents)])
        self.blocks.extend(_GBlock(widths[k - 1], widths[k]) for k in range(1, len(widths)))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, out_channels, 1, gain=1.0) for w in widths)

    def forward(self, z: Tensor, level: int, alpha: Tensor, fading: bool) -> Tensor:
        x = self.blocks[0](z)
        prev = x
        for k in range(1, level + 1):
            prev, x = x, self.blocks[k](x)
        img = self.to_rgb[level](x)
        if fading:
            old = upsample(self.to_rgb[level - 1](prev), 2)
            img = old + (img - old) * alpha
        return img


class _DBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLU (the second to the lower resolution's width), then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(c_in, c_in, 3)
        self.conv1 = EqualizedConv2d(c_in, c_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        return downsample(_act(self.conv1(_act(self.conv0(x)))), 2)


class _DLast(nn.Module):
    """4x4: minibatch standard deviation, conv 3x3, dense to C, dense to 1 (gain 1); leaky ReLU between."""

    def __init__(self, c: int, c_dense: int, group: int) -> None:
        super().__init__()
        self.group = group
        self.conv = EqualizedConv2d(c + (1 if group > 1 else 0), c, 3)
        self.dense0 = EqualizedLinear(c * BASE * BASE, c_dense)
        self.dense1 = EqualizedLinear(c_dense, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.group > 1:
            x = minibatch_stddev(x, self.group)
        x = _act(self.conv(x))
        return self.dense1(_act(self.dense0(x.flatten(1))))


class ProDiscriminator(nn.Module):
    """``(image at 4 * 2^level, level, alpha, fading) -> score [B, 1]``."""

    def __init__(self, widths: Sequence[int], in_channels: int, group: int, c_dense: int) -> None:
        super().__init__()
        self.from_rgb = nn.ModuleList(EqualizedConv2d(in_channels, w, 1) for w in widths)
        # blocks[k] takes resolution 4 * 2^k down to 4 * 2^(k-1); blocks[0] is the 4x4 head
        self.blocks = nn.ModuleList([_DLast(widths[0], c_dense, group)])
        self.blocks.extend(_DBlock(widths[k], widths[k - 1]) for k in range(1, len(widths)))

    def forward(self, x: Tensor, level: int, alpha: Tensor, fading: bool) -> Tensor:
        h = _act(self.from_rgb[level](x))
        if level > 0:
            h = self.blocks[level](h)
            if fading:
                old = _act(self.from_rgb[level - 1](downsample(x, 2)))
                h = old + (h - old) * alpha
        for k in range(level - 1, 0, -1):
            h = self.blocks[k](h)
        return self.blocks[0](h)


# ---- the schedule ------------------------------------------------------------------------------------------------------
def growth_at(step: int, levels: int, stable_steps: int, fade_steps: int) -> tuple[int, float]:
    """``(level, alpha)`` before training step ``step``: level 0 for ``stable_steps``; then each next level fades in over
    ``fade_steps`` (alpha = steps into the fade / fade_steps, from 0) and trains ``stable_steps`` at alpha 1; the last level stays."""
    if step < stable_steps or levels == 1:
        return 0, 1.0
    k, r = divmod(step - stable_steps, fade_steps + stable_steps)
    level = k + 1
    if level >= levels:
        return levels - 1, 1.0
    return level, (r / fade_steps if r < fade_steps else 1.0)


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---- the model ---------------------------------------------------------------------------------------------------------
class ProGAN(AdversarialModel, Scheduled):
    """The growing generator and discriminator; the model's interface is always at the data's shape.

    ``generate`` upsamples G's current image to the padded side and crops it to the data's; ``discriminate`` pads its
    input and box-filters it down to the current resolution; :meth:`reals` shows D the real images as the current
    resolution (and fade-in) sees them. So every adversarial objective trains it, and pictures and evaluation see
    images of the data's shape at every resolution.
    """

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 512,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        stable_steps: int = 1000,
        fade_steps: int = 1000,
        mbstd_group: int = 4,
        normalize_latents: bool = True,
        pack: int = 1,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise GentrainError(
                f"model=progan grows images from 4x4 and dataset shape {list(shape)} is not an image [C, H, W]; "
                "use model=gan_mlp (or dcgan) for vector data"
            )
        _check_square("progan", shape)
        c, h, w = shape
        if h < 2 * BASE:
            raise GentrainError(f"model=progan grows from {BASE}x{BASE} and needs images of at least {2 * BASE}x{2 * BASE}, got {h}x{w}")
        if check_int(pack, "model.pack", 1, example=1) != 1:
            raise GentrainError(
                "model=progan's discriminator judges one sample (its minibatch-stddev layer already sees the batch's spread); "
                "use objective.pack=1"
            )
        check_int(z_dim, "model.z_dim", 1, example=512)
        check_int(fmap_base, "model.fmap_base", 1, example=8192)
        check_int(fmap_max, "model.fmap_max", 1, example=512)
        check_int(stable_steps, "model.stable_steps", 1, example=1000)
        check_int(fade_steps, "model.fade_steps", 1, example=1000)
        check_int(mbstd_group, "model.mbstd_group", 0, example=4)
        self.side = next_power_of_two(h)
        self.levels = int(math.log2(self.side)) - int(math.log2(BASE)) + 1
        widths = channels(fmap_base, fmap_max, self.levels)
        generator = ProGenerator(z_dim, widths, c, normalize_latents)
        discriminator = ProDiscriminator(widths, c, mbstd_group, nf(0, fmap_base, fmap_max))
        super().__init__(generator, discriminator, z_dim)
        self.shape = shape
        self.pad = ((self.side - h) // 2, self.side - h - (self.side - h) // 2)
        self.stable_steps, self.fade_steps = stable_steps, fade_steps
        self.level, self._alpha = 0, 1.0
        # alpha is a device tensor: a change of it is a fill, not a new graph (trainer.compile=true keeps its graphs)
        self.register_buffer("alpha", torch.ones(()), persistent=False)
        self.register_buffer("side_now", torch.full((), float(BASE)), persistent=False)  # the current side, for the logs
        if self.side != h:
            log.info("model=progan: %dx%d images are padded to %dx%d with -1 (black) to grow by doubling from %dx%d; "
                     "G's images are cropped back to %dx%d", h, w, self.side, self.side, BASE, BASE, h, w)

    # ---- growth ----
    @property
    def resolution(self) -> int:
        return BASE << self.level

    @property
    def fading(self) -> bool:
        """A new block is fading in (alpha < 1)."""
        return self._alpha < 1.0

    def set_step(self, step: int) -> None:
        level, alpha = growth_at(step, self.levels, self.stable_steps, self.fade_steps)
        if (level, alpha) == (self.level, self._alpha):
            return  # a stable phase: no device fill per step
        if (level, alpha < 1.0) != (self.level, self.fading):
            r = BASE << level
            # steps counted from 1, as the progress line counts them
            if alpha < 1.0:
                log.info("model=progan: from step %d: fading in %dx%d over %d steps", step + 1, r, r, self.fade_steps)
            else:
                log.info("model=progan: from step %d: training at %dx%d", step + 1, r, r)
        self._set(level, alpha)

    def _set(self, level: int, alpha: float) -> None:
        self.level, self._alpha = level, alpha
        self.alpha.fill_(alpha)
        self.side_now.fill_(float(BASE << level))

    def training_logs(self) -> dict[str, Tensor]:
        """``resolution`` (the side G and D work at) and ``alpha`` (the fade-in weight), logged by the G phase."""
        return {"resolution": self.side_now.clone(), "alpha": self.alpha.clone()}

    def unfinished(self) -> str | None:
        if self.level == self.levels - 1 and not self.fading:
            return None
        now = f"{self.resolution}x{self.resolution}" + (f" fading in at alpha {self._alpha:.3f}" if self.fading else "")
        return f"model=progan is still growing ({now}; it trains at {self.side}x{self.side} with alpha 1 from step {self.final_step() + 1})"

    def final_step(self) -> int:
        """The first step (counted from 0, as :meth:`set_step` gets them) at the last resolution with alpha 1."""
        # the first level's stable phase, then each later one's fade-in and stable phase but the last's stable phase
        return (self.levels - 1) * (self.fade_steps + self.stable_steps)

    def get_extra_state(self) -> dict[str, Any]:
        return {"level": self.level, "alpha": self._alpha, "resolution": self.resolution}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._set(int(state["level"]), float(state["alpha"]))

    # ---- the data's shape at the interface ----
    def _padded(self, x: Tensor) -> Tensor:
        return x if self.side == self.shape[1] else F.pad(x, (*self.pad, *self.pad), value=-1.0)

    def _cropped(self, x: Tensor) -> Tensor:
        if self.side == self.shape[1]:
            return x
        a, h = self.pad[0], self.shape[1]
        return x[:, :, a : a + h, a : a + h]

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        img = self.generator(z, self.level, self.alpha, self.fading)
        return self._cropped(upsample(img, self.side // self.resolution))

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = downsample(self._padded(x), self.side // self.resolution)
        return self.discriminator(x, self.level, self.alpha, self.fading).flatten(), None

    def reals(self, x: Tensor) -> Tensor:
        """Real images as D sees them now: box-filtered to the current resolution and, during a fade-in,
        ``(1 - alpha) * upsample(downsample(x_r)) + alpha * x_r``; returned at the data's shape (nearest-upsampled)."""
        factor = self.side // self.resolution
        if factor == 1 and not self.fading:
            return x
        xr = downsample(self._padded(x), factor)
        if self.fading:
            old = upsample(downsample(xr, 2), 2)
            xr = old + (xr - old) * self.alpha
        return self._cropped(upsample(xr, factor))

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        x, y = super().sample_with_labels(n, generator)
        return x.clamp(-1.0, 1.0), y

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        x, rows = super().sample_grid(n, generator)
        return x.clamp(-1.0, 1.0), rows

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor:
        return super().interpolate(rows, steps, spherical, generator).clamp(-1.0, 1.0)


class ProGANLoss(WassersteinGP):
    """WGAN-GP with the drift term (Karras et al. 2018, section A.1; ``loss.D_wgangp_acgan``): the critic minimises
    ``D(G(z)) - D(x) + lambda (||grad D(x_hat)||_2 - 1)^2 + drift * D(x)^2``, one critic step per G step.

    The drift term keeps D's output near 0 (the paper: "to keep the discriminator output from drifting too far away
    from zero"); logged as ``drift`` (the mean ``D(x)^2``).
    """

    def __init__(self, d_steps: int = 1, gp_weight: float = 10.0, drift: float = 0.001, aux_weight: float = 1.0, pack: int = 1, ortho_reg: float = 0.0) -> None:
        super().__init__(d_steps, gp_weight, aux_weight, pack, ortho_reg)
        if not float(drift) >= 0:
            raise GentrainError(f"objective.drift must be >= 0, got {drift!r}; e.g. objective.drift=0.001 (the paper's epsilon_drift)")
        self.drift = float(drift)

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().critic_loss(logits_real, logits_fake)
        squares = logits_real.float().square()
        logs["drift"] = mean_scalar(squares)
        return loss + self.drift * squares.mean(), logs
