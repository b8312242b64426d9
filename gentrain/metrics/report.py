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
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from gentrain import __version__

    try:  # read from its metadata where it was not imported: importing torchvision costs about a second
        vision = sys.modules["torchvision"].__version__ if "torchvision" in sys.modules else version("torchvision")
    except PackageNotFoundError:
        vision = "not installed"

    return {
        "gentrain": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": vision,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_reports(run_dir: Path, report: dict[str, Any], curves: bool = True) -> tuple[Path, Path]:
    """report.json and report.md; with ``curves`` also curves.png (matplotlib: about 2 s, so ``logger.curves=false`` skips it)."""
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    curves = render_curves(run_dir / "metrics.jsonl", run_dir / "curves.png") if curves else None
    report["curves"] = str(curves) if curves else None
    write_json(json_path, report)
    write_text(md_path, render_markdown(report, run_dir))
    return json_path, md_path


def format_value(v: Any) -> str:
    """Floats to 4 significant digits (nan stays nan), anything else as text."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _determinism(device: dict[str, Any]) -> str:
    """What the report says about ``trainer.deterministic`` (reports written before it existed say nothing)."""
    if "deterministic" not in device:
        return ""
    if device["deterministic"]:
        return ("; deterministic kernels on (trainer.deterministic=true: torch.use_deterministic_algorithms, cuDNN deterministic "
                "without autotuning, CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set)")
    autotuned = " and cuDNN autotuning" if device["type"] == "cuda" else ""
    return f"; deterministic kernels off (trainer.deterministic=false: default kernels{autotuned})"


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
    for key in ("status", "steps", "start_step", "batch_size", "world_size", "global_batch_size", "batches_per_step", "train_time_s", "steps_per_s", "examples_per_s", "seed"):
        if key in run:
            lines.append(f"| {key} | {format_value(run[key])} |")
    if run.get("resumed_with_changes"):
        lines.append(f"| resumed with | {', '.join(run['resumed_with_changes'])} |")
    dev = report["device"]
    lines.append(f"| device | {dev['type']} ({dev['name']}), precision {dev['precision']}{_determinism(dev)} |")
    lines += ["", "## Final training metrics", "", f"Means over the last logging interval (up to {report['logger_every']} steps); the gradient norms are those of its last step.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    for k, v in report["final"].items():
        lines.append(f"| `{k}` | {format_value(v)} |")
    lines += ["", "## Evaluation", ""]
    if report["evaluation"]:
        lines += [
            f"At step {report['evaluation_step']}. Each number names the split it compares with: keys ending in `_val` are the "
            "validation split, on which in-training evaluation and `best.pt` select; the others are the final report "
            "(`fid10k`: 10k samples against the first 10k test images).",
            "",
        ]
        lines += evaluation_markdown(report["evaluation"])
        if report.get("best"):
            b = report["best"]
            lines += ["", f"`checkpoints/best.pt`: {b['key']} = {format_value(b['value'])} at step {b['step']} (chosen on the {b.get('split', 'val')} split)."]
    else:
        lines.append("No evaluation metrics were configured for this run (`eval.metrics` is empty; `eval=standard` turns them on).")
    if report.get("curves"):
        lines += ["", "## Training curves", "", f"![curves]({os.path.relpath(report['curves'], run_dir)})"]
    if report.get("samples"):
        rel = os.path.relpath(report["samples"], run_dir)
        drawn = f", drawn with {report['samples_sampler']}" if report.get("samples_sampler") else ""
        lines += ["", "## Samples", "", f"At fixed noise, step {run['steps']}{drawn}:", "", f"![samples]({rel})"]
        sound = Path(report["samples"]).with_suffix(".wav")
        if sound.is_file():  # 1-D data: the same samples as sound
            lines += ["", f"Listen: [{sound.name}]({os.path.relpath(sound, run_dir)})"]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    lines += ["## Config", "", "```yaml", report["config_yaml"].rstrip(), "```", ""]
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["gentrain", *sys.argv[1:]])


EVALUATION_COLUMNS = ("metric", "value", "generated", "reference", "notes")


def evaluation_rows(evaluation: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """One row per number (n/a for an unavailable metric), with its sample counts, reference split, and the
    protocol's caveats on its first row."""
    rows = []
    for r in evaluation:
        ref = f"{r['n_reference']} ({r['reference_split']})" if r["n_reference"] is not None else "-"
        generated = "-" if r["n_generated"] is None else str(r["n_generated"])
        values = r["values"] if r["available"] and r["values"] else {r["name"]: "n/a"}
        for i, (key, value) in enumerate(values.items()):
            rows.append((key, format_value(value), generated, ref, "; ".join(r["notes"]) if i == 0 else ""))
    return rows


def evaluation_markdown(evaluation: list[dict[str, Any]]) -> list[str]:
    """A markdown table: every number with its sample counts, reference split and caveats."""
    lines = ["| " + " | ".join(EVALUATION_COLUMNS) + " |", "| " + " | ".join("---" for _ in EVALUATION_COLUMNS) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in evaluation_rows(evaluation)]


def evaluation_table(evaluation: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="evaluation", header_style="bold")
    for col in EVALUATION_COLUMNS:
        table.add_column(col, justify="right" if col in ("value", "generated") else "left")
    for row in evaluation_rows(evaluation):
        table.add_row(*row)
    return table


def render_curves(jsonl: Path, out: Path) -> Path | None:
    """Loss curves (one panel per phase), D outputs and evaluation metrics from ``metrics.jsonl``, as a PNG."""
    if not jsonl.is_file():
        return None
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in train for k in r if k.startswith("train/") and k.count("/") == 2 and not k.startswith("train/lr/")})
    panels: dict[str, list[str]] = {}
    for k in keys:
        if k.endswith("grad_norm"):
            continue
        name = k.rsplit("/", 1)[-1]
        group = "D outputs" if name in ("D_real", "D_fake") else "critic outputs" if name in ("critic_real", "critic_fake") else "losses"
        panels.setdefault(group, []).append(k)
    eval_keys = sorted({k for r in evals for k in r if k not in ("kind", "step", "splits", "eval_time_s", "results") and not k.endswith("_std")})
    for key in eval_keys:  # one panel per protocol: FID and KID live on different scales
        panels.setdefault(f"eval: {key.split('_')[0]}", []).append(key)
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, names) in zip(axes.flat, panels.items()):
        source = evals if title.startswith("eval") else train
        for name in names:
            points = [(r["step"], r[name]) for r in source if name in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name.removeprefix("train/"), marker="o" if title.startswith("eval") else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
