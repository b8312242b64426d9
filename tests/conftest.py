"""Shared test helpers: compose configs with Hydra's compose API, as the CLI would, and train tiny runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console

from gentrain.build import compose

# one thread: these networks are tiny, and a second thread costs more in overhead than it saves
torch.set_num_threads(1)

#: Tiny networks so a step takes milliseconds on a CPU.
TINY = {
    "dcgan": ["model.g_width=8", "model.d_width=8", "model.z_dim=8", "model.mlp_g_widths=[16,16]", "model.mlp_d_widths=[16]"],
    "gan_mlp": ["model.g_widths=[16,32]", "model.d_widths=[32,16]", "model.z_dim=8"],
}
TINY["cgan"] = TINY["acgan"] = [*TINY["dcgan"], "model.embed_dim=4"]
TINY |= {
    "vae": ["model.z_dim=2", "model.hidden=[16]"],
    "conv_vae": ["model.z_dim=4", "model.width=4"],
    "realnvp": ["model.hidden=8", "model.blocks=1", "model.scales=2", "model.couplings=4"],
    "glow": ["model.hidden=8", "model.steps=2", "model.levels=2"],
    "pixelcnn": ["model.hidden=8", "model.layers=2"],
    "made": ["model.hidden=[32,32]"],
    "ddpm": ["model.channels=8", "model.num_res_blocks=1", "model.hidden=16", "model.blocks=1", "objective.timesteps=10"],
}
SMALL_DATA = {
    "digits": [],
    "ring8": ["dataset.n_train=512", "dataset.n_test=128"],
    "grid25": ["dataset.n_train=512", "dataset.n_test=128"],
    "swissroll": ["dataset.n_train=512", "dataset.n_test=128"],
    "moons": ["dataset.n_train=512", "dataset.n_test=128"],
}


def make_config(overrides: list[str]) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (HydraConfig set, so group choices are known)."""
    return compose(overrides)


def tiny_overrides(model: str, dataset: str, objective: str = "non_saturating", steps: int = 3, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Overrides for a run of a few steps of the tiny ``model`` on a small ``dataset``; ``extra`` goes last."""
    return [
        f"model={model}",
        f"dataset={dataset}",
        f"objective={objective}",
        "device=cpu",
        f"trainer.max_steps={steps}",
        "trainer.batch_size=16",
        "logger.every=2",
        "logger.samples_every=2",
        "logger.n_samples=16",
        "logger.n_points=64",
        "logger.progress=false",
        *TINY[model],
        *SMALL_DATA.get(dataset, []),
        *extra,
    ]


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture
def train_run(tmp_path: Path):
    """``train_run(overrides, name)`` trains in ``tmp_path/name`` and returns (run_dir, report)."""
    from gentrain.tasks import train

    def run(overrides: list[str], name: str = "run") -> tuple[Path, dict]:
        run_dir = tmp_path / name
        report = train(make_config(overrides), run_dir=run_dir, console=quiet_console())
        return run_dir, report

    return run
