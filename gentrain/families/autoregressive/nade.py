"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011), over images.

The D = C H W sub-pixels are generated in an ``ordering`` o_1 .. o_D. Conditional k reads the inputs
before it through one hidden layer whose weights are shared by all conditionals (tied weights
``W`` [H, D], one column per input dimension):

    h_k = sigmoid(a_k),   a_k = c + sum_{j < k} W[:, o_j] v_{o_j},   so   a_1 = c,   a_{k+1} = a_k + W[:, o_k] v_{o_k},

and the running sum makes all D hidden vectors cost O(H D) per example (one column added per
dimension), not the O(H D^2) of D separate matrix products. ``v`` is what the network reads: the
level index of the sub-pixel scaled to [0, 1], ``level / (K - 1)`` with K = ``data_levels``: on
binarised data exactly the paper's 0/1 bit, and evenly spaced for every K (the model-space values
are not: level 1 of 17 is stored as 16 of 255). Initialisation: ``W`` and ``V`` ~ N(0, 0.01^2), biases
0, so the first conditional's hidden is sigmoid(c) = 1/2 and a fresh model is near uniform.

The output of dimension d = o_k:

- K = 2 (binarised data): a Bernoulli, ``p(x_d = 1 | x_<d) = sigmoid(V[d, 0] . h_k + b[d, 0])`` (the
  paper's model); one logit per dimension (``V`` [D, 1, H], ``b`` [D, 1]).
- K > 2: a K-way softmax over the levels, logits ``V[d] h_k + b[d]`` (``V`` [D, K, H], ``b`` [D, K]);
  the output weights then number D K H (0.56 M for the 8x8 digits, K = 17, at H = 500; 100 M for
  28x28 8-bit images: use a smaller ``hidden`` there).

``log_prob`` is the exact log-probability of the discrete levels (nats). Sampling goes through the
ordering once, updating the running sum by one column per dimension: O(H D) per sample plus the
outputs (O(H D K)), one softmax per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.engine.progress import phase, tick
from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.families.autoregressive.models import LEVELS, ORDERINGS, AutoregressiveModel, image_shape, _temperature, ordering_of
from gentrain.models.likelihood import check_levels, from_levels, to_levels

#: The standard deviation of the initial weights ``W`` and ``V`` (biases start at 0: the first
#: conditional's hidden is sigmoid(0) = 1/2 and every conditional starts near uniform).
INIT_STD = 0.01


class NADENet(nn.Module):
    """NADE's parameters and its running-sum pass: ``W`` [H, D] (tied input weights), ``c`` [H], ``V`` [D, K', H], ``b`` [D, K']
    with K' = 1 (Bernoulli) or K (softmax)."""

    def __init__(self, dims: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(hidden, dims) * INIT_STD)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(dims, outputs, hidden) * INIT_STD)
        self.b = nn.Parameter(torch.zeros(dims, outputs))

    def extra_repr(self) -> str:
        hidden, dims = self.W.shape
        return f"dims={dims}, hidden={hidden}, outputs={self.V.shape[1]}"

    def running_sums(self, v: Tensor, order: Tensor) -> Tensor:
        """Inputs ``v`` [B, D] (natural order) -> the pre-activations a [B, D, H] at the ordering's positions,
        ``a[:, k] = c + sum_{j < k} W[:, o_j] v_{o_j}`` (``a[:, 0] = c``), as one cumulative sum: the inputs shifted one
        place along the ordering, behind a constant 1 whose weight column is ``c``."""
        shifted = F.pad(v[:, order[:-1]], (1, 0), value=1.0)  # [B, D]: 1, v_{o_0}, ..., v_{o_{D-2}}
        columns = torch.cat([self.c[None], self.W.t()[order[:-1]]])  # [D, H]: c, W[:, o_0], ..., W[:, o_{D-2}]
        return (shifted[:, :, None] * columns).cumsum(1)

    def forward(self, v: Tensor, order: Tensor) -> Tensor:
        """Inputs ``v`` [B, D] -> logits [B, D, K'] in the natural order: ``V[d] h_d + b[d]``, h_d = sigmoid(a) at d's position."""
        h = torch.sigmoid(self.running_sums(v, order))  # [B, D, H], position k holds dimension o_k
        rank = torch.argsort(order)  # dimension d sits at position rank[d]
        if self.V.shape[1] < v.shape[0]:  # the output weights (D K' H) are the smaller copy: bring them into the ordering
            return (torch.einsum("bkh,kjh->bkj", h, self.V[order]) + self.b[order]).index_select(1, rank)
        return torch.einsum("bdh,djh->bdj", h.index_select(1, rank), self.V) + self.b


class NADE(AutoregressiveModel):
    """NADE over images [C, H, W]: tied-weight hidden layers computed by a running sum, O(H D), D = C H W.

    Binarised data (``data_levels=2``) gets a Bernoulli per dimension (one logit: ``forward`` gives
    [B, D, 1]); more levels get a K-way softmax ([B, D, K]). The network reads ``level / (K - 1)``.

    Args:
        shape: ``[C, H, W]`` (``${dataset.shape}``).
        hidden: H, the hidden units shared by all conditionals (500 in the paper).
        ordering: ``natural``, ``reverse`` or ``random`` (a permutation fixed by ``seed``); a buffer, saved in checkpoints.
        seed: seeds the random ordering.
        temperature: sampling temperature (logits / t).
        data_levels: the data's levels per sub-pixel (``${dataset.levels}``; None: 256); 2: Bernoulli outputs.
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: int = 500,
        ordering: str = "natural",
        seed: int = 0,
        temperature: float = 1.0,
        data_levels: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = image_shape(shape, "nade")
        levels = check_levels(data_levels, True)
        assert levels is not None  # images
        self.data_levels = levels
        if levels != LEVELS:
            self.likelihood_kind = f"exact ({levels} levels)"
        hidden = check_int(hidden, "model.hidden", example=500)
        check_choice(ordering, ORDERINGS, "model.ordering", "random")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise GentrainError(f"model.seed must be an integer, got {seed!r}; e.g. model.seed=0")
        self.ordering = ordering
        self.temperature = _temperature(temperature)
        self.dims = math.prod(self.shape)
        self.bernoulli = levels == 2
        self.register_buffer("order", ordering_of(ordering, self.dims, seed))
        self.net = NADENet(self.dims, hidden, 1 if self.bernoulli else levels)

    def ema_target(self) -> str | None:
        return "net"

    def inputs(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> what the network reads, ``level / (K - 1)`` in [0, 1]: [B, D]."""
        return to_levels(x.flatten(1), self.data_levels).to(self.net.W.dtype) / (self.data_levels - 1)

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> logits [B, D, 1] (Bernoulli: log p(1) / p(0)) or [B, D, K] in the natural
        flattened order; position d depends only on the dimensions before d in the ordering."""
        return self.net(self.inputs(x), self.order)

    def log_prob(self, x: Tensor) -> Tensor:
        """The exact log-probability of the images' levels, in nats: sum over d of log p(x_d | x_<d), [B]."""
        out = self(x)
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        levels = to_levels(x.flatten(1), self.data_levels)
        if self.bernoulli:
            return -F.binary_cross_entropy_with_logits(out[..., 0], levels.to(out.dtype), reduction="none").sum(1)
        return -F.cross_entropy(out.transpose(1, 2), levels, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` images, one dimension at a time in the ordering; the running sum gains one column ``W[:, d] v_d`` per dimension."""
        t = self.temperature if temperature is None else _temperature(temperature)
        net = self.net
        dtype = net.W.dtype
        k = self.data_levels
        a = net.c.expand(n, -1).clone()  # a_1 = c
        levels = torch.zeros(n, self.dims, dtype=torch.long, device=a.device)
        with phase("dimensions", self.dims):
            for d in self.order.tolist():
                logits = torch.sigmoid(a) @ net.V[d].t() + net.b[d]  # [n, K']
                logits = logits.to(torch.promote_types(dtype, torch.float32)) / t
                if self.bernoulli:
                    u = torch.rand(n, device=a.device, dtype=logits.dtype, generator=generator)
                    level = (u < torch.sigmoid(logits[:, 0])).long()
                else:
                    level = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
                levels[:, d] = level
                a = a + (level.to(dtype) / (k - 1))[:, None] * net.W[:, d]
                tick()
        return from_levels(levels, k).to(dtype).view(n, *self.shape)


__all__ = ["NADE", "NADENet"]
