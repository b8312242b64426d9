"""The tasks of the ``gentrain`` entry point (``task=train`` ...), each ``fn(cfg)``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gentrain.build import build, build_model, build_objective, build_optimizers, choice, seed_everything
from gentrain.config import DeviceSettings, EvalSettings, LoggerSettings, TrainerSettings, typed
from gentrain.engine.checkpoint import find_checkpoint, load_checkpoint
from gentrain.engine.device import check_precision, configure_backends, device_name, resolve_device
from gentrain.engine.loader import BatchStream
from gentrain.engine.loggers import flatten, summary_table
from gentrain.engine.trainer import Trainer, TrainResult
from gentrain.errors import GentrainError
from gentrain.metrics.report import command_line, versions, write_reports

log = logging.getLogger(__name__)


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
    ds = typed(cfg.device, DeviceSettings, "device")
    es = typed(cfg.eval, EvalSettings, "eval")
    if es.metrics:
        raise GentrainError(f"eval.metrics={es.metrics} but this version of gentrain has no evaluation metrics yet; use eval.metrics=[]")
    precision = check_precision(ds.precision)
    device = resolve_device(ds.type)
    configure_backends(device, ds.tf32)
    resume = _resume_path(ts.resume, run_dir)
    seed_everything(ts.seed)

    t0 = time.perf_counter()
    dataset = build(cfg.dataset, "dataset")
    train_split = dataset.load("train")
    model = build_model(cfg).to(device)
    objective = build_objective(cfg, model)
    optimizers = build_optimizers(cfg, model, objective)
    stream = BatchStream(train_split, ts.batch_size, device, ts.seed, ds.data_on_device)
    trainer = Trainer(model, objective, optimizers, stream, device, precision, run_dir, ts, ls, resolved, console)
    if resume is not None:
        trainer.load_state_dict(load_checkpoint(resume), str(resume))
        console.print(f"resuming from {resume} at step {trainer.step}", highlight=False)
    setup_s = time.perf_counter() - t0
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in model.param_groups().items()}
    console.print(
        f"[bold]gentrain[/] model={choice(cfg, 'model')} dataset={choice(cfg, 'dataset')} objective={choice(cfg, 'objective')} "
        f"on {device} ({precision}); {stream.num_examples} training examples; parameters {n_params}; run dir {run_dir}",
        highlight=False,
    )
    if trainer.step >= ts.max_steps:
        console.print(f"checkpoint is at step {trainer.step} >= trainer.max_steps={ts.max_steps}: nothing to train", highlight=False)
    result = trainer.fit()
    report = make_report(cfg, resolved, result, ts, ls, device, precision, setup_s, n_params)
    write_reports(run_dir, report)
    if trainer.tb is not None:
        trainer.tb.hparams(hparam_view(cfg, resolved), {**result.final, "steps": result.step})
        trainer.tb.close()
    losses = {k.removeprefix("train/"): v for k, v in result.final.items() if not k.startswith(("train/lr/", "train/steps_per_s"))}
    rows = {"steps": result.step, "steps/s (this session)": report["run"]["steps_per_s"], "wall time (s)": report["run"]["session_time_s"], **losses}
    console.print(summary_table(f"gentrain: {choice(cfg, 'model')} on {choice(cfg, 'dataset')}", rows))
    console.print(f"outputs in {run_dir} (report.md, tensorboard/, checkpoints/last.pt)", highlight=False)
    return report


def hparam_view(cfg: DictConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """Group choices and the scalar settings of model, objective, trainer and dataset, flattened."""
    params: dict[str, Any] = {g: choice(cfg, g) for g in ("model", "dataset", "objective")}
    for group in ("model", "objective", "trainer", "dataset"):
        for k, v in flatten(resolved.get(group, {}), f"{group}.").items():
            if not k.endswith("_target_") and not k.endswith("_partial_") and v is not None:
                params[k] = v
    return params


def make_report(
    cfg: DictConfig,
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
    steps_per_s = session_steps / result.session_time_s if result.session_time_s > 0 and session_steps else float("nan")
    return {
        "command": command_line(),
        "run": {
            "status": "completed",
            "model": choice(cfg, "model"),
            "dataset": choice(cfg, "dataset"),
            "objective": choice(cfg, "objective"),
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
        "metrics": {},
        "logger_every": ls.every,
        "samples": str(result.sample_path) if result.sample_path else None,
        "versions": versions(),
        "config": resolved,
        "config_yaml": OmegaConf.to_yaml(OmegaConf.create(resolved)),
    }
