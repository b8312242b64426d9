"""Fault injection: kill training runs with SIGKILL, SIGTERM and SIGINT at random moments, resume them, and check them.

    python benchmarks/fault_injection.py                          # 20 trials per (signal, moment), CPU
    python benchmarks/fault_injection.py --trials 5 --jobs 2      # a quick look
    python benchmarks/fault_injection.py --stream --loggers       # streamed image folder (workers > 0), all four loggers

One uninterrupted reference run first; then, per trial, the same run (the ``gentrain`` command, in
its own directory) is sent one signal at a chosen moment:

- ``random``: a time drawn uniformly over the reference run's wall time (startup included, so some
  land before the first checkpoint: those runs restart from nothing, as a requeued job would);
- ``ckpt-write``: while the k-th ``checkpoints/last.pt`` write is in progress (k drawn at random;
  the script polls for the write's temporary file and signals as soon as it appears).

It then continues the run with the command a user would type (``gentrain trainer.resume=<run
dir>``, no other override) until it completes, and compares it with the reference: the final
checkpoint bitwise (weights, batch-norm statistics, optimizer states, weight average, batch order,
RNG states), ``metrics.jsonl`` (duplicate or missing steps, logged values) and ``best.pt``.
A checkpoint that cannot be loaded after the signal counts as corrupt; a resume that exits
non-zero as failed. Runs use one CPU thread (``OMP_NUM_THREADS=1``) so that equal means equal.

``--stream``: the run trains a small DCGAN on an image folder the script writes (240 16x16 PNGs)
with ``dataset.stream=true dataset.workers=2`` (DataLoader workers decode while training), instead
of the in-memory toy. ``--loggers``: every run logs to ``logger=[tensorboard,csv,mlflow,wandb]``
(W&B offline, MLflow in the run directory), and each backend is read back with its own reader
(TensorBoard's EventAccumulator, ``csv``, ``MlflowClient``, ``wandb leet inspect`` over every
session's offline file) and checked for duplicate and missing (key, step) points against the
reference's ``metrics.jsonl``.

Results: a table per (signal, moment) in ``--out`` (markdown) and one JSON line per trial beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain") or "gentrain"

#: The run every trial repeats: a GAN with batch norm, a weight average, pictures and in-training
#: evaluation (modes on ring8: no Inception network needed), frequent checkpoints of ~20 MB.
RUN = [
    "model=gan_mlp", "dataset=ring8", "device=cpu", "seed=0",
    "trainer.max_steps=200", "trainer.batch_size=128", "trainer.ckpt_every=10", "trainer.ema_decay=0.99",
    "logger.every=5", "logger.samples_every=50", "logger.progress=false",
    "eval.metrics=[modes1000]", "eval.every=25",
]
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
#: --stream: the same schedule (200 steps, a checkpoint every 10) on a streamed image folder; no evaluation (no
#: metric without the Inception network fits a CPU trial), so best.pt is absent in both runs.
STREAM_RUN = [
    "model=dcgan", "dataset=image_folder", "dataset.size=16", "dataset.channels=1", "dataset.stream=true", "dataset.workers=2",
    "model.g_width=8", "model.d_width=8", "model.z_dim=8", "device=cpu", "seed=0",
    "trainer.max_steps=200", "trainer.batch_size=16", "trainer.ckpt_every=10", "trainer.ema_decay=0.99",
    "logger.every=5", "logger.samples_every=50", "logger.n_samples=16", "logger.progress=false",
]
#: --loggers: every backend at once.
ALL_LOGGERS = "logger=[tensorboard,csv,mlflow,wandb]"
BACKENDS = ("tensorboard", "csv", "mlflow", "wandb")


@dataclass
class Trial:
    signal: str
    moment: str
    index: int
    delay_s: float | None = None  # random: seconds after start
    target_write: int | None = None  # ckpt-write: which write
    hit_write: bool = False  # the signal landed while a checkpoint write was in progress
    exit_code: int | None = None
    checkpoint_after_signal: int | None = None  # its step; None: none yet
    corrupt_checkpoint: bool = False
    resumes: int = 0
    failed_resumes: int = 0
    duplicate_steps: int = 0
    missing_steps: int = 0
    logged_values_equal: bool = False
    evaluations_equal: bool = False
    best_equal: bool = False
    bitwise_equal: bool = False
    differences: list[str] = field(default_factory=list)
    backend_duplicates: dict[str, int] = field(default_factory=dict)  # --loggers: (key, step) points held twice or more
    backend_missing: dict[str, int] = field(default_factory=dict)  # --loggers: the reference's points a backend lacks
    wall_s: float = 0.0


#: Set by --code: run gentrain from another source tree (e.g. a checkout of an older commit) for a side-by-side.
CODE: Path | None = None
#: Set by --loggers: every run logs to the four backends, each checked per trial.
LOGGERS = False


def env() -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "160", "GENTRAIN_CACHE": str(ROOT / "outputs" / "fault_cache")}
    out.pop("WANDB_SERVICE", None)  # each run its own wandb service
    return out


def launch(args: list[str], log: Path) -> subprocess.Popen:
    # the other tree first on sys.path (an editable install's import hook would win over PYTHONPATH)
    other = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(CODE)!r}); sys.argv[0] = 'gentrain'; from gentrain.cli import main; main()"]
    command = other if CODE is not None else [GENTRAIN]
    with open(log, "a") as f:
        return subprocess.Popen([*command, *args], stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=ROOT, start_new_session=True)


def run_to_end(args: list[str], log: Path, timeout: float = 600) -> int:
    proc = launch(args, log)
    return proc.wait(timeout=timeout)


def load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def compare_state(a: Any, b: Any, where: str, out: list[str]) -> None:
    """Bitwise comparison of two checkpoint trees (timings excluded)."""
    if isinstance(a, dict):
        keys = set(a) | set(b) if isinstance(b, dict) else set(a)
        for k in sorted(keys, key=str):
            if k in ("train_time_s", "final", "evaluation"):  # wall-clock times, and logs checked separately
                continue
            if f"{where}.{k}".endswith("config.trainer.resume"):  # how the session was started, not the run's state
                continue
            if not isinstance(b, dict) or k not in a or k not in b:
                out.append(f"{where}.{k}: missing")
                continue
            compare_state(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            out.append(f"{where}: length")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            compare_state(x, y, f"{where}[{i}]", out)
    elif isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            out.append(where)
    elif a != b and not (isinstance(a, float) and a != a and b != b):
        out.append(where)


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def untimed(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in ("time_s", "eval_time_s", "train/steps_per_s")}


def writing(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    try:
        return any(e.name.startswith(".last.pt.tmp-") for e in os.scandir(folder))
    except FileNotFoundError:
        return False


def inject(trial: Trial, run_dir: Path, log: Path, reference_s: float, rng: random.Random) -> None:
    """Start the run, send the signal at the trial's moment, wait for the process to end."""
    proc = launch([*RUN, f"hydra.run.dir={run_dir}"], log)
    start = time.monotonic()
    if trial.moment == "random":
        trial.delay_s = round(rng.uniform(0.0, reference_s), 3)
        while time.monotonic() - start < trial.delay_s and proc.poll() is None:
            time.sleep(0.002)
    else:
        trial.target_write = rng.randint(1, 19)  # 20 checkpoint writes: steps 10, 20, ..., 200
        seen, was = 0, False
        while proc.poll() is None:
            now = writing(run_dir)
            if now and not was:
                seen += 1
                if seen == trial.target_write:
                    break
            was = now
            time.sleep(0.0005)
    trial.hit_write = writing(run_dir)
    if proc.poll() is None:
        os.kill(proc.pid, SIGNALS[trial.signal])
    trial.exit_code = proc.wait(timeout=600)
    time.sleep(1.0)  # the run's helpers (DataLoader workers, wandb's service) see their parent gone ...
    try:  # ... and whatever is left of its process group goes before the resume starts
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def resume_args(run_dir: Path, style: str) -> list[str]:
    """``stored``: the command gentrain prints (the checkpoint's config); ``full``: every original override again, in place
    (what a resume needed before the checkpoint's config was used)."""
    return [f"trainer.resume={run_dir}"] if style == "stored" else [*RUN, "trainer.resume=true", f"hydra.run.dir={run_dir}"]


def run_trial(trial: Trial, workdir: Path, reference: Path, reference_s: float, seed: int, style: str = "stored") -> Trial:
    rng = random.Random(f"{seed}-{trial.signal}-{trial.moment}-{trial.index}")
    run_dir = workdir / f"{trial.signal}_{trial.moment}_{trial.index:02d}"
    shutil.rmtree(run_dir, ignore_errors=True)
    log = workdir / f"{run_dir.name}.log"
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    inject(trial, run_dir, log, reference_s, rng)
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        ckpt = load(last)
        trial.corrupt_checkpoint = ckpt is None
        trial.checkpoint_after_signal = None if ckpt is None else int(ckpt["step"])
    # continue as a user would: the printed command when there is a checkpoint, else the run again
    for _ in range(3):
        if last.exists():
            trial.resumes += 1
            code = run_to_end(resume_args(run_dir, style), log)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            code = run_to_end([*RUN, f"hydra.run.dir={run_dir}"], log)
        if code == 0:
            break
        trial.failed_resumes += 1
    final, expected = load(last), load(reference / "checkpoints" / "last.pt")
    if final is None:
        trial.differences.append("no final checkpoint")
    else:
        compare_state(expected, final, "ckpt", trial.differences)
    trial.bitwise_equal = not trial.differences
    got, want = records(run_dir), records(reference)
    steps = [r["step"] for r in got if r["kind"] == "train"]
    want_steps = [r["step"] for r in want if r["kind"] == "train"]
    trial.duplicate_steps = len(steps) - len(set(steps))
    trial.missing_steps = len(set(want_steps) - set(steps))
    trial.logged_values_equal = [untimed(r) for r in got if r["kind"] == "train"] == [untimed(r) for r in want if r["kind"] == "train"]
    trial.evaluations_equal = [untimed(r) for r in got if r["kind"] == "eval"] == [untimed(r) for r in want if r["kind"] == "eval"]
    best, best_ref = load(run_dir / "checkpoints" / "best.pt"), load(reference / "checkpoints" / "best.pt")
    best_diff: list[str] = []
    if (best is None) != (best_ref is None):
        best_diff.append("missing")
    elif best is None:
        pass  # no evaluation in this run: no best.pt in either
    else:
        compare_state(best_ref, best, "best", best_diff)
    trial.best_equal = not best_diff
    if LOGGERS:
        want = expected_points(reference)
        for backend, points in backend_points(run_dir).items():
            counts: dict[tuple[str, int], int] = {}
            for point in points:
                counts[point] = counts.get(point, 0) + 1
            trial.backend_duplicates[backend] = sum(n - 1 for n in counts.values())
            trial.backend_missing[backend] = len(want - set(counts))
    trial.wall_s = round(time.perf_counter() - t0, 1)
    clean_logs = not any(trial.backend_duplicates.values()) and not any(trial.backend_missing.values())
    if trial.bitwise_equal and trial.logged_values_equal and trial.evaluations_equal and trial.best_equal and not trial.failed_resumes and clean_logs:
        shutil.rmtree(run_dir, ignore_errors=True)  # keep only the runs worth looking at
        log.unlink(missing_ok=True)
    return trial


def expected_points(run_dir: Path) -> set[tuple[str, int]]:
    """(key, step) of every scalar the backends get, from a run's ``metrics.jsonl`` (gentrain's own mapping)."""
    from gentrain.engine.loggers import record_scalars

    return {(k, r["step"]) for r in records(run_dir) for k in record_scalars(r)}


def backend_points(run_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """Backend -> every scalar (key, step) point it holds, duplicates kept, each read with its own library's reader."""
    import csv

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[str, int]]] = {b: [] for b in BACKENDS}
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()  # applies the purge a resumed session recorded
    out["tensorboard"] = [(t, e.step) for t in acc.Tags()["scalars"] for e in acc.Scalars(t)]
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as f:
            out["csv"] = [(r["key"], int(r["step"])) for r in csv.DictReader(f)]
    if (run_dir / "mlflow_run_id").is_file():
        client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        out["mlflow"] = [(k, m.step) for k in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, k)]
    for offline in sorted((run_dir / "wandb").glob("offline-run-*")):  # every session's file: what wandb sync uploads
        got = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)], capture_output=True, text=True, timeout=120)
        for line in got.stdout.splitlines():
            r = json.loads(line)
            if r.get("type") == "history":
                step, item = r["history"]["step"]["num"], r["history"]["item"]
                out["wandb"] += [(k, step) for k in item if not k.startswith("_") and "." not in k]
    return out


def table(trials: list[Trial]) -> list[str]:
    lines = [
        "| signal | moment | trials | signal during a ckpt write | no ckpt yet (restarted) | exit codes | corrupt ckpts | resumes | failed resumes | duplicate steps | missing steps | logged values equal | evaluations equal | best.pt equal | final ckpt bitwise equal |"
        + (" duplicate / missing points per backend |" if LOGGERS else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if LOGGERS else ""),
    ]
    groups: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.signal, t.moment), []).append(t)
    for (sig, moment), ts in groups.items():
        codes = sorted({t.exit_code for t in ts}, key=lambda c: (c is None, c))
        lines.append(
            f"| SIG{sig} | {moment} | {len(ts)} | {sum(t.hit_write for t in ts)} | {sum(t.checkpoint_after_signal is None and not t.corrupt_checkpoint for t in ts)} "
            f"| {', '.join(map(str, codes))} | {sum(t.corrupt_checkpoint for t in ts)} | {sum(t.resumes for t in ts)} | {sum(t.failed_resumes for t in ts)} "
            f"| {sum(t.duplicate_steps for t in ts)} | {sum(t.missing_steps for t in ts)} | {sum(t.logged_values_equal for t in ts)}/{len(ts)} "
            f"| {sum(t.evaluations_equal for t in ts)}/{len(ts)} | {sum(t.best_equal for t in ts)}/{len(ts)} | {sum(t.bitwise_equal for t in ts)}/{len(ts)} |"
            + (" " + ", ".join(f"{b} {sum(t.backend_duplicates.get(b, 0) for t in ts)}/{sum(t.backend_missing.get(b, 0) for t in ts)}" for b in BACKENDS) + " |" if LOGGERS else "")
        )
    return lines


def write_images(root: Path, n: int = 240) -> Path:
    """``n`` 16x16 grayscale PNGs in two labelled subfolders (seeded noise: decoding and batching are what is tested)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per (signal, moment)")
    parser.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=list(SIGNALS))
    parser.add_argument("--moments", nargs="+", default=["random", "ckpt-write"], choices=["random", "ckpt-write"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once (each run uses one CPU thread)")
    parser.add_argument("--workdir", default=str(ROOT / "outputs" / "fault_injection"))
    parser.add_argument("--out", default=None, help="default: benchmarks/results/fault_injection[_stream][_loggers].md")
    parser.add_argument("--code", default=None, help="run gentrain from this source tree instead (e.g. a git worktree of an older commit)")
    parser.add_argument("--resume", choices=["stored", "full"], default="stored", help="how to continue: the printed command, or every override again")
    parser.add_argument("--stream", action="store_true", help="a DCGAN on a streamed image folder (dataset.stream=true, 2 workers) instead of the toy")
    parser.add_argument("--loggers", action="store_true", help="log to tensorboard, csv, mlflow and wandb (offline); check each backend per trial")
    args = parser.parse_args()
    global CODE, LOGGERS, RUN
    CODE = Path(args.code).resolve() if args.code else None
    LOGGERS = args.loggers
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if args.stream:
        RUN = [*STREAM_RUN, f"dataset.path={write_images(workdir / 'images')}"]
    if LOGGERS:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the runs' MLflow file stores
        RUN = [*RUN, ALL_LOGGERS]
    t_start = time.perf_counter()
    reference = workdir / "reference"
    t0 = time.perf_counter()
    code = run_to_end([*RUN, f"hydra.run.dir={reference}"], workdir / "reference.log")
    reference_s = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"error: the reference run failed (exit {code}); see {workdir / 'reference.log'}")
    print(f"reference run: {reference_s:.1f} s", flush=True)
    trials = [Trial(s, m, i) for s in args.signals for m in args.moments for i in range(args.trials)]
    done: list[Trial] = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for t in pool.map(lambda t: run_trial(t, workdir, reference, reference_s, args.seed, args.resume), trials):
            done.append(t)
            print(
                f"SIG{t.signal:<4} {t.moment:<10} #{t.index:02d} exit {t.exit_code} ckpt {t.checkpoint_after_signal} write {t.hit_write} "
                f"bitwise {t.bitwise_equal} logs {t.logged_values_equal} evals {t.evaluations_equal} best {t.best_equal} "
                f"dup {t.duplicate_steps} missing {t.missing_steps} failed {t.failed_resumes} {t.differences[:3]}",
                flush=True,
            )
    wall = time.perf_counter() - t_start
    name = "fault_injection" + ("_stream" if args.stream else "") + ("_loggers" if args.loggers else "")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for t in done:
            f.write(json.dumps(asdict(t)) + "\n")
    from gentrain.metrics.report import versions

    text = [
        "# Fault injection: signals at random moments, then resume",
        "",
        f"Device: CPU ({platform.processor() or platform.machine()}), 1 thread per run, {args.jobs} run(s) at once; "
        f"versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.",
        f"Run (every trial): `gentrain {' '.join(RUN)}`"
        + (" (a DCGAN on 240 streamed 16x16 PNGs the script writes, 2 DataLoader workers; no evaluation, so no best.pt)." if args.stream
           else " (about 20 MB per checkpoint with Adam states and the weight average).")
        + (" Every backend is read back per trial: the last column sums its duplicate and missing (key, step) points against the reference's metrics.jsonl." if args.loggers else ""),
        f"Reference (uninterrupted) run: {reference_s:.1f} s wall time. Trials: {args.trials} per signal and moment, moments seeded with {args.seed}; "
        f"total wall time {wall / 60:.1f} min. Command: `python benchmarks/fault_injection.py --trials {args.trials} --jobs {args.jobs} --seed {args.seed}"
        + (" --stream" if args.stream else "") + (" --loggers" if args.loggers else "")
        + (f" --signals {' '.join(args.signals)}" if args.signals != list(SIGNALS) else "")
        + (f" --moments {' '.join(args.moments)}" if args.moments != ["random", "ckpt-write"] else "")
        + (f" --code {args.code} --resume {args.resume}" if args.code else "") + "`."
        + (f" Code: the source tree {args.code}; resumed with {'every original override again' if args.resume == 'full' else 'the printed command'}." if args.code else ""),
        "",
        "Each trial: start the run, send the signal (`random`: at a uniform time over the reference's wall time, startup included; "
        "`ckpt-write`: while the k-th write of `checkpoints/last.pt` is in progress, k uniform in 1..19), wait for the process, "
        "then continue with `gentrain trainer.resume=<run dir>` (no other override; a run stopped before its first checkpoint is "
        "started again) until it completes, and compare with the reference: `metrics.jsonl` steps and values (timings excluded), "
        "evaluation lines, `best.pt`, and the final `last.pt` bitwise (weights and buffers, optimizer states, weight average, batch order, RNG states).",
        "",
        *table(done),
        "",
        "Exit codes: 130 = SIGINT and 143 = SIGTERM handled at a step boundary (checkpoint written, one line), or before training "
        "started (one line, nothing written); -15 = SIGTERM while Python was still starting, before gentrain installs its handler "
        "(nothing written yet); -9 = SIGKILL; 0 = the run had finished before the signal arrived.",
        "",
    ]
    out.write_text("\n".join(text))
    print("\n".join(table(done)))
    print(f"written to {out} and {out.with_suffix('.jsonl')}")


if __name__ == "__main__":
    main()
