"""``task=train``: build data, model, objective and optimizers from the config; train; evaluate; report.

Order matters for "a refusal changes nothing on disk": everything that can refuse the run is checked
before the run claims its directory: the config in one pass (:func:`gentrain.spec.run_spec`: the typed
settings, the resume, every rule across keys, no object built; the CLI runs the same pass for every job
of a sweep before the first starts), a resume's overrides, then the objects built once each (the model,
objective, optimizers and evaluator check their own arguments). Only then are ``.hydra/``,
``gentrain.log`` and the outputs written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gentrain.build import build, build_model, build_objective, build_optimizers, build_schedulers, choice, seed_everything
from gentrain.config import DeviceSettings, EvalSettings, LoggerSettings, TrainerSettings
from gentrain.data.base import Dataset
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine import distributed
from gentrain.engine.device import device_name, use_channels_last
from gentrain.engine.distributed import World
from gentrain.engine.ema import EMA
from gentrain.engine.console import cli_console, summary_table
from gentrain.engine.loggers import flatten
from gentrain.engine.rundir import RUN_LOG, RunDirectory
from gentrain.engine.streaming import open_stream
from gentrain.engine.hooks import CheckpointHook, EMAHook, EvalHook, Hook, LogHook, SampleHook, ScheduleHook, user_callbacks
from gentrain.engine.trainer import SELECTION_SPLIT, EvalSchedule, Trainer, TrainResult
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import MetricResult, flat_values
from gentrain.metrics.report import command_line, evaluation_table, versions, write_reports
from gentrain.models.base import GenerativeModel
from gentrain.objectives.base import Objective
from gentrain.shared import describe_os_error
from gentrain.tasks.common import best_key, make_evaluator, setup_device
from gentrain.tasks.optimize import needs_validation
from gentrain.tasks.resume import resume_config
from gentrain.spec import RunSpec, run_spec
from gentrain.spec import resolved as resolve_spec

#: The groups a report names (model=dcgan dataset=digits objective=non_saturating).
GROUPS = ("model", "dataset", "objective")
#: Rank r > 0 of a torchrun job reseeds its noise with trainer.seed + stride * (r + 1) (and rank 0 too, so no rank repeats a one-process run's noise).
_RANK_SEED_STRIDE = 1_000_000_007


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _hydra() -> Any:
    """Hydra's config of this invocation, or None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _run_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<name>.pt``), or None."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


@dataclass
class Setup:
    """Everything a run is built from, before any data is read or anything is written."""

    ts: TrainerSettings
    ls: LoggerSettings
    es: EvalSettings
    ds: DeviceSettings
    device: torch.device
    dataset: Dataset
    model: GenerativeModel
    objective: Objective
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    schedule: EvalSchedule | None
    world: World


def prepare(cfg: DictConfig, spec: RunSpec | None = None) -> Setup:
    """Model, objective, optimizers and evaluation of ``cfg`` (checked by ``spec``, by default :func:`run_spec`'s), each
    built once; reads no data, writes nothing.

    The global RNGs are seeded with ``trainer.seed`` first, so the model's initial weights are the seed's.
    """
    spec = spec or run_spec(cfg)
    ts, ls, es = spec.trainer, spec.logger, spec.eval
    device, ds = setup_device(cfg, spec.device)
    world = distributed.current()
    dataset = build(cfg.dataset, "dataset")
    seed_everything(ts.seed)
    model = build_model(cfg)
    if _sync_batchnorm(cfg, device, world):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last) if use_channels_last(ds.channels_last, device, model) else model.to(device)
    objective = build_objective(cfg, model)
    objective.check_batch_size(ts.batch_size)
    optimizers = build_optimizers(cfg, model, objective, fused=device.type == "cuda")
    schedulers = build_schedulers(cfg, optimizers, ts.warmup_steps)
    if ts.ema_decay is not None:
        EMA(model, ts.ema_decay)  # refuses a bad decay or a model with nothing to average
    schedule = None
    if es.metrics:
        evaluator = make_evaluator(es, dataset, device)
        evaluator.check_model(model)
        key, higher = best_key(es, SELECTION_SPLIT)
        if es.every:
            if not dataset.has_split(SELECTION_SPLIT):
                raise GentrainError(
                    f"eval.every={es.every} evaluates during training on the validation split, and dataset {dataset.name} has none "
                    "(dataset.val_fraction=0); set dataset.val_fraction=0.1, or eval.every=0 to evaluate only at the end"
                )
        select_at_end = needs_validation(cfg)  # optimize= (or a sweep's default headline) reads a validation number
        if select_at_end and not dataset.has_split(SELECTION_SPLIT):
            raise GentrainError(
                f"the run's optimisation target is a validation-split number and dataset {dataset.name} has no validation split; "
                "set dataset.val_fraction=0.1, or optimize=train/<phase>/loss"
            )
        schedule = EvalSchedule(_records(evaluator), es.every, es.at_end, es.split, key if es.every else None, higher, select_at_end)
    return Setup(ts, ls, es, ds, device, dataset, model, objective, optimizers, schedulers, schedule, world)


def _records(evaluator: Any) -> Any:
    """The evaluator as the engine calls it: ``(model, splits) -> (flat values, result records)`` (the engine imports no metrics)."""

    def evaluate(model: GenerativeModel, splits: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        results = evaluator(model, splits)
        return flat_values(results), [r.as_dict() for r in results]

    return evaluate


def _sync_batchnorm(cfg: DictConfig, device: torch.device, world: World) -> bool:
    """``model.sync_batchnorm``: batch statistics over every rank's batch (GPUs only, as torch's SyncBatchNorm)."""
    value = OmegaConf.select(cfg, "model.sync_batchnorm", default=False)
    if not isinstance(value, bool):
        raise GentrainError(f"model.sync_batchnorm must be true or false, got {value!r}")
    if value and device.type != "cuda":
        raise GentrainError("model.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs); set model.sync_batchnorm=false on the CPU")
    return value and world.active


def check(cfg: DictConfig) -> RunSpec:
    """Refuse ``cfg`` with one line if it cannot train, building nothing (the CLI checks every job of a sweep with this)."""
    return run_spec(cfg)


def train(cfg: DictConfig, run_dir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.objective``; write every output into the run directory.

    ``run_dir`` (default: Hydra's) is where the run goes; ``trainer.resume`` continues a checkpoint
    from its stored config, in place when the checkpoint is that directory's own.
    """
    t0 = time.perf_counter()
    requested = Path(run_dir) if run_dir is not None else hydra_run_dir()
    console = console or cli_console()
    hydra = _hydra()
    overrides = list(hydra.overrides.task) if hydra is not None else []
    spec = run_spec(cfg)
    asked = spec.resume
    resume = asked.checkpoint(requested)
    ckpt, in_place = None, False
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if not isinstance(ckpt.get("config"), dict):
            raise GentrainError(f"{resume} holds no run config; it was not written by gentrain's trainer")
        cfg = resume_config(cfg, overrides, ckpt, resume)
        spec = run_spec(cfg, resumed=True)  # the checkpoint's config with the command line's safe changes
        in_place = asked.in_place(requested)
    resolved = resolve_spec(cfg)
    setup = prepare(cfg, spec)  # every refusal happens here or above: nothing is written yet
    choices = dict(ckpt.get("choices") or {}) if ckpt is not None else _choices(cfg, hydra)
    if not setup.world.main:  # rank 0 owns the run directory; the other ranks train and write nothing
        return _follow(requested, resolved, setup, choices, ckpt, resume, t0)
    rundir, moved = RunDirectory.claim(requested, resume_in_place=in_place)
    try:
        distributed.gather_objects(str(rundir.path), setup.world)  # the other ranks learn where the run went
        if moved:
            console.print(moved, highlight=False)
        rundir.open(resolved, None if in_place else overrides, None if hydra is None else {"hydra": hydra}, ckpt["step"] if in_place and ckpt else None, list(ckpt.get("pending", [])) if ckpt else [])
        if moved:
            RUN_LOG.warning(moved)
        return _train(resolved, setup, rundir.path, choices, ckpt, resume, console, t0)
    except GentrainError as e:
        RUN_LOG.error(str(e))
        raise
    except OSError as e:  # a write the run could not make: full disk, read-only or vanished folder
        where = e.filename or rundir.path
        message = f"could not write {where} ({describe_os_error(e)}); free space or point hydra.run.dir at a writable folder; the checkpoints written so far are intact"
        RUN_LOG.error(message)
        raise GentrainError(message) from None
    finally:
        rundir.release()


def _follow(
    requested: Path, resolved: dict[str, Any], setup: Setup, choices: dict[str, Any], ckpt: dict[str, Any] | None, source: Path | None, t0: float,
) -> dict[str, Any]:
    """A rank other than 0: train in step with rank 0 into rank 0's run directory, print and write nothing."""
    import io

    run_dir = Path(distributed.gather_objects(None, setup.world)[0])
    if requested != run_dir and requested.is_dir() and not any(requested.iterdir()):
        requested.rmdir()  # Hydra made this rank its own (empty) directory when its clock named another second
    return _train(resolved, setup, run_dir, choices, ckpt, source, Console(file=io.StringIO()), t0)


def default_callbacks(s: Setup, stream: Any, ema: EMA | None, own: list[Hook] | None = None) -> dict[str, Hook]:
    """The callbacks of a run, by name, in the order they run after a step: learning-rate schedules, the weight average,
    the interval's logs, sample pictures, evaluation, the user's own (``callbacks.<name>``), the checkpoint (which then
    saves their state too)."""
    head = stream.head(max(s.ls.n_points, s.ls.n_samples)).x
    listed: list[Hook] = [
        ScheduleHook(s.schedulers),
        *([EMAHook(ema)] if ema is not None else []),
        LogHook(s.ls.every),
        SampleHook(s.ls, head, s.device, s.dataset.rate),
        *([EvalHook(s.schedule)] if s.schedule is not None else []),
        *(own or []),
        CheckpointHook(s.ts.ckpt_every),
    ]
    return {cb.name: cb for cb in listed}


def results_of(result: TrainResult, callbacks: dict[str, Hook]) -> TrainResult:
    """``result`` with what the callbacks hold: the last logged values, the last sample picture, the last evaluation, best.pt."""
    import dataclasses

    log, samples, ev = callbacks["log"], callbacks["samples"], callbacks.get("evaluate")
    assert isinstance(log, LogHook) and isinstance(samples, SampleHook) and (ev is None or isinstance(ev, EvalHook))
    return dataclasses.replace(
        result, final=dict(log.final), sample_path=samples.path, evaluation=list(ev.records) if ev else [],
        evaluation_step=ev.step if ev else None, best=ev.best if ev else None,
    )


def _choices(cfg: DictConfig, hydra: Any) -> dict[str, Any]:
    """The run's config-group options (model=dcgan ...), kept in the checkpoint so a resume knows what the run was."""
    choices: dict[str, Any] = {g: choice(cfg, g) for g in GROUPS}
    if hydra is not None:
        choices |= {g: c for g, c in hydra.runtime.choices.items() if not g.startswith("hydra")}
    return choices


def _train(
    resolved: dict[str, Any], setup: Setup, run_dir: Path, choices: dict[str, Any], ckpt: dict[str, Any] | None, source: Path | None,
    console: Console, t0: float,
) -> dict[str, Any]:
    s = setup
    stream = open_stream(s.dataset, "train", s.ts.batch_size, s.device, s.ts.seed, s.ds.data_on_device, s.world.rank, s.world.size)
    s.model.check_data(stream.head(stream.num_examples if not s.dataset.streams() else 4096), str(choices.get("dataset", "?")))
    distributed.broadcast_state(s.model, s.world)  # every rank starts from rank 0's weights
    if s.world.active:  # each rank its own noise (the model's initial weights were drawn with trainer.seed on every rank)
        seed_everything(s.ts.seed + _RANK_SEED_STRIDE * (s.world.rank + 1))
    ema = EMA(s.model, s.ts.ema_decay, s.ts.ema_warmup) if s.ts.ema_decay is not None else None
    callbacks = default_callbacks(s, stream, ema, user_callbacks(resolved.get("callbacks") or {}))
    trainer = Trainer(
        s.model, s.objective, s.optimizers, stream, s.device, s.ds.precision, run_dir, s.ts, s.ls, resolved, list(callbacks.values()),
        console, choices, ema, s.es.use_ema, s.world,
    )
    trainer.log_params = hparam_view(choices, resolved)  # the parameters every logger backend records
    changes: list[str] = []
    if ckpt is not None:
        changes = trainer.load_state_dict(ckpt, str(source))
        note = f"; the configured optimizer settings apply: {', '.join(changes)}" if changes else ""
        console.print(f"resuming from {source} at step {trainer.step}{note}", highlight=False)
        RUN_LOG.info("resuming from %s at step %d%s", source, trainer.step, note)
    setup_s = time.perf_counter() - t0
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in s.model.param_groups().items()}
    start = (
        f"gentrain model={choices.get('model')} dataset={choices.get('dataset')} objective={choices.get('objective')} "
        f"on {s.device} ({s.ds.precision}); {stream.num_examples} training examples; parameters {n_params}; run dir {run_dir}"
    )
    console.print(f"[bold]gentrain[/]{start.removeprefix('gentrain')}", highlight=False)
    RUN_LOG.info("%s; command: %s", start, command_line())
    pictures = s.model.picture_sampler() if s.ls.samples_every else None  # a cheaper sampler for the pictures alone
    if pictures:
        console.print(f"sample pictures: drawn with {pictures}", highlight=False)
        RUN_LOG.info("sample pictures: drawn with %s", pictures)
    if trainer.step >= s.ts.max_steps:
        console.print(f"checkpoint is at step {trainer.step} >= trainer.max_steps={s.ts.max_steps}: nothing to train", highlight=False)
    elif s.ts.warmup_steps > s.ts.max_steps:
        note = (
            f"note: trainer.warmup_steps={s.ts.warmup_steps} is longer than the run (trainer.max_steps={s.ts.max_steps}): the learning rate "
            f"ends at {s.ts.max_steps / s.ts.warmup_steps:.0%} of its configured value; e.g. trainer.warmup_steps={max(1, s.ts.max_steps // 10)}"
        )
        console.print(note, highlight=False)
        RUN_LOG.warning(note)
    result = trainer.fit()
    result = results_of(result, callbacks)  # the task reads the results from the callbacks it built
    report = make_report(choices, resolved, result, s.ts, s.ls, s.device, s.ds.precision, setup_s, n_params, changes, s.world, pictures)
    if not s.world.main:
        return report
    write_reports(run_dir, report, curves=s.ls.curves)
    trainer.loggers.finish("FINISHED")  # TensorBoard's HPARAMS record pairs the parameters with the run's scalar series
    losses = {k.removeprefix("train/"): v for k, v in result.final.items() if not k.startswith(("train/lr/", "train/steps_per_s"))}
    rows = {"steps": result.step, "steps/s (this session)": report["run"]["steps_per_s"], "wall time (s)": report["run"]["session_time_s"]}
    console.print(summary_table(f"gentrain: {choices.get('model')} on {choices.get('dataset')}", {**rows, **losses}))
    if result.evaluation:
        console.print(evaluation_table(report["evaluation"]))
    console.print(f"outputs in {run_dir} ({', '.join(['report.md', 'checkpoints/', 'samples/', *trainer.loggers.describe()])})", highlight=False)
    RUN_LOG.info("completed at step %d; report: %s", result.step, run_dir / "report.md")
    return report


def hparam_view(choices: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """Group choices and the whole resolved config (``seed``, ``model.*`` ... ``device.*``, ``eval.*``, ``logger.*``), flattened."""
    params: dict[str, Any] = {g: choices.get(g) for g in GROUPS}
    for k, v in flatten(resolved).items():
        if not k.endswith("_target_") and not k.endswith("_partial_") and v is not None:
            params[k] = v
    return params


def make_report(
    choices: dict[str, Any],
    resolved: dict[str, Any],
    result: TrainResult,
    ts: TrainerSettings,
    ls: LoggerSettings,
    device: torch.device,
    precision: str,
    setup_s: float,
    n_params: dict[str, int],
    resume_changes: list[str] | None = None,
    world: World | None = None,
    picture_sampler: str | None = None,
) -> dict[str, Any]:
    """``picture_sampler``: what drew the sample pictures where it is not the run's sampler (``GenerativeModel.picture_sampler``)."""
    world = world or World()
    evaluation = [MetricResult(**r) for r in result.evaluation]
    session_steps = result.step - result.start_step
    # training time only: evaluation and pictures are not steps
    steps_per_s = session_steps / result.session_train_s if result.session_train_s > 0 and session_steps else float("nan")
    return {
        "command": command_line(),
        "run": {
            "status": "completed",
            **{g: choices.get(g) for g in GROUPS},
            "steps": result.step,
            "start_step": result.start_step,
            "batch_size": ts.batch_size,  # per process
            "world_size": world.size,
            "global_batch_size": ts.batch_size * world.size,
            "batches_per_step": result.batches_per_step,
            "seed": ts.seed,
            "train_time_s": round(result.train_time_s, 3),
            "session_time_s": round(result.session_time_s, 3),
            "setup_time_s": round(setup_s, 3),
            "steps_per_s": steps_per_s,
            # every batch a step consumes: the discriminator's d_steps batches count too
            "examples_per_s": steps_per_s * ts.batch_size * world.size * result.batches_per_step,
            "parameters": n_params,
            "resumed_with_changes": list(resume_changes or []),
        },
        "device": {"type": device.type, "name": device_name(device), "precision": precision, "deterministic": ts.deterministic},
        "final": result.final,
        "metrics": flat_values(evaluation),
        "evaluation": [r.as_dict() for r in evaluation],
        "evaluation_step": result.evaluation_step,
        "best": result.best,
        "logger_every": ls.every,
        "samples": str(result.sample_path) if result.sample_path else None,
        "samples_sampler": picture_sampler if result.sample_path else None,
        "versions": versions(),
        "config": resolved,
        "config_yaml": OmegaConf.to_yaml(OmegaConf.create(resolved)),
    }
