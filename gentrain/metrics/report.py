"""``report.json`` (machine-readable) and ``report.md`` (readable on its own) at the end of a run."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import omegaconf
    import torch
    import torchvision

    from gentrain import __version__

    return {
        "gentrain": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_reports(run_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    write_json(json_path, report)
    tmp = md_path.with_name(md_path.name + ".tmp")
    tmp.write_text(render_markdown(report, run_dir))
    os.replace(tmp, md_path)
    return json_path, md_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(report: dict[str, Any], run_dir: Path) -> str:
    run = report["run"]
    lines = [
        f"# gentrain report: {run['model']} on {run['dataset']} ({run['objective']})",
        "",
        f"Run directory: `{run_dir}`  ",
        f"Command: `{report['command']}`",
        "",
        "## Run",
        "",
        "| quantity | value |",
        "| --- | --- |",
    ]
    for key in ("status", "steps", "start_step", "batch_size", "train_time_s", "steps_per_s", "examples_per_s", "seed"):
        if key in run:
            lines.append(f"| {key} | {_fmt(run[key])} |")
    dev = report["device"]
    lines.append(f"| device | {dev['type']} ({dev['name']}), precision {dev['precision']} |")
    lines += ["", "## Final training metrics", "", f"Means over the last logging interval (up to {report['logger_every']} steps).", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    for k, v in report["final"].items():
        lines.append(f"| `{k}` | {_fmt(v)} |")
    lines += ["", "## Evaluation", ""]
    if report["metrics"]:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["metrics"].items()]
    else:
        lines.append("No evaluation metrics were configured for this run (`eval.metrics` is empty).")
    if report.get("samples"):
        rel = os.path.relpath(report["samples"], run_dir)
        lines += ["", "## Samples", "", f"At fixed noise, step {run['steps']}:", "", f"![samples]({rel})"]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    lines += ["## Config", "", "```yaml", report["config_yaml"].rstrip(), "```", ""]
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["gentrain", *sys.argv[1:]])
