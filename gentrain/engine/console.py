"""The terminal: the progress bar (or plain lines), the loss summary of a log interval, result tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


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
