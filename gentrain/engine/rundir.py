"""A run owns its directory: one live process per run directory, and nothing written before it owns it.

Hydra names the directory (``outputs/<date>/<time>``); two runs started within the same second
get the same name. :meth:`RunDirectory.claim` takes an exclusive lock on ``<dir>/.gentrain.lock``
(``fcntl.flock``: the kernel drops it when the process dies, even by SIGKILL, so a crashed run
never leaves a stale lock) and writes the owner's pid into it for messages. A new run that finds
the directory locked by a live run, or holding another run's outputs, moves to the first free
``<dir>_1``, ``<dir>_2`` ... and says so in one line; a resume in place refuses a directory that a
live run holds. A directory whose run was killed before its first checkpoint holds nothing to
resume: a new run takes it over (the dead run's partial logs and temporaries go, its
``gentrain.log`` stays and the new run's follows), also saying so in one line. Temporary files of a
checkpoint write whose process is dead are removed from every directory a new run looks at.

Once the directory is owned, :meth:`RunDirectory.open` writes what Hydra would have written
before the task ran (``.hydra/config.yaml``, ``overrides.yaml``, ``hydra.yaml``; gentrain sets
``hydra.output_subdir=null`` so that a refused or moved run never overwrites another run's
files), starts ``gentrain.log``, removes temporary files of a checkpoint write that a killed
session left, and on an in-place resume drops the ``metrics.jsonl`` lines the crashed session
logged after its last checkpoint (TensorBoard purges its own).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from gentrain.errors import GentrainError
from gentrain.shared import describe_os_error

try:  # POSIX; elsewhere the lock falls back to an exclusively created file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".gentrain.lock"
LOG_NAME = "gentrain.log"
#: What a directory holds once a run has written to it; a new run never writes into such a directory.
RUN_FILES = ("checkpoints", "metrics.jsonl", "metrics.csv", "mlruns", "wandb", "report.json", ".hydra")
#: The logger of a run's events (start, log intervals, evaluations, checkpoints, stops): written to gentrain.log.
RUN_LOG = logging.getLogger("gentrain.run")
RUN_LOG.propagate = False  # the terminal shows these through rich already
RUN_LOG.addHandler(logging.NullHandler())  # until a run directory opens: never logging's stderr fallback (ranks > 0 open none)


def writable_error(path: Path) -> str | None:
    """Why nothing can be created at ``path`` (its nearest existing ancestor is read-only or not writable), or None."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if hasattr(os, "statvfs") and os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"{probe} is on a read-only file system"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


class RunDirectory:
    """The run directory this process owns (see the module docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._log_handler: logging.Handler | None = None

    # ---- claiming --------------------------------------------------------------------------
    @classmethod
    def claim(cls, requested: Path, resume_in_place: bool) -> tuple["RunDirectory", str | None]:
        """Own ``requested`` (or, for a new run, the first free ``requested_<n>``). Returns the directory and a
        one-line note when the run moved."""
        requested = Path(requested)
        try:
            if resume_in_place:
                fd, owner = _try_lock(requested)
                if fd is None:
                    raise GentrainError(
                        f"{requested} is in use by a running gentrain process ({_who(owner)}); stop it first (Ctrl-C or kill), then resume"
                    )
                return cls(requested, fd), None
            candidate, n, reason = requested, 0, None
            while True:
                fd, owner = _try_lock(candidate)
                if fd is not None:  # no live run holds it: what a killed one left can go
                    _remove_dead_temporaries(candidate)
                    if n == 0 and _holds_a_run(candidate) and _killed_before_a_checkpoint(candidate):
                        _clear_remains(candidate)
                        reason = "held only the remains of a run killed before its first checkpoint (nothing to resume)"
                        return cls(candidate, fd), f"{requested} {reason}; this run starts over there (the old log stays in {LOG_NAME})"
                if fd is not None and not _holds_a_run(candidate):
                    break
                if fd is None:
                    reason = reason or f"is in use by another gentrain run ({_who(owner)})"
                else:  # a finished or crashed run's directory: never mix two runs' files
                    _unlock(candidate, fd)
                    reason = reason or "holds another run's outputs"
                n += 1
                candidate = requested.with_name(f"{requested.name}_{n}")
        except OSError as e:
            raise GentrainError(
                f"cannot create the run directory {requested} ({describe_os_error(e)}); point hydra.run.dir at a writable folder"
            ) from None
        note = None if candidate == requested else f"{requested} {reason}; this run writes to {candidate}"
        return cls(candidate, fd), note

    # ---- what a run writes first -------------------------------------------------------------
    def open(self, config: dict[str, Any], overrides: list[str] | None, hydra_config: Any, resume_step: int | None, pending: list[str]) -> None:
        """Write ``.hydra/``, start ``gentrain.log``, remove stale temporaries, and on an in-place resume trim ``metrics.jsonl``.

        ``overrides`` None keeps an existing ``overrides.yaml`` (an in-place resume: the run's own overrides).
        """
        hydra_dir = self.path / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml(hydra_dir / "config.yaml", config)
        if overrides is not None or not (hydra_dir / "overrides.yaml").is_file():
            _write_yaml(hydra_dir / "overrides.yaml", list(overrides or []))
        if hydra_config is not None:
            _write_yaml(hydra_dir / "hydra.yaml", hydra_config)
        self._start_log()
        patterns = ("checkpoints/.*.tmp-*", "*.tmp", "samples/.*.tmp", ".hydra/*.tmp")  # atomic writes' temporaries
        for stale in [p for pattern in patterns for p in self.path.glob(pattern)]:
            RUN_LOG.info("removing %s, left by a session that was killed while writing it", stale)
            stale.unlink(missing_ok=True)
        if resume_step is not None:
            dropped = trim_metrics(self.path / "metrics.jsonl", resume_step, "evaluate" in pending)
            if dropped:
                RUN_LOG.info("metrics.jsonl: dropped %d line(s) logged after step %d by the session that stopped", dropped, resume_step)

    def _start_log(self) -> None:
        handler = logging.FileHandler(self.path / LOG_NAME, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package = logging.getLogger("gentrain")
        package.setLevel(logging.INFO)
        package.addHandler(handler)
        RUN_LOG.addHandler(handler)
        self._log_handler = handler

    def release(self) -> None:
        """Stop the log and give the directory up (idempotent)."""
        if self._log_handler is not None:
            logging.getLogger("gentrain").removeHandler(self._log_handler)
            RUN_LOG.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self._fd >= 0:
            _unlock(self.path, self._fd)
            self._fd = -1


def trim_metrics(path: Path, step: int, drop_eval_at_step: bool) -> int:
    """Drop the lines of ``metrics.jsonl`` past ``step`` (and its evaluation at ``step`` when that is to be redone); returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: not a record
            dropped += 1
            continue
        s = int(record.get("step", 0))
        if s > step or (drop_eval_at_step and s == step and record.get("kind") == "eval"):
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def _holds_a_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def _is_temporary(name: str) -> bool:
    """An atomic write's temporary (``.last.pt.tmp-<pid>``, ``*.tmp``), never a finished file."""
    return ".tmp-" in name or name.endswith(".tmp")


def _killed_before_a_checkpoint(path: Path) -> bool:
    """A gentrain run started here (its log exists) and ended with no checkpoint and no report: nothing to resume or keep."""
    checkpoints = path / "checkpoints"
    written = checkpoints.is_dir() and any(not _is_temporary(p.name) for p in checkpoints.iterdir())
    return (path / LOG_NAME).is_file() and not written and not (path / "report.json").exists()


def _clear_remains(path: Path) -> None:
    """Remove what a run killed before its first checkpoint wrote (its log stays): the new run's files never mix with them."""
    for p in [*(path / name for name in RUN_FILES), path / "samples", *path.glob("events.out.tfevents.*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _remove_dead_temporaries(path: Path) -> None:
    """Remove ``checkpoints/.<name>.tmp-<pid>`` files whose writing process no longer exists."""
    for tmp in path.glob("checkpoints/.*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists and belongs to someone else
        return True
    return True


def _who(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "pid unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}"


def _try_lock(path: Path) -> tuple[int | None, dict[str, Any] | None]:
    """(fd holding the lock, None) or (None, the owner's record)."""
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover - no flock: an exclusively created file
            os.close(fd)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None, _read_owner(lock)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None, _read_owner(lock)
            try:  # the file may have been removed by its previous owner between our open and our lock: retry
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        return fd, None


def _unlock(path: Path, fd: int) -> None:
    (path / LOCK_NAME).unlink(missing_ok=True)  # before the unlock: a waiter that opened this file retries (see _try_lock)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read_owner(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None


def _write_yaml(path: Path, obj: Any) -> None:
    """YAML as Hydra writes it (OmegaConf's dump: interpolations and enums kept as text), through a rename."""
    from omegaconf import OmegaConf

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(obj)))
    os.replace(tmp, path)


__all__ = ["LOG_NAME", "RUN_LOG", "RunDirectory", "describe_os_error", "trim_metrics", "writable_error"]
