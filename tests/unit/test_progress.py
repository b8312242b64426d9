"""Progress of long phases (sampling, features, bounds): the plain lines off a terminal at intervals (fake clock), the
live lines on one, nesting, the training bar drawing them, nothing at all without a display; end to end, a tiny
PixelCNN's end-of-run pictures and ``task=sample`` print their progress off a terminal."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.engine import console as console_mod
from gentrain.engine import progress
from gentrain.engine.console import ConsoleProgress
from gentrain.engine.progress import PhaseDisplay, PhaseView, counted, open_phases, phase, shown, tick


@pytest.fixture(autouse=True)
def nothing_left_open():
    assert progress._display is None and not open_phases()
    yield
    assert progress._display is None and not open_phases(), "a test left a display installed or a phase open"


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    monkeypatch.setattr(console_mod, "_clock", lambda: now[0])
    monkeypatch.delenv(console_mod.PROGRESS_ENV, raising=False)
    return now


def lines(console: Console) -> list[str]:
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def render(renderable: object, width: int = 80) -> list[str]:
    term = Console(file=io.StringIO(), width=width, force_terminal=True, record=True)
    term.print(renderable)
    return [line.rstrip() for line in term.export_text().splitlines() if line.strip()]


# ---- off a terminal: plain lines at intervals ----------------------------------------------------

def test_plain_lines_come_at_most_every_interval_with_count_and_eta_and_one_at_the_end(clock):
    out = quiet_console()
    with shown(out) as display:
        assert display.style == "plain"
        with phase("sampling", 400):
            clock[0] = 5.0
            tick(40)  # 5 s in: no line yet
            clock[0] = 30.0
            tick(80)  # 120 done in 30 s: 280 left at 4/s
            clock[0] = 35.0
            tick(40)  # 5 s after the last line: none
            clock[0] = 45.0
            tick(240)
            clock[0] = 46.0
    assert lines(out) == ["sampling: 120/400 (30%), ETA 1m10s", "sampling: 400/400 (100%)", "sampling: 400/400 (100%) in 46s"]


def test_a_phase_over_within_the_interval_prints_nothing(clock):
    out = quiet_console()
    with shown(out):
        with phase("features", 10):
            clock[0] = 9.0
            tick(10)
    assert lines(out) == []


def test_nested_phases_advance_the_innermost_and_show_all_of_them(clock):
    out = quiet_console()
    with shown(out):
        with phase("sampling", 64):
            with phase("sub-pixels", 784):
                clock[0] = 12.0
                tick(120)
                assert [(p.label, p.done) for p in open_phases()] == [("sampling", 0), ("sub-pixels", 120)]
            clock[0] = 13.0
            tick(32)  # the inner phase ends silently; the outer one goes on
            with phase("sub-pixels", 784):
                clock[0] = 26.0
                tick(392)
            clock[0] = 27.0
    assert lines(out) == [
        "sampling: 0/64 (0%) > sub-pixels: 120/784 (15%), ETA 1m06s",
        "sampling: 32/64 (50%), ETA 26s > sub-pixels: 392/784 (50%), ETA 13s",
        "sampling: 32/64 (50%) in 27s",
    ]


def test_counted_items_are_one_tick_each_and_a_failure_closes_the_phase(clock):
    out = quiet_console()
    progress.PLAIN_EVERY_S, every = 0.0, progress.PLAIN_EVERY_S
    try:
        with shown(out):
            assert list(counted("steps", range(3))) == [0, 1, 2]
            with pytest.raises(RuntimeError):
                with phase("bound", 5):
                    raise RuntimeError("boom")
    finally:
        progress.PLAIN_EVERY_S = every
    assert lines(out) == ["steps: 1/3 (33%)", "steps: 2/3 (66%)", "steps: 3/3 (100%)", "steps: 3/3 (100%) in 0s"]  # no time passed: no ETA


def test_feature_extraction_counts_images(clock, monkeypatch):
    from gentrain.metrics.evaluate import PointFeatures, extract

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    out = quiet_console()
    with shown(out):
        features = extract(lambda s, k: torch.zeros(k, 2), 10, PointFeatures(), 4, "reference features")
    assert features.pool.shape == (10, 2)
    assert lines(out)[:3] == ["reference features: 4/10 (40%)", "reference features: 8/10 (80%)", "reference features: 10/10 (100%)"]


def test_a_parallel_sweep_job_prefixes_its_lines(clock):
    out = quiet_console()
    steps = ConsoleProgress(out, 10, 0, True, job=3)  # plain: the job of a parallel sweep
    previous = progress.install(steps.phases)
    try:
        with phase("features", 100):
            clock[0] = 10.0
            tick(50)
    finally:
        steps.close()
        progress.install(previous)
    assert lines(out) == ["[job 3] features: 50/100 (50%), ETA 10s", "[job 3] features: 50/100 (50%) in 10s"]


# ---- on a terminal: live lines --------------------------------------------------------------------

def test_on_a_terminal_a_transient_line_shows_label_count_elapsed_and_eta(clock):
    out = Console(file=io.StringIO(), width=80, force_terminal=True)
    with shown(out) as display:
        assert display.style == "bar"
        with phase("sampling", 400):
            assert display._live is not None  # live while the phase is open
            clock[0] = 30.0
            tick(120)
            (wide,) = render(PhaseView(), 80)
            (narrow,) = render(PhaseView(), 40)
        assert display._live is None  # and gone (transient) when it ends
    assert wide.startswith("  sampling ━") and wide.endswith("120/400 (30%)  0:00:30  eta 0:01:10") and len(wide) <= 80, wide
    assert narrow == "  sampling  120/400 (30%)  eta 0:01:10", narrow  # no room for the bar: count and ETA stay


def test_the_training_bar_draws_the_open_phases_below_it(clock):
    out = Console(file=io.StringIO(), width=80, force_terminal=True)
    steps = ConsoleProgress(out, 5, 0, True, job=None)
    assert steps.live and steps.phases.hosted  # the bar's live display draws them: no second one
    previous = progress.install(steps.phases)
    try:
        steps.advance(5)
        with phase("sampling and features", 1000), phase("sub-pixels", 784):
            clock[0] = 30.0
            tick(392)
            bar, outer, inner = render(console_mod._View(steps), 80)
    finally:
        steps.close()
        progress.install(previous)
    assert bar.startswith("train ") and "5/5" in bar
    assert outer.startswith("  sampling and features ") and "0/1000 (0%)" in outer and "eta -:--:--" in outer, outer
    assert inner.startswith("    sub-pixels ") and inner.endswith("392/784 (50%)  0:00:30  eta 0:00:30"), inner


# ---- no display: free ------------------------------------------------------------------------------

def test_without_a_display_phases_print_nothing_and_leave_nothing_open(capsys):
    tick()  # nothing open: nothing to advance
    with phase("sampling", 3):
        tick(3)
        assert open_phases()[0].done == 3
    assert list(counted("steps", "ab")) == ["a", "b"]
    assert capsys.readouterr() == ("", "")


def test_a_display_that_is_not_installed_hears_nothing(clock):
    out = quiet_console()
    PhaseDisplay(out, "plain")
    progress.PLAIN_EVERY_S, every = 0.0, progress.PLAIN_EVERY_S
    try:
        with phase("sampling", 2):
            tick(2)
    finally:
        progress.PLAIN_EVERY_S = every
    assert lines(out) == []


# ---- end to end ------------------------------------------------------------------------------------

def test_pixelcnn_end_of_run_pictures_and_task_sample_print_progress_off_a_terminal(tmp_path, monkeypatch):
    """The long phases of the issue: a PixelCNN's pictures at the last step (the bar froze at ``5/5``) and ``task=sample``."""
    from gentrain.tasks import sample, train

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line at every tick: the run takes well under the interval
    out = quiet_console()
    train(make_config(tiny_overrides("pixelcnn", "digits", "ar_nll", steps=1)), run_dir=tmp_path / "run", console=out)
    printed = lines(out)
    assert any(re.fullmatch(r"sub-pixels: \d+/64 \(\d+%\), ETA \d+s", line) for line in printed), printed
    assert any(line.startswith("sub-pixels: 64/64 (100%) in ") for line in printed)

    out = quiet_console()
    sample(make_config(["task=sample", f"ckpt={tmp_path / 'run'}", "n=12", "eval.batch_size=8", "device=cpu", f"out={tmp_path / 'out'}"]), out)
    printed = lines(out)
    assert printed[0].startswith("sampling: 0/12 (0%) > sub-pixels: 1/64 (1%)"), printed[:3]
    assert any(line.startswith("sampling: 8/12 (66%), ETA ") and "> sub-pixels: " in line for line in printed)
    assert any(line.startswith("sampling: 12/12 (100%) in ") for line in printed) and any(line.startswith("12 samples of ") for line in printed)
