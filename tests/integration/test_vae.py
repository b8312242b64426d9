"""VAEs: KL against Monte Carlo, ELBO <= log p on a tractable linear-Gaussian model, IWAE tightening, training."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.errors import GentrainError
from gentrain.families.vae.model import VAE, ConvVAE, gaussian_kl
from gentrain.tasks import train

def overrides(model: str, dataset: str, steps: int = 3, extra: list[str] | None = None) -> list[str]:
    return tiny_overrides(model, dataset, "elbo", steps, extra or [])


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4) * 0.5
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), mc, rtol=0.02, atol=0.01)


def linear_gaussian_vae() -> tuple[VAE, torch.Tensor, torch.Tensor, float]:
    """A VAE whose decoder is linear-Gaussian: p(x) = N(b, W W^T + s^2 I) exactly."""
    torch.manual_seed(0)
    model = VAE(shape=(2,), z_dim=2, hidden=[], decoder="gaussian", decoder_std=0.5).double()
    w, b = model.decoder[0].weight, model.decoder[0].bias
    return model, w.detach(), b.detach(), 0.5


def exact_log_p(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    cov = w @ w.T + s**2 * torch.eye(2, dtype=w.dtype)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def test_elbo_is_below_log_p_and_iwae_tightens_towards_it():
    model, w, b, s = linear_gaussian_vae()
    x = torch.randn(16, 2, dtype=torch.float64) * 2
    log_p = exact_log_p(x, w, b, s).mean().item()
    torch.manual_seed(1)
    # expectations of the bounds over their sampling noise (the ordering holds in expectation)
    repeats = {1: 400, 10: 100, 100: 20, 2000: 2}
    bounds = {k: torch.stack([model.log_likelihood(x, k=k) for _ in range(r)]).mean().item() for k, r in repeats.items()}
    elbo = torch.stack([model.log_prob(x) for _ in range(400)]).mean().item()  # the one-sample ELBO, averaged
    assert elbo < log_p and bounds[1] == pytest.approx(elbo, abs=0.3)  # k = 1 is the ELBO
    assert bounds[1] < bounds[10] < bounds[100] < bounds[2000] < log_p


def test_with_the_exact_posterior_elbo_and_iwae_equal_log_p():
    """Linear-Gaussian decoder with orthogonal columns: the true posterior is a diagonal Gaussian linear in x,
    which the (linear) encoder can represent exactly; then KL(q || p(z|x)) = 0 and every bound is log p(x)."""
    model, _, b, s = linear_gaussian_vae()
    w = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    post_var = 1.0 / (1.0 + (w**2).sum(0) / s**2)  # diag of (I + W^T W / s^2)^-1
    with torch.no_grad():
        model.decoder[0].weight.copy_(w)
        enc = model.encoder[1][0]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:2] = post_var[:, None] * w.T / s**2  # mu = S W^T (x - b) / s^2
        enc.bias[:2] = -(post_var[:, None] * w.T / s**2) @ b
        enc.bias[2:] = post_var.log()  # logvar, constant
    x = torch.randn(8, 2, dtype=torch.float64) * 2
    log_p = exact_log_p(x, w, b, s)
    for k in (1, 5):
        torch.testing.assert_close(model.log_likelihood(x, k=k), log_p, rtol=0, atol=1e-7)
    # the one-sample ELBO (reconstruction sample minus analytic KL) equals log p(x) in expectation
    elbo = torch.stack([model.log_prob(x) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(elbo, log_p, rtol=0, atol=0.05)


def test_decoders_and_shapes():
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    for model in (VAE(shape=(1, 28, 28)), ConvVAE(shape=(1, 28, 28)), ConvVAE(shape=(3, 32, 32), decoder="gaussian", learn_std=True)):
        data = x if model.shape[0] == 1 else torch.rand(4, 3, 32, 32) * 2 - 1
        assert model.log_prob(data).shape == (4,) and model.log_likelihood(data, k=3).shape == (4,)
        s = model.sample(5)
        assert s.shape == (5, *model.shape) and s.min() >= -1 and s.max() <= 1
    binary = VAE(shape=(1, 28, 28)).target(torch.tensor([-1.0, 0.0039, 1.0]).view(1, 1, 1, 3).expand(1, 1, 28, 3))
    assert binary.unique().tolist() == [0.0, 1.0]
    assert VAE(shape=(1, 8, 8), decoder="gaussian", learn_std=True).log_std.requires_grad


@pytest.mark.parametrize(
    "kwargs,fragment",
    [({"shape": (2,), "decoder": "bernoulli"}, "decoder=gaussian"), ({"shape": (1, 8, 8), "decoder": "poisson"}, "model.decoder"), ({"shape": (1, 8, 8), "decoder_std": 0.0}, "decoder_std")],
)
def test_bad_settings_are_one_line(kwargs, fragment):
    with pytest.raises(GentrainError, match=fragment) as e:
        VAE(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model,dataset,extra", [("vae", "digits", []), ("conv_vae", "digits", []), ("vae", "ring8", ["model.decoder=gaussian"]), ("conv_vae", "digits", ["model.decoder=gaussian", "model.learn_std=true"])])
def test_vaes_train_and_write_their_pictures(train_run, model, dataset, extra):
    run_dir, report = train_run(overrides(model, dataset, extra=["logger.interpolations=true", *extra]))
    final = report["final"]
    for key in ("train/main/elbo", "train/main/recon", "train/main/kl", "train/main/bits_per_dim", "train/main/loss"):
        assert key in final and math.isfinite(final[key]), key
    assert final["train/main/kl"] >= 0
    names = {p.name for p in (run_dir / "samples").glob("*.png")}
    assert "step_000003.png" in names
    if dataset == "digits":
        assert {"reconstructions_step_000003.png", "interp_slerp_step_000003.png"} <= names
        if model == "vae":
            assert "manifold_step_000003.png" in names  # z_dim = 2


def test_iwae_evaluation_is_reported_in_nats_and_bits(train_run):
    run_dir, report = train_run(overrides("vae", "digits", extra=["eval.metrics=[nll100]", "model.iwae_k=8", "eval.batch_size=50"]))
    (result,) = report["evaluation"]
    assert result["n_reference"] == 100 and result["reference_split"] == "digits/test" and result["n_generated"] is None
    assert "IWAE bound of the binarised pixels, k=8" in result["notes"][0]
    nll, bpd = result["values"]["nll100"], result["values"]["nll100_bpd"]
    assert nll > 0 and bpd == pytest.approx(nll / (64 * math.log(2)))
    assert "| nll100 |" in (run_dir / "report.md").read_text()


def test_likelihood_evaluation_does_not_disturb_training(train_run):
    """Evaluating (with its own seeded noise) leaves the run's RNG stream, and so its weights, unchanged."""
    _, a = train_run(overrides("vae", "digits", steps=4), "a")
    _, b = train_run(overrides("vae", "digits", steps=4, extra=["eval.metrics=[nll50]", "eval.every=2", "model.iwae_k=2"]), "b")
    assert a["final"]["train/main/elbo"] == b["final"]["train/main/elbo"]


@pytest.mark.parametrize("pair,fragment", [(["model=dcgan", "objective=elbo"], "objective=minimax"), (["model=vae", "objective=minimax"], "objective=elbo")])
def test_incompatible_pairs_name_the_objectives_that_fit(tmp_path, pair, fragment):
    cfg = make_config([*pair, "dataset=digits", "device=cpu", "trainer.max_steps=1", "logger.progress=false"])
    with pytest.raises(GentrainError, match=fragment) as e:
        train(cfg, run_dir=tmp_path / "run", console=quiet_console())
    assert "\n" not in str(e.value)


def test_metrics_for_the_wrong_family_are_refused(tmp_path):
    cfg = make_config(["model=dcgan", "dataset=digits", "device=cpu", "trainer.max_steps=1", "eval.metrics=[nll100]", "model.g_width=4", "model.d_width=4"])
    with pytest.raises(GentrainError, match="likelihood model"):
        train(cfg, run_dir=tmp_path / "run", console=quiet_console())
