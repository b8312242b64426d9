"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Sections 3.1-3.4).

The image is modelled as a product of K-way categoricals, one per sub-pixel, in raster order with the
channels R -> G -> B inside a pixel, exactly as :class:`~gentrain.families.autoregressive.models.PixelCNN`:

    p(x) = prod_{i, j} p(x_{i,j,R} | x_<ij) p(x_{i,j,G} | x_<ij, x_{i,j,R}) p(x_{i,j,B} | x_<ij, x_{i,j,R}, x_{i,j,G})

The network: a 7x7 mask-A convolution from the image to 2h features, ``layers`` recurrent layers with
residual connections (Sec. 3.4: the layer's h-channel output goes through a 1x1 convolution back to 2h
and is added to its input), and PixelCNN's output head (ReLU, 1x1, ReLU, 1x1 to K C logits). Every
feature map's channels are split into C colour groups (:func:`channel_groups`); at the current pixel
group g sees only the groups < g (mask A, the first layer) or <= g (mask B: the recurrent layers'
input-to-state convolutions and every 1x1). What a recurrent state reads from earlier pixels (the
state-to-state convolutions) is unmasked: those pixels are wholly known.

An LSTM layer, with gates from the input-to-state part ``K_is * x`` and the state-to-state part
``K_ss * h`` (h channels per gate, 4h in all, each gate's channels grouped like the state's):

    [o, f, i, g] = sigma, sigma, sigma, tanh (K_ss * h_prev + K_is * x)
    c = f . c_prev + i . g,    h = o . tanh(c)

``row_lstm`` (Sec. 3.1): ``K_is`` a 1 x 3 mask-B convolution along the row (columns j-1 and j, the
latter by colour group), computed for the whole map at once; the state is one row, updated row by row
with ``K_ss`` a 1 x 3 convolution over the previous row's state (columns j-1 .. j+1). Its context is a
triangle above the pixel (widened by the 7x7 first layer): cheap, H steps per layer.

``diagonal_bilstm`` (Sec. 3.2): the input-to-state map (a 1x1 mask-B convolution) is skewed, row i
shifted right by i (:func:`skew`: [B, ch, H, W] -> [B, ch, H, W + H - 1]), so that each diagonal of
the image is a column; the state is one column, updated column by column with ``K_ss`` a 2 x 1
convolution over the previous column (rows i-1 and i: the pixels above, (i-1, j), and to the left,
(i, j-1)); the result is unskewed (:func:`unskew`). A second direction runs on the horizontally
flipped map (its context is up and to the right, the current row included); its output, flipped back,
is shifted one row down, so that it only carries rows above, and added to the first's. The two
directions scan together: W + H - 1 steps a layer. Together they see the whole context of every
pixel in one layer but for one sub-pixel: the last one of the row above, (C-1, i-1, W-1), is out of
reach of the pixels (i, j) with j < W - 4, at any depth. A pixel's value first enters the features
of the pixels after it (mask A); after (i-1, W-1) those are in row i only, within the 7x7 first
layer's 3 columns, and neither direction reads row i from the right. (That pixel's earlier channels
do reach its own features, by mask B, and so the right-to-left state.) The paper's design, kept.

Sampling runs one network pass per sub-pixel (H W C), each over the rows up to the current one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.families.autoregressive.models import (
    LEVELS,
    MaskedConv2d,
    SubpixelModel,
    _output_head,
    image_shape,
    _shift_down,
    _temperature,
    channel_groups,
)
from gentrain.models.likelihood import check_levels

CELLS = ("row_lstm", "diagonal_bilstm")
#: The side of the first, mask-A convolution (7 in the paper).
FIRST_KERNEL = 7
#: The width of the Row LSTM's input-to-state and state-to-state convolutions (k = 3 in the paper).
ROW_KERNEL = 3


# ----------------------------------------------------------------------------- skewing


def skew(x: Tensor) -> Tensor:
    """Shift row i of ``x`` [B, ch, H, W] right by i: [B, ch, H, W + H - 1], ``out[..., i, i + j] = x[..., i, j]``, zeros elsewhere.

    Column t of the result is the diagonal i + j = t of the image. Done without a loop: rows padded
    to W + H, flattened, cut by H and read as rows of W + H - 1.
    """
    b, c, h, w = x.shape
    flat = F.pad(x, (0, h)).reshape(b, c, h * (w + h))[..., : h * (w + h - 1)]
    return flat.reshape(b, c, h, w + h - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """The inverse of :func:`skew`: [B, ch, H, width + H - 1] -> [B, ch, H, width], ``out[..., i, j] = x[..., i, i + j]``."""
    b, c, h, t = x.shape
    if t != width + h - 1:
        raise ValueError(f"a skewed map of {h} rows and width {width} has {width + h - 1} columns, not {t}")
    flat = F.pad(x.reshape(b, c, h * t), (0, h))
    return flat.reshape(b, c, h, t + 1)[..., :width]


# ----------------------------------------------------------------------------- recurrent layers


def _lstm_step(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update from the gate pre-activations ``z`` [..., 4h, L] (o, f, i, g along dim -2) and the cell ``c`` [..., h, L]: (h, c)."""
    o, f, i, g = z.chunk(4, dim=-2)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gate_groups(hidden: int, channels: int) -> Tensor:
    """Colour groups of the 4h gate channels: each gate's h channels grouped like the state's (so c and h keep them)."""
    return channel_groups(hidden, channels).repeat(4)


class RowLSTM(nn.Module):
    """The Row LSTM (Sec. 3.1): [B, 2h, H, W] -> states [B, h, H, W], one row per step.

    ``K_is``: a 1 x 3 mask-B convolution centred on the pixel (columns j-1, j) for the whole map;
    ``K_ss``: a 1 x 3 convolution over row i-1's state. Row 0 starts from h = c = 0.
    """

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channel_groups(2 * hidden, channels), _gate_groups(hidden, channels), (1, ROW_KERNEL), "B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, ROW_KERNEL, padding=ROW_KERNEL // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, _, w = x.shape
        z_in = self.input_to_state(x).permute(2, 0, 1, 3).contiguous()  # [H, B, 4h, W]: one row per step
        h = x.new_zeros(b, self.hidden, w)
        c = torch.zeros_like(h)
        states = []
        for z in z_in:
            h, c = _lstm_step(z + self.state_to_state(h), c)
            states.append(h)
        return torch.stack(states, dim=2)


class DiagonalBiLSTM(nn.Module):
    """The Diagonal BiLSTM (Sec. 3.2): [B, 2h, H, W] -> ``left + shift_down(flip(right))``, states [B, h, H, W].

    Each direction: ``K_is`` a 1x1 mask-B convolution, then skewed (the right-to-left one of the
    map flipped along the columns); ``K_ss`` a 2 x 1 convolution over the previous column of the
    skewed map (rows i-1 and i), i.e. the states of (i-1, j) and (i, j-1). The skewed map is zero
    left of each row, so the states there stay exactly 0 (as a zero padding); those right of a row
    are never read by a pixel of the image. The right-to-left direction sees the pixels to the right
    in the current row; one row down it only carries the rows above, which are wholly known. The two
    directions scan together, as channel halves [left | right] with grouped state-to-state weights.
    """

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        gates = _gate_groups(hidden, channels)
        self.input_to_state = MaskedConv2d(channel_groups(2 * hidden, channels), torch.cat([gates, gates]), (1, 1), "B")
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, groups=2, bias=False)  # each direction reads its own state

    def forward(self, x: Tensor) -> Tensor:
        b, _, rows, w = x.shape
        k = self.hidden
        left, right = self.input_to_state(x).chunk(2, dim=1)  # a 1x1 convolution commutes with the flip
        z_in = skew(torch.cat([left, right.flip(-1)], dim=1))  # [B, 8h, H, W + H - 1]: a diagonal per column
        z_in = z_in.view(b, 2, 4 * k, rows, -1).permute(4, 0, 1, 2, 3).contiguous()  # [W + H - 1, B, 2, 4h, H]
        h = x.new_zeros(b, 2, k, rows)
        c = torch.zeros_like(h)
        states = []
        for z in z_in:
            recurrent = self.state_to_state(F.pad(h.reshape(b, 2 * k, rows), (1, 0)))  # row i reads rows i-1 and i of the last diagonal
            h, c = _lstm_step(z + recurrent.view(b, 2, 4 * k, rows), c)
            states.append(h)
        out = torch.stack(states, dim=-1).view(b, 2 * k, rows, -1)  # [B, (left | right) h, H, W + H - 1]
        left_h, right_h = unskew(out, w).chunk(2, dim=1)
        return left_h + _shift_down(right_h.flip(-1))


class RecurrentLayer(nn.Module):
    """A residual recurrent layer (Sec. 3.4, Fig. 4): ``x + K_out * cell(x)``, ``K_out`` a 1x1 mask-B convolution h -> 2h."""

    def __init__(self, cell: str, hidden: int, channels: int) -> None:
        super().__init__()
        self.cell = RowLSTM(hidden, channels) if cell == "row_lstm" else DiagonalBiLSTM(hidden, channels)
        self.out = MaskedConv2d(channel_groups(hidden, channels), channel_groups(2 * hidden, channels), (1, 1), "B")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.cell(x))


class PixelRNNNet(nn.Module):
    """A 7x7 mask-A convolution to 2h features, ``layers`` residual recurrent layers, the output head: [B, C, H, W] -> [B, K C, H, W]."""

    def __init__(self, cell: str, channels: int, hidden: int, layers: int, levels: int = LEVELS) -> None:
        super().__init__()
        self.first = MaskedConv2d(torch.arange(channels), channel_groups(2 * hidden, channels), (FIRST_KERNEL, FIRST_KERNEL), "A")
        self.layers = nn.Sequential(*(RecurrentLayer(cell, hidden, channels) for _ in range(layers)))
        self.head = _output_head(2 * hidden, channels, levels)

    def features(self, x: Tensor) -> Tensor:
        return self.layers(self.first(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- the model


class PixelRNN(SubpixelModel):
    """PixelRNN over images [C, H, W]: a K-way categorical per sub-pixel (K = ``data_levels``), in raster order, channels R -> G -> B.

    Args:
        shape: ``[C, H, W]`` (``${dataset.shape}``).
        cell: ``row_lstm`` (Sec. 3.1: row by row, a triangular context) or ``diagonal_bilstm`` (Sec. 3.2:
            diagonal by diagonal in both directions, the whole context).
        layers: residual recurrent layers after the first (7x7 mask-A) convolution.
        hidden: h, the LSTM state's channels (the residual stream has 2h; split into C colour groups; at least 2 C).
        temperature: sampling temperature (logits / temperature); 1 samples the model.
        data_levels: the data's levels per sub-pixel, the softmax size (``${dataset.levels}``; None: 256).
    """

    def __init__(
        self,
        shape: Sequence[int],
        cell: str = "row_lstm",
        layers: int = 7,
        hidden: int = 32,
        temperature: float = 1.0,
        data_levels: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = image_shape(shape, "pixelrnn")
        self.data_levels = check_levels(data_levels, True)
        if self.data_levels != LEVELS:
            self.likelihood_kind = f"exact ({self.data_levels} levels)"
        channels = self.shape[0]
        self.cell = check_choice(cell, CELLS, "model.cell", "diagonal_bilstm")
        layers = check_int(layers, "model.layers", example=7)
        hidden = check_int(hidden, "model.hidden", example=32)
        if hidden < 2 * channels:
            raise GentrainError(f"model.hidden={hidden} is too small for {channels} colour groups; use model.hidden >= {2 * channels}")
        self.temperature = _temperature(temperature)
        self.net = PixelRNNNet(self.cell, channels, hidden, layers, self.data_levels)
