"""Where a run's numbers go: TensorBoard, ``metrics.jsonl`` and the terminal (rich)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class TensorBoardLogger:
    """Scalars ``train/<phase>/<name>``, images, the config as text, and hparams with the final metrics."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        # purge_step: on resume, TensorBoard drops events a crashed run wrote past the checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Written into this run's own event file (not a sub-run), so the HPARAMS tab pairs them with the run."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        metrics = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        exp, ssi, sei = hparams(clean, metrics)
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class JsonlWriter:
    """One JSON object per line, appended and flushed at once (a crash keeps every finished line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


def format_logs(values: dict[str, float], limit: int = 6) -> str:
    keys = [k for k in values if k.endswith("/loss")] + [k for k in values if "D_" in k]
    parts = [f"{k.removeprefix('train/')}={values[k]:.3g}" for k in keys[:limit]]
    return " ".join(parts)


class ConsoleProgress:
    """A rich progress bar with ETA and live losses on a terminal; one plain line per log interval elsewhere (CI, files)."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool) -> None:
        self.console = console
        self.live = enabled and console.is_terminal
        self.total = total
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, rate="", losses="")
            self.progress.start()
        self.started = time.perf_counter()

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def logged(self, step: int, values: dict[str, float], steps_per_s: float) -> None:
        text = format_logs(values)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, rate=f"{steps_per_s:.1f} steps/s", losses=text)
        else:
            self.console.print(f"step {step}/{self.total}  {steps_per_s:.1f} steps/s  {text}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table
