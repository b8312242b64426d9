"""The Python API (gentrain.train / load / evaluate): the same runs, samples, likelihoods and numbers as the tasks."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import gentrain
from gentrain.build import build
from gentrain.engine.rundir import LOCK_NAME, RUN_LOG
from gentrain.errors import GentrainError
from gentrain.models.likelihood import bits_per_dim
from gentrain.shared import to_model_space
from gentrain.tasks import sample as sample_task
from conftest import make_config, quiet_console, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
NO_TB = ["logger.tensorboard=false"]  # TensorBoard is not what these tests are about
GAN = tiny_overrides("gan_mlp", "ring8", steps=12, extra=["trainer.ema_decay=0.9", "optimize=train/G/loss", *NO_TB])


@pytest.fixture(scope="module")
def gan(tmp_path_factory: pytest.TempPathFactory) -> gentrain.Result:
    return gentrain.train(GAN, run_dir=tmp_path_factory.mktemp("api") / "gan", quiet=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> gentrain.Result:
    overrides = tiny_overrides("made", "digits", "ar_nll", steps=10, extra=["eval.metrics=[nll64]", "eval.batch_size=32", *NO_TB])
    return gentrain.train(overrides, run_dir=tmp_path_factory.mktemp("api") / "made", quiet=True)


def _task_samples(ckpt: Path, out: Path, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    files = sample_task(make_config(["task=sample", f"ckpt={ckpt}", f"n={n}", f"seed={seed}", "device=cpu", f"out={out}"]), quiet_console())
    return dict(np.load(files["npz"]))


def test_import_is_light() -> None:
    code = "import sys, gentrain; from gentrain import train, load, evaluate, Result, Loaded; assert 'torch' not in sys.modules; print(gentrain.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == gentrain.__version__


def test_train_result(gan: gentrain.Result) -> None:
    assert gan.run_dir.name == "gan" and (gan.run_dir / "checkpoints" / "last.pt").is_file()
    assert gan.report["run"]["steps"] == 12 and gan.report["run"]["model"] == "gan_mlp"
    assert gan.metrics == {} and "train/G/loss" in gan.final and "train/D/loss" in gan.final
    assert gan.value == gan.final["train/G/loss"]  # optimize=train/G/loss
    assert gan.config["trainer"]["max_steps"] == 12 and gan.config["model"]["g_widths"] == [16, 32]
    assert gan.loaded is not None and gan.loaded.ema and gan.loaded.step == 12
    assert gan.model is gan.loaded.model and not gan.model.training
    x = gan.sample(10)
    assert x.shape == (10, 2) and x.dtype == torch.float32
    # as the CLI: .hydra/ records the overrides, the run names its groups
    assert "model=gan_mlp" in OmegaConf.load(gan.run_dir / ".hydra" / "overrides.yaml")
    assert gan.report["run"]["dataset"] == "ring8"


def test_train_likelihood_result(made: gentrain.Result) -> None:
    assert set(made.metrics) == {"nll64", "nll64_bpd"}
    assert made.value is None  # the default headline is a validation number, not computed by a plain run
    assert made.loaded is not None and not made.loaded.ema and made.loaded.dataset == "digits"


def test_train_twice_in_one_process(gan: gentrain.Result, tmp_path: Path) -> None:
    """A second run into a directory that holds a run moves to <dir>_1 (and says where); nothing stays locked or logging."""
    again = gentrain.train([*GAN, "trainer.max_steps=2"], run_dir=gan.run_dir, quiet=True)
    assert again.run_dir == gan.run_dir.with_name("gan_1") and again.report["run"]["steps"] == 2
    assert again.loaded is not None and again.loaded.path == again.run_dir / "checkpoints" / "last.pt"
    for run in (gan.run_dir, again.run_dir):
        assert not (run / LOCK_NAME).exists()
    handlers = [*logging.getLogger("gentrain").handlers, *RUN_LOG.handlers]
    assert not [h for h in handlers if Path(getattr(h, "baseFilename", "")).name == "gentrain.log"]  # each run's log was closed
    # the default run dir: hydra.run.dir below the current directory
    third = gentrain.train([*GAN, "trainer.max_steps=1", f"hydra.run.dir={tmp_path}/by_hydra"], quiet=True)
    assert third.run_dir == tmp_path / "by_hydra" and (third.run_dir / "report.json").is_file()


def test_load_ema_and_eval_mode(gan: gentrain.Result) -> None:
    ckpt = torch.load(gan.run_dir / "checkpoints" / "last.pt", weights_only=True)
    averaged, trained = ckpt["ema"]["weights"], {k.removeprefix("generator."): v for k, v in ckpt["model"].items() if k.startswith("generator.")}
    loaded = gentrain.load(gan.run_dir, device="cpu")
    assert loaded.ema and not any(m.training for m in loaded.model.modules())
    state = loaded.model.generator.state_dict()
    assert state.keys() == averaged.keys()
    assert all(torch.equal(state[k], averaged[k]) for k in state)
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    plain = gentrain.load(gan.run_dir / "checkpoints" / "last.pt", use_ema=False)
    assert not plain.ema and all(torch.equal(plain.model.generator.state_dict()[k], trained[k]) for k in trained)
    assert gentrain.load(gan.run_dir / "last").path == loaded.path  # <run dir>/last (and /best) name the checkpoints
    with pytest.raises(GentrainError, match="no checkpoint at"):
        gentrain.load(gan.run_dir / "best")  # this run selected none


@pytest.mark.parametrize("which", ["gan", "made"])
def test_sample_equals_task_sample(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    result: gentrain.Result = request.getfixturevalue(which)
    loaded = gentrain.load(result.run_dir, device="cpu")
    drawn = _task_samples(loaded.path, tmp_path)["x"]
    mine = loaded.sample(16, seed=0)
    assert mine.dtype == (torch.uint8 if which == "made" else torch.float32)
    assert mine.shape == drawn.shape and np.array_equal(mine.numpy(), drawn)
    assert not np.array_equal(loaded.sample(16, seed=1).numpy(), drawn)
    assert np.array_equal(loaded.sample(16, seed=0, batch_size=5).numpy(), loaded.sample(16, seed=0, batch_size=5).numpy())


def test_conditional_labels(tmp_path: Path) -> None:
    result = gentrain.train(tiny_overrides("cgan", "ring8", steps=3, extra=NO_TB), run_dir=tmp_path / "cgan", quiet=True)
    loaded = result.loaded
    assert loaded is not None and loaded.conditional
    task = _task_samples(loaded.path, tmp_path / "out", n=12, seed=3)
    # the labels the unlabelled draw chose give back its very samples: the same noise, the classes chosen
    assert np.array_equal(loaded.sample(12, labels=task["y"].tolist(), seed=3).numpy(), task["x"])
    assert np.array_equal(loaded.sample(12, labels=torch.as_tensor(task["y"]), seed=3).numpy(), task["x"])
    assert loaded.sample(8, labels=2).shape == (8, 2)
    for labels, message in [([0, 1], "2 class ids for n=4"), ([0, 1, 2, 8], r"class ids 0\.\.7"), ([0.5] * 4, "integer class ids")]:
        with pytest.raises(GentrainError, match=message):
            loaded.sample(4, labels=labels)


def test_labels_refused_for_unconditional(gan: gentrain.Result) -> None:
    with pytest.raises(GentrainError, match=r"labels= needs a conditional model \(acgan, .*cgan, ddpm with model.num_classes.*\); this checkpoint's model \(gan_mlp\) is unconditional"):
        gan.loaded.sample(4, labels=[0, 1, 2, 3])  # type: ignore[union-attr]


def test_log_prob_made(made: gentrain.Result) -> None:
    loaded = gentrain.load(made.run_dir, device="cpu")
    dataset = build(OmegaConf.create(loaded.config["dataset"]), "dataset")
    x = dataset.load("test").x[:64]
    log_p = loaded.log_prob(x)
    with torch.no_grad():
        own = loaded.model.log_likelihood(to_model_space(x))
    assert log_p.shape == (64,) and torch.allclose(log_p, own)
    bpd = loaded.bits_per_dim(x)
    assert torch.allclose(bpd, -log_p / (64 * math.log(2))) and torch.allclose(bpd, bits_per_dim(log_p, 64))
    # the report's nll64 is the mean over the first 64 test digits (eval.batch_size=32: the same numbers in other batches)
    assert math.isclose(made.metrics["nll64"], float(-log_p.double().mean()), rel_tol=1e-5)
    assert math.isclose(made.metrics["nll64_bpd"], float(bpd.double().mean()), rel_tol=1e-5)
    assert torch.allclose(loaded.log_prob(x[0]), log_p[:1])  # one image
    assert torch.allclose(loaded.log_prob(to_model_space(x[:4])), log_p[:4])  # model-space floats
    with pytest.raises(GentrainError, match=r"takes \[N, 1, 8, 8\]"):
        loaded.log_prob(x[:, :, :4])
    with pytest.raises(GentrainError, match="give uint8 images"):
        loaded.log_prob(x.float())


def test_log_prob_vae_iwae(tmp_path: Path) -> None:
    result = gentrain.train(tiny_overrides("vae", "digits", "elbo", steps=3, extra=["model.iwae_k=7", *NO_TB]), run_dir=tmp_path / "vae", quiet=True)
    loaded = result.loaded
    assert loaded is not None
    x = build(OmegaConf.create(loaded.config["dataset"]), "dataset").load("test").x[:16]
    log_p = loaded.log_prob(x, seed=5)
    with torch.no_grad():
        torch.manual_seed(5)
        own = loaded.model.log_likelihood(to_model_space(x), k=7)  # the run's model.iwae_k
    assert torch.equal(log_p, own)
    assert torch.equal(loaded.log_prob(x, seed=5), log_p)  # seeded: the same bound again
    state = torch.get_rng_state()
    loaded.log_prob(x, k=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert torch.allclose(loaded.bits_per_dim(x, seed=5), -log_p / (64 * math.log(2)))


def test_log_prob_refused_without_likelihood(gan: gentrain.Result) -> None:
    with pytest.raises(GentrainError, match=r"needs a likelihood model \(conv_vae, ddpm, glow, made, .*pixelcnn, .*realnvp, vae.*\); this checkpoint's model \(gan_mlp\) has no likelihood") as e:
        gan.log_prob(torch.zeros(4, 2))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=nope"], r"unknown model 'nope'; choose one of: .*gan_mlp"),
        (["trainer.maxsteps=3"], r"trainer.maxsteps is not an option here"),
        (["trainer.max_steps=0"], r"trainer.max_steps must be >= 1"),
        ("model=gan_mlp dataset=ring8 trainer.batch_size=-1", r"trainer.batch_size must be >= 1"),
        (["task=sample", "ckpt=x"], r"gentrain.train runs task=train"),
    ],
)
def test_bad_overrides_one_line(overrides: list[str] | str, message: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "refused"
    with pytest.raises(GentrainError, match=message) as e:
        gentrain.train(overrides, run_dir=run_dir, quiet=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "outputs").exists()  # a refusal changes nothing on disk


def test_evaluate_modes(gan: gentrain.Result) -> None:
    numbers = gentrain.evaluate(gan.run_dir, metrics=["modes2500"], device="cpu", quiet=True)
    assert {"modes2500_fair", "modes2500_pacgan", "modes2500_hq"} <= set(numbers)
    assert all(isinstance(v, float) for v in numbers.values()) and 0 <= numbers["modes2500_pacgan"] <= 8
    report = OmegaConf.to_container(OmegaConf.load(gan.run_dir / "checkpoints" / "last.eval.json"))
    assert report["weights"] == "ema" and report["metrics"] == numbers  # the task's own report
    # a Loaded source evaluates its own weights; eval.* options pass through
    trained = gentrain.evaluate(gentrain.load(gan.run_dir, use_ema=False), "modes2500", quiet=True, batch_size=100)
    assert set(trained) == set(numbers)
    assert OmegaConf.load(gan.run_dir / "checkpoints" / "last.eval.json")["weights"] == "trained"
    with pytest.raises(GentrainError, match="is not an evaluation option"):
        gentrain.evaluate(gan.run_dir, metrics=["modes2500"], batchsize=100)
    with pytest.raises(GentrainError, match="needs a likelihood model"):
        gentrain.evaluate(gan.run_dir, metrics=["nll64"], quiet=True)


def _example_code() -> tuple[str, str]:
    """The API example: the python block under README.md's ``## Python API`` heading. Returns (code, where it came from)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    block = re.search(r"```python\n(.*?)```", section.group(1), flags=re.S) if section else None
    assert block, "README.md has no ```python block under '## Python API'"
    return block.group(1), "README.md"


def test_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, where = _example_code()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})
    assert list((tmp_path / "outputs").glob("*/*/checkpoints/last.pt"))
    assert "modes2500_fair" in capsys.readouterr().out
