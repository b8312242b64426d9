"""The installed ``gentrain`` console script in its own process: a run with everything it writes, a refused resume, signals,
two processes at once (the one-line refusals and sweeps through the same main(), in-process: tests/integration/test_cli_main.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")
pytestmark = pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")

TINY_RUN = ["debug=tiny", "logger.samples_every=2"]


def gentrain(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENTRAIN_DATA": str(cwd / "data"), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([GENTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.strip() == lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_run_writes_every_output_a_refused_resume_changes_none_and_sample_and_summarize_read_it(tmp_path):
    result = gentrain(["model=gan_mlp", "dataset=moons", "trainer.max_steps=2", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    for name in (".hydra/config.yaml", "checkpoints/last.pt", "samples/step_000002.png", "metrics.jsonl", "report.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    # a resume that would change the run: one line, exit 2, not a byte of the run touched (every key: tests/integration)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert_one_line_error(gentrain(["model=dcgan", f"trainer.resume={run_dir}"], tmp_path), "changes the run being resumed", "model=gan_mlp")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before
    result = gentrain(["task=sample", f"ckpt={run_dir}", "n=20", "device=cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((run_dir / "checkpoints").glob("last_step2_n20_seed0.*"))) == 2
    result = gentrain(["task=summarize", f"dir={tmp_path / 'outputs'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # sample and summarize made no run directory


# ------------------------------------------------------------------------- stopping and continuing

LONG_RUN = ["model=gan_mlp", "dataset=moons", "trainer.max_steps=1000000", "trainer.ckpt_every=0", *TINY_RUN]


def start(args: list[str], cwd: Path, ignore_sigint: bool = False) -> subprocess.Popen:
    env = {**os.environ, "GENTRAIN_DATA": str(cwd / "data"), "COLUMNS": "200"}
    # a shell starting `gentrain ... &` ignores SIGINT in the child; preexec_fn does the same
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([GENTRAIN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def wait_for_training(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.1)


@pytest.mark.parametrize("signum,ignore_sigint", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "sigint-in-background"])
def test_a_signal_stops_a_run_with_a_checkpoint_and_the_printed_command_continues_it(tmp_path, signum, ignore_sigint):
    run_dir = tmp_path / "run"
    proc = start([*LONG_RUN, f"hydra.run.dir={run_dir}"], tmp_path, ignore_sigint)
    wait_for_training(run_dir, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"stopped by {signal.Signals(signum).name}" in line
    command = line.split("continue with: ")[1].split()
    step = json.loads(run_dir.joinpath("report.json").read_text())["run"]["steps"] if run_dir.joinpath("report.json").exists() else None
    assert step is None  # stopped, not completed
    from gentrain.engine.checkpoint import load_checkpoint

    stopped_at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    if signum != signal.SIGTERM:
        return  # the printed command continues a stopped run alike for either signal: SIGTERM's case runs it
    # the printed command, as given, plus a new length: no original override repeated
    result = gentrain([*command[1:], f"trainer.max_steps={stopped_at + 4}"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["run"]["model"], report["run"]["start_step"], report["run"]["steps"]) == ("gan_mlp", stopped_at, stopped_at + 4)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)


def test_two_runs_started_in_the_same_second_get_a_directory_each(tmp_path):
    args = ["model=gan_mlp", "dataset=moons", "trainer.max_steps=3", *TINY_RUN, f"hydra.run.dir={tmp_path / 'run'}"]
    procs = [start(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert sum("this run writes to" in o[0] for o in outs) == 1
    for run_dir in (tmp_path / "run", tmp_path / "run_1"):
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [2, 3]
