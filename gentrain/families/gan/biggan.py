"""BigGAN (Brock, Donahue & Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural Image Synthesis"); ``model=biggan``.

The networks follow the authors' code, github.com/ajbrock/BigGAN-PyTorch (BigGAN.py, layers.py); where its code and the
paper's text differ this follows the code and says so.

- G: ``z`` (split into ``num_blocks + 1`` equal chunks with ``hier``: the first into the linear layer, one per block) ->
  linear -> ``base x base`` -> residual up-blocks (conditional BN, ReLU, 2x nearest up-sampling, 3x3 conv, conditional BN,
  ReLU, 3x3 conv; a 1x1 conv shortcut) -> BN, ReLU, 3x3 conv, tanh. Each conditional BN's gain ``1 + W_g [e, z_i]`` and bias
  ``W_b [e, z_i]`` are linear maps (no bias) of the shared class embedding ``e = shared(y)`` concatenated with the block's z
  chunk (``layers.ccbn`` with ``G_shared`` and ``hier``).
- D: residual down-blocks ("wide": the first conv has the output's width; pre-activation after the first block; 2x2
  average pooling; a 1x1 conv shortcut), ReLU, sum pooling, then the projection head (Miyato & Koyama 2018):
  ``logit = linear(h) + sum(embed(y) * h)``.
- One self-attention block (SAGAN, Zhang et al. 2019; ``layers.Attention``, its gain gamma initialised to 0) after the G
  block and the D block whose output has side ``attention_resolution``.
- Spectral norm on every conv and linear layer of G and D and on D's class embedding (BigGAN-PyTorch: ``G_param='SN'``,
  ``D_param='SN'``, ``SNEmbedding``); G's shared embedding has none (the code: SN on it "seems to randomly cripple G").

Unconditional (``num_classes`` null, unlabelled data): no embeddings; G's norms are plain batch norm with learned affine
parameters, all of ``z`` enters the linear layer (there is nothing to concatenate a chunk with), and D has no projection.

Sizes: square images of side ``8 * 2^k`` start from a 4x4 base (32: BigGAN-PyTorch's CIFAR arch, 4 -> 8 -> 16 -> 32), and
28x28 (MNIST, Fashion-MNIST) from 7x7 (7 -> 14 -> 28). Sides up to 32 use the code's ``arch[32]`` widths (every block
``4 * width`` channels); 64 to 512 its ``arch[64..512]`` tables.

Sampling: ``sampler=latent sampler.truncation=t`` draws z from N(0, I) truncated to [-t, t] (the truncation trick, section
3.1) for pictures, evaluation and ``task=sample``; training always draws untruncated z (the objectives call
:meth:`noise`, sampling calls :meth:`sampling_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.families.gan.base import AdversarialModel, spectral_norm_
from gentrain.families.gan.models import _check_square
from gentrain.models.base import Conditional, check_labels

#: Weight initialisations (``model.init``): BigGAN-PyTorch's ``G_init`` / ``D_init`` choices.
INITS = ("ortho", "N02", "xavier")
#: The largest side BigGAN-PyTorch has an architecture for.
MAX_SIDE = 512

# BigGAN-PyTorch's channel multipliers for sides above 32 (G_arch / D_arch): G in/out per block, D out per block
_G_LARGE = {
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
}
_D_LARGE = {
    64: [1, 2, 4, 8, 16],
    128: [1, 2, 4, 8, 16, 16],
    256: [1, 2, 4, 8, 8, 16, 16],
    512: [1, 1, 2, 4, 8, 8, 16, 16],
}


def biggan_layout(side: int) -> tuple[int, int]:
    """(base side, number of G up-blocks): 28 -> (7, 2); 8 * 2^k -> (4, k + 1): 8 -> (4, 1), 32 -> (4, 3), 128 -> (4, 5)."""
    if side == 28:
        return 7, 2
    k = int(round(math.log2(side / 8))) if side >= 8 else -1
    if k < 0 or 8 * 2**k != side or side > MAX_SIDE:
        raise GentrainError(
            f"model=biggan needs square images of side 8 * 2^k up to {MAX_SIDE} (8, 16, 32, 64, 128, 256, 512) or 28, got {side}; "
            "resize the data (e.g. dataset.size=32)"
        )
    return 4, k + 1


def _g_channels(side: int, n_blocks: int, width: int) -> tuple[list[int], list[int]]:
    if side in _G_LARGE:
        ins, outs = _G_LARGE[side]
        return [width * m for m in ins], [width * m for m in outs]
    return [4 * width] * n_blocks, [4 * width] * n_blocks  # arch[32]: 4 * ch throughout


def _d_layout(side: int, channels: int, width: int) -> tuple[list[int], list[int], list[bool]]:
    """D's in channels, out channels and down-sampling per block."""
    if side in _D_LARGE:
        outs = [width * m for m in _D_LARGE[side]]
        return [channels, *outs[:-1]], outs, [True] * (len(outs) - 1) + [False]
    # arch[32]: four blocks of 4 * ch, the first two down-sampling (32 -> 16 -> 8 -> 8 -> 8); 28 -> 7 and 16 -> 4 alike;
    # 8x8 keeps its side through the first block (8 -> 8 -> 4 -> 4 -> 4), so that attention at 8 exists in both G and D
    down = [side >= 16, True, False, False]
    return [channels] + [4 * width] * 3, [4 * width] * 4, down


def _conv(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


class SelfAttention(nn.Module):
    """SAGAN's self-attention block as in BigGAN-PyTorch's ``layers.Attention``: ``x + gamma * o(attention)``, gamma = 0 at init.

    theta, phi: 1x1 convs to C/8 channels; g: to C/2; phi and g max-pooled 2x2; the attention map softmax(theta^T phi) over
    the pooled positions; o: a 1x1 conv back to C channels. All convs without bias (as the code). The code reshapes the
    pooled maps to ``H * W // 4`` positions, which assumes an even side; this reads their actual size (7x7 -> 3x3 at 28).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels, inner = channels, max(1, channels // 8)
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, max(1, channels // 2), 1, bias=False)
        self.o = nn.Conv2d(max(1, channels // 2), channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # [B, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # [B, C/8, HW']
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # [B, C/2, HW']
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)  # [B, HW, HW']
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, -1, h, w))
        return self.gamma * o + x


class ConditionalBatchNorm(nn.Module):
    """``layers.ccbn``: batch norm without affine parameters, then ``* (1 + gain(c)) + bias(c)`` with ``gain``, ``bias``
    linear maps without bias of the conditioning vector ``c`` [B, cond_dim] (the shared embedding and a z chunk)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)  # eps 1e-5, momentum 0.1: the code's F.batch_norm settings
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gain = (1 + self.gain(c)).view(c.shape[0], -1, 1, 1)
        bias = self.bias(c).view(c.shape[0], -1, 1, 1)
        return self.norm(x) * gain + bias


class _PlainBatchNorm(nn.BatchNorm2d):
    """Batch norm with learned affine parameters that takes (and ignores) a conditioning vector: the unconditional G."""

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class GBlock(nn.Module):
    """``layers.GBlock``: BN(x, c), ReLU, 2x up, conv3, BN(., c), ReLU, conv3; plus up(x) through a 1x1 conv.

    Unlike BigGAN-PyTorch, G's convolutions and linear layer have no bias, except the output conv: each of the others feeds
    a batch norm (conv1 this block's bn2; conv2 and the shortcut the next block's bn1 or the output BN; the linear the first
    bn1), which subtracts it. The function G computes is the same; the biases' gradient is zero up to round-off, which
    Adam's normalisation turns into learning-rate-sized random steps (and which made captured and eager steps differ).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int | None) -> None:
        super().__init__()
        norm = (lambda c: ConditionalBatchNorm(c, cond_dim)) if cond_dim is not None else _PlainBatchNorm
        self.bn1, self.bn2 = norm(c_in), norm(c_out)
        self.conv1, self.conv2 = _conv(c_in, c_out, bias=False), _conv(c_out, c_out, bias=False)
        self.conv_sc = _conv(c_in, c_out, 1, bias=False)  # always learnable: every block up-samples

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.conv_sc(F.interpolate(x, scale_factor=2))


class DBlock(nn.Module):
    """``layers.DBlock`` (wide): [ReLU], conv3, ReLU, conv3, [avg-pool 2]; shortcut 1x1 conv and pool (pre-activated blocks:
    conv then pool; the first block: pool then conv, as the code)."""

    def __init__(self, c_in: int, c_out: int, preactivation: bool, downsample: bool) -> None:
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1, self.conv2 = _conv(c_in, c_out), _conv(c_out, c_out)
        self.learnable_sc = c_in != c_out or downsample
        self.conv_sc = _conv(c_in, c_out, 1) if self.learnable_sc else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def shortcut(self, x: Tensor) -> Tensor:
        if self.conv_sc is None:
            return x
        return self._pool(self.conv_sc(x)) if self.preactivation else self.conv_sc(self._pool(x))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        return h + self.shortcut(x)


class Generator(nn.Module):
    """``(z [B, z_dim], y [B] or None) -> x [B, C, S, S]`` in [-1, 1]."""

    def __init__(self, shape: tuple[int, ...], z_dim: int, width: int, num_classes: int | None, shared_dim: int, hier: bool,
                 attention_resolution: int | None) -> None:
        super().__init__()
        channels, side = shape[0], shape[1]
        self.base, n_blocks = biggan_layout(side)
        ins, outs = _g_channels(side, n_blocks, width)
        conditional = num_classes is not None
        self.hier = hier and conditional
        #: z chunks: [linear's, block 1's, ...]; without hier the linear takes all of z
        self.chunks = [z_dim // (n_blocks + 1)] * (n_blocks + 1) if self.hier else [z_dim]
        if self.hier and sum(self.chunks) != z_dim:
            raise GentrainError(
                f"model.z_dim={z_dim} does not split into {n_blocks + 1} equal chunks (hierarchical z: one for the linear layer, one per "
                f"block of this {side}x{side} generator); e.g. model.z_dim={(z_dim // (n_blocks + 1) or 1) * (n_blocks + 1)}, or model.hier=false"
            )
        self.shared = nn.Embedding(num_classes, shared_dim) if conditional else None
        cond_dim = (shared_dim + (self.chunks[1] if self.hier else 0)) if conditional else None
        self.linear = nn.Linear(self.chunks[0], ins[0] * self.base**2, bias=False)  # feeds a batch norm: see GBlock
        blocks: list[nn.Module] = []
        self.attention_after: int | None = None
        side_now = self.base
        for i in range(n_blocks):
            blocks.append(GBlock(ins[i], outs[i], cond_dim))
            side_now *= 2
            if attention_resolution == side_now and self.attention_after is None:
                self.attention_after = i
        self.blocks = nn.ModuleList(blocks)
        self.attention = SelfAttention(outs[self.attention_after]) if self.attention_after is not None else None
        self.out_bn = nn.BatchNorm2d(outs[-1])
        self.out_conv = _conv(outs[-1], channels)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        zs = torch.split(z, self.chunks, 1)
        e = self.shared(y) if self.shared is not None else None
        if e is None:
            conds: list[Tensor | None] = [None] * len(self.blocks)
        elif self.hier:
            conds = [torch.cat([e.to(zi.dtype), zi], 1) for zi in zs[1:]]
        else:
            conds = [e] * len(self.blocks)
        h = self.linear(zs[0]).view(z.shape[0], -1, self.base, self.base)
        for i, block in enumerate(self.blocks):
            h = block(h, conds[i])
            if i == self.attention_after:
                assert self.attention is not None
                h = self.attention(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    """``(x [B, C, S, S], y [B] or None) -> logit [B]``: residual blocks, ReLU, sum pooling, ``linear(h) + sum(embed(y) * h)``."""

    def __init__(self, shape: tuple[int, ...], width: int, num_classes: int | None, attention_resolution: int | None) -> None:
        super().__init__()
        channels, side = shape[0], shape[1]
        ins, outs, down = _d_layout(side, channels, width)
        blocks: list[nn.Module] = []
        self.attention_after: int | None = None
        side_now = side
        for i in range(len(outs)):
            blocks.append(DBlock(ins[i], outs[i], preactivation=i > 0, downsample=down[i]))
            side_now //= 2 if down[i] else 1
            # the block whose output has this side (BigGAN-PyTorch's arch[32] labels all four D blocks 16, so D_attn=16 there
            # attaches one after each; this attaches one, after the first block that outputs that side)
            if attention_resolution == side_now and self.attention_after is None:
                self.attention_after = i
        self.blocks = nn.ModuleList(blocks)
        self.attention = SelfAttention(outs[self.attention_after]) if self.attention_after is not None else None
        self.linear = nn.Linear(outs[-1], 1)
        self.embed = nn.Embedding(num_classes, outs[-1]) if num_classes is not None else None

    def features(self, x: Tensor) -> Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                assert self.attention is not None
                h = self.attention(h)
        return F.relu(h).sum([2, 3])  # global sum pooling (SN-GAN)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.features(x)
        out = self.linear(h).flatten()
        if self.embed is not None:
            assert y is not None
            out = out + (self.embed(y).to(h.dtype) * h).sum(1)  # the projection (Miyato & Koyama 2018)
        return out


def init_biggan_(module: nn.Module, init: str) -> None:
    """BigGAN-PyTorch's ``init_weights``: the weight of every conv, linear and embedding layer (biases keep PyTorch's)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if init == "ortho":
                nn.init.orthogonal_(m.weight)
            elif init == "N02":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                nn.init.xavier_uniform_(m.weight)


def attention_sides(side: int) -> list[int]:
    """The sides ``model.attention_resolution`` may name: those of a G block's output that a D block also outputs."""
    base, n_blocks = biggan_layout(side)
    g_sides = {base * 2 ** (i + 1) for i in range(n_blocks)}
    _, _, down = _d_layout(side, 1, 1)
    d_sides, s = set(), side
    for d in down:
        s //= 2 if d else 1
        d_sides.add(s)
    return sorted(g_sides & d_sides)


class BigGAN(AdversarialModel):
    """BigGAN (Brock et al. 2019) for square images; ``model=biggan``. See the module's docstring for the networks.

    ``num_classes`` (``${dataset.num_classes}``): class-conditional with a shared embedding of ``shared_dim`` and projection
    D; null: unconditional. ``hier``: the hierarchical latent (z split into ``num_blocks + 1`` chunks). ``g_width`` /
    ``d_width``: BigGAN-PyTorch's ``G_ch`` / ``D_ch``. ``attention_resolution``: the side of the one self-attention block in
    G and D (null or 0: none). ``spectral_norm``: SN in G and D. ``init``: ``ortho`` | ``N02`` | ``xavier``. ``ortho_reg``:
    not used by the model: ``objective.ortho_reg`` follows it (the objective adds the penalty).
    """

    config_name = "biggan"

    def __new__(cls, *args: Any, num_classes: int | None = None, **kwargs: Any) -> BigGAN:
        return super().__new__(ConditionalBigGAN if num_classes is not None and cls is BigGAN else cls)

    def __init__(
        self,
        shape: Sequence[int],
        num_classes: int | None = None,
        z_dim: int = 120,
        shared_dim: int = 128,
        hier: bool = True,
        g_width: int = 64,
        d_width: int = 64,
        attention_resolution: int | None = None,
        spectral_norm: bool = True,
        init: str = "ortho",
        ortho_reg: float = 0.0,
        pack: int = 1,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise GentrainError(
                f"model=biggan is an image model (convolutions, up-sampling) and the data has shape {list(shape)}; "
                "for vector data (2-D toy sets) use model=gan_mlp or model=dcgan"
            )
        _check_square("biggan", shape)
        if num_classes is not None:
            check_int(num_classes, "model.num_classes", example=10)
            check_int(shared_dim, "model.shared_dim", example=128)
        check_int(z_dim, "model.z_dim", example=120)
        check_int(g_width, "model.g_width", example=64)
        check_int(d_width, "model.d_width", example=64)
        check_choice(init, INITS, "model.init", "ortho")
        if not isinstance(hier, bool) or not isinstance(spectral_norm, bool):
            raise GentrainError(f"model.hier and model.spectral_norm must be true or false, got {hier!r} and {spectral_norm!r}")
        if check_int(pack, "model.pack", 1, example=1) != 1:
            raise GentrainError("model=biggan's discriminator judges one sample (a projection head on one label); use objective.pack=1")
        attention = attention_resolution or None  # 0 and null: none
        if attention is not None:
            sides = attention_sides(shape[1])
            if attention not in sides:
                raise GentrainError(
                    f"model.attention_resolution={attention_resolution}: a {shape[1]}x{shape[1]} BigGAN has blocks of side "
                    f"{', '.join(map(str, sides))} in both G and D; pick one, or null for no attention"
                )
        # the seeded initialisation draws D, then G (as the other GANs here)
        discriminator = Discriminator(shape, d_width, num_classes, attention)
        generator = Generator(shape, z_dim, g_width, num_classes, shared_dim, hier, attention)
        init_biggan_(discriminator, init)
        init_biggan_(generator, init)
        if spectral_norm:
            shared = generator.shared
            generator.shared = None  # type: ignore[assignment]  # G's embedding stays without SN (BigGAN-PyTorch)
            spectral_norm_(generator)
            generator.shared = shared
            spectral_norm_(discriminator)
            if discriminator.embed is not None:  # SNEmbedding in BigGAN-PyTorch's D
                discriminator.embed = nn.utils.parametrizations.spectral_norm(discriminator.embed)
        super().__init__(generator, discriminator, z_dim, spectral_norm=False, pack=1)
        self.num_classes = num_classes

    # ---- the networks ------------------------------------------------------------------------------------------------
    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z, self._labels_for(y))

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return self.discriminator(x, self._labels_for(y)), None

    def _labels_for(self, y: Tensor | None) -> Tensor | None:
        if self.num_classes is None:
            return None
        if y is None:
            raise GentrainError(f"model=biggan is conditional: generate and discriminate need class labels y in [0, {self.num_classes})")
        return y

    def critic_weights(self) -> list[Tensor]:
        """D's parameters without its class embedding (a per-class input, not a weight of f(., y) acting on x; see cgan)."""
        table = set() if self.discriminator.embed is None else {id(p) for p in self.discriminator.embed.parameters()}
        return [p for p in self.discriminator.parameters() if id(p) not in table]

    def check_data(self, data: DataSplit, dataset: str) -> None:
        if self.num_classes is not None and data.y is None:
            raise GentrainError(
                f"model=biggan with model.num_classes={self.num_classes} is class-conditional and dataset={dataset} has no labels; "
                "set model.num_classes=null for an unconditional BigGAN (plain batch norm, no projection)"
            )
        check_labels(self.num_classes, data, dataset, "model.num_classes=null (an unconditional BigGAN)")


class ConditionalBigGAN(BigGAN, Conditional):
    """A :class:`BigGAN` built with ``num_classes``: conditional BN from the shared embedding, projection discriminator."""
