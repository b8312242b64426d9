"""The terminal: the progress bar (or plain lines), the loss summary of a log interval, result tables."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from gentrain.engine.progress import PhaseDisplay, PhaseView, open_phases

#: ``GENTRAIN_PROGRESS=plain`` prints plain lines even on a terminal; ``=bar`` shows the bar even in a parallel sweep
#: (where several jobs share the terminal); unset (or ``auto``): the bar on a terminal unless the jobs run in parallel.
PROGRESS_ENV = "GENTRAIN_PROGRESS"

#: The narrowest bar drawn; below it the less important fields (elapsed time, label, rate) give up their room.
MIN_BAR = 10
#: The widest bar drawn (the fields stay close to it on a wide terminal).
MAX_BAR = 60


def format_logs(values: dict[str, float], limit: int = 6) -> str:
    keys = [k for k in values if k.endswith("/loss")] + [k for k in values if "D_" in k]
    parts = [f"{k.removeprefix('train/')}={values[k]:.3g}" for k in keys[:limit]]
    return " ".join(parts)


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (hours unbounded); ``-:--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def is_parallel_launcher(target: Any) -> bool:
    """Whether a Hydra launcher (its ``_target_``) may run several jobs at once: every launcher but Hydra's BasicLauncher
    (joblib, submitit, ray, rq ...)."""
    return bool(target) and str(target).rsplit(".", 1)[-1] != "BasicLauncher"


def parallel_job(hydra_cfg: Any = None) -> int | None:
    """The job number when this process is one job of a Hydra multirun whose launcher runs jobs side by side, else None.

    ``hydra_cfg``: the ``hydra`` node (a DictConfig with ``mode``, ``launcher._target_``, ``job.num``); by default
    ``HydraConfig.get()`` when Hydra has set it up (not in a plain Python call of the trainer)."""
    from omegaconf import OmegaConf

    if hydra_cfg is None:
        try:
            from hydra.core.hydra_config import HydraConfig
        except ImportError:  # pragma: no cover - hydra is a dependency
            return None
        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    mode = OmegaConf.select(hydra_cfg, "mode", default=None)
    if getattr(mode, "name", str(mode).rsplit(".", 1)[-1]) != "MULTIRUN":
        return None
    if not is_parallel_launcher(OmegaConf.select(hydra_cfg, "launcher._target_", default=None)):
        return None
    num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    return int(num) if num is not None else 0


class JobLines:
    """A text stream that starts every line written to it with ``head`` (``"[job 3] "``): the console of a job of a
    parallel sweep, so its start line, step lines, tables and paths all say which job wrote them."""

    def __init__(self, stream: Any, head: str) -> None:
        self.stream, self.head, self._line_start = stream, head, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start:
                out.append(self.head)
            out.append(piece)
            self._line_start = piece.endswith(("\n", "\r"))
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


class _HeadedFormatter(logging.Formatter):
    """``inner``'s lines, each after ``head``."""

    def __init__(self, inner: logging.Formatter | None, head: str) -> None:
        super().__init__()
        self.inner, self.head = inner or logging.Formatter(), head

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.head + line for line in self.inner.format(record).split("\n"))


def cli_console(job: Any = None, stream: Any = None) -> Console:
    """The console of a command-line run (``job``: the parallel job number, detected by default). Off a terminal (a
    file, a pipe, CI) text is never hard-wrapped at the console's width, so ``grep 'eval at step'`` finds whole lines
    with every metric and paths stay whole; in a parallel sweep every line starts with ``[job N]``: the console's and
    those of the log handlers that print to the terminal (Hydra's job logging)."""
    job = parallel_job() if job is None else job
    stream = stream if stream is not None else sys.stdout
    if job is not None:
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.formatter, _HeadedFormatter):
                handler.setFormatter(_HeadedFormatter(handler.formatter, f"[job {job}] "))
    console = Console(file=JobLines(stream, f"[job {job}] ") if job is not None else stream)
    if not console.is_terminal:
        console.soft_wrap = True  # print()'s default: lines as long as they are (tables still fit the width)
    return console


def progress_style(is_terminal: bool, enabled: bool, parallel: bool, env: str | None = None) -> str:
    """``"bar"`` (a live bar) or ``"plain"`` (one line per log interval).

    The bar needs a terminal and ``enabled`` (logger.progress, rank 0); in a parallel sweep the jobs' bars would
    overwrite each other, so plain lines there unless ``GENTRAIN_PROGRESS=bar``; ``GENTRAIN_PROGRESS=plain`` always plain."""
    if not (enabled and is_terminal):
        return "plain"
    choice = (env or "").strip().lower()
    if choice in ("plain", "bar"):
        return choice
    return "plain" if parallel else "bar"


_DETECT: Any = object()


def _clock() -> float:
    """Seconds for rates, elapsed time and ETA (tests replace it)."""
    return time.perf_counter()


class _View:
    """What the live display draws, fitted to the width it is given: line 1 the bar, ``step/total``, steps/s, elapsed
    and ETA (the bar shrinks, then elapsed, label and rate drop out, so step and ETA stay whole); line 2 the losses,
    cut with an ellipsis, never wrapped."""

    def __init__(self, progress: ConsoleProgress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        p = self.progress
        width = options.max_width
        now = _clock()
        digits = len(str(p.total))
        counts = f"{p.step:>{digits}}/{p.total}"
        rate = p.rate if p.rate is not None else p.measured_rate()
        rate_text = f"{rate:.1f} steps/s" if rate is not None and math.isfinite(rate) else "- steps/s"
        eta = p.eta()
        eta_text = "eta " + ("0:00:00" if p.step >= p.total else format_duration(eta))
        fields = {"label": "train", "counts": counts, "rate": rate_text.rjust(12), "elapsed": format_duration(now - p.started), "eta": eta_text}
        for drop in ("elapsed", "label", "rate", None):
            stats = "  ".join(fields[f] for f in ("counts", "rate", "elapsed", "eta") if f in fields)
            label = len(fields["label"]) + 1 if "label" in fields else 0
            bar = width - label - 2 - len(stats)
            if bar >= MIN_BAR or drop is None:
                break
            del fields[drop]
        line = Table.grid(padding=(0, 1))
        cells: list[Any] = [Text(fields["label"], style="bold")] if "label" in fields else []
        cells += [ProgressBar(total=max(p.total, 1), completed=min(p.step, p.total), width=max(min(bar, MAX_BAR), 1)), Text(" " + stats)]
        for _ in cells:
            line.add_column(no_wrap=True)
        line.add_row(*cells)
        yield line
        if p.losses:
            yield Text("  " + p.losses, no_wrap=True, overflow="ellipsis")
        if open_phases():  # pictures, evaluation: what the step waits for, below the bar
            yield PhaseView()


class ConsoleProgress:
    """A live progress display on a terminal (bar, ``step/total``, steps/s, ETA; the losses on a line below it), one
    plain line per log interval elsewhere: not a terminal (CI, files), ``logger.progress=false``, or a job of a sweep
    whose launcher runs jobs in parallel (its lines start with ``[job N]``). ``GENTRAIN_PROGRESS=plain|bar`` overrides."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool, job: Any = _DETECT) -> None:
        self.console = console
        self.total = total
        self.step = start
        self.job = parallel_job() if job is _DETECT else job
        #: "[job N] " before each line, unless the console's stream already adds it (cli_console in a parallel job)
        self.head = f"[job {self.job}] " if self.job is not None and not isinstance(console.file, JobLines) else ""
        self.style = progress_style(console.is_terminal, enabled, self.job is not None, os.environ.get(PROGRESS_ENV))
        self.live = self.style == "bar"
        self.rate: float | None = None  # training steps/s of the last log interval
        self.losses = ""
        self.started = _clock()
        self._first: tuple[float, int] | None = None  # (time, step) of the first step of this session: the ETA's origin
        self._last: tuple[float, int] | None = None
        self._display: Live | None = None
        if self.live:
            self._display = Live(console=console, refresh_per_second=4, transient=False, get_renderable=lambda: _View(self))
            self._display.start()
        #: the phases (sampling, features ...) of this console: drawn under the bar, or plain lines as the steps' (the trainer installs it)
        self.phases = PhaseDisplay(console, self.style, self.head, hosted=self.live)

    def measured_rate(self) -> float | None:
        """Steps per wall-clock second since this session's first step (sample pictures and evaluation included)."""
        if self._first is None or self._last is None or self._last[1] <= self._first[1] or self._last[0] <= self._first[0]:
            return None
        return (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])

    def eta(self) -> float | None:
        rate = self.measured_rate()
        if rate is None or rate <= 0:
            return None
        return max(self.total - self.step, 0) / rate

    def advance(self, step: int) -> None:
        now = _clock()
        if self._first is None:
            self._first = (now, step)
        self._last = (now, step)
        self.step = step

    def logged(self, step: int, values: dict[str, float], steps_per_s: float) -> None:
        self.step = max(self.step, step)
        text = format_logs(values)
        self.rate, self.losses = steps_per_s, text
        if self._display is None:
            head = self.head
            eta = "0:00:00" if step >= self.total else format_duration(self.eta())
            line = f"{head}step {step}/{self.total}  {steps_per_s:.1f} steps/s  eta {eta}  {text}"
            # whole, uncut, unwrapped lines (log files, grep); no markup: "[job 3]" is text
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None


def summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table
