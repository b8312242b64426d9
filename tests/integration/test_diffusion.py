"""model=ddpm, the denoising diffusion family: what ``model=ddpm`` composes, every option training a few steps,
one-line refusals of what does not fit, the samplers (ancestral and DDIM, classifier-free guidance), ``task=sample``
and ``task=eval`` with the run's sampler or the command line's, and resuming a run with its weight average."""

from __future__ import annotations

import dataclasses

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import gentrain
import test_cli
from conftest import make_config, quiet_console, tiny_overrides
from gentrain.build import build, build_model, build_objective, build_optimizers, seed_everything
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.diffusion.model import GaussianDiffusion, SamplerSpec, cosine_alpha_bar, make_betas
from gentrain.objectives.base import Batch
from gentrain.shared import to_model_space
from gentrain.tasks import evaluate, sample
from gentrain.build import sampler_choice
from gentrain.tasks.common import load_trained
from test_metrics import TinyExtractor
from test_stop_resume import assert_same_state, records, without_timing

NO_TB = ["logger.tensorboard=false"]  # TensorBoard is checked once, on the conditional run
#: The refusals below need no real training sizes: a tiny network, nothing else changed (no objective.timesteps: other
#: objectives have no such key).
SMALL = ["device=cpu", "model.channels=8", "model.num_res_blocks=1", "model.hidden=16", "model.blocks=1", "logger.progress=false"]


def ddpm_overrides(dataset: str, steps: int = 3, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """A tiny model=ddpm run (T = 10, batches of 8, the warm-up shortened); ``extra`` goes last."""
    return tiny_overrides("ddpm", dataset, "ddpm", steps=steps, extra=["trainer.batch_size=8", "trainer.warmup_steps=2", *extra])


# ------------------------------------------------------------------------------------ composition


def test_model_ddpm_chooses_its_objective_trainer_and_sampler():
    cfg = make_config(["model=ddpm"])
    assert cfg.objective._target_ == "gentrain.families.diffusion.objective.Denoising"
    assert (cfg.objective.prediction, cfg.objective.schedule, cfg.objective.timesteps) == ("eps", "linear", 1000)
    assert (cfg.trainer.ema_decay, cfg.trainer.grad_clip, cfg.trainer.warmup_steps) == (0.9999, 1.0, 5000)
    assert cfg.sampler.name == "ddpm" and cfg.sampler.guidance is None  # null: 0 in training
    # the model follows the objective's process
    assert (cfg.model.timesteps, cfg.model.schedule, cfg.model.prediction) == (1000, "linear", "eps")
    assert cfg.model.variance == "fixedlarge" and cfg.model.num_classes is None
    # other models keep the plain recipe and choose no sampler
    other = make_config(["model=dcgan"])
    assert OmegaConf.select(other, "sampler") is None
    assert (other.trainer.ema_decay, other.trainer.grad_clip, other.trainer.warmup_steps) == (None, None, 0)


@pytest.mark.parametrize("model_first", [True, False], ids=["model-first", "model-last"])
def test_command_line_overrides_win_over_the_presets_choices(model_first):
    mine = ["objective.schedule=cosine", "objective.prediction=v", "objective.timesteps=20", "sampler=ddim", "sampler.steps=7", "trainer.ema_decay=null"]
    cfg = make_config(["model=ddpm", *mine] if model_first else [*mine, "model=ddpm"])
    assert (cfg.model.schedule, cfg.model.prediction, cfg.model.timesteps) == ("cosine", "v", 20)
    assert OmegaConf.to_container(cfg.sampler) == {"name": "ddim", "steps": 7, "eta": 0.0, "guidance": None, "pictures": None}
    assert cfg.trainer.ema_decay is None and cfg.trainer.grad_clip == 1.0 and cfg.trainer.warmup_steps == 5000


def test_the_built_model_takes_the_process_and_the_sampler_of_the_config():
    cfg = make_config(ddpm_overrides("digits", extra=["objective.schedule=cosine", "model.variance=fixedsmall", "sampler=ddim", "sampler.steps=7"]))
    model = build_model(cfg)
    objective = build_objective(cfg, model)
    p = model.process
    assert (p.timesteps, p.schedule, p.prediction, p.variance) == (10, "cosine", "eps", "fixedsmall")
    assert (objective.timesteps, objective.schedule, objective.prediction) == (10, "cosine", "eps")
    assert model.sampler == SamplerSpec("ddim", 7, 0.0, 0.0)
    assert model.layout == {"channel_mult": [1, 2], "attention_resolutions": [4]}  # sized to 8x8: 8 -> 4, attention at the lowest


# ------------------------------------------------------------------------------------ the process


def test_schedules():
    linear = make_betas("linear", 1000)
    assert math.isclose(linear[0], 1e-4) and math.isclose(linear[-1], 0.02)
    shorter = make_betas("linear", 100)  # other T: scaled by 1000 / T (improved-diffusion)
    assert math.isclose(shorter[0], 1e-3) and math.isclose(shorter[-1], 0.2) and make_betas("linear", 10)[-1] == 0.999  # clipped
    cosine = make_betas("cosine", 50)
    abar = np.cumprod(1 - cosine)
    assert np.allclose(abar[:-1], cosine_alpha_bar(np.arange(1, 50, dtype=np.float64), 50), rtol=1e-9)  # eq. 17 ...
    assert cosine[-1] == 0.999 and cosine[:-1].max() < 0.999 and np.all(np.diff(abar) < 0)  # ... and the last beta clipped


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_each_prediction_recovers_the_data_and_the_noise_from_its_target(prediction, schedule):
    p = GaussianDiffusion(20, schedule, prediction)
    g = torch.Generator().manual_seed(0)
    # float64: at t = T-1 abar is ~1e-4 or less, and eps -> x_0 divides by its square root
    x0, noise = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 7, 11, 15, 19])
    xt = p.q_sample(x0, t, noise)
    x0_hat, eps_hat = p.split(p.target(x0, noise, t), xt, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)


def test_the_reverse_variances():
    large, small = GaussianDiffusion(10, variance="fixedlarge"), GaussianDiffusion(10, variance="fixedsmall")
    assert torch.allclose(large.model_logvar[1:], large.betas[1:].log()) and torch.allclose(small.model_logvar[1:], small.post_var[1:].log())
    assert large.model_logvar[0] == small.model_logvar[0] == small.post_var[1].log()  # t = 0: the posterior variance of step 1, as the released code
    assert GaussianDiffusion(10).ddim_steps(3) == [0, 3, 6] and GaussianDiffusion(10).ddim_steps(50) == list(range(10))


def randomised(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """The model with every weight drawn at random (the zero-initialised output layers would predict 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("dataset", ["digits", "ring8"])
def test_ddim_with_eta_1_and_all_steps_is_ancestral_sampling_with_the_posterior_variance(dataset):
    """Song et al. (2021): DDIM with eta = 1 on all T steps is DDPM's sampler with sigma_t^2 = beta~_t (variance=fixedsmall)."""
    model = randomised(build_model(make_config(ddpm_overrides(dataset, extra=["model.variance=fixedsmall", "model.dropout=0"]))))
    x_T = model.noise(5, torch.Generator().manual_seed(0))
    ancestral, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddpm"), generator=torch.Generator().manual_seed(3))
    ddim, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", 10, 1.0), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim, ancestral, atol=1e-4, rtol=1e-4)
    # eta = 0 is deterministic: the generator is not used
    a, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", 4), generator=torch.Generator().manual_seed(3))
    b, _ = model.run_sampler(x_T, sampler=SamplerSpec("ddim", 4), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, ancestral)


# ------------------------------------------------------------------------------------ every option trains


STEP_CASES = {
    "digits-eps-linear-fixedlarge-ddpm": ("digits", []),
    "digits-x0-cosine-fixedsmall-ddim": ("digits", ["objective.prediction=x0", "objective.schedule=cosine", "model.variance=fixedsmall", "sampler=ddim", "sampler.steps=5"]),
    "digits-v-conditional-guided-ddim-eta1": (
        "digits", ["objective.prediction=v", "model.num_classes=10", "sampler=ddim", "sampler.steps=5", "sampler.eta=1.0", "sampler.guidance=2.0"],
    ),
    "ring8-eps-cosine-fixedsmall-ddpm": ("ring8", ["objective.schedule=cosine", "model.variance=fixedsmall"]),
    "ring8-v-conditional-guided-ddpm": ("ring8", ["objective.prediction=v", "model.num_classes=8", "sampler.guidance=1.0"]),
    "moons-x0-linear-ddim": ("moons", ["objective.prediction=x0", "sampler=ddim", "sampler.steps=5"]),
}


@pytest.mark.parametrize("dataset,extra", list(STEP_CASES.values()), ids=list(STEP_CASES))
def test_every_option_builds_takes_optimizer_steps_samples_and_scores(dataset, extra):
    """Built as the CLI builds it (compose, build_model, build_objective, build_optimizers), a few steps in process."""
    cfg = make_config(ddpm_overrides(dataset, extra=extra))
    seed_everything(0)
    model = build_model(cfg)
    objective = build_objective(cfg, model)
    (optimizer,) = build_optimizers(cfg, model, objective).values()
    data = build(cfg.dataset, "dataset").load("train")
    model.check_data(data, dataset)
    p, chosen = model.process, OmegaConf.to_container(cfg.sampler)
    assert (p.prediction, p.schedule, p.variance) == (cfg.objective.prediction, cfg.objective.schedule, cfg.model.variance)
    expected = SamplerSpec.parse(chosen)
    # null guidance: 0 for a new model; sampler.pictures' DDIM-50 is no cheaper than T = 10: none
    expected = dataclasses.replace(expected, guidance=expected.guidance or 0.0, pictures=None)
    assert model.sampler == expected and model.num_classes == cfg.model.num_classes
    before = [q.detach().clone() for q in model.net.parameters()]
    model.train()
    for i in range(3):
        batch = Batch(to_model_space(data.x[8 * i : 8 * i + 8]), None if model.num_classes is None else data.y[8 * i : 8 * i + 8])
        out = objective.step("main", model, batch)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss) and set(out.logs) == {"loss"}
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))
    model.eval()
    x, y = model.sample_with_labels(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, *model.shape) and torch.isfinite(x).all()
    if model.images:
        assert x.min() >= -1 and x.max() <= 1
    assert (y is None) == (model.num_classes is None)
    if y is not None:
        assert y.shape == (6,) and 0 <= int(y.min()) and int(y.max()) < model.num_classes
    again, _ = model.sample_with_labels(6, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # the generator fixes the draw, whatever the sampler
    log_p = model.log_prob(to_model_space(data.x[:4]))
    assert log_p.shape == (4,) and torch.isfinite(log_p).all()


# ------------------------------------------------------------------------------------ refusals


REFUSED = {
    "objective=ddpm-on-dcgan": (["model=dcgan", "objective=ddpm", "device=cpu"], "objective=ddpm needs a DiffusionModel and model=dcgan is not one"),
    "elbo-on-ddpm": (["model=ddpm", "objective=elbo", *SMALL], "objective=elbo needs a LatentVariableModel and model=ddpm is not one; objectives that fit model=ddpm: objective=ddpm"),
    "flow_nll-on-ddpm": (["model=ddpm", "objective=flow_nll", *SMALL], "objective=flow_nll needs a FlowModel and model=ddpm is not one"),
    "sampler-on-dcgan": (["model=dcgan", "sampler=ddim", "device=cpu"], "a GAN samples with sampler=latent"),
    "guidance-unconditional": (["model=ddpm", "sampler.guidance=2", *SMALL], "sampler.guidance needs a class-conditional model"),
    "guidance-without-cond_drop": (
        ["model=ddpm", "model.num_classes=10", "model.cond_drop=0", "sampler.guidance=2", *SMALL], "which model.cond_drop=0 never trained",
    ),
    "channel_mult-too-deep": (["model=ddpm", "model.channel_mult=[1,2,2,2,2]", *SMALL], "halves the image 4 times and 8x8 does not divide by 16"),
    "num_res_blocks-negative": (["model=ddpm", *SMALL, "model.num_res_blocks=-1"], "model.num_res_blocks must be an integer >= 0"),
    "attention-missing-resolution": (
        ["model=ddpm", "model.attention_resolutions=[16]", *SMALL], "model.attention_resolutions=[16] names [16], which the U-Net does not have (its resolutions: [8, 4])",
    ),
    "prediction-foo": (["model=ddpm", "objective.prediction=foo", *SMALL], "objective.prediction='foo' is not one of eps, x0, v"),
    "schedule-foo": (["model=ddpm", "objective.schedule=foo", *SMALL], "objective.schedule='foo' is not one of linear, cosine"),
    "variance-foo": (["model=ddpm", "model.variance=foo", *SMALL], "model.variance='foo' is not one of fixedlarge, fixedsmall"),
    "timesteps-1": (["model=ddpm", "objective.timesteps=1", *SMALL], "objective.timesteps must be an integer >= 2"),
    "ddim-steps-0": (["model=ddpm", "sampler=ddim", "sampler.steps=0", *SMALL], "sampler.steps must be a positive integer, got 0"),
    "ddim-steps-over-timesteps": (  # it was clamped to T without a word
        ["model=ddpm", "sampler=ddim", "sampler.steps=1000000", "objective.timesteps=100", *SMALL],
        "sampler.steps=1000000 is more than the model's objective.timesteps=100, the most DDIM can visit; e.g. sampler.steps=50",
    ),
    "attention-not-a-list": (  # it was int('a')'s "invalid literal for int()"
        ["model=ddpm", "model.attention_resolutions=abc", *SMALL], "model.attention_resolutions must be a list of integers, got 'abc'; e.g.",
    ),
    "eta-on-ancestral": (["model=ddpm", "+sampler.eta=1.0", *SMALL], "sampler=ddpm runs all objective.timesteps steps and has no steps or eta"),
    "schedule-mismatch": (
        ["model=ddpm", "model.schedule=cosine", "objective.schedule=linear", *SMALL], "model.schedule=cosine but objective.schedule=linear; set objective.schedule",
    ),
}
#: Refused once the data is read, at start-up: the run directory exists by then (its log says why), no step ran.
REFUSED_AT_START = {
    "unlabelled-data-conditional": (["model=ddpm", "dataset=swissroll", "model.num_classes=3", *SMALL], "a conditional model needs class labels and dataset=swissroll has none"),
    "too-few-classes": (["model=ddpm", "model.num_classes=3", *SMALL], "dataset=digits has 10 classes but the model has 3"),
}


@pytest.mark.parametrize(
    "overrides,message,at_start", [(*v, False) for v in REFUSED.values()] + [(*v, True) for v in REFUSED_AT_START.values()],
    ids=[*REFUSED, *REFUSED_AT_START],
)
def test_what_does_not_fit_is_refused_in_one_line(overrides, message, at_start, tmp_path):
    run_dir = tmp_path / "outputs" / "refused"
    with pytest.raises(GentrainError) as e:
        gentrain.train(overrides, run_dir=run_dir, quiet=True)
    assert message in str(e.value) and "\n" not in str(e.value)
    if at_start:
        assert not (run_dir / "checkpoints" / "last.pt").exists()
    else:
        assert not (tmp_path / "outputs").exists()  # refused before anything is written


def test_the_command_line_refuses_with_one_line_and_exit_2(tmp_path):
    """The installed console script, once (its start-up is slow): guidance on an unconditional model."""
    if test_cli.GENTRAIN is None:
        pytest.skip("the gentrain console script is not installed (pip install -e .)")
    result = test_cli.gentrain(["model=ddpm", "sampler.guidance=2", "objective.timesteps=10", *SMALL], tmp_path)
    test_cli.assert_one_line_error(result, "sampler.guidance needs a class-conditional model")
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------------------------ a whole run


#: Digits, class-conditional with classifier-free guidance, DDIM in 3 steps, the recipe's EMA, the variational bound at the end.
CONDITIONAL = ddpm_overrides(
    "digits", steps=3,
    extra=["model.num_classes=10", "sampler=ddim", "sampler.steps=3", "sampler.guidance=1.0", "eval.metrics=[nll50]", "eval.batch_size=50",
           "logger.every=1", "logger.samples_every=3", "logger.interpolations=true"],
)


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> gentrain.Result:
    return gentrain.train(CONDITIONAL, run_dir=tmp_path_factory.mktemp("ddpm") / "conditional", quiet=True)


def test_a_conditional_run_writes_every_output(conditional):
    run_dir = conditional.run_dir
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 3
    assert (report["run"]["model"], report["run"]["objective"], report["run"]["dataset"]) == ("ddpm", "ddpm", "digits")
    assert report["config"]["sampler"] == {"name": "ddim", "steps": 3, "eta": 0.0, "guidance": 1.0, "pictures": None}
    assert report["config"]["trainer"]["ema_decay"] == 0.9999 and report["config"]["trainer"]["grad_clip"] == 1.0
    assert set(report["metrics"]) == {"nll50", "nll50_bpd"} and all(math.isfinite(v) and v > 0 for v in report["metrics"].values())
    (nll,) = report["evaluation"]
    assert nll["n_reference"] == 50 and any("variational bound" in note for note in nll["notes"])
    assert math.isclose(report["metrics"]["nll50_bpd"], report["metrics"]["nll50"] / (64 * math.log(2)), rel_tol=1e-6)
    # the pictures: the grid (one row per class), the denoising trajectory, the DDIM interpolations (images)
    for name in ("step_000003.png", "trajectory_step_000003.png", "interp_lerp_step_000003.png", "interp_slerp_step_000003.png"):
        assert (run_dir / "samples" / name).is_file(), name
    # the loss in metrics.jsonl and TensorBoard
    steps = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["train/main/loss"]) for r in steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/main/loss")] == [1, 2, 3]
    # the weight average is of the denoiser
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["ema"]["name"] == "net" and ckpt["config"]["sampler"] == report["config"]["sampler"]


def test_the_trajectory_picture_of_images_has_one_sample_per_row(conditional):
    """SampleHook lays the trajectory out ``per_row`` images a row: each row must be one sample's 10 states (9 steps or more)."""
    model = conditional.model
    x = torch.zeros(8, *model.shape)
    try:
        for sampler in (SamplerSpec("ddim", 9), SamplerSpec("ddpm")):  # T = 10: 10 and 11 states, 10 of them kept
            model.sampler = sampler
            images, per_row = model.pictures(x, torch.Generator().manual_seed(0))["trajectory"]
            assert per_row == 10 and images.shape == (8 * per_row, *model.shape)
    finally:
        model.sampler = SamplerSpec("ddim", 3, 0.0, 1.0)


def test_the_trajectory_picture_with_few_sampler_steps(conditional):
    model = conditional.model  # sampler=ddim sampler.steps=3: x_T and 3 states per sample
    images, per_row = model.pictures(torch.zeros(8, *model.shape), torch.Generator().manual_seed(0))["trajectory"]
    assert images.shape[0] == 8 * 4 and per_row == 4


def task_sample(ckpt: Path, out: Path, *extra: str, n: int = 16) -> dict[str, np.ndarray]:
    files = sample(make_config(["task=sample", f"ckpt={ckpt}", f"n={n}", "seed=0", "device=cpu", f"out={out}", *extra]), quiet_console())
    return dict(np.load(files["npz"]))


def test_task_sample_uses_the_runs_sampler_unless_the_command_line_names_one(conditional, tmp_path):
    ckpt = conditional.run_dir / "checkpoints" / "last.pt"
    # the group as the sample task composes it: absent unless chosen
    assert sampler_choice(make_config(["task=sample", f"ckpt={ckpt}"])) is None
    chosen = sampler_choice(make_config(["task=sample", f"ckpt={ckpt}", "sampler=ddim", "sampler.steps=2"]))
    assert chosen == {"name": "ddim", "steps": 2, "eta": 0.0, "guidance": None, "pictures": None}
    assert load_trained(str(ckpt), torch.device("cpu"))[2].sampler == SamplerSpec("ddim", 3, 0.0, 1.0)  # the run's
    replaced = load_trained(str(ckpt), torch.device("cpu"), sampler=chosen)[2].sampler
    assert replaced == SamplerSpec("ddim", 2, 0.0, 1.0)  # fewer steps; the run's guidance kept (it was not named)
    unguided = load_trained(str(ckpt), torch.device("cpu"), sampler={**chosen, "guidance": 0.0})[2].sampler
    assert unguided == SamplerSpec("ddim", 2, 0.0, 0.0)
    own = task_sample(ckpt, tmp_path / "own")
    other = task_sample(ckpt, tmp_path / "other", "sampler=ddim", "sampler.steps=2")
    assert own["x"].shape == other["x"].shape == (16, 1, 8, 8) and own["x"].dtype == np.uint8
    assert np.array_equal(own["y"], other["y"]) and not np.array_equal(own["x"], other["x"])  # the same noise and labels, another sampler
    # gentrain.load samples as the task does, with the run's sampler or the one given
    assert np.array_equal(gentrain.load(conditional.run_dir, device="cpu").sample(16, seed=0).numpy(), own["x"])
    steps2 = gentrain.load(conditional.run_dir, device="cpu", sampler=chosen)
    assert steps2.model.sampler == replaced and np.array_equal(steps2.sample(16, seed=0).numpy(), other["x"])
    # the labels the unlabelled draw chose give back its very samples
    assert np.array_equal(gentrain.load(conditional.run_dir, device="cpu").sample(16, labels=own["y"].tolist(), seed=0).numpy(), own["x"])
    # a sampler that does not fit the model is refused in one line
    with pytest.raises(GentrainError, match="sampler.steps must be a positive integer") as e:
        task_sample(ckpt, tmp_path / "bad", "sampler=ddim", "sampler.steps=0")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("extra", [[], ["sampler=ddim", "sampler.steps=2"]], ids=["runs-sampler", "ddim-2-steps"])
def test_task_sample_writes_the_images_evaluation_scores(conditional, extra, tmp_path, monkeypatch):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    ckpt = conditional.run_dir / "checkpoints" / "last.pt"
    n, scoring = 32, ["eval.metrics=[fid32,kid32,pr32]", "eval.batch_size=16", "eval.kid_subset_size=16", "eval.kid_subsets=5", "device=cpu"]
    drawn = sample(make_config(["task=sample", f"ckpt={ckpt}", f"n={n}", "seed=0", f"out={tmp_path / 'drawn'}", *scoring, *extra]), quiet_console())["npz"]
    from_ckpt = evaluate(make_config(["task=eval", f"ckpt={ckpt}", "eval.seed=0", f"out={tmp_path / 'ckpt'}", *scoring, *extra]), quiet_console())
    from_npz = evaluate(make_config(["task=eval", f"samples={drawn}", "reference=digits", *scoring]), quiet_console())
    assert from_npz["metrics"] == from_ckpt["metrics"] and len(from_ckpt["metrics"]) >= 3  # bit for bit: the same images


# ------------------------------------------------------------------------------------ resume


def test_a_stopped_run_resumes_exactly_with_its_weight_average(train_run):
    """Vectors (ring8), the ancestral sampler, the recipe's EMA (0.9999 with its warm-up), dropout: 2 steps, then 2 more."""
    base = ddpm_overrides("ring8", steps=4, extra=["logger.every=1", "logger.samples_every=100", "trainer.ckpt_every=0", *NO_TB])
    full, _ = train_run(base, "full")
    train_run([*base, "trainer.max_steps=2"], "run")
    run_dir, report = train_run([*base, "trainer.resume=true"], "run")
    assert report["run"]["start_step"] == 2 and report["run"]["steps"] == 4
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert a["ema"]["name"] == "net" and a["ema"]["updates"] == 3  # the first step's update takes the copy
    assert_same_state(a, b)
    assert [without_timing(r) for r in records(run_dir)] == [without_timing(r) for r in records(full)]
    assert any(not torch.equal(v, a["model"][f"net.{k}"]) for k, v in a["ema"]["weights"].items())  # the average lags the weights
    # vectors: the grid is a scatter plot, the trajectory a row of point clouds, no interpolations
    pictures = sorted(p.name for p in (full / "samples").iterdir())
    assert pictures == ["step_000004.png", "trajectory_step_000004.png"]


# ------------------------------------------------------------------------------------ smaller gaps


def test_a_zero_width_vector_denoiser_is_refused():
    with pytest.raises(GentrainError, match="model.hidden"):
        build_model(make_config(ddpm_overrides("ring8", extra=["model.hidden=0"])))


@pytest.mark.parametrize("task", ["sample", "eval"])
def test_a_sampler_key_without_a_sampler_names_the_options_that_have_it(task, tmp_path, capsys):
    """task=sample/eval use the checkpoint's sampler, so no sampler is chosen in their config: ``sampler.guidance=3``
    alone said "not an option here (check its spelling)". Refused before any checkpoint is read."""
    from gentrain.cli import _precheck

    with pytest.raises(SystemExit) as e:
        _precheck([f"task={task}", f"ckpt={tmp_path / 'run'}", "sampler.guidance=3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert err == ("error: sampler.guidance is not a key of this run's sampler (none is chosen, or its option lacks it); "
                   "the sampler options that have it: ddim, ddpm; name one with it, e.g. sampler=ddim sampler.guidance=3")
