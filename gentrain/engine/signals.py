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

The command line owns the process: :func:`install_process_handlers` handles the signals before and
after training (the first one raises ``KeyboardInterrupt``; once a stop is under way, in training
or out of it, every further one prints one line and changes nothing), and :func:`exit_now` ends a
stopped process without the interpreter's teardown, during which Python puts the default
handlers back and a second Ctrl-C would kill the process by SIGINT (status -2, not 130).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: The first SIGINT/SIGTERM this process received (in training or out of it); None while none has come.
_first_signal: int | None = None
#: The process is ending on its own (an error it reports): signals from now on change nothing either.
_ending = False


def stop_signal() -> int | None:
    """The first stop signal this process received, or None."""
    return _first_signal


def stopping() -> bool:
    """A stop signal came, or the process is ending on an error it reports (see :func:`ending`)."""
    return _first_signal is not None or _ending


def _outside_training(signum: int, frame: FrameType | None) -> None:
    """Before or after training: the first signal unwinds (the CLI prints one line and exits 128 + signal); later ones wait."""
    global _first_signal
    name = signal.Signals(signum).name
    if _first_signal is not None or _ending:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets the signal; rank 0 speaks for the job
            print(f"{name}: already stopping; the run exits when it is safe", file=sys.stderr, flush=True)
        return
    _first_signal = signum
    raise KeyboardInterrupt(name)


def ending() -> None:
    """The process ends on its own from here (an error it is reporting): further SIGINT/SIGTERM print one line and change nothing."""
    global _ending
    _ending = True


def install_process_handlers() -> None:
    """The command line's handlers for SIGINT and SIGTERM outside training (also where the shell ignores SIGINT)."""
    for s in SIGNALS:
        signal.signal(s, _outside_training)


def exit_now(code: int) -> None:
    """End a stopped process with ``code`` while the stop handlers are still in place.

    The exit functions run (log handlers, loggers, DataLoader workers) and the standard streams are
    flushed; the interpreter's own teardown is skipped, because it first resets every handler to
    the default, so a signal during its second or so of module and tensor cleanup would kill the
    process with the signal's status and no line.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)


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
        global _first_signal
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.say(f"{name}: already stopping; the checkpoint is being written, the run exits when it is safe")
            return
        self.signum = signum
        _first_signal = _first_signal or signum  # the process is stopping: the handlers after training only print
        self.say(f"{name}: stopping at the end of this step; a checkpoint follows")
        if self.abortable:
            self.abortable = False
            raise HookAborted


__all__ = ["HookAborted", "StopRequest", "ending", "exit_now", "install_process_handlers", "stop_signal", "stopping"]
