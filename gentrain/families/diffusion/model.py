"""Denoising diffusion models (Ho et al. 2020, DDPM) with DDIM sampling (Song et al. 2021).

The forward process adds Gaussian noise in ``T`` steps, ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``,
so that ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with ``abar_t = prod_{s <= t} (1 - beta_s)``.
A network learns to undo it; it predicts the noise ``eps`` (Ho et al.), the clean data ``x_0``, or the
velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022), chosen by
``objective.prediction``; all three give the same ``(x_0, eps)`` estimate here.

Indexing follows the released code (``diffusion_tf/diffusion_utils_2.py``; ``improved-diffusion``):
``t = 0 .. T-1``, ``x_t`` is the sample after ``t + 1`` noising steps, the network sees the integer ``t``.

- Schedules: ``linear`` (Ho et al.: ``beta`` from 1e-4 to 0.02 for T = 1000, scaled by 1000 / T for other
  T, as in improved-diffusion) and ``cosine`` (Nichol & Dhariwal 2021, eq. 17: ``abar(t) = f(t) / f(0)``,
  ``f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2``, s = 0.008, betas clipped at 0.999).
- Reverse variance: ``fixedlarge`` (``beta_t``, with the first replaced by the posterior variance of
  step 1, as in the released code's ``model_var_type='fixedlarge'`` for CIFAR-10) or ``fixedsmall``
  (the posterior variance ``beta~_t``).
- Samplers (:class:`SamplerSpec`): ancestral (all T steps; Ho et al. Algorithm 2, ``x_0`` clipped to
  [-1, 1] on images as the code's ``clip_denoised=True``) and DDIM on an evenly spaced subsequence
  (``eta`` 0: deterministic), with classifier-free guidance (Ho & Salimans 2022) for conditional models.
- The variational bound (Ho et al. eq. 5) in nats per example: ``L_T + sum_{t>=1} L_{t-1} + L_0`` with
  every KL term in closed form and ``L_0`` a discretised Gaussian over the data's levels (images) or
  the Gaussian density (vectors); ``nll<count>`` reports it as a bound on ``-log p(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.engine.progress import counted
from gentrain.errors import GentrainError, check_choice, check_int, check_int_list
from gentrain.models.base import Conditional, Latent, SamplerOptions, check_labels, interpolate_latents
from gentrain.models.likelihood import LikelihoodModel, check_levels, from_levels, to_levels

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixedlarge", "fixedsmall")
SAMPLERS = ("ddpm", "ddim")
#: DDIM steps of ``sampler.pictures`` when its ``steps`` is null (used only where fewer than objective.timesteps)
PICTURE_STEPS = 50
COSINE_S = 0.008


# ---- schedules -------------------------------------------------------------------------------
def cosine_alpha_bar(t: np.ndarray, timesteps: int, s: float = COSINE_S) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17: ``f(t) / f(0)`` with ``f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2`` (t continuous in [0, T])."""
    f = np.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return f / (math.cos(s / (1 + s) * math.pi / 2) ** 2)


def check_process(prediction: str, schedule: str, timesteps: int) -> None:
    """Refuse a process the objective's keys cannot describe (the objective and the model both check theirs here)."""
    check_choice(prediction, PREDICTIONS, "objective.prediction", "eps")
    check_choice(schedule, SCHEDULES, "objective.schedule", "linear")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise GentrainError(f"objective.timesteps must be an integer >= 2, got {timesteps!r}; e.g. objective.timesteps=1000")


def make_betas(schedule: str, timesteps: int) -> np.ndarray:
    """``beta_1 .. beta_T`` (float64) of ``schedule``."""
    check_process("eps", schedule, timesteps)
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64).clip(max=0.999)
    abar = cosine_alpha_bar(np.arange(timesteps + 1, dtype=np.float64), timesteps)
    return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch.exp(-logvar2))


def log_interval_probability(lower: Tensor, upper: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` of standardised bounds (``lower < upper``, either may be infinite), stable in both tails."""
    flip = lower > 0  # the same mass on the mirrored interval, where the CDF is small and log_ndtr accurate
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log(-torch.expm1((la - lb).clamp(max=-1e-30))).clamp(min=-70.0)


class GaussianDiffusion(nn.Module):
    """The forward process, its posteriors and the conversions between predictions; schedule tensors as (non-saved) buffers."""

    def __init__(self, timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps", variance: str = "fixedlarge") -> None:
        super().__init__()
        check_process(prediction, schedule, timesteps)
        check_choice(variance, VARIANCES, "model.variance", "fixedlarge")
        betas = make_betas(schedule, timesteps)
        self.timesteps, self.schedule, self.prediction, self.variance = timesteps, schedule, prediction, variance
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log of the posterior variance with its t = 0 entry (0) replaced by that of t = 1, as the released code
        post_logvar = np.log(np.append(post_var[1], post_var[1:]))
        model_var = np.append(post_var[1], betas[1:]) if variance == "fixedlarge" else np.append(post_var[1], post_var[1:])
        tables = {
            "betas": betas, "abar": abar, "abar_prev": abar_prev,
            "sqrt_abar": np.sqrt(abar), "sqrt_1m_abar": np.sqrt(1.0 - abar),
            "post_var": post_var, "post_logvar": post_logvar,
            "post_c0": betas * np.sqrt(abar_prev) / (1.0 - abar),  # posterior mean = post_c0 x_0 + post_ct x_t
            "post_ct": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            "model_logvar": np.log(model_var),
        }
        for name, values in tables.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float64), persistent=False)
        #: abar as host floats: DDIM's per-step coefficients are Python scalars, read without a device sync
        self.abar_host: list[float] = abar.tolist()

    def at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` shaped to broadcast against ``like`` ([B] -> [B, 1, ...]), in ``like``'s dtype."""
        v = getattr(self, name)[t].to(like.dtype)
        return v.view(-1, *([1] * (like.dim() - 1)))

    # ---- the forward process ----------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """A draw of ``q(x_t | x_0)``: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
        return self.at("sqrt_abar", t, x0) * x0 + self.at("sqrt_1m_abar", t, x0) * noise

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eqs. 6-7)."""
        mean = self.at("post_c0", t, xt) * x0 + self.at("post_ct", t, xt) * xt
        return mean, self.at("post_logvar", t, xt).expand_as(xt)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to output for ``prediction``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.at("sqrt_abar", t, x0) * noise - self.at("sqrt_1m_abar", t, x0) * x0

    def split(self, out: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The network's output -> (x_0, eps) estimates."""
        a, s = self.at("sqrt_abar", t, xt), self.at("sqrt_1m_abar", t, xt)
        if self.prediction == "eps":
            return (xt - s * out) / a, out
        if self.prediction == "x0":
            return out, (xt - a * out) / s
        return a * xt - s * out, s * xt + a * out

    def x0_from_eps(self, xt: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return (xt - self.at("sqrt_1m_abar", t, xt) * eps) / self.at("sqrt_abar", t, xt)

    def eps_from_x0(self, xt: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        return (xt - self.at("sqrt_abar", t, xt) * x0) / self.at("sqrt_1m_abar", t, xt)

    def ddim_steps(self, steps: int) -> list[int]:
        """The ``steps`` timesteps DDIM visits, ascending: ``range(0, T, T // S)`` (the released code's ``skip_type='uniform'``,
        github.com/ermongroup/ddim, runners/diffusion.py), its first ``S`` entries when ``S`` does not divide ``T``."""
        steps = max(1, min(int(steps), self.timesteps))
        return list(range(0, self.timesteps, self.timesteps // steps))[:steps]


# ---- networks --------------------------------------------------------------------------------
def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as in DDPM's code): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


#: GroupNorm: at most DDPM's 32 groups, each of at least ``group_channels`` channels (the default below)
MAX_GROUPS = 32
GROUP_CHANNELS = 4


def norm_groups(channels: int, group_channels: int | None = GROUP_CHANNELS) -> int:
    """The GroupNorm groups of a layer of ``channels``: the most groups, at most 32 (DDPM's count), that divide the
    channels into groups of at least ``group_channels`` each (1 group where even that is too many). ``None`` is the
    rule before ``model.group_channels`` existed, gcd(32, C): what a checkpoint whose config lacks the key was trained
    with, so it loads into the network it was trained as (the YAML sets 4 for new runs).

    DDPM's 32 groups at its 128-512 channels put 4-16 channels in each; 32 (or gcd(32, C)) groups at 16-32 channels
    would make every norm a per-channel instance norm, which at the 4x4 bottleneck of a small U-Net normalises
    away the per-channel means the denoiser needs (``benchmarks/results/ddpm_ablation_digits.md``).
    """
    if group_channels is None:
        return math.gcd(MAX_GROUPS, channels)
    fits = [g for g in range(1, MAX_GROUPS + 1) if channels % g == 0 and channels // g >= group_channels]
    return max(fits, default=1)


def group_norm(channels: int, group_channels: int | None) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, group_channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + the embedding's projection, GroupNorm -> SiLU -> dropout -> conv (zero-initialised), + skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, group_channels: int | None = GROUP_CHANNELS) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, group_channels), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.drop = group_norm(cout, group_channels), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels (DDPM's ``attn_block``), residual, output zero-initialised."""

    def __init__(self, channels: int, group_channels: int | None = GROUP_CHANNELS) -> None:
        super().__init__()
        self.norm = group_norm(channels, group_channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # [B, HW, C] each
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """The DDPM U-Net (Ho et al. 2020, appendix B; PixelCNN++-style): ``num_res_blocks`` residual blocks per
    resolution, self-attention at ``attention_resolutions`` and in the middle, stride-2 convolutions down,
    nearest-neighbour upsampling and a convolution up, skip connections by concatenation."""

    def __init__(
        self, shape: Sequence[int], channels: int, channel_mult: Sequence[int], attention_resolutions: Sequence[int],
        num_res_blocks: int, dropout: float, num_classes: int | None, group_channels: int | None = GROUP_CHANNELS,
    ) -> None:
        super().__init__()
        cin, side = int(shape[0]), int(shape[1])
        gc = group_channels
        emb = 4 * channels
        self.channels = channels
        self.time = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        # the label embedding has a row for "no label" (index num_classes): classifier-free guidance
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes is not None else None
        self.conv_in = nn.Conv2d(cin, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [channels], channels, side
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, channels * mult, emb, dropout, gc)]
                ch = channels * mult
                if res in attention_resolutions:
                    blocks.append(Attention(ch, gc))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, dropout, gc), Attention(ch, gc), ResBlock(ch, ch, emb, dropout, gc)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), channels * mult, emb, dropout, gc)]
                ch = channels * mult
                if res in attention_resolutions:
                    blocks.append(Attention(ch, gc))
                if level > 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                    res *= 2
                self.up.append(nn.ModuleList(blocks))
        self.out = nn.Sequential(group_norm(ch, gc), nn.SiLU(), _zero(nn.Conv2d(ch, cin, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.channels))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.out(h)


class Downsample(nn.Module):
    """A stride-2 convolution (the embedding is not used; every block of the U-Net takes it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MLPDenoiser(nn.Module):
    """The denoiser for vectors (2-D toy sets): residual MLP blocks, each adding a projection of the time (and label) embedding,
    read out through LayerNorm -> SiLU -> linear, plus (``input_skip``) a time-gated linear path from the input,
    ``gate(t) * x_t`` (the gate zero-initialised).

    The optimal noise estimate is close to linear in ``x_t`` (at large t, ``eps ~ x_t``), and the LayerNorm caps the norm of
    the read-out, so without the skip DDIM's deterministic path from a draw in the tail of N(0, I) (norm 4 and more in
    2-D) ran off the data (ring8: samples at radius 28-64 for a ring of radius 2). Dropping the LayerNorm instead
    removed the outliers but cost precision (grid25 high-quality share 0.25 against 0.69 with it); the skip keeps both
    (0.75, every sample within 0.9 of the data): ``benchmarks/results/ddpm_ablation_toy.md``.
    """

    def __init__(self, dims: int, hidden: int, blocks: int, dropout: float, num_classes: int | None, input_skip: bool = True) -> None:
        super().__init__()
        self.hidden = hidden
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.inp = nn.Linear(dims, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"emb": nn.Linear(hidden, hidden), "fc1": nn.Linear(hidden, hidden), "fc2": nn.Linear(hidden, hidden), "drop": nn.Dropout(dropout)})
            for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), _zero(nn.Linear(hidden, dims)))
        self.gate = _zero(nn.Linear(hidden, dims)) if input_skip else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.hidden))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](b["drop"](F.silu(b["fc1"](F.silu(h)) + b["emb"](F.silu(emb)))))
        out = self.out(h)
        return out if self.gate is None else out + self.gate(F.silu(emb)) * x


# ---- sampling ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerSpec:
    """``sampler=ddpm`` (ancestral, all T steps) or ``sampler=ddim`` (``steps``, ``eta``); ``guidance`` w for conditional models."""

    name: str = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    guidance: float | None = 0.0  # None only while parsing: set_sampler keeps the current weight
    #: ``sampler.pictures``: a cheaper sampler for the sample pictures alone (evaluation keeps this one); its guidance is
    #: this one's, its ``steps`` None (ddim) until set_sampler knows T: PICTURE_STEPS where fewer, else no picture sampler
    pictures: SamplerSpec | None = None

    def describe(self, timesteps: int) -> str:
        """``ddpm (ancestral, 1000 steps)``, ``ddim (50 steps, eta 0)``, with ``, guidance 2`` when guided."""
        what = f"ancestral, {timesteps} steps" if self.name == "ddpm" else f"{self.steps} steps, eta {self.eta:g}"
        return f"{self.name} ({what}{f', guidance {self.guidance:g}' if self.guidance else ''})"

    @classmethod
    def parse(cls, spec: Any) -> SamplerSpec:
        if isinstance(spec, SamplerSpec):
            return spec
        values = dict(spec or {})
        check_choice(values.get("name", "ddpm"), SAMPLERS, "sampler", "ddim")  # the sampler first: another model's (latent) has other keys
        unknown = sorted(set(values) - {"name", "steps", "eta", "guidance", "pictures"})
        if unknown:
            raise GentrainError(f"sampler has no key(s) {unknown}; its keys are name, steps (ddim), eta (ddim), guidance and pictures")
        pictures = cls._parse_pictures(values.get("pictures"))
        name = values.get("name", "ddpm")
        check_choice(name, SAMPLERS, "sampler", "ddim")
        steps, eta, guidance = values.get("steps"), values.get("eta", 0.0), values.get("guidance")
        if name == "ddpm" and (steps is not None or eta not in (0, 0.0, None)):
            raise GentrainError("sampler=ddpm runs all objective.timesteps steps and has no steps or eta; use sampler=ddim sampler.steps=50 for fewer")
        if name == "ddim" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise GentrainError(f"sampler.steps must be a positive integer, got {steps!r}; e.g. sampler.steps=50")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise GentrainError(f"sampler.eta must be a number >= 0, got {eta!r}; e.g. sampler.eta=0 (deterministic DDIM) or 1")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not guidance >= 0):
            raise GentrainError(f"sampler.guidance must be a number >= 0, got {guidance!r}; e.g. sampler.guidance=2.0 (0: no guidance)")
        return cls(name, steps, float(eta or 0.0), None if guidance is None else float(guidance), pictures)  # type: ignore[arg-type]

    @classmethod
    def _parse_pictures(cls, spec: Any) -> SamplerSpec | None:
        """``sampler.pictures`` (null: the pictures use the sampler itself): name, steps, eta as a sampler's; ddim's
        ``steps`` may be null (:data:`PICTURE_STEPS`)."""
        if spec is None or isinstance(spec, SamplerSpec):
            return spec
        values = dict(spec) if isinstance(spec, dict) else None
        if values is None or set(values) - {"name", "steps", "eta"}:
            raise GentrainError(f"sampler.pictures takes name, steps and eta (the pictures keep sampler.guidance), or null for the "
                                f"run's own sampler; got {spec!r}; e.g. sampler.pictures={{name:ddim,steps:50}}")
        auto = values.get("name", "ddpm") == "ddim" and values.get("steps") is None
        try:
            parsed = cls.parse({**values, "steps": 1} if auto else values)
        except GentrainError as e:
            raise GentrainError(f"sampler.pictures: {e}") from None
        return dataclasses.replace(parsed, steps=None) if auto else parsed


class DiffusionModel(LikelihoodModel, Latent, SamplerOptions):
    """Base of diffusion models: a denoising network ``net(x_t, t, y)`` and the process it inverts (objective=ddpm)."""

    likelihood_kind = "variational bound"

    def __init__(
        self, net: nn.Module, shape: Sequence[int], timesteps: int, schedule: str, prediction: str, variance: str,
        data_levels: int | None, num_classes: int | None, cond_drop: float, sampler: Any = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.images = len(self.shape) == 3
        self.data_levels = check_levels(data_levels, self.images)
        self.net = net
        self.process = GaussianDiffusion(timesteps, schedule, prediction, variance)
        self.num_classes = num_classes
        if not 0.0 <= float(cond_drop) < 1.0:
            raise GentrainError(f"model.cond_drop must be in [0, 1), got {cond_drop}; e.g. model.cond_drop=0.1")
        self.cond_drop = float(cond_drop) if num_classes is not None else 0.0
        kind = f"discretised over {self.data_levels} levels" if self.images else "Gaussian decoder density"
        self.likelihood_kind = f"variational bound (Ho et al. 2020 eq. 5, all {timesteps} terms; {kind})"
        self.sampler = SamplerSpec()
        self.set_sampler(sampler)

    # ---- what the engine and the objective use ----------------------------------------------
    @property
    def timesteps(self) -> int:
        return self.process.timesteps

    def ema_target(self) -> str | None:
        return "net"

    def set_sampler(self, spec: Any) -> None:
        """Sample with ``spec`` from now on; a ``guidance`` of None keeps the current one (0 for a new model, a checkpoint's own)."""
        if spec is None:
            return
        sampler = SamplerSpec.parse(spec)
        if sampler.guidance is None:
            sampler = dataclasses.replace(sampler, guidance=self.sampler.guidance)
        sampler = dataclasses.replace(sampler, pictures=self._picture_spec(sampler))
        if sampler.name == "ddim" and sampler.steps is not None and sampler.steps > self.process.timesteps:
            raise GentrainError(f"sampler.steps={sampler.steps} is more than the model's objective.timesteps={self.process.timesteps}, "
                                f"the most DDIM can visit; e.g. sampler.steps={min(50, self.process.timesteps)}")
        if sampler.guidance and self.num_classes is None:
            raise GentrainError("sampler.guidance needs a class-conditional model; set model.num_classes (and train with model.cond_drop > 0) or sampler.guidance=0")
        if sampler.guidance and self.cond_drop == 0:
            raise GentrainError("sampler.guidance needs the unconditional denoiser, which model.cond_drop=0 never trained; train with model.cond_drop=0.1")
        self.sampler = sampler

    def _picture_spec(self, sampler: SamplerSpec) -> SamplerSpec | None:
        """``sampler.pictures`` made concrete: the run's guidance; null ddim steps are :data:`PICTURE_STEPS`, or no picture
        sampler where that is not fewer than T; more steps than T are refused as the run's are."""
        p, timesteps = sampler.pictures, self.process.timesteps
        if p is None:
            return None
        if p.name == "ddim" and p.steps is None:
            if PICTURE_STEPS >= timesteps:
                return None
            p = dataclasses.replace(p, steps=PICTURE_STEPS)
        if p.name == "ddim" and p.steps is not None and p.steps > timesteps:
            raise GentrainError(f"sampler.pictures.steps={p.steps} is more than the model's objective.timesteps={timesteps}, "
                                f"the most DDIM can visit; e.g. sampler.pictures.steps={min(PICTURE_STEPS, timesteps)}")
        return dataclasses.replace(p, guidance=sampler.guidance)

    def picture_sampler(self) -> str | None:
        p = self.sampler.pictures
        if p is None:
            return None
        return f"{p.describe(self.timesteps)} (sampler.pictures; evaluation keeps the run's {self.sampler.describe(self.timesteps)})"

    @contextmanager
    def drawing_pictures(self) -> Iterator[None]:
        run = self.sampler
        if run.pictures is not None:
            self.sampler = run.pictures
        try:
            yield
        finally:
            self.sampler = run

    def check_data(self, data: DataSplit, dataset: str) -> None:
        super().check_data(data, dataset)
        check_labels(self.num_classes, data, dataset, "model.num_classes=null")

    def training_labels(self, y: Tensor | None) -> Tensor | None:
        """The labels the network sees in training: ``None`` (unconditional), else ``y`` with a ``cond_drop`` share replaced by "no label"."""
        if self.num_classes is None or y is None:
            return None
        if self.cond_drop == 0:
            return y
        drop = torch.rand(y.shape, device=y.device) < self.cond_drop
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def denoise(self, xt: Tensor, t: Tensor, y: Tensor | None, guidance: float = 0.0) -> tuple[Tensor, Tensor]:
        """``(x_0, eps)`` estimates at ``(x_t, t)``: guided when ``guidance`` > 0; on images ``x_0`` is clipped to [-1, 1] and ``eps`` re-derived."""
        if guidance and y is not None:
            out = self.net(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.num_classes)]))
            _, eps_c = self.process.split(out[: len(xt)].float(), xt, t)
            _, eps_u = self.process.split(out[len(xt) :].float(), xt, t)
            eps = (1.0 + guidance) * eps_c - guidance * eps_u
            x0 = self.process.x0_from_eps(xt, eps, t)
        else:
            if y is None and self.num_classes is not None:  # no label given: the unconditional denoiser
                y = torch.full((xt.shape[0],), self.num_classes, device=xt.device, dtype=torch.long)
            x0, eps = self.process.split(self.net(xt, t, y).float(), xt, t)
        if self.images:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.process.eps_from_x0(xt, x0, t)
        return x0, eps

    # ---- samplers -------------------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, *self.shape, device=self.device, generator=generator)

    @torch.no_grad()
    def run_sampler(
        self, x: Tensor, y: Tensor | None = None, sampler: SamplerSpec | None = None, generator: torch.Generator | None = None,
        keep: Callable[[int, int], bool] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Denoise ``x`` (= x_T) to x_0 with ``sampler`` (default: the model's). Returns x_0 and the states ``keep(i, S)`` selects
        (``i`` = 0 is x_T, ``S`` the last)."""
        s = sampler or self.sampler
        p = self.process
        steps = list(range(p.timesteps)) if s.name == "ddpm" else p.ddim_steps(int(s.steps or p.timesteps))
        kept = [x] if keep is not None and keep(0, len(steps)) else []
        for i, t_now in counted("denoising steps", list(enumerate(reversed(steps)))):
            t = torch.full((x.shape[0],), t_now, device=x.device, dtype=torch.long)
            x0, eps = self.denoise(x, t, y, s.guidance)
            if s.name == "ddpm":
                mean, _ = p.posterior(x0, x, t)
                x = mean + (torch.exp(0.5 * p.at("model_logvar", t, x)) * self._randn(x, generator) if t_now > 0 else 0.0)
            else:
                prev = steps[len(steps) - 2 - i] if i < len(steps) - 1 else None
                x = self._ddim_step(x, x0, eps, t_now, prev, s.eta, generator)
            if keep is not None and keep(i + 1, len(steps)):
                kept.append(x)
        return x, kept

    def _randn(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype, generator=generator)

    def _ddim_step(self, x: Tensor, x0: Tensor, eps: Tensor, t: int, prev: int | None, eta: float, generator: torch.Generator | None) -> Tensor:
        """Song et al. (2021) eq. 12 from step ``t`` to ``prev`` (None: to x_0, abar = 1)."""
        p = self.process
        a_t = p.abar_host[t]
        a_prev = p.abar_host[prev] if prev is not None else 1.0
        sigma = eta * math.sqrt(max(0.0, (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * eps
        return x + sigma * self._randn(x, generator) if sigma > 0 else x

    @torch.no_grad()
    def ddim_encode(self, x0: Tensor, y: Tensor | None = None, steps: int | None = None) -> Tensor:
        """The deterministic DDIM path run forward (eta = 0): data -> x_T, which DDIM decoding with the same steps maps back."""
        p = self.process
        seq = p.ddim_steps(int(steps or self.sampler.steps or p.timesteps))
        x, a_prev = x0, 1.0
        for t_now in seq:
            t = torch.full((x.shape[0],), t_now, device=x.device, dtype=torch.long)
            _, eps = self.denoise(x, t, y, self.sampler.guidance)
            a_t = p.abar_host[t_now]
            x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            x, a_prev = math.sqrt(a_t) * x0_hat + math.sqrt(1 - a_t) * eps, a_t
        return x

    def _finish(self, x: Tensor) -> Tensor:
        return x.clamp(-1.0, 1.0) if self.images else x

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        x = self.noise(n, generator)
        y = self.random_labels(n, generator)
        return self._finish(self.run_sampler(x, y, generator=generator)[0]), y

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_with_labels(n, generator)[0]

    def sample_of_labels(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.num_classes is None:
            return super().sample_of_labels(y, generator)
        x = self.noise(y.shape[0], generator)
        self.random_labels(y.shape[0], generator)  # drawn and dropped: the noise stream of an unlabelled draw
        return self._finish(self.run_sampler(x, y, generator=generator)[0])

    def sample_grid(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
        if self.num_classes is None:
            return self.sample(n, generator), None
        y, per_class = self.grid_labels(n)
        return self._finish(self.run_sampler(self.noise(y.shape[0], generator), y, generator=generator)[0]), per_class

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor | None:
        """Deterministic DDIM (eta 0; the sampler's steps, else 50) from noise interpolated between two draws of x_T; None on vectors."""
        if not self.images:
            return None
        z0, z1 = self.noise(rows, generator).flatten(1), self.noise(rows, generator).flatten(1)
        z = interpolate_latents(z0, z1, steps, spherical).reshape(rows * steps, *self.shape)
        y = self.path_labels(rows, steps, generator)
        ddim = SamplerSpec("ddim", self.sampler.steps if self.sampler.name == "ddim" else 50, 0.0, self.sampler.guidance)
        return self._finish(self.run_sampler(z, y, ddim)[0])

    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """The denoising trajectory from x_T to x_0: 8 image samples at up to 10 points in time, or the 2-D point cloud at up to 6."""
        points = len(x)
        columns = 10 if self.images else 6
        n = 8 if self.images else points

        def keep(i: int, last: int) -> bool:  # columns states evenly spread over 0 .. last
            return i in {round(j * last / (columns - 1)) for j in range(columns)}

        _, states = self.run_sampler(self.noise(n, generator), self.random_labels(n, generator), generator=generator, keep=keep)
        if self.images:
            return {"trajectory": (torch.stack(states, 1).flatten(0, 1).clamp(-1, 1), len(states))}
        if self.shape != (2,):
            return {}
        from gentrain.visual import scatter_image

        frames = [torch.from_numpy(scatter_image(x, s, size=256)).permute(2, 0, 1).float() / 127.5 - 1 for s in states]
        return {"trajectory": (torch.stack(frames), len(frames))}

    # ---- the variational bound ----------------------------------------------------------------
    def _decoder_nll(self, x0: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        """``-log p(x_0 | x_1)`` [B]: discretised Gaussian over the data's levels (images) or the Gaussian density (vectors)."""
        if not self.images:
            return (0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean).pow(2) * torch.exp(-logvar))).flatten(1).sum(1)
        levels = self.data_levels
        values = from_levels(torch.arange(levels, device=x0.device), levels)  # model-space value of every level, ascending
        edges = torch.cat([values.new_tensor([-math.inf]), (values[1:] + values[:-1]) / 2, values.new_tensor([math.inf])])
        k = to_levels(x0, levels)
        std = torch.exp(0.5 * logvar)
        log_p = log_interval_probability((edges[k] - mean) / std, (edges[k + 1] - mean) / std)
        return -log_p.flatten(1).sum(1)

    @torch.no_grad()
    def vlb_terms(self, x0: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(L_T, sum_{t>=1} L_{t-1} KL terms, L_0)`` in nats [B] each, with one draw of x_t per t."""
        p = self.process
        x0 = x0.float()
        b = x0.shape[0]
        last = torch.full((b,), p.timesteps - 1, device=x0.device, dtype=torch.long)
        mean_T = p.at("sqrt_abar", last, x0) * x0
        logvar_T = torch.log(p.at("sqrt_1m_abar", last, x0) ** 2).expand_as(x0)
        prior = normal_kl(mean_T, logvar_T, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)
        kls = torch.zeros(b, device=x0.device)
        decoder = torch.zeros(b, device=x0.device)
        for t_now in counted("bound terms", range(p.timesteps)):
            t = torch.full((b,), t_now, device=x0.device, dtype=torch.long)
            xt = p.q_sample(x0, t, self._randn(x0, generator))
            x0_hat, _ = self.denoise(xt, t, y)
            mean, _ = p.posterior(x0_hat, xt, t)
            logvar = p.at("model_logvar", t, xt).expand_as(xt)
            if t_now == 0:
                decoder = self._decoder_nll(x0, mean, logvar)
            else:
                true_mean, true_logvar = p.posterior(x0, xt, t)
                kls = kls + normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).sum(1)
        return prior, kls, decoder

    def log_prob(self, x: Tensor) -> Tensor:
        """The negative variational bound in nats [B]: a lower bound on ``log p(x)`` (of the discrete levels on images).

        Class-conditional models give the bound of their unconditional denoiser ("no label", trained by ``cond_drop``).
        """
        prior, kls, decoder = self.vlb_terms(x)
        return -(prior + kls + decoder)


class DDPM(DiffusionModel):
    """model=ddpm: the DDPM U-Net for images, a residual MLP for vectors (2-D toy sets), around :class:`GaussianDiffusion`.

    With ``model.num_classes`` set it builds a :class:`ConditionalDDPM` (a :class:`~gentrain.models.base.Conditional` model).
    """

    def __new__(cls, *args: Any, num_classes: int | None = None, **kwargs: Any) -> DDPM:
        return super().__new__(ConditionalDDPM if num_classes is not None and cls is DDPM else cls)

    def __init__(
        self,
        shape: Sequence[int],
        timesteps: int = 1000,
        schedule: str = "linear",
        prediction: str = "eps",
        variance: str = "fixedlarge",
        channels: int = 64,
        channel_mult: Sequence[int] | None = None,
        attention_resolutions: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        group_channels: int | None = None,
        dropout: float = 0.1,
        hidden: int = 256,
        blocks: int = 4,
        input_skip: bool | None = None,
        num_classes: int | None = None,
        cond_drop: float = 0.1,
        data_levels: int | None = None,
        sampler: Any = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if not 0.0 <= float(dropout) < 1.0:
            raise GentrainError(f"model.dropout must be in [0, 1), got {dropout}; e.g. model.dropout=0.1")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise GentrainError(f"model.num_classes must be a positive integer or null, got {num_classes!r}; e.g. model.num_classes=${{dataset.num_classes}}")
        if len(shape) == 3:
            mult, attention = unet_layout(shape, channel_mult, attention_resolutions)
            channels = check_int(channels, "model.channels", 1, example=64)
            num_res_blocks = check_int(num_res_blocks, "model.num_res_blocks", 0, example=2)
            if group_channels is not None:  # None: a checkpoint from before the key (gcd(32, C) groups, see norm_groups)
                group_channels = check_int(group_channels, "model.group_channels", 1, example=GROUP_CHANNELS)
            net: nn.Module = UNet(shape, channels, mult, attention, num_res_blocks, float(dropout), num_classes, group_channels)
            self_layout = {"channel_mult": mult, "attention_resolutions": attention}
        elif len(shape) == 1:
            hidden, blocks = check_int(hidden, "model.hidden", 1, example=256), check_int(blocks, "model.blocks", 0, example=4)
            if input_skip not in (None, True, False):
                raise GentrainError(f"model.input_skip must be true or false, got {input_skip!r}; e.g. model.input_skip=true")
            net = MLPDenoiser(shape[0], hidden, blocks, float(dropout), num_classes, bool(input_skip))
            self_layout = {}
        else:
            raise GentrainError(f"model=ddpm takes images [C, H, W] or vectors [D], got dataset.shape={list(shape)}")
        super().__init__(net, shape, timesteps, schedule, prediction, variance, data_levels, num_classes, cond_drop, sampler)
        self.layout = self_layout



class ConditionalDDPM(DDPM, Conditional):
    """model=ddpm with ``model.num_classes``: class-conditional, with classifier-free guidance (``sampler.guidance``)."""


def unet_layout(shape: Sequence[int], channel_mult: Sequence[int] | None, attention: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """The U-Net's channel multipliers and attention resolutions; ``null`` sizes them to the data.

    Defaults: DDPM's CIFAR-10 net for 32 x 32 (``[1, 2, 2, 2]``, attention at 16), ``[1, 2, 2]`` for 28 x 28
    (28 -> 14 -> 7), ``[1, 2]`` for 8 x 8; attention at 16 where the net has it, else at its lowest resolution.
    """
    c, h, w = (int(s) for s in shape)
    if h != w:
        raise GentrainError(f"model=ddpm's U-Net takes square images, got {h}x{w}")
    if channel_mult is None:
        levels = 1
        while levels < 4 and h % (2**levels) == 0 and h // (2**levels) >= 4:
            levels += 1
        mult = [1] + [2] * (levels - 1)
    else:
        mult = check_int_list(channel_mult, "model.channel_mult", "[1,2,2]")
        if not mult or any(m < 1 for m in mult):
            raise GentrainError(f"model.channel_mult must be a non-empty list of positive integers, got {list(channel_mult)}; e.g. [1, 2, 2]")
    if h % (2 ** (len(mult) - 1)):
        raise GentrainError(
            f"model.channel_mult={mult} halves the image {len(mult) - 1} times and {h}x{h} does not divide by {2 ** (len(mult) - 1)}; "
            "use fewer levels (e.g. model.channel_mult=[1,2,2] for 28x28)"
        )
    resolutions = [h // 2**i for i in range(len(mult))]
    if attention is None:
        attn = [16] if 16 in resolutions else [resolutions[-1]]
    else:
        attn = check_int_list(attention, "model.attention_resolutions", f"[{resolutions[-1]}]", f" (the U-Net's resolutions: {resolutions})")
        bad = sorted(set(attn) - set(resolutions))
        if bad:
            raise GentrainError(f"model.attention_resolutions={attn} names {bad}, which the U-Net does not have (its resolutions: {resolutions})")
    return mult, attn


__all__ = [
    "DDPM", "GaussianDiffusion", "DiffusionModel", "MLPDenoiser", "SamplerSpec", "UNet", "cosine_alpha_bar", "log_interval_probability",
    "check_process", "make_betas", "norm_groups", "normal_kl", "timestep_embedding", "unet_layout",
]
