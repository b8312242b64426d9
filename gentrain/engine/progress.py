"""Progress of long phases outside the training steps (sampling, feature extraction, reference statistics, likelihood
bounds): a count and an ETA on a terminal, a plain line at intervals elsewhere.

The code that does the work only says what it is doing and how far it got; it never knows where the display goes::

    with phase("sampling", total=steps):
        for i in range(steps):
            ...
            tick()          # one unit done (tick(n) for n); a no-op when no phase is open

Phases nest (the innermost open one is advanced; the display shows every open one, outermost first). With no display
installed (library use, tests) both are free: a list append and a counter, no clock, no print. The CLI's tasks install
a :class:`PhaseDisplay` on their console (:func:`shown`; during training the trainer installs the one of its step bar,
which draws the phases under the bar). Ticks count what the host queued, never wait for the device: no sync is added.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: Off a terminal (or ``logger.progress=false``, a parallel sweep) a line at most this often (seconds), and one when a
#: phase that printed one ends; a phase over within this time prints nothing.
PLAIN_EVERY_S = 10.0


def _clock() -> float:
    """Seconds for elapsed time and ETA (tests replace it)."""
    return time.perf_counter()


def short_duration(seconds: float) -> str:
    """``42s``, ``1m12s``, ``2h05m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Phase:
    """One open phase: ``done`` of ``total`` units of ``label`` since ``started``."""

    __slots__ = ("label", "total", "done", "started")

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.started = label, max(int(total), 0), 0, _clock()

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far (None before the first unit)."""
        elapsed = now - self.started
        if self.done <= 0 or elapsed <= 0 or not math.isfinite(elapsed):
            return None
        return max(self.total - self.done, 0) * elapsed / self.done

    def counts(self) -> str:
        """``120/400 (30%)``."""
        pct = f" ({min(100 * self.done // self.total, 100)}%)" if self.total else ""
        return f"{self.done}/{self.total}{pct}"

    def line(self, now: float) -> str:
        """``sampling: 120/400 (30%), ETA 1m12s`` (no ETA before the first unit or once done)."""
        eta = self.eta(now)
        return f"{self.label}: {self.counts()}" + (f", ETA {short_duration(eta)}" if eta is not None and self.done < self.total else "")


class Display(Protocol):
    """Where phases show: told when one opens, advances and closes (``phases``: the open ones, outermost first)."""

    def opened(self, phases: list[Phase]) -> None: ...

    def ticked(self, phases: list[Phase]) -> None: ...

    def closed(self, phases: list[Phase], phase: Phase) -> None: ...


_open: list[Phase] = []  # the open phases, innermost last
_display: Display | None = None


@contextmanager
def phase(label: str, total: int) -> Iterator[None]:
    entry = Phase(label, total)
    _open.append(entry)
    if _display is not None:
        _display.opened(_open)
    try:
        yield
    finally:
        _open.remove(entry)
        if _display is not None:
            _display.closed(_open, entry)


def tick(n: int = 1) -> None:
    if _open:
        _open[-1].done += n
        if _display is not None:
            _display.ticked(_open)


def counted(label: str, items: Iterable[T], total: int | None = None) -> Iterator[T]:
    """``items`` as the phase ``label``, one tick each (``total``: their number, by default ``len(items)``); a loop left
    early (``break``, an exception) closes the phase when it drops the iterator."""
    with phase(label, len(items) if total is None else total):  # type: ignore[arg-type]
        for item in items:
            yield item
            tick()


def open_phases() -> list[Phase]:
    """The open phases, outermost first (a copy: a live display's refresh thread reads it)."""
    return list(_open)


def install(display: Display | None) -> Display | None:
    """Make ``display`` the one phases show on (None: none); returns the one it replaces."""
    global _display
    previous, _display = _display, display
    return previous


@contextmanager
def installed(display: PhaseDisplay) -> Iterator[PhaseDisplay]:
    previous = install(display)
    try:
        yield display
    finally:
        display.close()
        install(previous)


class PhaseView:
    """The open phases as rich lines, one each (indented by depth): label, bar, ``done/total``, elapsed, ETA. Short of
    room the bar goes, then the elapsed time, then the label is cut: count and ETA stay whole; never wrapped."""

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        from gentrain.engine.console import MAX_BAR, MIN_BAR, format_duration

        now = _clock()
        width = options.max_width
        for depth, p in enumerate(open_phases()):
            eta = "eta " + ("0:00:00" if p.done >= p.total else format_duration(p.eta(now)))
            label = "  " * (depth + 1) + p.label
            stats = f"{p.counts()}  {format_duration(now - p.started)}  {eta}"
            bar = width - len(label) - len(stats) - 2
            if bar >= MIN_BAR:
                line = Table.grid(padding=(0, 1))
                for _ in range(3):
                    line.add_column(no_wrap=True)
                line.add_row(Text(label), ProgressBar(total=max(p.total, 1), completed=min(p.done, p.total), width=min(bar, MAX_BAR // 2)), Text(stats))
                yield line
                continue
            stats = f"{p.counts()}  {eta}"
            room = max(width - len(stats) - 2, 1)
            head = label if len(label) <= room else label[: max(room - 1, 0)] + "…"
            yield Text(f"{head}  {stats}", no_wrap=True, overflow="ellipsis")


class PhaseDisplay:
    """The phases on a console. ``style`` ``"bar"`` (a terminal): a transient live line per open phase, or, ``hosted``,
    none of its own (a live display already on the console draws :class:`PhaseView`: the training bar); ``"plain"``:
    one line for the open phases (``sampling: 0/64 (0%) > sub-pixels: 120/784 (15%), ETA 12s``) at most every
    :data:`PLAIN_EVERY_S` seconds, and one when the outermost ends, if a line was printed for it. ``head``: the lines'
    prefix (``[job 3] `` in a parallel sweep)."""

    def __init__(self, console: Any, style: str, head: str = "", hosted: bool = False) -> None:
        self.console, self.style, self.head, self.hosted = console, style, head, hosted
        self._live: Any = None
        self._last = 0.0  # when the last plain line was printed (or the outermost phase opened)
        self._shown = False  # a plain line was printed for the outermost open phase

    def opened(self, phases: list[Phase]) -> None:
        if len(phases) != 1:
            return
        self._last, self._shown = phases[0].started, False
        if self.style == "bar" and not self.hosted and self._live is None:
            from rich.errors import LiveError
            from rich.live import Live

            live = Live(PhaseView(), console=self.console, refresh_per_second=4, transient=True)
            try:
                live.start()
                self._live = live
            except LiveError:  # another live display holds the console: it goes without the phases
                pass

    def ticked(self, phases: list[Phase]) -> None:
        if self.style != "plain":
            return
        now = _clock()
        if now - self._last >= PLAIN_EVERY_S:
            self._last, self._shown = now, True
            self._print(" > ".join(p.line(now) for p in phases))

    def closed(self, phases: list[Phase], phase: Phase) -> None:
        if phases:
            return
        self.close()
        if self._shown:
            self._shown = False
            self._print(f"{phase.label}: {phase.counts()} in {short_duration(_clock() - phase.started)}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _print(self, line: str) -> None:
        # whole lines without markup, as the training lines ("[job 3]" is text)
        self.console.print(self.head + line, highlight=False, markup=False, soft_wrap=True)


@contextmanager
def shown(console: Any, enabled: bool = True) -> Iterator[PhaseDisplay]:
    """Inside the block phases show on ``console``: live on a terminal (``enabled``: ``logger.progress``), plain lines
    elsewhere and in a parallel sweep (``GENTRAIN_PROGRESS`` as for the training bar)."""
    from gentrain.engine.console import PROGRESS_ENV, parallel_job, progress_style

    job = parallel_job()
    style = progress_style(console.is_terminal, enabled, job is not None, os.environ.get(PROGRESS_ENV))
    with installed(PhaseDisplay(console, style, f"[job {job}] " if job is not None else "")) as display:
        yield display


__all__ = ["PLAIN_EVERY_S", "Phase", "PhaseDisplay", "PhaseView", "counted", "install", "installed", "open_phases", "phase", "shown", "tick"]
