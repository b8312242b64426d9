"""``task=summarize dir=multirun/<date>/<time>``: one table of a sweep's runs (terminal, markdown, CSV)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from gentrain.engine.console import cli_console
from gentrain.errors import GentrainError
from gentrain.metrics.report import format_value
from gentrain.tasks.common import required

#: Final training metrics shown (when a run has them), besides every evaluation metric.
TRAIN_KEYS = ("train/D/loss", "train/G/loss", "train/D/D_real", "train/D/D_fake", "train/D/critic_real", "train/D/critic_fake", "train/main/loss")


def _run_row(run_dir: Path, root: Path) -> dict[str, Any]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {"run": str(run_dir.relative_to(root)) or ".", "overrides": " ".join(overrides or [])}
    report_file = run_dir / "report.json"
    if not report_file.is_file():
        row["status"] = "no report (running or failed)"
        return row
    report = json.loads(report_file.read_text())
    run = report["run"]
    row.update(
        status=run["status"], steps=run["steps"], wall_time_s=run["train_time_s"], steps_per_s=run["steps_per_s"],
        model=run.get("model"), dataset=run.get("dataset"), objective=run.get("objective"),
    )
    row.update({k: v for k, v in report.get("metrics", {}).items() if not k.endswith("_std")})
    row.update({k.removeprefix("train/"): report["final"][k] for k in TRAIN_KEYS if k in report.get("final", {})})
    return row


def collect(root: Path) -> list[dict[str, Any]]:
    """Every run under ``root``: directories with a ``.hydra`` folder or a ``report.json``."""
    runs = sorted({p.parent.parent for p in root.rglob(".hydra/config.yaml")} | {p.parent for p in root.rglob("report.json")})
    return [_run_row(r, root) for r in runs]


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The overrides every run shares (when there are several runs), and each run's others."""
    per_run = [o.split() for o in overrides]
    common = [o for o in per_run[0] if all(o in run for run in per_run[1:])] if len(per_run) > 1 else []
    return common, [" ".join(o for o in run if o not in common) for run in per_run]


def _cell(v: Any) -> str:
    return "" if v is None else format_value(v)


def _shown(v: Any) -> str:
    """A terminal cell: the value as text, its brackets kept (rich would take ``[modes2500]`` for markup)."""
    return escape(_cell(v))


def summarize(cfg: DictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    console = console or cli_console()
    given = str(required(cfg, "dir", "gentrain task=summarize dir=multirun/<date>/<time>")).strip()
    if not given:  # Path("") is the current directory: an empty dir= would summarise wherever the command runs
        raise GentrainError("dir= is empty; name the sweep folder, e.g. gentrain task=summarize dir=multirun/<date>/<time> (dir=. for here)")
    root = Path(given).expanduser()
    if not root.is_dir():
        raise GentrainError(f"dir={str(root)!r} is not a directory; point dir= at a sweep folder such as multirun/<date>/<time>")
    rows = collect(root)
    if not rows:
        raise GentrainError(f"no gentrain runs under {root} (no .hydra/config.yaml or report.json); point dir= at a sweep folder")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    # the CSV keeps every run's full overrides; the tables show what varies and name the rest once
    common, shown = _split_overrides([row["overrides"] for row in rows])
    shown_rows = [{**row, "overrides": varying} for row, varying in zip(rows, shown)]
    common_line = f"Overrides of every run: `{' '.join(common)}`.\n\n" if common else ""
    md = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    md += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in shown_rows]
    (root / "summary.md").write_text(f"# gentrain sweep summary: {root}\n\n{len(rows)} runs. {common_line}" + "\n".join(md) + "\n")
    # the terminal: columns with one value for every run move into the caption; a table still wider
    # than the terminal is turned on its side (one column per run) while the runs fit across
    same = {c: _cell(rows[0].get(c)) for c in columns if len(rows) > 1 and c not in ("run", "overrides") and len({_cell(r.get(c)) for r in rows}) == 1}
    caption = [f"every run: {' '.join(common)}"] if common else []
    caption += [", ".join(f"{c}={v}" for c, v in same.items())] if same else []
    fields = [c for c in columns if c not in same]
    title, caption_text = escape(f"{root} ({len(rows)} runs)"), escape("\n".join(caption)) or None
    table = Table(title=title, caption=caption_text, header_style="bold")
    for c in fields:
        table.add_column(escape(c), overflow="fold")
    for row in shown_rows:
        table.add_row(*(_shown(row.get(c)) for c in fields))
    if Measurement.get(console, console.options.update(max_width=10**4), table).maximum > console.width and len(rows) <= 8:
        table = Table(title=title, caption=caption_text, header_style="bold")
        table.add_column("run", style="bold")
        for row in shown_rows:
            table.add_column(escape(str(row["run"])), overflow="fold")
        for c in fields[1:]:
            table.add_row(escape(c), *(_shown(row.get(c)) for row in shown_rows))
    console.print(table)
    console.print(f"written: {root / 'summary.md'}, {root / 'summary.csv'}", highlight=False, markup=False)
    return rows
