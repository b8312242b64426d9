"""f-GAN (Nowozin et al. 2016): each conjugate against a numerical supremum, each output activation inside dom f*,
the bound at the optimal critic against each divergence between two Gaussians, the GAN divergence against the
existing minimax and non-saturating losses, refused options, float32 terms, and one tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from gentrain.errors import GentrainError
from gentrain.families.gan.fgan import DIVERGENCES, FGAN, GENERATOR_LOSSES
from gentrain.families.gan.objectives import Minimax, NonSaturating

NAMES = list(DIVERGENCES)
#: t inside dom f* at which each conjugate is checked (interior maximisers u* = (f')^-1(t) in (1e-6, 1e6)).
T_POINTS = {
    "kl": [-3.0, -0.5, 0.0, 1.0, 2.5],
    "reverse_kl": [-5.0, -1.0, -0.2, -0.01],
    "pearson": [-1.9, -1.0, 0.0, 1.5, 4.0],  # t >= -2: see test_pearson_conjugate_below_minus_two
    "squared_hellinger": [-4.0, -1.0, 0.0, 0.5, 0.9],
    "jensen_shannon": [-4.0, -1.0, 0.0, 0.5, math.log(2) - 0.01],
    "gan": [-6.0, -2.0, -0.5, -0.01],
}
#: v* = g_f^-1(T*) for T* = f'(u) with u = p / q, as a function of log u.
OPTIMAL_LOGIT = {
    "kl": lambda log_u: 1.0 + log_u,  # g = v, T* = 1 + log u
    "reverse_kl": lambda log_u: log_u,  # -exp(-v) = -1/u
    "pearson": lambda log_u: 2.0 * np.expm1(log_u),  # v = 2 (u - 1)
    "squared_hellinger": lambda log_u: 0.5 * log_u,  # 1 - exp(-v) = 1 - u^-1/2
    "jensen_shannon": lambda log_u: log_u,  # log 2 - softplus(-v) = log(2u / (1 + u))
    "gan": lambda log_u: log_u,  # -softplus(-v) = log(u / (1 + u))
}


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def numerical_conjugate(name: str, t: float) -> float:
    """sup_{u > 0} (t u - f(u)), maximised over s = log u (a monotone reparametrisation keeps it unimodal)."""
    f = DIVERGENCES[name].f
    res = optimize.minimize_scalar(lambda s: -(t * math.exp(s) - float(f(t64(math.exp(s))))), bounds=(-14.0, 14.0),
                                   method="bounded", options={"xatol": 1e-10})
    return -res.fun


@pytest.mark.parametrize("name", NAMES)
def test_each_conjugate_is_the_numerical_supremum(name):
    d = DIVERGENCES[name]
    for t in T_POINTS[name]:
        assert d.domain[0] < t < d.domain[1]
        assert float(d.conjugate(t64(t))) == pytest.approx(numerical_conjugate(name, t), abs=1e-6), (name, t)


def test_pearson_conjugate_below_minus_two():
    """Table 6's Pearson f*(t) = t^2/4 + t on all of R is the conjugate of (u - 1)^2 over every real u; over u >= 0 the
    supremum is -1 = -f(0) for t < -2. t^2/4 + t >= -1 there, so E_P[T] - E_Q[f*(T)] stays a lower bound (a looser one)."""
    d = DIVERGENCES["pearson"]
    for t in (-2.5, -4.0, -8.0):
        assert numerical_conjugate("pearson", t) == pytest.approx(-1.0, abs=1e-4)  # approached as u -> 0
        assert float(d.conjugate(t64(t))) > -1.0


@pytest.mark.parametrize("name", NAMES)
def test_each_activation_lands_in_dom_f_star_and_the_closed_form_is_f_star_of_it(name):
    d = DIVERGENCES[name]
    v = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64)
    g = d.activation(v)
    assert torch.isfinite(g).all()
    assert bool((g > d.domain[0]).all() and (g < d.domain[1]).all()), name
    # the stable closed form equals f* applied to g_f(v) where the latter is computable
    v = torch.linspace(-10.0, 10.0, 2001, dtype=torch.float64)
    torch.testing.assert_close(d.conjugate_of_activation(v), d.conjugate(d.activation(v)), rtol=1e-9, atol=1e-9)
    # and stays finite in float32 where f*(g_f(v)) would be computed from a rounded g_f(v)
    v32 = torch.linspace(-20.0, 20.0, 401)
    assert torch.isfinite(d.conjugate_of_activation(v32)).all()


# ---- the bound at the optimal critic, P = N(0, 1), Q = N(0.5, 1.2^2) --------------------------------------------------
MU_P, SD_P, MU_Q, SD_Q = 0.0, 1.0, 0.5, 1.2  # SD_Q^2 in (SD_P^2 / 2, 2 SD_P^2): every divergence and variance finite
N_MC = 200_000


def log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def log_ratio(x):
    return log_normal(x, MU_P, SD_P) - log_normal(x, MU_Q, SD_Q)


def kl_normal(mu1, sd1, mu2, sd2):
    return math.log(sd2 / sd1) + (sd1**2 + (mu1 - mu2) ** 2) / (2 * sd2**2) - 0.5


def divergence_by_quadrature(name: str) -> float:
    """D_f(P || Q) = int q f(p / q), by scipy.integrate.quad."""
    f = DIVERGENCES[name].f

    def integrand(x):
        return math.exp(log_normal(x, MU_Q, SD_Q)) * float(f(t64(math.exp(log_ratio(x)))))

    value, err = integrate.quad(integrand, -25.0, 25.0, limit=200, epsabs=1e-11)
    assert err < 1e-7
    return value


def reference_divergence(name: str) -> float:
    if name == "kl":
        return kl_normal(MU_P, SD_P, MU_Q, SD_Q)
    if name == "reverse_kl":
        return kl_normal(MU_Q, SD_Q, MU_P, SD_P)
    return divergence_by_quadrature(name)


def test_the_quadrature_agrees_with_the_closed_forms_it_can_be_checked_against():
    assert divergence_by_quadrature("kl") == pytest.approx(kl_normal(MU_P, SD_P, MU_Q, SD_Q), abs=1e-8)
    assert divergence_by_quadrature("reverse_kl") == pytest.approx(kl_normal(MU_Q, SD_Q, MU_P, SD_P), abs=1e-8)
    # the GAN divergence is 2 JSD - log 4, with jensen_shannon's f giving 2 JSD
    assert divergence_by_quadrature("gan") + math.log(4) == pytest.approx(divergence_by_quadrature("jensen_shannon"), abs=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_the_bound_at_the_optimal_critic_is_the_divergence(name):
    d = DIVERGENCES[name]
    rng = np.random.default_rng(0)
    x_p, x_q = rng.normal(MU_P, SD_P, N_MC), rng.normal(MU_Q, SD_Q, N_MC)
    v_real, v_fake = t64(OPTIMAL_LOGIT[name](log_ratio(x_p))), t64(OPTIMAL_LOGIT[name](log_ratio(x_q)))
    # v* is g_f^-1 of the optimal critic T* = f'(p / q)
    torch.testing.assert_close(d.activation(v_real), d.f_prime(t64(np.exp(log_ratio(x_p)))), rtol=1e-9, atol=1e-9)
    objective = FGAN(divergence=name)
    loss, logs = objective.critic_loss(v_real, v_fake)
    real, fake = objective.bound_terms(v_real, v_fake)
    se = math.sqrt(float(real.var()) / N_MC + float(fake.var()) / N_MC)
    target = reference_divergence(name)
    assert float(logs["divergence_bound"]) == pytest.approx(-float(loss))
    assert abs(float(logs["divergence_bound"]) - target) < 4 * se + 1e-6, (name, float(logs["divergence_bound"]), target, se)


@pytest.mark.parametrize("name", NAMES)
def test_a_worse_critic_gives_a_lower_bound(name):
    """The bound is largest at T*: shifting v* (so T moves off T*) lowers it, on the same samples."""
    rng = np.random.default_rng(1)
    x_p, x_q = rng.normal(MU_P, SD_P, 50_000), rng.normal(MU_Q, SD_Q, 50_000)
    objective = FGAN(divergence=name)
    bound = {}
    for shift in (-0.3, 0.0, 0.3):
        v_real, v_fake = (t64(OPTIMAL_LOGIT[name](log_ratio(x)) + shift) for x in (x_p, x_q))
        bound[shift] = float(objective.critic_loss(v_real, v_fake)[1]["divergence_bound"])
    assert bound[0.0] > bound[-0.3] and bound[0.0] > bound[0.3], bound


# ---- the GAN divergence is the GAN ----------------------------------------------------------------------------------
def test_the_gan_divergence_gives_the_minimax_and_non_saturating_losses():
    torch.manual_seed(0)
    logits_real, logits_fake = 4 * torch.randn(64), 4 * torch.randn(64)
    d_minimax, _ = Minimax().critic_loss(logits_real, logits_fake)
    loss, logs = FGAN(divergence="gan").critic_loss(logits_real, logits_fake)
    torch.testing.assert_close(loss, d_minimax)  # the same D loss; the bound estimates 2 JSD - log 4
    torch.testing.assert_close(logs["divergence_bound"] + math.log(4), math.log(4) - d_minimax)
    torch.testing.assert_close(FGAN(divergence="gan", generator="saturating").generator_loss(logits_fake), Minimax().generator_loss(logits_fake))
    torch.testing.assert_close(FGAN(divergence="gan").generator_loss(logits_fake), NonSaturating().generator_loss(logits_fake))


def test_jensen_shannon_is_the_gan_shifted_by_log_4():
    torch.manual_seed(1)
    logits_real, logits_fake = 3 * torch.randn(32), 3 * torch.randn(32)
    gan = FGAN(divergence="gan").critic_loss(logits_real, logits_fake)[1]["divergence_bound"]
    js = FGAN(divergence="jensen_shannon").critic_loss(logits_real, logits_fake)[1]["divergence_bound"]
    torch.testing.assert_close(js, gan + math.log(4))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("generator", GENERATOR_LOSSES)
def test_the_terms_are_float32_under_bf16(name, generator):
    logits = torch.randn(16).bfloat16()
    objective = FGAN(divergence=name, generator=generator)
    loss, logs = objective.critic_loss(logits, logits.flip(0))
    assert loss.dtype == torch.float32 and logs["divergence_bound"].dtype == torch.float32
    g = objective.generator_loss(logits)
    assert g.dtype == torch.float32 and g.shape == (16,)
    expected = -(DIVERGENCES[name].conjugate_of_activation if generator == "saturating" else DIVERGENCES[name].activation)(logits.float())
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("divergence", "js", NAMES),
    ("generator", "non_saturating", list(GENERATOR_LOSSES)),
])
def test_a_bad_option_is_refused_in_one_line_naming_the_valid_values(key, value, valid):
    with pytest.raises(GentrainError) as info:
        FGAN(**{key: value})
    message = str(info.value)
    assert "\n" not in message and f"objective.{key}='{value}'" in message
    assert all(v in message for v in valid), message


def test_a_tiny_run_trains_and_logs_the_bound(tmp_path):
    from gentrain.api import train

    result = train(["model=gan_mlp", "dataset=ring8", "objective=fgan", "objective.divergence=jensen_shannon", "debug=tiny"],
                   run_dir=tmp_path, quiet=True)
    bound = result.final["train/D/divergence_bound"]
    assert math.isfinite(bound)
    assert {"train/D/critic_real", "train/D/critic_fake", "train/G/critic_fake"} <= set(result.final), sorted(result.final)
