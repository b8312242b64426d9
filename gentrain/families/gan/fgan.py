"""f-GAN: adversarial training for any f-divergence (Nowozin, Cseke & Tomioka 2016, "f-GAN: Training Generative
Neural Samplers using Variational Divergence Minimization", NeurIPS).

An f-divergence is ``D_f(P || Q) = int q(x) f(p(x) / q(x)) dx`` for a convex ``f`` with ``f(1) = 0`` (the paper's
Table 1). Its Fenchel conjugate ``f*(t) = sup_u (t u - f(u))`` gives the variational lower bound (the paper's eq. 4)

    D_f(P || Q) >= sup_T E_P[T(x)] - E_Q[f*(T(x))],

tight at ``T*(x) = f'(p(x) / q(x))``. The critic's raw output ``v = V(x)`` is mapped into ``dom f*`` by the output
activation ``T = g_f(v)`` (Table 2), and the saddle objective (eq. 6) is

    F(theta, omega) = E_P[g_f(V(x))] - E_Q[f*(g_f(V(G(z))))]:

D maximises it (its loss is ``-F``), and G minimises it: ``generator=saturating`` minimises ``-E_Q[f*(g_f(V(G(z))))]``
(eq. 6 itself), ``generator=alternative`` minimises ``-E_Q[g_f(V(G(z)))]``, the paper's section 3.2 heuristic and the
one its experiments use (the default here). With the GAN divergence the two are the minimax and the non-saturating GAN.

Every term is computed in float32 (``logits.float()``, also under bf16 autocast) from closed forms of
``f*(g_f(v))`` that are finite wherever ``v`` is not extreme, never as ``f*`` applied to a rounded ``g_f(v)`` (e.g. the
GAN divergence's ``f*(g_f(v)) = -log(1 - exp(-softplus(-v)))`` is ``softplus(v)``). Logged: ``divergence_bound``
(the batch estimate of the bound, ``-loss``), ``loss_real`` (``-E_P[g_f(v)]``), ``loss_fake`` (``E_Q[f*(g_f(v))]``)
and the raw critic means ``critic_real``, ``critic_fake``.

The divergences are those of the paper's Table 2, with ``f`` as in its Table 1 and ``f*``, ``dom f*`` as in Table 6:
``D_f`` here is always ``int q f(p / q)`` with that ``f``. For ``jensen_shannon`` that is ``2 JSD(P, Q)`` (Table 1's
``f(u) = -(u + 1) log((1 + u) / 2) + u log u`` integrates to twice the Jensen-Shannon divergence, though the table's
formula column carries a factor 1/2), and for ``gan`` it is ``2 JSD(P, Q) - log 4``.

Table 6's Pearson conjugate ``t^2 / 4 + t`` (on all of R) is the conjugate of ``(u - 1)^2`` over every real ``u``;
over ``u >= 0`` the supremum is ``-1`` for ``t < -2``. Since ``t^2 / 4 + t >= -1``, the bound stays a lower bound
(looser where the critic gives ``T < -2``); it is kept as the paper has it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import check_choice
from gentrain.families.gan.objectives import AdversarialObjective
from gentrain.objectives.base import mean_scalar

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Divergence:
    """One row of Nowozin et al. 2016, Table 2 (with ``f`` from Table 1 and ``dom f*`` from Table 6).

    ``f(u)``: the generator function, ``u = p / q > 0``; ``f_prime(u)``: its derivative, the optimal critic
    ``T*(x) = f'(p(x) / q(x))``; ``conjugate(t)``: ``f*(t)`` on ``dom f* = (domain[0], domain[1])``;
    ``activation(v)``: the output activation ``g_f``, whose range lies in ``dom f*``; ``conjugate_of_activation(v)``:
    ``f*(g_f(v))`` in a closed form that needs no ``g_f(v)`` (stable where ``g_f(v)`` nears the edge of ``dom f*``).
    All act element-wise on tensors of any floating dtype.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    f_prime: Callable[[Tensor], Tensor]
    conjugate: Callable[[Tensor], Tensor]
    domain: tuple[float, float]
    activation: Callable[[Tensor], Tensor]
    conjugate_of_activation: Callable[[Tensor], Tensor]


#: Table 2's rows, by the names ``objective.divergence`` takes.
DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        # Kullback-Leibler KL(P || Q): f(u) = u log u, f*(t) = exp(t - 1) on R, g_f(v) = v.
        Divergence(
            "kl",
            f=lambda u: u * torch.log(u),
            f_prime=lambda u: 1.0 + torch.log(u),
            conjugate=lambda t: torch.exp(t - 1.0),
            domain=(-math.inf, math.inf),
            activation=lambda v: v,
            conjugate_of_activation=lambda v: torch.exp(v - 1.0),
        ),
        # Reverse KL, KL(Q || P): f(u) = -log u, f*(t) = -1 - log(-t) on t < 0, g_f(v) = -exp(-v);
        # f*(g_f(v)) = -1 - log(exp(-v)) = v - 1.
        Divergence(
            "reverse_kl",
            f=lambda u: -torch.log(u),
            f_prime=lambda u: -1.0 / u,
            conjugate=lambda t: -1.0 - torch.log(-t),
            domain=(-math.inf, 0.0),
            activation=lambda v: -torch.exp(-v),
            conjugate_of_activation=lambda v: v - 1.0,
        ),
        # Pearson chi^2: f(u) = (u - 1)^2, f*(t) = t^2 / 4 + t on R, g_f(v) = v.
        Divergence(
            "pearson",
            f=lambda u: (u - 1.0) ** 2,
            f_prime=lambda u: 2.0 * (u - 1.0),
            conjugate=lambda t: 0.25 * t**2 + t,
            domain=(-math.inf, math.inf),
            activation=lambda v: v,
            conjugate_of_activation=lambda v: 0.25 * v**2 + v,
        ),
        # Squared Hellinger: f(u) = (sqrt u - 1)^2, f*(t) = t / (1 - t) on t < 1, g_f(v) = 1 - exp(-v);
        # f*(g_f(v)) = (1 - exp(-v)) / exp(-v) = exp(v) - 1.
        Divergence(
            "squared_hellinger",
            f=lambda u: (torch.sqrt(u) - 1.0) ** 2,
            f_prime=lambda u: 1.0 - torch.rsqrt(u),
            conjugate=lambda t: t / (1.0 - t),
            domain=(-math.inf, 1.0),
            activation=lambda v: -torch.expm1(-v),
            conjugate_of_activation=torch.expm1,
        ),
        # Jensen-Shannon (as 2 JSD, see the module docstring): f(u) = -(u + 1) log((1 + u) / 2) + u log u,
        # f*(t) = -log(2 - exp(t)) on t < log 2, g_f(v) = log 2 - log(1 + exp(-v)) = log 2 - softplus(-v);
        # exp(g_f(v)) = 2 sigmoid(v), so f*(g_f(v)) = -log(2 sigmoid(-v)) = softplus(v) - log 2.
        Divergence(
            "jensen_shannon",
            f=lambda u: -(u + 1.0) * torch.log((1.0 + u) / 2.0) + u * torch.log(u),
            f_prime=lambda u: torch.log(2.0 * u / (1.0 + u)),
            conjugate=lambda t: -torch.log(2.0 - torch.exp(t)),
            domain=(-math.inf, LOG2),
            activation=lambda v: LOG2 - F.softplus(-v),
            conjugate_of_activation=lambda v: F.softplus(v) - LOG2,
        ),
        # GAN (Goodfellow et al. 2014; 2 JSD - log 4): f(u) = u log u - (u + 1) log(u + 1),
        # f*(t) = -log(1 - exp(t)) on t < 0, g_f(v) = -log(1 + exp(-v)) = log sigmoid(v);
        # f*(g_f(v)) = -log(1 - sigmoid(v)) = softplus(v).
        Divergence(
            "gan",
            f=lambda u: u * torch.log(u) - (u + 1.0) * torch.log(u + 1.0),
            f_prime=lambda u: torch.log(u / (u + 1.0)),
            conjugate=lambda t: -torch.log(-torch.expm1(t)),
            domain=(-math.inf, 0.0),
            activation=lambda v: -F.softplus(-v),
            conjugate_of_activation=F.softplus,
        ),
    )
}

#: ``objective.generator``: what G minimises (see the module docstring).
GENERATOR_LOSSES = ("alternative", "saturating")


class FGAN(AdversarialObjective):
    """f-GAN (Nowozin et al. 2016, eq. 6): D minimises ``-(E_P[g_f(v_real)] - E_Q[f*(g_f(v_fake))])``; G minimises
    ``-E_Q[g_f(v_fake)]`` (``generator=alternative``, the default) or ``-E_Q[f*(g_f(v_fake))]`` (``saturating``).

    ``divergence`` is one of :data:`DIVERGENCES`. The critic's output is a raw score ``v``: logs ``critic_real`` and
    ``critic_fake`` (its means), besides ``divergence_bound``, ``loss_real`` and ``loss_fake``.
    """

    def __init__(
        self, divergence: str = "kl", generator: str = "alternative", d_steps: int = 1, aux_weight: float = 1.0, pack: int = 1,
        ortho_reg: float = 0.0,
    ) -> None:
        super().__init__(d_steps, aux_weight, pack, ortho_reg)
        self.divergence = DIVERGENCES[check_choice(divergence, tuple(DIVERGENCES), "objective.divergence", "jensen_shannon")]
        self.generator = check_choice(generator, GENERATOR_LOSSES, "objective.generator", "alternative")

    def bound_terms(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``g_f(v)`` on real [B] and ``f*(g_f(v))`` on fake [B'], in float32 (or wider)."""
        real = self.divergence.activation(_wide(logits_real))
        fake = self.divergence.conjugate_of_activation(_wide(logits_fake))
        return real, fake

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real, fake = self.bound_terms(logits_real, logits_fake)
        bound = real.mean() - fake.mean()  # the batch estimate of E_P[T] - E_Q[f*(T)] <= D_f(P || Q)
        logs = {"divergence_bound": bound.detach(), "loss_real": -mean_scalar(real), "loss_fake": mean_scalar(fake)}
        return -bound, logs

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        v = _wide(logits_fake)
        if self.generator == "saturating":
            return -self.divergence.conjugate_of_activation(v)
        return -self.divergence.activation(v)


def _wide(logits: Tensor) -> Tensor:
    """``logits`` in float32, or float64 when they are already that (the tests' reference computations)."""
    return logits if logits.dtype == torch.float64 else logits.float()

