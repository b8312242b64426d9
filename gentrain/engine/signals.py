"""Stopping a training run with SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes and ``timeout`` send).

A signal never cuts a step in half: the handler only notes it. The engine finishes the step it
is in (every repeat of every phase), skips the pictures and evaluation still to come at that step
(recorded as pending in the checkpoint, so a resume runs them first and the logs match an
uninterrupted run), writes the checkpoint and exits with ``128 + signal`` (130 for SIGINT, 143
for SIGTERM). A signal that arrives during pictures or an evaluation cuts that hook short, so a
grace period before SIGKILL is not spent on a long FID. Further signals while stopping print one
line and change nothing, so the checkpoint being written stays whole.

Both handlers are installed for the duration of training, also where the shell started the run
with SIGINT ignored (``nohup gentrain ... &``), so such a run stops the same way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HookAborted(Exception):
    """Raised inside pictures or an evaluation when a stop is requested there."""


class StopRequest:
    """Notes SIGINT/SIGTERM while training (a context manager; a no-op outside the main thread)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.signum: int | None = None
        self.abortable = False  # inside a hook that a stop may cut short
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.say(f"{name}: already stopping; the checkpoint is being written, the run exits when it is safe")
            return
        self.signum = signum
        self.say(f"{name}: stopping at the end of this step; a checkpoint follows")
        if self.abortable:
            self.abortable = False
            raise HookAborted


__all__ = ["HookAborted", "StopRequest"]
