"""The training engine end to end: a run's outputs (images and points), exact resume, no per-step sync.

Every model, objective and dataset trains in ``test_config_groups.py`` (each option once); here the outputs of a run
are checked in full, on images (with interpolations and curves) and on 2-D points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.tasks import train



def read_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("model,objective,dataset", [("dcgan", "minimax", "digits"), ("gan_mlp", "non_saturating", "ring8")])
def test_a_run_writes_all_outputs(train_run, model, objective, dataset):
    run_dir, report = train_run(tiny_overrides(model, dataset, objective, steps=3, extra=["logger.interpolations=true", "logger.curves=true"]))
    assert (run_dir / "curves.png").is_file() and "![curves](curves.png)" in (run_dir / "report.md").read_text()
    for name in ("checkpoints/last.pt", "metrics.jsonl", "report.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").glob("step_*.png")) == ["step_000002.png", "step_000003.png"]
    interpolations = sorted(p.name for p in (run_dir / "samples").glob("interp_*.png"))
    assert interpolations == ([] if dataset != "digits" else [f"interp_{k}_step_00000{s}.png" for k in ("lerp", "slerp") for s in (2, 3)])
    assert Image.open(run_dir / "samples" / "step_000003.png").size[0] > 8
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 3]
    assert report["run"]["steps"] == 3 and report["run"]["model"] == model and report["run"]["objective"] == objective
    assert all(torch.isfinite(torch.tensor(v)) for v in report["final"].values())
    assert json.loads((run_dir / "report.json").read_text())["run"]["dataset"] == dataset
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3


def test_tensorboard_holds_losses_d_outputs_grad_norms_lr_speed_samples_config_hparams(train_run):
    run_dir, report = train_run(tiny_overrides("dcgan", "digits", steps=4))
    acc = read_events(run_dir)
    tags = acc.Tags()
    for tag in (
        "train/D/loss", "train/D/loss_real", "train/D/loss_fake", "train/D/D_real", "train/D/D_fake", "train/G/loss",
        "train/G/D_fake", "train/D/grad_norm", "train/G/grad_norm", "train/lr/D", "train/lr/G", "train/steps_per_s",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("train/G/loss")] == [2, 4]
    assert acc.Scalars("train/lr/G")[0].value == pytest.approx(2e-4)
    assert [e.step for e in acc.Images("samples")] == [2, 4]
    assert "config/text_summary" in tags["tensors"]
    assert set(acc.PluginTagToContent("hparams")) >= {"_hparams_/experiment", "_hparams_/session_start_info"}
    assert not [t for t in tags["scalars"] if t.startswith("hparam/")]  # the HPARAMS metrics are the run's own series


def test_report_markdown_is_readable_on_its_own(train_run):
    run_dir, report = train_run(tiny_overrides("gan_mlp", "ring8", steps=2))
    md = (run_dir / "report.md").read_text()
    assert "gan_mlp on ring8" in md and "![samples](samples/step_000002.png)" in md and "train/G/loss" in md
    assert report["versions"]["torch"] == torch.__version__ and report["device"]["type"] == "cpu"


def test_samples_every_0_draws_no_pictures(train_run):
    """Pictures can be switched off (a diffusion model's ancestral sampler makes each one cost T network passes)."""
    run_dir, report = train_run(tiny_overrides("gan_mlp", "ring8", steps=2, extra=["logger.samples_every=0"]))
    assert report["run"]["status"] == "completed" and not list((run_dir / "samples").glob("*.png"))
    assert "![samples]" not in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("model,dataset", [("dcgan", "digits"), ("gan_mlp", "ring8")])
def test_resume_reproduces_an_uninterrupted_run_exactly(train_run, model, dataset):
    # 3 epochs' worth of batches are not needed: 6 steps with 2 D steps each cross the checkpoint mid-epoch
    base = tiny_overrides(model, dataset, steps=6) + ["objective.d_steps=2", "trainer.ckpt_every=3"]
    full_dir, _ = train_run(base, "full")
    half_dir, _ = train_run([*base, "trainer.max_steps=3"], "half")
    resumed_dir, report = train_run([*base, f"trainer.resume={half_dir}"], "resumed")
    assert report["run"]["start_step"] == 3 and report["run"]["steps"] == 6
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    resumed = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for phase in ("D", "G"):
        for pid, state in full["optimizers"][phase]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, resumed["optimizers"][phase]["state"][pid][k]), (phase, pid, k)
    assert torch.equal(full["rng"]["torch"], resumed["rng"]["torch"])


def test_learning_rate_warm_up_is_linear_and_resumes_exactly(train_run):
    # G lr 2e-4 and D lr 2e-4 (non-saturating defaults); warm-up over 4 steps, logged every step
    base = tiny_overrides("gan_mlp", "moons", steps=6) + ["trainer.warmup_steps=4", "logger.every=1", "trainer.ckpt_every=2"]
    full_dir, _ = train_run(base, "full")
    logged = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    # the rate logged at step k is the one step k ran with: lr * min(1, k / 4)
    for phase in ("D", "G"):
        assert [round(entry[f"train/lr/{phase}"] / 2e-4, 6) for entry in logged] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    half_dir, _ = train_run([*base, "trainer.max_steps=2"], "half")
    resumed_dir, _ = train_run([*base, f"trainer.resume={half_dir}"], "resumed")
    full, resumed = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (full_dir, resumed_dir))
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [g["lr"] for g in resumed["optimizers"]["G"]["param_groups"]] == [2e-4]


def test_negative_warm_up_is_refused(tmp_path):
    with pytest.raises(GentrainError, match="trainer.warmup_steps must be >= 0"):
        train(make_config(tiny_overrides("gan_mlp", "moons") + ["trainer.warmup_steps=-1"]), run_dir=tmp_path / "run", console=quiet_console())


def test_resume_true_continues_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(tiny_overrides("gan_mlp", "moons", steps=2)), run_dir=run_dir, console=quiet_console())
    report = train(make_config(tiny_overrides("gan_mlp", "moons", steps=4) + ["trainer.resume=true"]), run_dir=run_dir, console=quiet_console())
    assert (report["run"]["start_step"], report["run"]["steps"]) == (2, 4)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert [e.step for e in read_events(run_dir).Scalars("train/G/loss")] == [2, 4]


def test_resume_errors_are_one_line(tmp_path):
    with pytest.raises(GentrainError, match="has no checkpoints/last.pt"):
        train(make_config(tiny_overrides("gan_mlp", "moons") + ["trainer.resume=true"]), run_dir=tmp_path / "new", console=quiet_console())
    with pytest.raises(GentrainError, match="no checkpoint at"):
        train(make_config(tiny_overrides("gan_mlp", "moons") + [f"trainer.resume={tmp_path}/missing"]), run_dir=tmp_path / "x", console=quiet_console())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GentrainError, match="not a readable gentrain checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(GentrainError, match="not a gentrain checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # a checkpoint of another architecture
    ring_dir = tmp_path / "ring"
    train(make_config(tiny_overrides("gan_mlp", "ring8", steps=1)), run_dir=ring_dir, console=quiet_console())
    # resuming continues the checkpoint's own config: a different architecture is refused before anything is written
    with pytest.raises(GentrainError, match="changes the run being resumed") as e:
        train(make_config(tiny_overrides("dcgan", "digits", steps=2) + [f"trainer.resume={ring_dir}"]), run_dir=tmp_path / "y", console=quiet_console())
    assert "\n" not in str(e.value) and "model=gan_mlp" in str(e.value) and not (tmp_path / "y").exists()


def test_discriminator_steps_per_generator_step(train_run):
    run_dir, _ = train_run(tiny_overrides("gan_mlp", "ring8", steps=4) + ["objective.d_steps=3"])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    d_steps = {int(s["step"]) for s in ckpt["optimizers"]["D"]["state"].values()}
    g_steps = {int(s["step"]) for s in ckpt["optimizers"]["G"]["state"].values()}
    assert (d_steps, g_steps) == ({12}, {4})


@pytest.mark.parametrize(
    "compiled",
    [[], ["trainer.compile=true", "trainer.compile_backend=aot_eager"], ["trainer.compile=step", "trainer.compile_backend=aot_eager", "trainer.ema_decay=0.9"]],
    ids=["eager", "compiled", "whole-step"],
)
def test_no_host_sync_per_step(monkeypatch, tmp_path, compiled):
    """gentrain's own code reads tensors on the host (item/tolist/float/bool) per log interval, never per step (the
    whole-step region itself cannot: a host read inside it is a graph break, which fullgraph refuses)."""
    import sys

    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            # torch's own optimizers read their CPU step counters; only gentrain's callers count
            if sys._getframe(1).f_globals.get("__name__", "").startswith("gentrain"):
                counts["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    syncs = []
    for steps in (4, 16):
        overrides = tiny_overrides("gan_mlp", "ring8", steps=steps) + [f"logger.every={steps}", f"logger.samples_every={steps}", "trainer.ckpt_every=0", *compiled]
        counts["n"] = 0
        train(make_config(overrides), run_dir=tmp_path / f"s{steps}", console=quiet_console())
        syncs.append(counts["n"])
    assert syncs[0] == syncs[1] and syncs[0] > 0, syncs


def test_incompatible_optimizer_config_is_one_line(train_run):
    with pytest.raises(GentrainError, match="model.optimizer.D"):
        train_run(tiny_overrides("gan_mlp", "ring8") + ["model.optimizer.D.lr=-1"])
    with pytest.raises(GentrainError, match="no entry for phase 'G'"):
        train_run(tiny_overrides("gan_mlp", "ring8") + ["~model.optimizer.G"])


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        ("trainer.batch_size=100000", "larger than the"),
        ("device.precision=fp8", "device.precision"),
        ("logger.every=-1", "logger.every"),
        ("eval.metrics=[fid10k]", "fid10k needs"),
        ("trainer.compile=sometimes", "trainer.compile must be false, true"),
    ],
)
def test_bad_values_are_refused_before_training(train_run, override, fragment):
    with pytest.raises(GentrainError, match=fragment.replace(".", r"\.")) as e:
        train_run(tiny_overrides("gan_mlp", "ring8") + [override])
    assert "\n" not in str(e.value)


def test_cuda_on_a_machine_without_it_is_one_line(train_run):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GentrainError, match="device=cpu"):
        train_run([*tiny_overrides("gan_mlp", "ring8"), "device=cuda"])


def test_checkpoint_writes_are_atomic(train_run):
    run_dir, _ = train_run(tiny_overrides("gan_mlp", "ring8", steps=2))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file left behind


def test_non_finite_loss_stops_with_a_clear_line(train_run):
    with pytest.raises(GentrainError, match="lower the learning rate"):
        train_run(tiny_overrides("gan_mlp", "ring8", steps=4) + ["model.optimizer.G.lr=1e30", "model.optimizer.D.lr=1e30"])


@pytest.mark.parametrize("dataset,model", [("mnist", "dcgan"), ("cifar10", "dcgan"), ("mnist", "gan_mlp")])
def test_trains_on_format_faithful_mnist_and_cifar_files(train_run, tmp_path, dataset, model):
    from test_data import write_cifar, write_mnist_like

    root = tmp_path / "data"
    if dataset == "mnist":
        write_mnist_like(root / "MNIST" / "raw", seed=0, n_train=20)
    else:
        write_cifar(root, seed=0)
    run_dir, report = train_run(tiny_overrides(model, dataset, steps=2) + [f"dataset.root={root}", "trainer.batch_size=4"])
    assert report["run"]["steps"] == 2 and (run_dir / "samples" / "step_000002.png").is_file()


@pytest.mark.slow
def test_dcgan_on_real_fashion_mnist(train_run):
    """The issue's acceptance run, shortened: DCGAN on the real Debian Fashion-MNIST files."""
    from pathlib import Path as _Path

    if not _Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data)")
    run_dir, report = train_run(["model=dcgan", "dataset=fashion_mnist", "device=cpu", "trainer.max_steps=200", "logger.progress=false"])
    assert report["run"]["steps"] == 200 and report["final"]["train/D/D_real"] > report["final"]["train/D/D_fake"]
    assert (run_dir / "samples" / "step_000200.png").is_file()


def test_trains_on_an_image_folder(train_run, tmp_path):
    rng = torch.Generator().manual_seed(0)
    for i in range(12):
        folder = tmp_path / "images" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (20 + i, 24, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    run_dir, report = train_run(
        tiny_overrides("dcgan", "image_folder", steps=2) + [f"dataset.path={tmp_path / 'images'}", "dataset.size=16", "trainer.batch_size=4"]
    )
    assert report["config"]["dataset"]["shape"] == [3, 16, 16]
    assert Image.open(run_dir / "samples" / "step_000002.png").mode == "RGB"


def test_progress_bar_on_a_terminal_shows_eta_and_losses(tmp_path):
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    overrides = tiny_overrides("gan_mlp", "ring8", steps=4)
    overrides = [o for o in overrides if not o.startswith("logger.progress")] + ["logger.progress=true"]
    train(make_config(overrides), run_dir=tmp_path / "run", console=console)
    text = out.getvalue()
    assert "eta" in text and "G/loss=" in text and "4/4" in text and "steps/s" in text
