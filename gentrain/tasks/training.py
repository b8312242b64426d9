"""``task=train``: build data, model, objective and optimizers from the config; train; evaluate; report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gentrain.build import build, build_model, build_objective, build_optimizers, choice, seed_everything
from gentrain.config import EvalSettings, LoggerSettings, TrainerSettings, typed
from gentrain.engine.checkpoint import find_checkpoint, load_checkpoint
from gentrain.engine.device import device_name
from gentrain.engine.loader import BatchStream
from gentrain.engine.loggers import flatten, summary_table
from gentrain.engine.trainer import EvalSchedule, Trainer, TrainResult
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import flat_values
from gentrain.metrics.report import command_line, evaluation_table, versions, write_reports
from gentrain.tasks.common import best_key, make_evaluator, setup_device

log = logging.getLogger(__name__)

GROUPS = ("model", "dataset", "objective")


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as e:  # an interpolation that cannot resolve, e.g. a missing env var or ???
        raise GentrainError(f"the config does not resolve: {str(e).strip().splitlines()[0]}; set the key it names") from None


def _resume_path(resume: Any, run_dir: Path) -> Path | None:
    if resume is False or resume is None or resume == "false":
        return None
    if resume is True or resume == "true":
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file():
            raise GentrainError(
                f"trainer.resume=true but {run_dir} has no checkpoints/last.pt; pass trainer.resume=<run dir or .pt file> "
                "or hydra.run.dir=<the run directory to continue>"
            )
        return last
    return find_checkpoint(str(resume))


def train(cfg: DictConfig, run_dir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.objective``; write every output into ``run_dir``."""
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    console = console or Console()
    resolved = resolve_config(cfg)
    ts = typed(cfg.trainer, TrainerSettings, "trainer")
    ls = typed(cfg.logger, LoggerSettings, "logger")
    es = typed(cfg.eval, EvalSettings, "eval")
    device, ds = setup_device(cfg)
    resume = _resume_path(ts.resume, run_dir)
    seed_everything(ts.seed)

    t0 = time.perf_counter()
    dataset = build(cfg.dataset, "dataset")
    train_split = dataset.load("train")
    model = build_model(cfg).to(device)
    model.check_data(train_split, choice(cfg, "dataset"))
    objective = build_objective(cfg, model)
    optimizers = build_optimizers(cfg, model, objective)
    stream = BatchStream(train_split, ts.batch_size, device, ts.seed, ds.data_on_device)
    schedule = None
    if es.metrics:
        key, higher = best_key(es)
        evaluator = make_evaluator(es, dataset, device)
        evaluator.check_model(model)
        schedule = EvalSchedule(evaluator, es.every, es.at_end, key, higher)
    choices = {g: choice(cfg, g) for g in GROUPS}
    trainer = Trainer(model, objective, optimizers, stream, device, ds.precision, run_dir, ts, ls, resolved, console, schedule, choices, es.use_ema)
    if resume is not None:
        trainer.load_state_dict(load_checkpoint(resume), str(resume))
        console.print(f"resuming from {resume} at step {trainer.step}", highlight=False)
    setup_s = time.perf_counter() - t0
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in model.param_groups().items()}
    console.print(
        f"[bold]gentrain[/] model={choices['model']} dataset={choices['dataset']} objective={choices['objective']} "
        f"on {device} ({ds.precision}); {stream.num_examples} training examples; parameters {n_params}; run dir {run_dir}",
        highlight=False,
    )
    if trainer.step >= ts.max_steps:
        console.print(f"checkpoint is at step {trainer.step} >= trainer.max_steps={ts.max_steps}: nothing to train", highlight=False)
    result = trainer.fit()
    report = make_report(choices, resolved, result, ts, ls, device, ds.precision, setup_s, n_params)
    write_reports(run_dir, report)
    if trainer.tb is not None:
        trainer.tb.hparams(hparam_view(choices, resolved), {**result.final, **report["metrics"], "steps": result.step})
        trainer.tb.close()
    losses = {k.removeprefix("train/"): v for k, v in result.final.items() if not k.startswith(("train/lr/", "train/steps_per_s"))}
    rows = {"steps": result.step, "steps/s (this session)": report["run"]["steps_per_s"], "wall time (s)": report["run"]["session_time_s"]}
    console.print(summary_table(f"gentrain: {choices['model']} on {choices['dataset']}", {**rows, **losses}))
    if result.evaluation:
        console.print(evaluation_table(report["evaluation"]))
    console.print(f"outputs in {run_dir} (report.md, tensorboard/, checkpoints/)", highlight=False)
    return report


def hparam_view(choices: dict[str, str], resolved: dict[str, Any]) -> dict[str, Any]:
    """Group choices and the scalar settings of model, objective, trainer and dataset, flattened."""
    params: dict[str, Any] = dict(choices)
    for group in ("model", "objective", "trainer", "dataset"):
        for k, v in flatten(resolved.get(group, {}), f"{group}.").items():
            if not k.endswith("_target_") and not k.endswith("_partial_") and v is not None:
                params[k] = v
    return params


def make_report(
    choices: dict[str, str],
    resolved: dict[str, Any],
    result: TrainResult,
    ts: TrainerSettings,
    ls: LoggerSettings,
    device: torch.device,
    precision: str,
    setup_s: float,
    n_params: dict[str, int],
) -> dict[str, Any]:
    session_steps = result.step - result.start_step
    # training time only: evaluation and pictures are not steps
    steps_per_s = session_steps / result.session_train_s if result.session_train_s > 0 and session_steps else float("nan")
    return {
        "command": command_line(),
        "run": {
            "status": "completed",
            **choices,
            "steps": result.step,
            "start_step": result.start_step,
            "batch_size": ts.batch_size,
            "seed": ts.seed,
            "train_time_s": round(result.train_time_s, 3),
            "session_time_s": round(result.session_time_s, 3),
            "setup_time_s": round(setup_s, 3),
            "steps_per_s": steps_per_s,
            "examples_per_s": steps_per_s * ts.batch_size,
            "parameters": n_params,
        },
        "device": {"type": device.type, "name": device_name(device), "precision": precision},
        "final": result.final,
        "metrics": flat_values(result.evaluation),
        "evaluation": [r.as_dict() for r in result.evaluation],
        "evaluation_step": result.evaluation_step,
        "best": result.best,
        "logger_every": ls.every,
        "samples": str(result.sample_path) if result.sample_path else None,
        "versions": versions(),
        "config": resolved,
        "config_yaml": OmegaConf.to_yaml(OmegaConf.create(resolved)),
    }
