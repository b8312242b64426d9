"""Shared test helpers: compose configs with Hydra's compose API, as the CLI would, and train tiny runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console

from gentrain.build import compose

# one thread: these networks are tiny, and a second thread costs more in overhead than it saves
torch.set_num_threads(1)


def make_config(overrides: list[str]) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (HydraConfig set, so group choices are known)."""
    return compose(overrides)


def tiny_overrides(model: str, dataset: str, objective: str = "non_saturating", steps: int = 3, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """A ``debug=tiny`` run (each model's and dataset's own tiny sizes, no curves, no interpolations) of ``steps`` steps,
    with sample pictures every 2 steps; ``extra`` goes last."""
    return [*bare_overrides(model, dataset, objective, steps), "logger.samples_every=2", *extra]


def bare_overrides(model: str, dataset: str, objective: str | None = None, steps: int = 3, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """A ``debug=tiny`` run with nothing it was not asked for (no pictures, no curves); ``objective`` None: the model's own."""
    chosen = [] if objective is None else [f"objective={objective}"]
    return [f"model={model}", f"dataset={dataset}", *chosen, "debug=tiny", "device=cpu", f"trainer.max_steps={steps}", *extra]


def cli_in_process(args: list[str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    """``gentrain <args>`` run by :func:`gentrain.cli.main` in this process, as a shell in ``cwd`` would run it (data under
    ``cwd/data``, no HYDRA_FULL_ERROR): exit code, stdout, stderr. What main changes for the process (signal handlers,
    the environment, sys.argv, the working directory, the root logger's handlers, the stop state of gentrain.engine.signals) is put back."""
    import contextlib
    import logging
    import os
    import signal
    import subprocess
    import sys

    from gentrain.cli import main
    from gentrain.engine import signals

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # a stop an earlier in-process test recorded must not reach this main(): it would end the process (exit_now)
    stop_state = signals._first_signal, signals._ending
    signals._first_signal, signals._ending = None, False
    root = logging.getLogger()
    logged, level = list(root.handlers), root.level
    env, argv, here = dict(os.environ), sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = ["gentrain", *args]
        os.environ["GENTRAIN_DATA"] = str(Path(cwd) / "data")
        os.environ.pop("HYDRA_FULL_ERROR", None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(env)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        root.handlers[:] = logged
        root.setLevel(level)
        signals._first_signal, signals._ending = stop_state
    return subprocess.CompletedProcess(["gentrain", *args], code, out.getvalue(), err.getvalue())


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture
def train_run(tmp_path: Path):
    """``train_run(overrides, name)`` trains in ``tmp_path/name`` and returns (run_dir, report)."""
    from gentrain.tasks import train

    def run(overrides: list[str], name: str = "run") -> tuple[Path, dict]:
        run_dir = tmp_path / name
        report = train(make_config(overrides), run_dir=run_dir, console=quiet_console())
        return run_dir, report

    return run
