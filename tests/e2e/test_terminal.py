"""The terminal: the progress display at 80 and 60 columns, plain lines (files, parallel sweeps), ``gentrain --help``
and ``--version``, and the sweep table's brackets."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from gentrain.engine import console as console_mod
from gentrain.engine.console import ConsoleProgress, parallel_job, progress_style

GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")
needs_script = pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")

LOSSES = {
    "train/D/loss": 1.3712, "train/G/loss": 0.8123, "train/D/D_real": 0.7012, "train/D/D_fake": 0.3456,
    "train/G/D_fake": 0.4321, "train/main/loss": 2.25,
}
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# ---- the progress display ----------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(console_mod, "_clock", lambda: now[0])
    monkeypatch.delenv(console_mod.PROGRESS_ENV, raising=False)
    return now


def drive(progress: ConsoleProgress, clock: list[float]) -> None:
    """Step 1 at t=0 and step 120 at t=34 (3.5 steps/s: 280 steps left, eta 0:01:20); the interval logged 12.3 steps/s."""
    clock[0] = 0.0
    progress.advance(1)
    clock[0] = 34.0
    for step in range(2, 121):
        progress.advance(step)
    progress.logged(120, LOSSES, 12.34)
    progress.close()


def final_render(width: int, clock: list[float]) -> list[str]:
    out = Console(file=io.StringIO(), width=width, force_terminal=True, record=True, color_system="truecolor")
    clock[0] = -10.0
    progress = ConsoleProgress(out, 400, 0, True, job=None)
    assert progress.live
    drive(progress, clock)
    lines = [line.rstrip() for line in out.export_text().splitlines() if line.strip()]
    return lines[-2:]  # the last refresh: the bar's line and the losses' line


def test_progress_at_80_columns_keeps_bar_step_rate_and_eta_and_puts_losses_below(clock):
    bar, losses = final_render(80, clock)
    assert "━" in bar and "120/400" in bar and "12.3 steps/s" in bar and "eta 0:01:20" in bar, bar
    assert "train" in bar and "0:00:44" in bar  # label and elapsed time fit too
    assert len(bar) <= 80
    assert losses.startswith("  D/loss=1.37 G/loss=0.812") and "steps/s" not in losses and "eta" not in losses, losses
    assert len(losses) <= 80


def test_progress_at_60_columns_keeps_bar_step_and_eta_and_cuts_the_losses(clock):
    bar, losses = final_render(60, clock)
    assert "━" in bar and "120/400" in bar and "eta 0:01:20" in bar and len(bar) <= 60, bar
    assert losses.startswith("  D/loss=") and losses.endswith("…") and len(losses) <= 60, losses


def test_progress_before_the_first_log_shows_the_measured_rate_and_no_losses(clock):
    out = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
    progress = ConsoleProgress(out, 400, 0, True, job=None)
    progress.advance(1)
    clock[0] = 10.0
    progress.advance(41)  # 4 steps/s: eta 0:01:30
    progress.close()
    (bar,) = [line for line in out.export_text().splitlines() if line.strip()][-1:]
    assert "41/400" in bar and "4.0 steps/s" in bar and "eta 0:01:30" in bar, bar


def test_plain_lines_when_not_a_terminal(clock):
    out = Console(file=io.StringIO(), width=40)  # not a terminal; narrower than the line: it is not wrapped
    progress = ConsoleProgress(out, 400, 0, True, job=None)
    assert not progress.live
    drive(progress, clock)
    lines = out.file.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("step 120/400  12.3 steps/s  eta 0:01:20  D/loss=1.37"), lines[0]


def test_plain_lines_of_a_parallel_job_name_the_job(clock):
    out = Console(file=io.StringIO(), width=80, force_terminal=True)  # a terminal the jobs share
    progress = ConsoleProgress(out, 400, 0, True, job=3)
    assert not progress.live
    drive(progress, clock)
    assert out.file.getvalue().startswith("[job 3] step 120/400  12.3 steps/s"), out.file.getvalue()


def test_off_a_terminal_the_cli_console_never_wraps_a_line():
    """``gentrain ... > log.txt``: start lines, ``eval at step`` lines and paths were hard-wrapped at 80 columns."""
    from gentrain.engine.console import cli_console

    out = cli_console(stream=io.StringIO())
    assert not out.is_terminal and out.width <= 120
    line = "eval at step 40 (val; 1.2 s): " + ", ".join(f"metric_{i}=0.{i:04d}" for i in range(20))
    path = "outputs in /" + "/".join(["a_rather_long_folder_name"] * 8) + " (report.md, checkpoints/, samples/)"
    out.print(line, highlight=False)
    out.print(path, highlight=False)
    assert out.file.getvalue().splitlines() == [line, path]


def test_every_line_of_a_parallel_job_names_the_job(clock):
    """In a parallel sweep the start line, the step lines, the tables, the paths and the log lines Hydra's handler
    prints all start with ``[job N]`` (the step lines had it alone), once."""
    import logging

    from gentrain.engine.console import cli_console, summary_table

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        out = cli_console(job=3, stream=stream)
        out.print("gentrain model=dcgan dataset=digits", highlight=False)
        logging.getLogger("gentrain.test").warning("digits train: 1350 examples\nsecond line")
        progress = ConsoleProgress(out, 400, 0, True, job=3)  # the stream names the job: the step lines do not again
        drive(progress, clock)
        out.print(summary_table("gentrain: dcgan on digits", {"steps": 400, "D/loss": 1.37}))
        out.print("outputs in /tmp/run", highlight=False)
    finally:
        root.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) > 8 and all(line.startswith("[job 3] ") and not line.startswith("[job 3] [job") for line in lines), lines


def test_the_environment_overrides_the_choice(clock, monkeypatch):
    monkeypatch.setenv(console_mod.PROGRESS_ENV, "plain")
    out = Console(file=io.StringIO(), width=80, force_terminal=True)
    progress = ConsoleProgress(out, 10, 0, True, job=None)
    assert not progress.live
    progress.close()
    monkeypatch.setenv(console_mod.PROGRESS_ENV, "bar")
    progress = ConsoleProgress(out, 10, 0, True, job=2)
    assert progress.live
    progress.close()


@pytest.mark.parametrize(
    "is_terminal,enabled,parallel,env,style",
    [
        (True, True, False, None, "bar"),
        (False, True, False, None, "plain"),
        (True, False, False, None, "plain"),  # logger.progress=false
        (True, True, True, None, "plain"),  # a parallel sweep's jobs share the terminal
        (True, True, True, "bar", "bar"),
        (True, True, False, "plain", "plain"),
        (False, True, False, "bar", "plain"),  # no bar without a terminal
        (True, True, False, "auto", "bar"),
    ],
)
def test_progress_style(is_terminal, enabled, parallel, env, style):
    assert progress_style(is_terminal, enabled, parallel, env) == style


def hydra_node(mode, target, num=3):
    return OmegaConf.create({"mode": mode, "launcher": {"_target_": target}, "job": {"num": num}})


def test_parallel_job_decision():
    from hydra.types import RunMode

    assert parallel_job(hydra_node(RunMode.MULTIRUN, JOBLIB)) == 3
    assert parallel_job(hydra_node("MULTIRUN", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", 0)) == 0
    assert parallel_job(hydra_node(RunMode.MULTIRUN, BASIC)) is None  # one job after the other
    assert parallel_job(hydra_node(RunMode.RUN, JOBLIB)) is None
    assert parallel_job(hydra_node(None, JOBLIB)) is None


def test_parallel_job_reads_hydra_config():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from gentrain.config import compose_app_config

    def job_config(launcher: str):
        cfg = compose_app_config([f"hydra/launcher={launcher}"])
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = 2
        return cfg

    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(job_config("joblib"))
        assert parallel_job() == 2
        HydraConfig.instance().set_config(job_config("basic"))
        assert parallel_job() is None
    finally:
        HydraConfig.instance().cfg = saved


# ---- --help and --version ----------------------------------------------------------------------

def gentrain(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([GENTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def help_keys(text: str) -> dict[str, str]:
    """``  key = value  # meaning`` lines: key -> meaning ("" without one)."""
    keys = {}
    for line in text.splitlines():
        m = re.match(r"^  ([\w.]+) = (.*?)(?:  # (.*))?$", line)
        if m:
            keys[m.group(1)] = (m.group(3) or "").strip()
    return keys


def config_leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from config_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@needs_script
def test_help_explains_every_key_of_the_default_config(tmp_path):
    from gentrain.config import compose_app_config

    result = gentrain(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    keys = help_keys(result.stdout)
    plain = OmegaConf.to_container(compose_app_config([]), resolve=False)
    expected = [k for k in config_leaves(plain) if k.split(".")[0] != "hydra"]
    assert expected and all(keys.get(k) for k in expected), [k for k in expected if not keys.get(k)]
    assert keys.get("logger.interp_rows") and keys.get("logger.every")
    lines = result.stdout.splitlines()
    assert any(re.match(r"^  model:\s+dcgan\s+acgan biggan cgan", line) for line in lines)  # the groups, chosen option first
    assert "Usage:" in result.stdout and "Examples:" in result.stdout
    assert "  trainer.max_steps = 2000" in result.stdout


@needs_script
def test_help_follows_the_overrides(tmp_path):
    result = gentrain(["model=vae", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    keys = help_keys(result.stdout)
    assert keys.get("model.decoder_std") and keys.get("model.hidden") and "model.g_width" not in keys
    assert "objective.beta" in keys  # vae chooses objective=elbo
    bad = gentrain(["model=nope", "--help"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model 'nope'"), bad.stderr


@needs_script
def test_version(tmp_path):
    import gentrain as package

    result = gentrain(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"gentrain {re.escape(package.__version__)} \(torch \S+, hydra-core \S+, Python \S+\)\n", result.stdout), result.stdout


def test_help_imports_no_torch():
    code = "import sys; from gentrain.help import render; render(['model=vae']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_key_of_every_option_has_a_meaning():
    """Each option of every group (the rest default), and a list-valued group choice (all four loggers, whose keys
    all lost their meanings): no key without one (logger.interp_rows / interp_steps never had one)."""
    from gentrain.config import CONFIG_DIR, compose_app_config
    from gentrain.help import chosen_options, gather_meanings

    runs = [[f"{group}={option}"] for group in ("model", "objective", "dataset", "trainer", "eval", "device", "task", "logger")
            for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))]
    runs += [["model=ddpm", f"sampler={option}"] for option in ("ddpm", "ddim")] + [["logger=[tensorboard,csv,mlflow,wandb]"]]
    missing = []
    for overrides in runs:
        cfg = compose_app_config(overrides)
        meanings = gather_meanings(chosen_options(cfg))
        plain = OmegaConf.to_container(cfg, resolve=False)
        missing += [f"{' '.join(overrides)}: {k}" for k in config_leaves(plain) if k.split(".")[0] != "hydra" and not meanings.meaning(k)]
    assert not missing, missing


def test_yaml_comments_are_read():
    from gentrain.help import parse_comments

    text = """# @package _global_
# The header: what the file is.
defaults:
  - base   # extended
  - override /x: y
  - _self_

plain: 1          # trailing
quoted: "a # b"   # the real one
# above one
# above two
above: 2
long: auto        # first part
                  # second part
bare: 3
section:
  inner: x        # nested
  text: |-
    not: a key
  after: 4        # after the block
"""
    header, meanings, defaults = parse_comments(text)
    assert header == "The header: what the file is."
    assert defaults == ["base", "_self_"]
    assert meanings == {
        "plain": "trailing", "quoted": "the real one", "above": "above one above two", "long": "first part second part",
        "section.inner": "nested", "section.after": "after the block",
    }


# ---- task=summarize ----------------------------------------------------------------------------

def test_summary_table_keeps_brackets(tmp_path):
    from gentrain.tasks.summary import summarize

    sweep = tmp_path / "sweep[1]"
    for i, metrics in enumerate(("[modes2500]", "[fid1k]")):
        run = sweep / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text("{}\n")
        (run / ".hydra" / "overrides.yaml").write_text(f"- eval.metrics={metrics}\n- +tag=[a,b]\n")
        report = {"run": {"status": "completed", "steps": 2, "train_time_s": 0.5, "steps_per_s": 4.0}, "metrics": {}, "final": {}}
        (run / "report.json").write_text(json.dumps(report))
    for width in (300, 60):  # one row per run; one column per run
        out = Console(file=io.StringIO(), width=width, record=True)
        summarize(OmegaConf.create({"dir": str(sweep)}), out)
        text = out.export_text()
        assert "eval.metrics=[modes2500]" in text and "eval.metrics=[fid1k]" in text, text
        assert "+tag=[a,b]" in text and "sweep[1]" in text, text  # caption and title
