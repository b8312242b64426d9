"""Engine settings that are config, not code: schedulers, gradient clipping, compile, fp16 loss scaling, threads, memory format."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.build import build_optimizers
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.tasks.training import default_callbacks, prepare

STEP_LR = "+model.scheduler.G={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 2, gamma: 0.5}"


def logged(run_dir, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]


def test_a_torch_scheduler_per_phase_after_a_warm_up_resumes_exactly(train_run):
    base = tiny_overrides("gan_mlp", "moons", steps=8) + [STEP_LR, "trainer.warmup_steps=2", "logger.every=1", "trainer.ckpt_every=3"]
    full_dir, _ = train_run(base, "full")
    # G: warm-up 1/2, 1, then StepLR from step 2 (halving every 2 steps); D: warm-up then constant
    assert [round(v / 2e-4, 6) for v in logged(full_dir, "train/lr/G")] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert [round(v / 2e-4, 6) for v in logged(full_dir, "train/lr/D")] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    half_dir, _ = train_run([*base, "trainer.max_steps=3"], "half")
    resumed_dir, _ = train_run([*base, f"trainer.resume={half_dir}"], "resumed")
    full, resumed = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (full_dir, resumed_dir))
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert logged(resumed_dir, "train/lr/G") == logged(full_dir, "train/lr/G")[3:]
    assert full["callbacks"]["schedule"]["G"]["last_epoch"] == resumed["callbacks"]["schedule"]["G"]["last_epoch"]


def test_a_scheduler_for_a_phase_the_objective_lacks_is_one_line(train_run):
    bad = STEP_LR.replace("model.scheduler.G", "model.scheduler.main")
    with pytest.raises(GentrainError, match=r"model.scheduler names phase\(s\) \['main'\]"):
        train_run(tiny_overrides("gan_mlp", "moons", extra=[bad]))


@pytest.mark.parametrize("setting", ["1e-4", "{G: 1e-4}"])
def test_grad_clip_caps_the_norm_of_each_clipped_phase(tmp_path, setting):
    overrides = tiny_overrides("gan_mlp", "moons", steps=1, extra=[f"trainer.grad_clip={setting}", "logger.every=1"])
    s = prepare(make_config(overrides))
    from gentrain.engine.loader import BatchStream
    from gentrain.engine.trainer import Trainer

    stream = BatchStream(s.dataset.load("train"), s.ts.batch_size, s.device, s.ts.seed)
    callbacks = default_callbacks(s, stream, None)
    trainer = Trainer(s.model, s.objective, s.optimizers, stream, s.device, "fp32", tmp_path, s.ts, s.ls, {}, list(callbacks.values()), quiet_console())
    trainer.fit()
    norms = {phase: torch.nn.utils.get_total_norm([p.grad for p in trainer.group_params[phase]]).item() for phase in ("D", "G")}
    assert norms["G"] <= 1e-4 * (1 + 1e-5) and callbacks["log"].final["train/G/grad_norm"] > 1e-3  # the log shows the norm before clipping
    assert (norms["D"] <= 1e-4 * (1 + 1e-5)) == (setting == "1e-4")  # per phase: D unclipped


@pytest.mark.parametrize(("setting", "fragment"), [("-1", "must be a positive max norm"), ("{X: 1.0}", r"names phase\(s\) \['X'\]")])
def test_bad_grad_clip_is_one_line(train_run, setting, fragment):
    with pytest.raises(GentrainError, match=fragment):
        train_run(tiny_overrides("gan_mlp", "moons", extra=[f"trainer.grad_clip={setting}"]))


def test_compiled_steps_train_like_eager_ones(train_run):
    """torch.compile of the per-phase losses (aot_eager: dynamo and AOT autograd without code generation) gives eager's weights."""
    base = tiny_overrides("gan_mlp", "ring8", steps=3)
    eager_dir, _ = train_run(base, "eager")
    compiled_dir, _ = train_run([*base, "trainer.compile=true", "trainer.compile_backend=aot_eager"], "compiled")
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (eager_dir, compiled_dir))
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=1e-5, atol=1e-6)


def test_compile_keeps_the_gradient_penalty_phase_eager(train_run):
    run_dir, report = train_run(tiny_overrides("dcgan", "digits", "wasserstein_gp", steps=2, extra=["model.d_norm=layer", "trainer.compile=true", "trainer.compile_backend=aot_eager"]))
    assert all(math.isfinite(v) for v in report["final"].values())
    assert "stay eager" in (run_dir / "gentrain.log").read_text()


@pytest.mark.slow
def test_compile_with_inductor_on_the_cpu(train_run):
    _, report = train_run(tiny_overrides("gan_mlp", "ring8", steps=3, extra=["trainer.compile=true"]))
    assert report["run"]["steps"] == 3


def test_bad_compile_mode_is_one_line(train_run):
    with pytest.raises(GentrainError, match="trainer.compile_mode"):
        train_run(tiny_overrides("gan_mlp", "moons", extra=["trainer.compile_mode=fastest"]))


def test_fp16_scales_the_loss_and_skips_a_step_with_inf_gradients(train_run, tmp_path):
    run_dir, report = train_run(tiny_overrides("dcgan", "digits", steps=2, extra=["device.precision=fp16"]))
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    scale = ckpt["scalers"]["G"]["scale"]
    assert set(ckpt["scalers"]) == {"D", "G"} and scale <= 65536.0 and math.log2(scale).is_integer()  # halved on each overflow
    s = prepare(make_config(tiny_overrides("dcgan", "digits", extra=["device.precision=fp16"])))
    from gentrain.engine.loader import BatchStream
    from gentrain.engine.trainer import Trainer

    stream = BatchStream(s.dataset.load("train"), s.ts.batch_size, s.device, s.ts.seed)
    trainer = Trainer(s.model, s.objective, s.optimizers, stream, s.device, "fp16", tmp_path, s.ts, s.ls, {}, list(default_callbacks(s, stream, None).values()), quiet_console())
    before = {k: v.detach().clone() for k, v in s.model.generator.named_parameters()}
    first = next(s.model.generator.parameters())
    handle = first.register_hook(lambda g: g * math.inf)  # an overflow, as fp16 gradients produce
    trainer._set_trainable("G")
    trainer._update("G")
    handle.remove()
    assert all(torch.equal(v, s.model.generator.get_parameter(k)) for k, v in before.items())  # the step was skipped
    assert trainer.scalers["G"].get_scale() == 65536.0 / 2  # and the scale halved
    trainer._update("G")
    assert not torch.equal(first, before[next(iter(before))])  # a finite step updates


def test_threads_and_bad_threads(tmp_path):
    threads = torch.get_num_threads()
    try:
        prepare(make_config(tiny_overrides("gan_mlp", "moons", extra=["device.threads=2"])))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(GentrainError, match="device.threads must be >= 1"):
        prepare(make_config(tiny_overrides("gan_mlp", "moons", extra=["device.threads=0"])))


def test_channels_last_converts_convolution_weights(train_run):
    s = prepare(make_config(tiny_overrides("dcgan", "digits", extra=["device.channels_last=true"])))
    convs = [m.weight for m in s.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)
    _, report = train_run(tiny_overrides("dcgan", "digits", steps=2, extra=["device.channels_last=true"]))
    assert report["run"]["steps"] == 2


def test_fused_optimizers_unless_the_config_says_otherwise():
    cfg = make_config(tiny_overrides("gan_mlp", "moons", extra=["+model.optimizer.D.fused=false"]))
    s = prepare(cfg)
    optimizers = build_optimizers(cfg, s.model, s.objective, fused=True)
    assert optimizers["G"].defaults["fused"] is True and optimizers["D"].defaults["fused"] is False
    assert build_optimizers(cfg, s.model, s.objective)["G"].defaults["fused"] is None  # off the GPU: torch's default


def test_trainer_deterministic_turns_on_deterministic_kernels_for_the_run_and_restores_them(train_run, monkeypatch):
    """A process-wide setting: on for the run's steps, pictures and evaluation, then back as the process had it."""
    import os

    from gentrain.families.gan.objectives import AdversarialObjective

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    original, seen = AdversarialObjective.step, []

    def step(self, phase, model, batch):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return original(self, phase, model, batch)

    monkeypatch.setattr(AdversarialObjective, "step", step)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    run_dir, report = train_run(tiny_overrides("gan_mlp", "moons", steps=2, extra=["trainer.deterministic=true"]), "on")
    assert seen and set(seen) == {(True, True, False, ":4096:8")}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert report["device"]["deterministic"] is True and "deterministic kernels on" in (run_dir / "report.md").read_text()
    seen.clear()
    run_dir, report = train_run(tiny_overrides("gan_mlp", "moons", steps=2), "off")
    assert {s[0] for s in seen} == {before[0]} and report["device"]["deterministic"] is False
    assert "deterministic kernels off" in (run_dir / "report.md").read_text()


def test_bad_trainer_deterministic_and_an_op_without_a_deterministic_kernel_are_one_line(train_run, monkeypatch):
    with pytest.raises(GentrainError, match="trainer.deterministic") as e:
        train_run(tiny_overrides("gan_mlp", "moons", extra=["trainer.deterministic=sometimes"]))
    assert "\n" not in str(e.value)
    from gentrain.families.gan.objectives import AdversarialObjective

    def step(self, phase, model, batch):  # what torch raises for such an op (e.g. some CUDA scatter and upsampling backwards)
        raise RuntimeError("scatter_add_cuda_kernel does not have a deterministic implementation, but you set 'torch.use_deterministic_algorithms(True)'.\nmore")

    monkeypatch.setattr(AdversarialObjective, "step", step)
    with pytest.raises(GentrainError, match="trainer.deterministic=true: scatter_add_cuda_kernel .*set trainer.deterministic=false") as e:
        train_run(tiny_overrides("gan_mlp", "moons", steps=2, extra=["trainer.deterministic=true"]), "op")
    assert "\n" not in str(e.value) and not torch.are_deterministic_algorithms_enabled()
