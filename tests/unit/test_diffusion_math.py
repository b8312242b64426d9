"""The mathematics of gentrain.families.diffusion.model against independent references.

Every reference here is written out in the test (numpy float64, scipy, exact Gaussian algebra or Monte Carlo
over the per-step kernels), never by calling the code path under test. Notation follows the code: model index
``t = 0 .. T-1`` is the state after ``t + 1`` noising steps, ``abar[t] = prod_{s <= t} (1 - beta_s)``.

The 1-D Gaussian data tests (sampling, the bound) use N(M, S^2) data and the exact optimal denoiser
``E[eps | x_t]``, so that every reverse-process quantity is linear-Gaussian and has a closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from gentrain.families.diffusion.model import (
    DDPM,
    DiffusionModel,
    GaussianDiffusion,
    SamplerSpec,
    log_interval_probability,
    make_betas,
)
from gentrain.models.likelihood import from_levels

# ---- independent references ---------------------------------------------------------------------


def ref_linear_betas(timesteps: int) -> np.ndarray:
    """Ho et al. (2020): beta from 1e-4 to 0.02 over T = 1000, scaled by 1000 / T (improved-diffusion) for other T."""
    scale = 1000.0 / timesteps
    return scale * 1e-4 + (scale * 0.02 - scale * 1e-4) * np.arange(timesteps) / (timesteps - 1)


def ref_cosine_abar(t: np.ndarray, timesteps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17: abar(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2."""

    def f(u: np.ndarray) -> np.ndarray:
        return np.cos((u / timesteps + s) / (1.0 + s) * np.pi / 2.0) ** 2

    return f(np.asarray(t, dtype=np.float64)) / f(np.zeros(1))


def ref_schedule(timesteps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beta, abar, abar_prev) of the linear schedule, float64, indexed by the model's t = 0 .. T-1."""
    beta = ref_linear_betas(timesteps)
    abar = np.cumprod(1.0 - beta)
    return beta, abar, np.concatenate([[1.0], abar[:-1]])


# Gaussian data N(M, S^2) (1-D) and the diffusion length of the sampling / bound tests
M, S = 0.5, 0.8
T_GAUSS = 200


class GaussianOracle(nn.Module):
    """The exact optimal eps-prediction for data N(m, s^2): E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar)."""

    def __init__(self, m: float, s: float) -> None:
        super().__init__()
        self.m, self.s = m, s
        self.abar: Tensor | None = None  # set to the model's process buffer once the model exists

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        assert self.abar is not None
        a = self.abar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # [B, 1]
        return torch.sqrt(1.0 - a) * (x - torch.sqrt(a) * self.m) / (a * self.s**2 + 1.0 - a)


def gaussian_oracle_model(variance: str = "fixedsmall", timesteps: int = T_GAUSS) -> DiffusionModel:
    oracle = GaussianOracle(M, S)
    model = DiffusionModel(
        net=oracle, shape=[1], timesteps=timesteps, schedule="linear", prediction="eps", variance=variance,
        data_levels=None, num_classes=None, cond_drop=0.0,
    )
    oracle.abar = model.process.abar
    return model.eval()


def posterior_x0_coefficients(abar_t: float, m: float = M, s: float = S) -> tuple[float, float]:
    """(g, h) with the oracle's x0 estimate = g x_t + h, from x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    k = (1.0 - abar_t) / (abar_t * s * s + 1.0 - abar_t)  # eps_hat = sqrt(1 - abar) k (x_t - sqrt(abar) m)
    return (1.0 - k) / math.sqrt(abar_t), k * m


# ---- 1. the forward process: closed form = composition of the per-step kernels -------------------


@pytest.mark.parametrize("schedule,timesteps", [("linear", 1000), ("cosine", 1000), ("linear", 100), ("cosine", 100)])
def test_q_sample_closed_form_matches_composed_kernels(schedule: str, timesteps: int) -> None:
    p = GaussianDiffusion(timesteps, schedule)
    betas = p.betas.numpy()
    checks = sorted({0, 1, timesteps // 10, timesteps // 2, (3 * timesteps) // 4, timesteps - 1})
    x0 = 1.5

    # exact moments of the composed kernels x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z: mean *= sqrt(1-beta), var = (1-beta) var + beta
    mean, var = x0, 0.0
    exact = {}
    for t in range(timesteps):
        mean, var = math.sqrt(1.0 - betas[t]) * mean, (1.0 - betas[t]) * var + betas[t]
        exact[t] = (mean, var)

    # Monte Carlo: n chains, each composed step by step from the same x_0 (float64)
    n = 20000
    gen = torch.Generator().manual_seed(0)
    x = torch.full((n,), x0, dtype=torch.float64)
    draws = {}
    for t in range(timesteps):
        x = math.sqrt(1.0 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(n, generator=gen, dtype=torch.float64)
        if t in checks:
            draws[t] = x.clone()

    for t in checks:
        tt = torch.tensor([t])
        closed_mean = float(p.sqrt_abar[t]) * x0
        closed_var = float(p.sqrt_1m_abar[t]) ** 2
        assert float(p.abar[t]) == pytest.approx(1.0 - closed_var, abs=1e-12)
        # the closed form equals the exact composition
        assert closed_mean == pytest.approx(exact[t][0], rel=1e-10, abs=1e-12)
        assert closed_var == pytest.approx(exact[t][1], rel=1e-10, abs=1e-12)
        # and the Monte Carlo composition, within 5 standard errors
        d = draws[t]
        sd = math.sqrt(closed_var)
        assert abs(float(d.mean()) - closed_mean) < 5 * sd / math.sqrt(n), (t, float(d.mean()), closed_mean)
        assert abs(float(d.var()) - closed_var) < 5 * closed_var * math.sqrt(2.0 / n), (t, float(d.var()), closed_var)
        # q_sample draws the closed form: same distribution as the composed chains (two-sample KS)
        noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        xt = p.q_sample(torch.full((n, 1), x0, dtype=torch.float64), tt.expand(n), noise)
        assert torch.allclose(xt, closed_mean + sd * noise, rtol=0, atol=1e-12)
        assert stats.ks_2samp(xt[:, 0].numpy(), d.numpy()).pvalue > 1e-4


# ---- 2. the posterior q(x_{t-1} | x_t, x_0) -----------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_ho_eqs_6_7_and_gaussian_conditioning(schedule: str) -> None:
    T = 1000
    p = GaussianDiffusion(T, schedule)
    beta = p.betas.numpy()
    abar = np.cumprod(1.0 - beta)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    gen = torch.Generator().manual_seed(1)
    ts = torch.tensor([1, 2, 10, 250, 500, 900, T - 2, T - 1])
    x0 = torch.randn(len(ts), 3, generator=gen, dtype=torch.float64)
    xt = torch.randn(len(ts), 3, generator=gen, dtype=torch.float64) * 2.0
    mean, logvar = p.posterior(x0, xt, ts)

    for i, t in enumerate(ts.tolist()):
        b, a, ap, alpha = beta[t], abar[t], abar_prev[t], 1.0 - beta[t]
        # Ho et al. eq. 7
        mu = math.sqrt(ap) * b / (1 - a) * x0[i].numpy() + math.sqrt(alpha) * (1 - ap) / (1 - a) * xt[i].numpy()
        var = (1 - ap) / (1 - a) * b
        np.testing.assert_allclose(mean[i].numpy(), mu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.exp(logvar[i].numpy()), var, rtol=1e-10)
        # Bayes: (x_{t-1}, x_t) | x_0 is jointly Gaussian; condition on x_t
        m_prev, v_prev = math.sqrt(ap) * x0[i].numpy(), 1 - ap
        m_t, v_t = math.sqrt(a) * x0[i].numpy(), alpha * v_prev + b
        cov = math.sqrt(alpha) * v_prev
        np.testing.assert_allclose(mean[i].numpy(), m_prev + cov / v_t * (xt[i].numpy() - m_t), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.exp(logvar[i].numpy()), v_prev - cov**2 / v_t, rtol=1e-8)

    # t = 0: x_{-1} is x_0 itself, so the posterior mean is x_0 (its variance, 0, is stored as that of t = 1)
    m0, _ = p.posterior(x0[:1], xt[:1], torch.tensor([0]))
    assert torch.allclose(m0, x0[:1], atol=1e-12)


@pytest.mark.parametrize("t", [3, 400, 999])
def test_posterior_by_monte_carlo_regression(t: int) -> None:
    """Simulate x_{t-1} ~ q(. | x_0), x_t = one forward step; regressing x_{t-1} on x_t recovers the posterior."""
    T = 1000
    p = GaussianDiffusion(T, "linear")
    b, ap = float(p.betas[t]), float(p.abar_prev[t])
    n = 200_000
    gen = torch.Generator().manual_seed(2)
    x0 = 0.7
    x_prev = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * torch.randn(n, generator=gen, dtype=torch.float64)
    x_t = math.sqrt(1 - b) * x_prev + math.sqrt(b) * torch.randn(n, generator=gen, dtype=torch.float64)
    X = np.stack([x_t.numpy(), np.ones(n)], 1)
    coef, *_ = np.linalg.lstsq(X, x_prev.numpy(), rcond=None)
    resid_var = float(np.var(x_prev.numpy() - X @ coef))
    # the posterior as the code gives it: mean = c_t x_t + c_0 x_0, i.e. slope c_t and intercept c_0 x_0
    probe = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    mean, logvar = p.posterior(torch.full((2, 1), x0, dtype=torch.float64), probe, torch.tensor([t, t]))
    intercept, slope = float(mean[0, 0]), float(mean[1, 0] - mean[0, 0])
    post_var = float(torch.exp(logvar[0, 0]))
    # standard errors of OLS: slope sd = sqrt(resid_var / (n var(x_t))); 6 of them
    se_slope = math.sqrt(resid_var / (n * float(x_t.var())))
    assert abs(coef[0] - slope) < 6 * se_slope + 1e-9
    assert abs(coef[1] - intercept) < 6 * math.sqrt(resid_var / n) * (1 + abs(float(x_t.mean())) / float(x_t.std())) + 1e-9
    assert resid_var == pytest.approx(post_var, rel=6 * math.sqrt(2.0 / n))


# ---- 3. schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("timesteps", [1000, 200, 50])
def test_cosine_schedule_alpha_bar(timesteps: int) -> None:
    betas = make_betas("cosine", timesteps)
    abar_code = np.cumprod(1.0 - betas)
    ref = ref_cosine_abar(np.arange(timesteps + 1), timesteps)  # abar(0) = 1 .. abar(T)
    ref_betas = 1.0 - ref[1:] / ref[:-1]
    unclipped = ref_betas < 0.999
    assert unclipped[: timesteps - 1].all()  # the clip only touches the very last step(s)
    last = int(np.argmin(unclipped)) if not unclipped.all() else timesteps  # first clipped index
    # model index t is after t + 1 steps: abar[t] = f(t + 1) / f(0)
    np.testing.assert_allclose(abar_code[:last], ref[1 : last + 1], rtol=1e-10)
    np.testing.assert_allclose(betas[:last], ref_betas[:last], rtol=1e-9, atol=1e-15)
    assert (betas >= 0).all() and (betas <= 0.999).all()
    p = GaussianDiffusion(timesteps, "cosine")
    np.testing.assert_allclose(p.abar.numpy()[:last], ref[1 : last + 1], rtol=1e-10)


def test_linear_schedule() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-8)
    np.testing.assert_allclose(make_betas("linear", 200), ref_linear_betas(200), rtol=1e-12)  # scaled by 1000 / T
    p = GaussianDiffusion(1000, "linear")
    np.testing.assert_allclose(p.abar.numpy(), np.cumprod(1.0 - betas), rtol=1e-12)
    np.testing.assert_allclose(p.abar_prev.numpy(), np.concatenate([[1.0], np.cumprod(1.0 - betas)[:-1]]), rtol=1e-12)


# ---- 4. conversions between the predictions ----------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_target_split_roundtrip(prediction: str, schedule: str) -> None:
    T = 1000
    p = GaussianDiffusion(T, schedule, prediction)
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 1, 17, 500, 998, T - 1]).repeat_interleave(4)
    x0 = torch.randn(len(t), 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), 3, generator=gen, dtype=torch.float64)
    xt = p.q_sample(x0, t, eps)
    out = p.target(x0, eps, t)
    a = np.sqrt(np.cumprod(1.0 - make_betas(schedule, T)))[t.numpy()][:, None]
    sig = np.sqrt(1.0 - np.cumprod(1.0 - make_betas(schedule, T)))[t.numpy()][:, None]
    np.testing.assert_allclose(xt.numpy(), a * x0.numpy() + sig * eps.numpy(), rtol=1e-12, atol=1e-12)
    expected = {"eps": eps.numpy(), "x0": x0.numpy(), "v": a * eps.numpy() - sig * x0.numpy()}[prediction]  # v: Salimans & Ho 2022
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    x0_hat, eps_hat = p.split(out, xt, t)
    # x_0 from eps divides by sqrt(abar) (~0.0064 at the cosine schedule's end), eps from x_0 by sqrt(1 - abar) (0.01 at t = 0)
    np.testing.assert_allclose(x0_hat.numpy(), x0.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(eps_hat.numpy(), eps.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.x0_from_eps(xt, eps, t).numpy(), x0.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.eps_from_x0(xt, x0, t).numpy(), eps.numpy(), rtol=0, atol=1e-9)


# ---- 5. DDIM eta = 0: deterministic, and ddim_encode inverts it ---------------------------------


def test_ddim_eta0_deterministic_and_invertible() -> None:
    torch.manual_seed(0)
    T = 100
    model = DDPM(shape=[2], timesteps=T, hidden=64, blocks=2, dropout=0.0)
    p = model.process

    def data(n: int, gen: torch.Generator) -> Tensor:  # a 2-D Gaussian with correlation, off-centre
        z = torch.randn(n, 2, generator=gen)
        return torch.stack([0.3 + 0.8 * z[:, 0], -0.2 + 0.5 * z[:, 0] + 0.4 * z[:, 1]], 1)

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        x0 = data(256, gen)
        t = torch.randint(0, T, (256,), generator=gen)
        eps = torch.randn(256, 2, generator=gen)
        loss = (model.net(p.q_sample(x0, t, eps), t, None) - p.target(x0, eps, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float(loss.detach()) < 0.6  # it learned something (an untrained net outputs 0: loss 1)

    x0 = data(512, torch.Generator().manual_seed(1))
    ddim = SamplerSpec("ddim", steps=T, eta=0.0)
    z = model.ddim_encode(x0, steps=T)
    # deterministic: the generator is never used
    out1, _ = model.run_sampler(z, sampler=ddim, generator=torch.Generator().manual_seed(1))
    out2, _ = model.run_sampler(z, sampler=ddim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out1, out2)
    # the latents are (roughly) standard normal for a model of the data, not the data themselves
    assert 0.8 < float(z.std()) < 1.3
    # Reconstruction. The encoder takes eps at the state a step starts from, the decoder at the other end of the
    # step, so the round trip is exact only up to a first-order error ~ (step in x) x (Lipschitz constant of eps).
    # With the exact denoiser of comparable 1-D Gaussian data that error measured 0.018 mean, 0.036 max at
    # S = T = 100 (the next test checks it is first order); this briefly trained net, rougher in the tails, gives ~0.03 mean, 95th percentile ~0.05
    # (seeds 0-2). A wrong abar or timestep in either direction gives ~0.8 mean error, far outside 0.06 / 0.15.
    err = (out1 - x0).norm(dim=1)
    assert float(err.mean()) < 0.06, float(err.mean())
    assert float(err.quantile(0.95)) < 0.15, float(err.quantile(0.95))


def test_ddim_inversion_error_is_first_order_in_the_step() -> None:
    """With the exact denoiser of Gaussian data, the encode/decode round-trip error shrinks ~linearly with the step."""
    model = gaussian_oracle_model("fixedsmall", timesteps=1000)
    x0 = M + S * torch.randn(2000, 1, generator=torch.Generator().manual_seed(5))
    errs = {}
    for steps in (50, 100, 1000):
        z = model.ddim_encode(x0, steps=steps)
        out, _ = model.run_sampler(z, sampler=SamplerSpec("ddim", steps=steps, eta=0.0))
        errs[steps] = float((out - x0).abs().mean())
    assert errs[1000] < 0.004, errs  # 0.0018
    assert 1.5 < errs[50] / errs[100] < 2.6, errs  # halving the step halves the error
    assert 6.0 < errs[100] / errs[1000] < 14.0, errs


# ---- 6. samplers on Gaussian data with the exact denoiser ---------------------------------------


def ref_ancestral_moments(variance: str) -> tuple[float, float]:
    """Exact mean and std of ancestral sampling with the oracle: every step is linear-Gaussian in x, start N(0, 1)."""
    beta, abar, abar_prev = ref_schedule(T_GAUSS)
    post_var = beta * (1 - abar_prev) / (1 - abar)
    mu, var = 0.0, 1.0
    for t in reversed(range(T_GAUSS)):
        g, h = posterior_x0_coefficients(abar[t])
        c0 = math.sqrt(abar_prev[t]) * beta[t] / (1 - abar[t])
        ct = math.sqrt(1 - beta[t]) * (1 - abar_prev[t]) / (1 - abar[t])
        mu, var = (c0 * g + ct) * mu + c0 * h, (c0 * g + ct) ** 2 * var
        if t > 0:
            var += post_var[t] if variance == "fixedsmall" else beta[t]
    return mu, math.sqrt(var)


def ref_ddim_eta0_moments(steps: int) -> tuple[float, float]:
    """Exact mean and std of deterministic DDIM (Song et al. eq. 12, sigma = 0) on the grid range(0, T, T // S): x_0 = A x_T + B."""
    _, abar, _ = ref_schedule(T_GAUSS)
    grid = list(range(0, T_GAUSS, T_GAUSS // steps))[:steps]
    A, B = 1.0, 0.0
    for i in reversed(range(len(grid))):
        a = abar[grid[i]]
        a_prev = abar[grid[i - 1]] if i > 0 else 1.0
        g, h = posterior_x0_coefficients(a)
        # x0_hat = g x + h; eps_hat = (x - sqrt(a) x0_hat) / sqrt(1 - a); x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_hat
        lin = math.sqrt(a_prev) * g + math.sqrt(1 - a_prev) * (1 - math.sqrt(a) * g) / math.sqrt(1 - a)
        off = math.sqrt(a_prev) * h - math.sqrt(1 - a_prev) * math.sqrt(a) * h / math.sqrt(1 - a)
        A, B = lin * A, lin * B + off
    return B, abs(A)


def test_ddim_eta1_all_steps_is_ancestral_sampling() -> None:
    model = gaussian_oracle_model("fixedsmall")
    n = 20000
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(10))
    ddpm, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddpm"), generator=torch.Generator().manual_seed(11))
    ddim, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", steps=T_GAUSS, eta=1.0), generator=torch.Generator().manual_seed(11))
    ddim_b, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", steps=T_GAUSS, eta=1.0), generator=torch.Generator().manual_seed(12))
    # Song et al.: with sigma_t^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eta = 1) every DDIM step is the DDPM step with
    # the posterior variance, so with the same noise the two agree path by path (up to float32 rounding)
    assert torch.allclose(ddim, ddpm, rtol=0, atol=1e-4), float((ddim - ddpm).abs().max())
    ref_mean, ref_std = ref_ancestral_moments("fixedsmall")
    # the discrete sampler with the fixed variance is close to, not exactly, the data distribution
    assert ref_mean == pytest.approx(M, abs=0.01) and ref_std == pytest.approx(S, abs=0.03)
    for x in (ddpm, ddim_b):
        x = x[:, 0].double()
        assert abs(float(x.mean()) - ref_mean) < 5 * ref_std / math.sqrt(n)
        assert abs(float(x.std()) - ref_std) < 5 * ref_std / math.sqrt(2 * n)
        assert abs(float(x.mean()) - M) < 0.03 and abs(float(x.std()) - S) < 0.05
        assert stats.kstest(x.numpy(), stats.norm(ref_mean, ref_std).cdf).pvalue > 1e-4
    # independent noise: same distribution
    assert stats.ks_2samp(ddpm[:, 0].numpy(), ddim_b[:, 0].numpy()).pvalue > 1e-4


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_ancestral_sampling_moments(variance: str) -> None:
    model = gaussian_oracle_model(variance)
    n = 20000
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(20))
    x, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddpm"), generator=torch.Generator().manual_seed(21))
    x = x[:, 0].double()
    ref_mean, ref_std = ref_ancestral_moments(variance)
    assert abs(float(x.mean()) - ref_mean) < 5 * ref_std / math.sqrt(n)
    assert abs(float(x.std()) - ref_std) < 5 * ref_std / math.sqrt(2 * n)
    assert abs(float(x.mean()) - M) < 0.03 and abs(float(x.std()) - S) < 0.06


@pytest.mark.parametrize("steps", [200, 50, 10, 7])
def test_ddim_eta0_moments(steps: int) -> None:
    model = gaussian_oracle_model("fixedsmall")
    n = 4096
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(30))
    x, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", steps=steps, eta=0.0))
    # deterministic and linear in x_T for this denoiser: x_0 = A x_T + B with A, B from the exact recursion
    ref_mean, ref_std = ref_ddim_eta0_moments(steps)
    np.testing.assert_allclose(x[:, 0].double().numpy(), ref_std * x_T[:, 0].double().numpy() + ref_mean, rtol=0, atol=2e-4)
    # and approximately the data distribution: the mean within 0.02, the std short of S by a first-order
    # discretisation error of the probability-flow ODE (S - std = 0.008, 0.032, 0.15, 0.20 for 200, 50, 10, 7 steps:
    # about 1.5 / steps), which a sampler with a wrong coefficient would not follow
    assert ref_mean == pytest.approx(M, abs=0.02)
    assert 0.0 < S - ref_std < 2.0 / steps
    assert abs(float(x.mean()) - M) < 0.02 + 5 * S / math.sqrt(n)
    assert abs(float(x.std()) - S) < 2.0 / steps + 5 * S / math.sqrt(2 * n)


# ---- 7. the variational bound, exact for Gaussian data ------------------------------------------


def ref_expected_vlb(variance: str) -> tuple[float, float, float]:
    """E_{x0 ~ N(M, S^2)} of (L_T, sum_{t>=1} L_{t-1}, L_0) in nats, in closed form from the joint moments of (x0, x_t)."""
    beta, abar, abar_prev = ref_schedule(T_GAUSS)
    e1, e2 = M, M * M + S * S  # E[x0], E[x0^2]
    a_T = abar[-1]
    # KL(N(sqrt(a) x0, 1 - a) || N(0, 1)) = 0.5 (-1 - log(1 - a) + 1 - a + a x0^2)
    L_T = 0.5 * (-1.0 - math.log(1 - a_T) + (1 - a_T) + a_T * e2)

    def mse(t: int) -> float:  # E[(x0 - x0_hat(x_t))^2] with x0_hat = g x_t + h
        g, h = posterior_x0_coefficients(abar[t])
        ext, ext2, ex0xt = math.sqrt(abar[t]) * e1, abar[t] * e2 + 1 - abar[t], math.sqrt(abar[t]) * e2
        return e2 + g * g * ext2 + h * h - 2 * g * ex0xt - 2 * h * e1 + 2 * g * h * ext

    kl = 0.0
    for t in range(1, T_GAUSS):
        vq = beta[t] * (1 - abar_prev[t]) / (1 - abar[t])
        vp = vq if variance == "fixedsmall" else beta[t]
        c0 = math.sqrt(abar_prev[t]) * beta[t] / (1 - abar[t])  # mu_q - mu_p = c0 (x0 - x0_hat)
        kl += 0.5 * (-1 + math.log(vp) - math.log(vq) + vq / vp + c0 * c0 * mse(t) / vp)
    v0 = beta[1] * (1 - abar_prev[1]) / (1 - abar[1])  # the decoder's variance: the posterior variance of step 1
    L_0 = 0.5 * math.log(2 * math.pi * v0) + mse(0) / (2 * v0)  # mean: the posterior mean at t = 0 is x0_hat
    return L_T, kl, L_0


def ref_vlb_by_chain_rule(variance: str) -> float:
    """The same expected bound another way: -E log p(x0) + KL(q(x_T) || N(0, 1)) + sum_t E KL(q(x_{t-1} | x_t) || p(x_{t-1} | x_t)).

    For Gaussian data the true reverse q(x_{t-1} | x_t) is Gaussian with the oracle's mean and variance
    beta~_t + c0^2 Var(x0 | x_t), so each term is a KL between Gaussians with the same mean.
    """
    beta, abar, abar_prev = ref_schedule(T_GAUSS)
    a_T = abar[-1]
    v_T, m_T = a_T * S * S + 1 - a_T, math.sqrt(a_T) * M
    total = 0.5 * math.log(2 * math.pi * math.e * S * S) + 0.5 * (-1 - math.log(v_T) + v_T + m_T * m_T)
    for t in range(T_GAUSS):
        vq = beta[t] * (1 - abar_prev[t]) / (1 - abar[t])
        c0 = math.sqrt(abar_prev[t]) * beta[t] / (1 - abar[t])
        v_true = vq + c0 * c0 * S * S * (1 - abar[t]) / (abar[t] * S * S + 1 - abar[t])
        vp = beta[1] * (1 - abar[0]) / (1 - abar[1]) if t == 0 else (vq if variance == "fixedsmall" else beta[t])
        total += 0.5 * (-1 + math.log(vp) - math.log(v_true) + v_true / vp)
    return total


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_vlb_equals_analytic_bound_for_gaussian_data(variance: str) -> None:
    model = gaussian_oracle_model(variance)
    ref_T, ref_kl, ref_0 = ref_expected_vlb(variance)
    ref_total = ref_T + ref_kl + ref_0
    assert ref_total == pytest.approx(ref_vlb_by_chain_rule(variance), abs=1e-9)  # the two references agree

    n = 40000
    x = M + S * torch.randn(n, 1, generator=torch.Generator().manual_seed(40))
    prior, kls, decoder = model.vlb_terms(x, generator=torch.Generator().manual_seed(41))
    # L_T is deterministic given x0
    a_T = ref_schedule(T_GAUSS)[1][-1]
    x64 = x[:, 0].double().numpy()
    np.testing.assert_allclose(prior.double().numpy(), 0.5 * (-1 - math.log(1 - a_T) + (1 - a_T) + a_T * x64**2), rtol=1e-3, atol=1e-6)
    for got, want in ((kls, ref_kl), (decoder, ref_0)):
        got = got.double()
        assert abs(float(got.mean()) - want) < 5 * float(got.std()) / math.sqrt(n), (float(got.mean()), want)

    with torch.random.fork_rng():
        torch.manual_seed(42)
        nll = -model.log_prob(x).double()
    se = float(nll.std()) / math.sqrt(n)
    bpd, ref_bpd, se_bpd = float(nll.mean()) / math.log(2), ref_total / math.log(2), se / math.log(2)
    assert abs(bpd - ref_bpd) < 5 * se_bpd, (bpd, ref_bpd, se_bpd)  # within 5 MC standard errors

    # a bound on the true NLL, the entropy of N(M, S^2). With fixed reverse variances the gap does not vanish as
    # T grows: the first reverse steps have variances off by O(1) factors (the decoder's exp(model_logvar[0]) =
    # post_var[1] is ~1/3 of the step's true reverse variance here); fixedsmall also underestimates every later one.
    entropy = 0.5 * math.log(2 * math.pi * math.e * S * S)
    assert ref_total > entropy
    assert float(nll.mean()) > entropy + 5 * se
    gap = {"fixedlarge": 0.1, "fixedsmall": 1.0}[variance]  # reference gaps: 0.048 and 0.93 nats
    assert ref_total - entropy < gap and float(nll.mean()) - entropy < gap + 5 * se


# ---- 8. the discretised decoder -----------------------------------------------------------------


def ref_log_interval(a: float, b: float) -> float:
    """log(Phi(b) - Phi(a)) from scipy; in the right tail from the survival function, where the CDF rounds to 1."""
    if a > 0:
        return float(stats.norm.logsf(a) + np.log1p(-np.exp(stats.norm.logsf(b) - stats.norm.logsf(a))))
    return float(stats.norm.logcdf(b) + np.log1p(-np.exp(stats.norm.logcdf(a) - stats.norm.logcdf(b))))


INTERVALS = [
    (8.0, 9.0), (-9.0, -8.0), (-1.0, 1.0), (0.0, 0.1), (-0.1, 0.0), (-0.3, 0.2), (2.0, 2.5), (-2.5, -2.0),
    (20.0, 21.0), (-21.0, -20.0), (5.0, 5.0001), (-math.inf, math.inf), (-math.inf, -9.0), (9.0, math.inf),
    (-math.inf, 0.0), (0.0, math.inf), (-math.inf, 3.0), (-3.0, math.inf), (1.0, math.inf), (-math.inf, -1.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_interval_probability_matches_scipy(dtype: torch.dtype) -> None:
    lo = torch.tensor([a for a, _ in INTERVALS], dtype=dtype)
    hi = torch.tensor([b for _, b in INTERVALS], dtype=dtype)
    got = log_interval_probability(lo, hi).double().numpy()
    want = np.array([ref_log_interval(a, b) for a, b in INTERVALS])
    assert np.isfinite(got).all()
    if dtype == torch.float64:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    else:
        # float32 bounds: (5, 5.0001) is stored with ~5e-7 relative error in its width, so allow 1e-3 relative there
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    # random intervals of all sizes and places
    gen = torch.Generator().manual_seed(50)
    a = (torch.rand(500, generator=gen, dtype=torch.float64) - 0.5) * 24
    b = a + torch.rand(500, generator=gen, dtype=torch.float64) * 3 + 1e-3
    got = log_interval_probability(a, b).numpy()
    want = np.array([ref_log_interval(float(x), float(y)) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("levels", [3, 17])
def test_discretised_decoder_sums_to_one(levels: int) -> None:
    torch.manual_seed(0)
    model = DDPM(shape=[1, 8, 8], data_levels=levels, channels=8, channel_mult=[1, 2], timesteps=10)
    values = from_levels(torch.arange(levels), levels)  # the model-space value of every level
    assert values[0] == -1.0 and values[-1] == 1.0
    x0 = values.view(-1, 1, 1, 1).expand(levels, 1, 8, 8)  # image k: every pixel at level k
    for mean_value in (-1.7, -1.0, -0.33, 0.0, 0.061, 0.77, 1.0, 2.5):
        for logvar_value in (math.log(1e-4), math.log(0.01), 0.0, math.log(25.0)):
            mean = torch.full((levels, 1, 8, 8), mean_value)
            logvar = torch.full((levels, 1, 8, 8), logvar_value)
            nll = model._decoder_nll(x0, mean, logvar).double()  # 64 equal pixels: -64 log P(level k)
            assert torch.isfinite(nll).all() and (nll >= -1e-4).all()
            probs = torch.exp(-nll / 64)
            assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5), (mean_value, logvar_value, probs)
            # each level's mass is the Gaussian mass of its cell between the midpoints to its neighbours
            edges = np.concatenate([[-np.inf], (values[1:] + values[:-1]).numpy() / 2, [np.inf]])
            sd = math.exp(0.5 * logvar_value)
            want = stats.norm.cdf((edges[1:] - mean_value) / sd) - stats.norm.cdf((edges[:-1] - mean_value) / sd)
            np.testing.assert_allclose(probs.numpy(), want, rtol=5e-4, atol=1e-6)


# ---- the U-Net's normalisation at small widths --------------------------------------------------
@pytest.mark.parametrize("channels", [8, 16, 32, 48, 64])
@pytest.mark.parametrize("channel_mult", [[1, 2], [1, 2, 2]])
def test_unet_group_norms_hold_several_channels_at_every_width(channels: int, channel_mult: list[int]) -> None:
    """No GroupNorm of the U-Net is a per-channel instance norm at small widths: every group holds at least
    model.group_channels (4) channels, and DDPM's 32 groups are kept where the channels allow (>= 128)."""
    side = 4 * 2 ** (len(channel_mult) - 1)
    model = DDPM(shape=[1, side, side], channels=channels, channel_mult=channel_mult, num_res_blocks=1, timesteps=10, group_channels=4)
    norms = [m for m in model.net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms, "the U-Net has group norms"
    for norm in norms:
        per_group = norm.num_channels // norm.num_groups
        assert norm.num_channels % norm.num_groups == 0
        assert per_group >= 4 or norm.num_groups == 1, (norm.num_channels, norm.num_groups)
        assert norm.num_groups <= 32
        # the most groups the rule allows: one more divisor-sized group would leave fewer than 4 channels each
        assert not any(norm.num_channels % g == 0 and norm.num_channels // g >= 4 for g in range(norm.num_groups + 1, 33))


def test_norm_groups_rule() -> None:
    from gentrain.families.diffusion.model import norm_groups

    # 16 -> 4 groups of 4, 32 -> 8, 64 -> 16, 128 .. 512 -> DDPM's 32 (4 .. 16 channels each), 3 -> 1 group
    assert [norm_groups(c) for c in (3, 4, 16, 24, 32, 48, 64, 96, 128, 256, 512)] == [1, 1, 4, 6, 8, 12, 16, 24, 32, 32, 32]
    assert norm_groups(32, 1) == 32 and norm_groups(32, 8) == 4 and norm_groups(6, 4) == 1
    # the key reaches every norm, and a bad value is one line
    model = DDPM(shape=[1, 8, 8], channels=16, channel_mult=[1, 2], num_res_blocks=1, timesteps=10, group_channels=16)
    assert {m.num_groups for m in model.net.modules() if isinstance(m, nn.GroupNorm)} == {1, 2, 3, 4}  # 16, 32, 48, 64 channels (the up path concatenates skips)
    from gentrain.errors import GentrainError

    with pytest.raises(GentrainError, match="model.group_channels"):
        DDPM(shape=[1, 8, 8], channels=16, group_channels=0, timesteps=10)
    # a checkpoint whose config has no model.group_channels was trained with gcd(32, C) groups, and is rebuilt so
    assert norm_groups(16, None) == 16 and norm_groups(48, None) == 16
    legacy = DDPM(shape=[1, 8, 8], channels=16, channel_mult=[1, 2], num_res_blocks=1, timesteps=10)
    assert {m.num_groups for m in legacy.net.modules() if isinstance(m, nn.GroupNorm)} == {16, 32}
