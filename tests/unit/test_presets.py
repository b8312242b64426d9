"""The published-recipe presets (configs/experiment/fashion_*.yaml, cifar10_*.yaml) give the settings their comments cite.

Each preset is composed as the CLI would, and its model, objective and optimizers are built: the
checks are on what a run gets (the optimizer's own hyperparameters, the critic's layers), not only
on the config's keys. Training two steps of every preset is tests/integration/test_config_groups.py's job.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gentrain.build import build, build_model, build_optimizers, compose
from gentrain.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]

ADAM_DCGAN = {"cls": torch.optim.Adam, "lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 1e-5}  # Radford et al. 2016 + its code's L2
RMSPROP_WGAN = {"cls": torch.optim.RMSprop, "lr": 5e-5}  # Arjovsky et al. 2017
ADAM_WGAN_GP_CODE = {"cls": torch.optim.Adam, "lr": 1e-4, "betas": (0.5, 0.9), "weight_decay": 0.0}  # gan_mnist.py / gan_cifar.py
ADAM_PROGAN_CODE = {"cls": torch.optim.Adam, "lr": 1e-3, "betas": (0.0, 0.99), "eps": 1e-8, "weight_decay": 0.0}  # progressive_growing_of_gans config.py
ADAM_BIGGAN_CODE = {"cls": torch.optim.Adam, "lr": 2e-4, "betas": (0.0, 0.999), "weight_decay": 0.0}  # BigGAN-PyTorch launch_cifar_ema.sh
ADAM_SNGAN_CODE = {"cls": torch.optim.Adam, "lr": 2e-4, "betas": (0.0, 0.9), "weight_decay": 0.0}  # sngan_projection, chainer-gan-lib

#: preset -> (dataset, model class, objective class, objective settings, optimizer per phase, batch size, critic: batch norm?, spectral norm?, z_dim)
EXPECTED: dict[str, dict[str, Any]] = {
    "fashion_dcgan": dict(dataset="fashion_mnist", model="DCGAN", objective="NonSaturating", obj={"d_steps": 1},
                          opt={"G": ADAM_DCGAN, "D": ADAM_DCGAN}, batch=128, d_batchnorm=True, sn=False, z_dim=100),
    "fashion_minimax": dict(dataset="fashion_mnist", model="DCGAN", objective="Minimax", obj={"d_steps": 1},
                            opt={"G": ADAM_DCGAN, "D": ADAM_DCGAN}, batch=128, d_batchnorm=True, sn=False, z_dim=100),
    "fashion_wgan": dict(dataset="fashion_mnist", model="DCGAN", objective="Wasserstein", obj={"d_steps": 5, "clip": 0.01},
                         opt={"G": RMSPROP_WGAN, "D": RMSPROP_WGAN}, batch=64, d_batchnorm=True, sn=False, z_dim=100),
    "fashion_wgan_gp": dict(dataset="fashion_mnist", model="DCGAN", objective="WassersteinGP", obj={"d_steps": 5, "gp_weight": 10.0},
                            opt={"G": ADAM_WGAN_GP_CODE, "D": ADAM_WGAN_GP_CODE}, batch=50, d_batchnorm=False, sn=False, z_dim=128),
    "fashion_sngan": dict(dataset="fashion_mnist", model="DCGAN", objective="Hinge", obj={"d_steps": 5},
                          opt={"G": ADAM_SNGAN_CODE, "D": ADAM_SNGAN_CODE}, batch=64, d_batchnorm=False, sn=True, z_dim=128),
    "cifar10_dcgan": dict(dataset="cifar10", model="DCGAN", objective="NonSaturating", obj={"d_steps": 1},
                          opt={"G": ADAM_DCGAN, "D": ADAM_DCGAN}, batch=128, d_batchnorm=True, sn=False, z_dim=100),
    "cifar10_wgan": dict(dataset="cifar10", model="DCGAN", objective="Wasserstein", obj={"d_steps": 5, "clip": 0.01},
                         opt={"G": RMSPROP_WGAN, "D": RMSPROP_WGAN}, batch=64, d_batchnorm=True, sn=False, z_dim=100),
    "cifar10_wgan_gp": dict(dataset="cifar10", model="DCGAN", objective="WassersteinGP", obj={"d_steps": 5, "gp_weight": 10.0},
                            opt={"G": ADAM_WGAN_GP_CODE, "D": ADAM_WGAN_GP_CODE}, batch=64, d_batchnorm=False, sn=False, z_dim=128),
    "cifar10_sngan": dict(dataset="cifar10", model="DCGAN", objective="Hinge", obj={"d_steps": 5},
                          opt={"G": ADAM_SNGAN_CODE, "D": ADAM_SNGAN_CODE}, batch=64, d_batchnorm=False, sn=True, z_dim=128),
    "fashion_progan": dict(dataset="fashion_mnist", model="ProGAN", objective="ProGANLoss", obj={"d_steps": 1, "gp_weight": 10.0, "drift": 0.001},
                           opt={"G": ADAM_PROGAN_CODE, "D": ADAM_PROGAN_CODE}, batch=64, d_batchnorm=False, sn=False, z_dim=32),
    "cifar10_progan": dict(dataset="cifar10", model="ProGAN", objective="ProGANLoss", obj={"d_steps": 1, "gp_weight": 10.0, "drift": 0.001},
                           opt={"G": ADAM_PROGAN_CODE, "D": ADAM_PROGAN_CODE}, batch=64, d_batchnorm=False, sn=False, z_dim=512),
    "fashion_biggan": dict(dataset="fashion_mnist", model="ConditionalBigGAN", objective="Hinge", obj={"d_steps": 2, "ortho_reg": 1e-4},
                           opt={"G": ADAM_BIGGAN_CODE, "D": ADAM_BIGGAN_CODE}, batch=64, d_batchnorm=False, sn=True, z_dim=120),
    "cifar10_biggan": dict(dataset="cifar10", model="ConditionalBigGAN", objective="Hinge", obj={"d_steps": 4, "ortho_reg": 0.0},
                           opt={"G": ADAM_BIGGAN_CODE, "D": ADAM_BIGGAN_CODE}, batch=50, d_batchnorm=False, sn=True, z_dim=128),
}


def built(preset: str, *overrides: str):
    cfg = compose([f"experiment={preset}", "device=cpu", *overrides])
    model = build_model(cfg)
    objective = build(cfg.objective, "objective")
    return cfg, model, objective, build_optimizers(cfg, model, objective)


def check_optimizer(optimizer: torch.optim.Optimizer, expected: dict[str, Any]) -> None:
    assert type(optimizer) is expected["cls"]
    for key, value in expected.items():
        if key != "cls":
            got = optimizer.defaults[key]
            assert (tuple(got) if isinstance(got, (list, tuple)) else got) == pytest.approx(value), key


def test_every_recipe_preset_is_checked_here():
    presets = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if p.stem.startswith(("fashion_", "cifar10_"))}
    assert presets == set(EXPECTED) | {"fashion_vae", "cifar10_ddpm", "fashion_ddpm", "cifar10_pixelrnn"}


def test_cifar10_ddpm_is_ho_et_al():
    """Ho et al. 2020, appendix B and run_cifar.py: T 1000 linear eps, ch 128 (1,2,2,2), 2 res blocks, attention at 16,
    dropout 0.1, fixedlarge, Adam 2e-4, 5000 warm-up steps, clip 1, EMA 0.9999, batch 128, 800k steps, ancestral sampling."""
    cfg, model, objective, optimizers = built("cifar10_ddpm")
    assert type(model).__name__ == "DDPM" and type(objective).__name__ == "Denoising"
    p = model.process
    assert (p.timesteps, p.schedule, p.prediction, p.variance) == (1000, "linear", "eps", "fixedlarge")
    assert float(p.betas[0]) == pytest.approx(1e-4) and float(p.betas[-1]) == pytest.approx(0.02)
    assert model.layout == {"channel_mult": [1, 2, 2, 2], "attention_resolutions": [16]} and model.net.channels == 128
    assert sum(q.numel() for q in model.net.parameters()) == pytest.approx(35.7e6, rel=0.01)  # the paper's 35.7M
    assert [m.p for m in model.net.modules() if isinstance(m, nn.Dropout)][0] == 0.1
    check_optimizer(optimizers["main"], {"cls": torch.optim.Adam, "lr": 2e-4})
    t = cfg.trainer
    assert (t.warmup_steps, t.grad_clip, t.ema_decay, t.batch_size, t.max_steps) == (5000, 1.0, 0.9999, 128, 800000)
    assert model.sampler.name == "ddpm" and cfg.eval.split == "train"


def test_fashion_ddpm_samples_with_ddim_100():
    cfg, model, objective, optimizers = built("fashion_ddpm")
    assert model.layout == {"channel_mult": [1, 2, 2], "attention_resolutions": [7]} and model.sampler.steps == 100
    assert (cfg.trainer.warmup_steps, cfg.trainer.ema_decay, cfg.trainer.grad_clip) == (1000, 0.9999, 1.0)
    assert list(cfg.eval.metrics) == ["fid10k", "nll1k"] and cfg.eval.every == 10000


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_gan_preset_settings(preset):
    want = EXPECTED[preset]
    cfg, model, objective, optimizers = built(preset)
    assert cfg.dataset.name == want["dataset"]
    assert type(model).__name__ == want["model"] and type(objective).__name__ == want["objective"]
    for key, value in want["obj"].items():
        assert getattr(objective, key) == value, key
    for phase, expected in want["opt"].items():
        check_optimizer(optimizers[phase], expected)
    assert cfg.trainer.batch_size == want["batch"]
    assert model.z_dim == want["z_dim"]
    critic = model.discriminator
    assert any(isinstance(m, _BatchNorm) for m in critic.modules()) == want["d_batchnorm"]
    assert any(isinstance(m, nn.GroupNorm) for m in critic.modules()) is False  # no preset uses the layer-norm critic
    layers = [m for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    normalised = [nn.utils.parametrize.is_parametrized(m, "weight") for m in layers]  # ProGAN's equalised layers are neither
    assert (bool(normalised) and all(normalised)) == want["sn"]
    assert list(cfg.eval.metrics)[:4] == ["fid10k", "kid10k", "pr10k", "is10k"]  # the Lucic et al. protocol at the end
    objective.check_model(model, preset, preset, [])  # e.g. WGAN-GP refuses a batch-norm critic


def test_fashion_wgan_gp_follows_the_released_mnist_code():
    """gan_mnist.py: Adam(1e-4, 0.5, 0.9), batch 50, lambda 10, 5 critic steps, no normalisation in the critic."""
    cfg, model, objective, optimizers = built("fashion_wgan_gp")
    assert cfg.model.d_norm == "none" and objective.gp_weight == 10.0 and objective.d_steps == 5
    assert optimizers["D"].defaults["betas"] == (0.5, 0.9) and optimizers["D"].defaults["lr"] == pytest.approx(1e-4)
    # the paper's text (Algorithm 1) is one override away, and model=wgan_gp keeps it as its default
    _, _, _, paper = built("fashion_wgan_gp", "model.optimizer.G.betas=[0.0,0.9]", "model.optimizer.D.betas=[0.0,0.9]", "model.d_norm=layer")
    assert paper["G"].defaults["betas"] == (0.0, 0.9) and paper["D"].defaults["betas"] == (0.0, 0.9)
    plain = compose(["model=wgan_gp"])
    assert list(plain.model.optimizer.D.betas) == [0.0, 0.9] and plain.model.d_norm == "layer"


def test_fashion_vae_is_kingma_welling():
    cfg, model, objective, optimizers = built("fashion_vae")
    assert type(model).__name__ == "VAE" and type(objective).__name__ == "ELBO" and objective.beta == 1.0
    assert model.z_dim == 20 and model.decoder_kind == "bernoulli"
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 500), (500, 40), (20, 500), (500, 784)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2
    check_optimizer(optimizers["main"], {"cls": torch.optim.Adagrad, "lr": 0.01})
    assert cfg.trainer.batch_size == 100
    assert "nll10k" in cfg.eval.metrics


def test_a_command_line_override_still_wins_over_a_preset():
    cfg = compose(["experiment=fashion_sngan", "objective.d_steps=1", "model.optimizer.D.lr=1e-4", "trainer.batch_size=32"])
    assert cfg.objective.d_steps == 1 and cfg.model.optimizer.D.lr == 1e-4 and cfg.trainer.batch_size == 32


def _fid_table():
    """benchmarks/fid_table.py as a module (registered first: its dataclasses look their module up while being defined)."""
    if "fid_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fid_table", REPO / "benchmarks" / "fid_table.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["fid_table"] = module
        spec.loader.exec_module(module)
    return sys.modules["fid_table"]


def test_fid_table_rows_name_existing_presets():
    fid_table = _fid_table()
    for key, row in fid_table.ROWS.items():
        assert (CONFIG_DIR / "experiment" / f"{row.preset}.yaml").is_file(), key
    assert {k: r.published for k, r in fid_table.ROWS.items()} == {
        "minimax": 29.6, "non_saturating": 26.5, "wgan": 21.5, "wgan_gp": 24.5, "hinge_sn": None, "vae": 43.6,
    }
    assert fid_table.protocol_names(10000) == ("fid10k", "kid10k") and fid_table.protocol_names(500) == ("fid500", "kid500")


def test_fid_table_floor_samples_each_pixel_from_its_own_histogram():
    from gentrain.metrics.evaluate import to_uint8

    fid_table = _fid_table()
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor([0, 0, 255, 255], dtype=torch.uint8)  # pixel 0: half 0, half 255
    x[:, 0, 1, 1] = 7  # pixel 3: always 7
    floor = fid_table.PixelHistogram(x)
    samples = to_uint8(floor.sample(2000, generator=torch.Generator().manual_seed(0)))
    assert samples.shape == (2000, 1, 2, 2)
    assert set(samples[:, 0, 0, 0].unique().tolist()) == {0, 255} and 0.45 < (samples[:, 0, 0, 0] == 255).float().mean() < 0.55
    assert (samples[:, 0, 1, 1] == 7).all() and (samples[:, 0, 0, 1] == 0).all()


def test_cifar10_pixelrnn_is_the_papers_diagonal_bilstm():
    """van den Oord et al. 2016: 12 residual Diagonal BiLSTM layers of h = 128 on CIFAR-10, 256 levels, exact bits/dim."""
    cfg, model, objective, optimizers = built("cifar10_pixelrnn")
    assert type(model).__name__ == "PixelRNN" and type(objective).__name__ == "AutoregressiveNLL"
    assert (cfg.model.cell, cfg.model.layers, cfg.model.hidden, model.data_levels) == ("diagonal_bilstm", 12, 128, 256)
    assert list(cfg.eval.metrics) == ["nll10k"] and cfg.eval.every > 0
