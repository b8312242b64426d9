"""``task=eval ckpt=PATH``: evaluate a checkpoint with the chosen metrics; write the report beside it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from gentrain.config import EvalSettings, typed
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import flat_values
from gentrain.metrics.report import evaluation_markdown, evaluation_table, versions, write_json, write_text
from gentrain.engine.device import device_name
from gentrain.sampling import sampling_state
from gentrain.tasks.common import load_trained, make_evaluator, required, setup_device


def evaluate(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    spec = required(cfg, "ckpt", "gentrain task=eval ckpt=outputs/<date>/<time>/checkpoints/last.pt")
    es = typed(cfg.eval, EvalSettings, "eval")
    if not es.metrics:
        raise GentrainError("task=eval needs metrics; e.g. eval=standard or eval.metrics=[fid10k]")
    device, _ = setup_device(cfg)
    path, ckpt, model, average, dataset = load_trained(str(spec), device, use_ema=es.use_ema)
    evaluator = make_evaluator(es, dataset, device)
    t0 = time.perf_counter()
    with sampling_state(model, average):
        results = evaluator(model, [es.split])
    elapsed = time.perf_counter() - t0
    report = {
        "checkpoint": str(path),
        "step": ckpt["step"],
        "weights": "ema" if average is not None else "trained",
        "choices": ckpt.get("choices", {}),
        "metrics": flat_values(results),
        "evaluation": [r.as_dict() for r in results],
        "eval_time_s": round(elapsed, 3),
        "reference_from_cache": evaluator.reference_from_cache,
        "device": {"type": device.type, "name": device_name(device)},
        "versions": versions(),
    }
    json_path, md_path = path.with_name(f"{path.stem}.eval.json"), path.with_name(f"{path.stem}.eval.md")
    write_json(json_path, report)
    write_text(md_path, render(report))
    console.print(evaluation_table(report["evaluation"]))
    console.print(f"report: {json_path} and {md_path.name} ({elapsed:.1f} s)", highlight=False)
    return report


def render(report: dict[str, Any]) -> str:
    choices = report["choices"]
    title = f"{choices.get('model', '?')} on {choices.get('dataset', '?')}" if choices else Path(report["checkpoint"]).name
    lines = [
        f"# gentrain evaluation: {title}",
        "",
        f"Checkpoint `{report['checkpoint']}` at step {report['step']}; {report['device']['type']} "
        f"({report['device']['name']}); {report['eval_time_s']} s.",
        "",
        *evaluation_markdown(report["evaluation"]),
        "",
    ]
    return "\n".join(lines)
