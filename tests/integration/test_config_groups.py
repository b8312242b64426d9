"""Every option of every config group trains two steps in some valid combination.

Composing a preset is not enough (``model=wgan`` composed fine and failed at its first step). The
options are read from ``configs/``: a new option without a combination here fails the test that
lists them, so no preset ships untrained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from omegaconf import OmegaConf

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.build import choice, config_options, target_class
from gentrain.config import CONFIG_DIR
from gentrain.data.audio import AudioFolder, write_wav
from gentrain.data.images import FashionMNIST, _IdxImageDataset
from gentrain.metrics.fidelity import parse_protocol
from gentrain.tasks import train
from test_data import write_cifar, write_mnist_like
from test_metrics import TinyExtractor



def model_objective(model: str) -> str:
    """The objective a model YAML chooses (``defaults: override /objective``), else the app's default."""
    return choice(make_config([f"model={model}"]), "objective")


def objective_model(objective: str) -> str:
    """A model the objective trains here: the model options whose own objective it is first, then any whose class is
    of the objective's ``family`` (both read from configs/: a new option needs no table here)."""
    target = {name: str(node.get("_target_", "")) for name, node in config_options("objective")}[objective]
    family = getattr(target_class(target), "family")
    own = [m for m in options("model") if model_objective(m) == objective]
    fitting = [m for m, node in config_options("model") if (cls := target_class(str(node.get("_target_", "")))) and issubclass(cls, family)]
    return (own or fitting)[0]
#: Datasets whose files a test writes (format-faithful; the real ones need a download or a Debian package).
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "image_folder", "audio_folder")
#: Options that cannot run on every machine, with the reason.
NEEDS = {("device", "cuda"): ("CUDA", torch.cuda.is_available())}
EXTRA_GROUPS = {"device": ["cpu", "auto", "cuda"], "eval": ["default", "standard"], "logger": ["base", "csv", "mlflow", "tensorboard", "wandb"], "trainer": ["default", "diffusion"],
    "sampler": ["ddim", "ddpm", "latent"],
}
#: Options of the other groups that only diffusion models take: they train with model=ddpm.
DIFFUSION_OPTIONS = {("sampler", "ddim"), ("sampler", "ddpm"), ("trainer", "diffusion")}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def data_files(dataset: str, root: Path) -> list[str]:
    """Overrides that point a file-based dataset at small files this test writes."""
    cls = target_class(str(make_config([f"dataset={dataset}"]).dataset._target_))
    if cls is not None and issubclass(cls, _IdxImageDataset):  # MNIST, Fashion-MNIST and their binarised options
        write_mnist_like(root / cls._torchvision_name / "raw", seed=0, n_train=40)
        return [f"dataset.root={root}"] + (["dataset.system_dir=/nonexistent"] if issubclass(cls, FashionMNIST) else [])
    if cls is not None and issubclass(cls, AudioFolder):
        folder = root / "audio"
        folder.mkdir(parents=True)
        t = torch.arange(4000) / 8000
        for i in range(5):
            write_wav(folder / f"{i}.wav", torch.sin(2 * torch.pi * (200 + 50 * i) * t)[None] * 0.5, 8000)
        return [f"dataset.path={folder}", "dataset.rate=8000", "dataset.length=256", "trainer.batch_size=8"]
    if dataset == "cifar10":
        write_cifar(root, seed=0)  # 10 training images
        return [f"dataset.root={root}", "trainer.batch_size=4"]
    if dataset == "image_folder":
        folder = root / "images"
        folder.mkdir(parents=True)
        g = torch.Generator().manual_seed(0)
        for i in range(20):
            Image.fromarray(torch.randint(0, 256, (12, 12, 3), generator=g, dtype=torch.uint8).numpy()).save(folder / f"{i}.png")
        return [f"dataset.path={folder}", "dataset.size=8", "trainer.batch_size=8"]
    return []


def experiment_combination(option: str, root: Path) -> list[str]:
    """The preset as it is, at test size: two steps, its model made tiny, its data as small files, tiny sample counts."""
    preset = make_config([f"experiment={option}"])
    model = choice(preset, "model")
    dataset = choice(preset, "dataset")
    size = ["trainer.max_steps=2", "logger.progress=false", "logger.n_samples=16", "logger.n_points=64"]
    pack = int(OmegaConf.select(preset, "objective.pack", default=1) or 1)
    size.append(f"trainer.batch_size={16 * pack if dataset not in ('cifar10', 'image_folder') else 4 * pack}")
    metrics = [str(m) for m in (OmegaConf.select(preset, "eval.metrics", default=None) or [])]
    families = {parse_protocol(m).family.name for m in metrics}
    counts: list[str] = []
    if families:
        counts = ["eval.metrics=[" + ",".join(f"{f}16" if f != "modes" else "modes64" for f in sorted(families)) + "]",
                  "eval.kid_subset_size=8", "eval.batch_size=16", "eval.every=0"]
        if "nll" in families and OmegaConf.select(preset, "model.iwae_k", default=None) is not None:
            counts.append("model.iwae_k=2")
    tiny = make_config([f"experiment={option}", "debug=tiny"])
    steps, tiny_t = OmegaConf.select(tiny, "sampler.steps", default=None), OmegaConf.select(tiny, "objective.timesteps", default=None)
    if steps is not None and tiny_t is not None and int(steps) > int(tiny_t):  # a DDIM preset on the tiny T: at most T steps
        counts.append(f"sampler.steps={tiny_t}")
    return [f"experiment={option}", "debug=tiny", *size, *data_files(dataset, root), *counts]


def combination(group: str, option: str, root: Path) -> list[str]:
    """Overrides for two steps of a valid run that uses ``group=option``."""
    if group == "model":
        return tiny_overrides(option, "digits", model_objective(option), steps=2)
    if group == "objective":
        return tiny_overrides(objective_model(option), "digits", option, steps=2)
    if group == "dataset":  # sequences [C, T] train a sequence model, the rest the MLP GAN
        sequences = len(make_config([f"dataset={option}"]).dataset.shape) == 2
        return tiny_overrides("wavenet" if sequences else "gan_mlp", option, "ar_nll" if sequences else "non_saturating", steps=2, extra=data_files(option, root))
    if group == "experiment":
        return experiment_combination(option, root)
    base = tiny_overrides(*(("ddpm", "digits", "ddpm") if (group, option) in DIFFUSION_OPTIONS else ("gan_mlp", "digits")), steps=2)
    extra = ["eval.metrics=[fid16,kid16,pr16,is16]", "eval.kid_subset_size=8", "eval.batch_size=16"] if (group, option) == ("eval", "standard") else []
    if (group, option) == ("sampler", "ddim"):
        extra = ["sampler.steps=5"]  # at most the tiny T (10)
    if (group, option) == ("sampler", "latent"):  # a GAN with sampler options, truncated samples in its pictures
        base, extra = tiny_overrides("biggan", "digits", "hinge", steps=2), ["sampler.truncation=0.5"]
    return [*[o for o in base if not o.startswith("device=")], f"{group}={option}", *extra]


CASES = [(g, o) for g in ("model", "objective", "dataset", "experiment") for o in options(g)] + [
    (g, o) for g, opts in EXTRA_GROUPS.items() for o in opts
]


def test_every_option_of_every_group_has_a_combination():
    for group in ("model", "objective", "dataset", "experiment", *EXTRA_GROUPS):
        listed = {o for g, o in CASES if g == group}
        assert listed == set(options(group)), f"configs/{group}: add the new option(s) {set(options(group)) - listed} to tests/integration/test_config_groups.py"


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_trains_two_steps(tmp_path, monkeypatch, group, option):
    need, available = NEEDS.get((group, option), ("", True))
    if not available:
        pytest.skip(f"{group}={option} needs {need}")
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    report = train(make_config(combination(group, option, tmp_path / "data")), run_dir=tmp_path / "run", console=quiet_console())
    assert report["run"]["steps"] == 2 and report["run"]["status"] == "completed"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in report["final"].items() if k != "train/steps_per_s")
    if group in ("model", "objective", "dataset"):
        assert report["run"][group] == option
