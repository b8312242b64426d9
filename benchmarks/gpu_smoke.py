"""Short in-process runs of gentrain's engine for the one-call GPU campaign (``benchmarks/gpu_campaign.sh``).

    python benchmarks/gpu_smoke.py smoke --device cuda --out benchmarks/results/gpu_smoke.md
    python benchmarks/gpu_smoke.py models --device cuda --out benchmarks/results/gpu_models.md
    python benchmarks/gpu_smoke.py streaming --device cuda --out benchmarks/results/gpu_streaming.md
    python benchmarks/gpu_smoke.py ddpm_sizing --device cuda --out benchmarks/results/gpu_ddpm_sizing.md
    python benchmarks/gpu_smoke.py smoke --dry-run --out /tmp/gpu_smoke.md     # CPU, tiny sizes, seconds: the code paths only
    python benchmarks/gpu_smoke.py fake-fashion DIR                             # random IDX files in Fashion-MNIST's format
    python benchmarks/gpu_smoke.py wrap SCRIPT [ARGS ...]                       # SCRIPT with curves off when matplotlib is missing

Every run is ``gentrain.tasks.train(cfg, run_dir=<tmp>, console=<quiet>)`` in this one process (as
``benchmarks/throughput.py``'s engine side), so a stage pays Python's, torch's and Hydra's start-up once.
Runs log to ``metrics.jsonl`` only (``logger=base``), draw no pictures (``logger.samples_every=0``), no curves,
no evaluation, and checkpoint only at the end. steps/s is the rate between the first ``metrics.jsonl`` line at
or after ``--warmup`` steps (compilation and CUDA-graph capture happen before it) and the last one, from their
``time_s`` (the engine's training clock).

Stages (each writes ``--out`` (.md) and a .jsonl beside it, rewritten after every run, so a stage cut short
keeps what it measured; ``--budget-s`` starts no new run after that many seconds, and records the rest as skipped):

- **smoke**: model=dcgan objective=non_saturating on Fashion-MNIST, batch 64, for each ``device.precision``
  (fp32, bf16, fp16) and compile setting: ``trainer.compile=false``, ``true`` (per-phase torch.compile),
  ``true`` + ``trainer.compile_mode=reduce-overhead`` (CUDA graphs) and ``step`` (the whole step as one captured
  region: recorded as not available when this gentrain refuses the value). Per run: steps/s, whether the final
  losses are finite, ``torch._dynamo.utils.counters``' CUDA-graph entries (``counters["inductor"]`` keys naming
  cudagraph: skips) and graph breaks (``counters["graph_break"]``), and the host syncs of the timed steps:
  ``torch.cuda.set_sync_debug_mode("warn")`` switched on at the warm-up's end and off after the last step by a
  callback (``callbacks.syncwatch``), its warnings caught by ``warnings.catch_warnings(record=True)``, counted
  and grouped by source line. Runs go precision by precision (fp32 first), each eager, step, phase, reduce-overhead
  (should the budget run out, the fp16 rows go first); ``torch._dynamo.reset()`` before each, so no run inherits
  another's graphs or recompile limit.
- **models**: every ``configs/model/*.yaml`` for ``--steps`` (60) on Fashion-MNIST (a model that refuses it on
  ring8), default sizes and recipe: steps/s, finiteness, parameters, peak memory.
- **streaming**: DCGAN on the same images held on the device (``data_on_device=auto``), in host memory
  (``device.data_on_device=false``), and as a folder of PNGs (``dataset=image_folder``, written here from
  Fashion-MNIST) in memory (``dataset.stream=false``) and streamed through DataLoader workers
  (``dataset.stream=true``, ``dataset.workers`` 4 and 0): steps/s of each.
- **ddpm_sizing**: the DDPM U-Net (``model=ddpm``, 28x28) at ``--widths`` (model.channels 32, 64, 128) x
  ``--batches`` (64, 128) x ``--precisions``: steps/s, parameters, peak GPU memory (``torch.cuda.max_memory_allocated``).

``--dry-run``: the CPU, ``debug=tiny`` sizes (smoke, models), a few steps and images, one torch thread, and
``trainer.compile_backend=aot_eager`` (no code generation; torch ignores ``reduce-overhead`` under it): every
code path of a stage in seconds, so the GPU call does not fail on a typo.

Data: ``dataset=fashion_mnist`` with ``dataset.system_dir`` = ``--fashion-dir`` (default
``$GENTRAIN_FASHION_DIR``, which the campaign points at the carried subset), else gentrain's own search.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import shutil
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the callback below is named gpu_smoke.SyncWatch in the run config: run as a script, this module is __main__
sys.modules.setdefault("gpu_smoke", sys.modules[__name__])

import torch  # noqa: E402

from gentrain.engine.hooks import Hook  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STAGES = ("smoke", "models", "streaming", "ddpm_sizing")
PRECISIONS = ("fp32", "bf16", "fp16")
#: (label, overrides), in the table's order; ``RUN_ORDER`` is the order they run in.
COMPILE_SETTINGS = {
    "eager": ["trainer.compile=false"],
    "phase": ["trainer.compile=true"],
    "reduce-overhead": ["trainer.compile=true", "trainer.compile_mode=reduce-overhead"],
    "step": ["trainer.compile=step"],
}
RUN_ORDER = ("eager", "step", "phase", "reduce-overhead")

#: What the callback saw of the last run (the callback is built by the task, so it reports here).
WATCH: dict[str, Any] = {}


class SyncWatch(Hook):
    """``torch.cuda.set_sync_debug_mode("warn")`` from step ``start`` to the end of the run's last step (CUDA only)."""

    name = "syncwatch"

    def __init__(self, start: int = 0) -> None:
        self.start = int(start)

    def before_step(self, view: Any) -> None:
        if view.step == self.start:
            WATCH["on_at"] = view.step
            if view.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")

    def due(self, view: Any, last: bool) -> bool:
        return last

    def after_step(self, view: Any, last: bool) -> None:
        if view.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        WATCH["off_at"] = view.step


# ----------------------------------------------------------------------------- helpers


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def device_text(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{device} ({p.name}, {p.total_memory / 2**30:.0f} GiB)"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s))"


def write_idx(path: Path, array: torch.Tensor) -> None:
    """A gzipped IDX file of uint8 ``array`` (the MNIST format)."""
    import gzip

    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + array.contiguous().numpy().tobytes())


def fake_fashion(folder: Path, n_train: int = 2000, n_test: int = 1000, seed: int = 0) -> Path:
    """Random uint8 images and labels in Fashion-MNIST's format and file names (for a dry-run without the data)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g))
    return folder


def fashion_overrides(fashion_dir: str | None) -> list[str]:
    return ["dataset=fashion_mnist", *([f"dataset.system_dir={fashion_dir}"] if fashion_dir else [])]


def available(overrides: list[str]) -> str | None:
    """None when this gentrain composes and accepts ``overrides`` (its whole check, nothing built); else why not, in one line."""
    from gentrain.build import compose
    from gentrain.tasks.training import check

    try:
        check(compose(overrides))
    except Exception as e:  # noqa: BLE001 - Hydra's, OmegaConf's and gentrain's refusals alike
        return one_line(e, 200)
    return None


def run(overrides: list[str], root: Path, excluded: int, device: str, watch_syncs: bool = False) -> dict[str, Any]:
    """One in-process training run: steps/s after ``excluded`` steps, final losses, compile counters, host syncs, peak memory."""
    from rich.console import Console
    from torch._dynamo.utils import counters

    from gentrain.build import compose
    from gentrain.tasks import train

    cuda = device.startswith("cuda")
    torch._dynamo.reset()
    counters.clear()
    WATCH.clear()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ov = list(overrides)
    if watch_syncs:
        ov += ["+callbacks.syncwatch._target_=gpu_smoke.SyncWatch", f"+callbacks.syncwatch.start={excluded}"]
    run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=root))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = train(compose(ov), run_dir=run_dir, console=Console(file=io.StringIO(), width=120))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    wall = time.perf_counter() - t0
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    lines = [r for r in lines if r.get("kind") == "train"]
    shutil.rmtree(run_dir, ignore_errors=True)
    first = next((r for r in lines if r["step"] >= excluded), None)
    last = lines[-1] if lines else None
    rate = None
    if first is not None and last is not None and last["step"] > first["step"] and last["time_s"] > first["time_s"]:
        rate = (last["step"] - first["step"]) / (last["time_s"] - first["time_s"])
    losses = {k: v for k, v in (report.get("final") or {}).items() if k.endswith("/loss")}
    finite = bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses.values())
    rec: dict[str, Any] = {
        "status": "ok" if finite and rate is not None else ("non-finite loss" if not finite else "no timed span (too few logged steps)"),
        "steps_per_s": rate, "timed_steps": (last["step"] - first["step"]) if rate else None, "excluded_steps": first["step"] if first else None,
        "steps": report["run"]["steps"], "run_wall_s": round(wall, 2), "setup_s": report["run"].get("setup_time_s"),
        "finite": finite, "final_losses": losses, "parameters": report["run"].get("parameters"),
    }
    if cuda:
        rec["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    inductor = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    breaks = counters["graph_break"]
    rec |= {
        "cudagraph_counters": inductor, "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": [f"{n}x {r[:160]}" for r, n in breaks.most_common(3)],
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
    }
    if watch_syncs:
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        where = Counter(f"{_short(w.filename)}:{w.lineno}" for w in syncs)
        on, off = WATCH.get("on_at"), WATCH.get("off_at")
        rec |= {
            "sync_watch": "on" if cuda else "n/a on the CPU (CUDA only)", "sync_window": [on, off],
            "sync_warnings": len(syncs) if cuda else None,
            "sync_per_step": round(len(syncs) / (off - on), 3) if cuda and on is not None and off and off > on else None,
            "sync_sites": [f"{n}x {site}" for site, n in where.most_common(5)],
        }
    others = Counter(str(w.message).split("\n")[0][:160] for w in caught if "synchroniz" not in str(w.message).lower())
    rec["other_warnings"] = [f"{n}x {m}" for m, n in others.most_common(3)]
    return rec


def _short(path: str) -> str:
    for marker in ("site-packages/", "/gentrain/", "/benchmarks/"):
        if marker in path:
            return (marker.strip("/") + "/" if marker != "site-packages/" else "") + path.split(marker, 1)[1]
    return path


class Results:
    """The stage's records, rewritten to ``out`` (.md) and its .jsonl after every run."""

    def __init__(self, out: Path, stage: str, args: argparse.Namespace, meta: dict[str, Any], render: Callable[[list[dict[str, Any]]], list[str]]) -> None:
        self.out, self.jsonl = out, out.with_suffix(".jsonl")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage, self.args, self.render = stage, args, render
        self.records: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        from gentrain import __version__

        self.meta = {
            "kind": "meta", "stage": stage, "command": "python benchmarks/gpu_smoke.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "device": device_text(args.device), "torch": torch.__version__, "gentrain": __version__, "python": platform.python_version(),
            "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **meta,
        }

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self.write()

    def write(self, done: bool = False) -> None:
        self.meta["wall_s"] = round(time.perf_counter() - self.t0, 1)
        self.meta["complete"] = done
        with open(self.jsonl, "w") as fh:
            fh.write(json.dumps(self.meta, default=str) + "\n")
            for rec in self.records:
                fh.write(json.dumps({"kind": "run", **rec}, default=str) + "\n")
        m = self.meta
        lines = [
            f"# GPU campaign, stage {self.stage}{' (DRY RUN: CPU, tiny sizes; the numbers mean nothing)' if m['dry_run'] else ''}",
            "",
            *([] if done else ["**Partial: the stage had not finished when this was written.**", ""]),
            f"Written by `benchmarks/gpu_smoke.py`; command: `{m['command']}`.",
            "",
            f"- device: {m['device']}; torch {m['torch']}, gentrain {m['gentrain']}, Python {m['python']}; {m['date']}; wall time {m['wall_s']} s",
            *[f"- {k}: {v}" for k, v in m.items() if k in ("data", "settings", "timing", "notes")],
            "",
            *self.render(self.records),
            "",
            f"Per-run records (every counter, loss and warning): `{self.jsonl.name}`.",
        ]
        self.out.write_text("\n".join(lines) + "\n")


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def guarded(results: Results, budget: float, label: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> None:
    """Run ``fn`` unless the stage's budget is spent; record its result, or its error, under ``label``."""
    if budget and time.perf_counter() - results.t0 > budget:
        results.add({**label, "status": f"skipped: the stage's budget of {budget:.0f} s was spent"})
        return
    try:
        rec = fn()
    except Exception as e:  # noqa: BLE001 - one failed run must not cost the stage
        rec = {"status": f"error: {one_line(e)}"}
    results.add({**label, **rec})
    shown = f"{rec['steps_per_s']:.2f} steps/s" if rec.get("steps_per_s") else ""
    print(f"[{results.stage} {len(results.records)}] {' '.join(str(v) for v in label.values())}: {rec['status']} {shown}", flush=True)


def base_overrides(args: argparse.Namespace, every: int) -> list[str]:
    ov = [f"device={'cpu' if args.dry_run else args.device.split(':')[0]}", f"seed={args.seed}", "eval.metrics=[]", "logger=base", "logger.curves=false",
          "logger.samples_every=0", "logger.interpolations=false", "logger.progress=false", f"logger.every={every}", "trainer.ckpt_every=0"]
    if args.dry_run:
        ov += ["device.threads=1", "trainer.compile_backend=aot_eager"]
    return ov


# ----------------------------------------------------------------------------- stages


def stage_smoke(args: argparse.Namespace, root: Path) -> Results:
    every = args.warmup
    steps = args.steps
    common = ["model=dcgan", "objective=non_saturating", *fashion_overrides(args.fashion_dir), *base_overrides(args, every),
              f"trainer.batch_size={args.batch_size}", f"trainer.max_steps={steps}", *(["debug=tiny"] if args.dry_run else [])]
    notes = {k: available([*common, *v]) for k, v in COMPILE_SETTINGS.items()}

    def render(records: list[dict[str, Any]]) -> list[str]:
        out = ["| precision | compile | status | steps/s | finite losses | compiled graphs | graph breaks | CUDA-graph counters | syncs in timed steps (per step) "
               "| top sync sites | run wall (s) |",
               "| --- | --- | --- | ---: | --- | ---: | ---: | --- | ---: | --- | ---: |"]
        order = {(p, c): i for i, (p, c) in enumerate((p, c) for c in COMPILE_SETTINGS for p in args.precisions)}
        for r in sorted(records, key=lambda r: order.get((r["precision"], r["compile"]), 99)):
            cg = ", ".join(f"{k}={v}" for k, v in (r.get("cudagraph_counters") or {}).items()) or "-"
            syncs = "-" if r.get("sync_warnings") is None else f"{r['sync_warnings']} ({fmt(r.get('sync_per_step'), 2)})"
            out.append(f"| {r['precision']} | {r['compile']} | {r['status']} | {fmt(r.get('steps_per_s'))} | {fmt(r.get('finite'))} | "
                       f"{fmt(r.get('unique_graphs'))} | {fmt(r.get('graph_breaks'))} | {cg} | {syncs} | {'; '.join(r.get('sync_sites') or []) or '-'} | "
                       f"{fmt(r.get('run_wall_s'))} |")
        out += ["", "compile settings: " + "; ".join(f"`{k}` = `{' '.join(v)}`" for k, v in COMPILE_SETTINGS.items())]
        return out

    res = Results(args.out, "smoke", args, {
        "data": f"Fashion-MNIST ({args.fashion_dir or 'gentrain default search'})",
        "settings": f"`{' '.join(common)}`; {steps} steps, timed after {every}; runs precision by precision, each in the order {', '.join(RUN_ORDER)}",
        "notes": "; ".join(f"{k}: not available ({v})" for k, v in notes.items() if v) or "every compile setting is available",
    }, render)
    for p in args.precisions:
        for c in RUN_ORDER:
            label = {"precision": p, "compile": c}
            if notes[c]:
                res.add({**label, "status": "not available in this gentrain", "why": notes[c]})
                continue
            guarded(res, args.budget_s, label, lambda: {"overrides": [*common, f"device.precision={p}", *COMPILE_SETTINGS[c]]}
                    | run([*common, f"device.precision={p}", *COMPILE_SETTINGS[c]], root, every, args.device, watch_syncs=True))
    res.write(done=True)
    return res


def model_names() -> list[str]:
    import gentrain

    return sorted(p.stem for p in (Path(gentrain.__file__).parent / "configs" / "model").glob("*.yaml"))


def stage_models(args: argparse.Namespace, root: Path) -> Results:
    every = args.warmup
    common = [*base_overrides(args, every), f"trainer.max_steps={args.steps}", *(["debug=tiny"] if args.dry_run else [])]

    def render(records: list[dict[str, Any]]) -> list[str]:
        out = ["| model | dataset | status | steps/s | finite losses | parameters | peak memory (MB) | setup (s) |", "| --- | --- | --- | ---: | --- | --- | ---: | ---: |"]
        for r in records:
            params = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in (r.get("parameters") or {}).items()) or "-"
            out.append(f"| {r['model']} | {r.get('dataset', '-')} | {r['status']}{' (' + r['why'] + ')' if r.get('why') else ''} | {fmt(r.get('steps_per_s'))} | "
                       f"{fmt(r.get('finite'))} | {params} | {fmt(r.get('peak_memory_mb'))} | {fmt(r.get('setup_s'))} |")
        return out

    res = Results(args.out, "models", args, {"settings": f"`{' '.join(common)}`, each model's own defaults (batch, optimizer, objective); timed after {every} steps"}, render)
    for m in args.models or model_names():
        data = fashion_overrides(args.fashion_dir)
        why = available([f"model={m}", *data, *common])
        if why:
            data, first_why = ["dataset=ring8"], why
            why = available([f"model={m}", *data, *common])
            if why:
                res.add({"model": m, "dataset": "-", "status": "refused", "why": f"fashion_mnist: {first_why}; ring8: {why}"})
                continue
        ov = [f"model={m}", *data, *common]
        guarded(res, args.budget_s, {"model": m, "dataset": data[0].split("=")[1]}, lambda: {"overrides": ov} | run(ov, root, every, args.device))
    res.write(done=True)
    return res


def write_png_folder(folder: Path, n: int, fashion_dir: str | None) -> tuple[Path, str]:
    """The first ``n`` Fashion-MNIST training images as grayscale PNGs in ``folder``."""
    from PIL import Image

    from gentrain.data.images import FashionMNIST

    kw = {"system_dir": fashion_dir} if fashion_dir else {}
    x = FashionMNIST(**kw).load("train").x[:n, 0].numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder, f"{len(x)} Fashion-MNIST training images as 28x28 grayscale PNGs"


def stage_streaming(args: argparse.Namespace, root: Path) -> Results:
    every = args.warmup
    common = ["model=dcgan", "objective=non_saturating", *base_overrides(args, every), f"trainer.batch_size={args.batch_size}",
              f"trainer.max_steps={args.steps}", *(["debug=tiny"] if args.dry_run else [])]
    t = time.perf_counter()
    folder, what = write_png_folder(root / "pngs", args.images, args.fashion_dir)
    written = time.perf_counter() - t
    folder_ov = ["dataset=image_folder", f"dataset.path={folder}", "dataset.size=28", "dataset.channels=1"]
    workers = args.workers
    variants = {
        "fashion_mnist, data_on_device=auto": [*fashion_overrides(args.fashion_dir)],
        "fashion_mnist, data_on_device=false": [*fashion_overrides(args.fashion_dir), "device.data_on_device=false"],
        "image_folder, stream=false": [*folder_ov, "dataset.stream=false"],
        f"image_folder, stream=true, workers={workers}": [*folder_ov, "dataset.stream=true", f"dataset.workers={workers}"],
        "image_folder, stream=true, workers=0": [*folder_ov, "dataset.stream=true", "dataset.workers=0"],
    }

    def render(records: list[dict[str, Any]]) -> list[str]:
        out = ["| data path | status | steps/s | finite losses | setup (s) | run wall (s) |", "| --- | --- | ---: | --- | ---: | ---: |"]
        for r in records:
            out.append(f"| {r['path']} | {r['status']} | {fmt(r.get('steps_per_s'))} | {fmt(r.get('finite'))} | {fmt(r.get('setup_s'))} | {fmt(r.get('run_wall_s'))} |")
        return out

    res = Results(args.out, "streaming", args, {
        "data": f"{what} in {folder} (written in {written:.1f} s) and the Fashion-MNIST IDX files ({args.fashion_dir or 'default search'})",
        "settings": f"`{' '.join(common)}`; timed after {every} steps"}, render)
    for name, ov in variants.items():
        full = [*common, *ov]
        guarded(res, args.budget_s, {"path": name}, lambda: {"overrides": full} | run(full, root, every, args.device))
    res.write(done=True)
    return res


def stage_ddpm_sizing(args: argparse.Namespace, root: Path) -> Results:
    every = args.warmup
    common = ["model=ddpm", *fashion_overrides(args.fashion_dir), *base_overrides(args, every), f"trainer.max_steps={args.steps}",
              "trainer.warmup_steps=0"]

    def render(records: list[dict[str, Any]]) -> list[str]:
        out = ["| model.channels | batch | precision | status | steps/s | images/s | parameters (M) | peak memory (MB) | finite |",
               "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in records:
            params = sum((r.get("parameters") or {}).values()) / 1e6 if r.get("parameters") else None
            ips = r["steps_per_s"] * r["batch"] if r.get("steps_per_s") else None
            out.append(f"| {r['channels']} | {r['batch']} | {r['precision']} | {r['status']} | {fmt(r.get('steps_per_s'), 2)} | {fmt(ips, 0)} | "
                       f"{fmt(params, 2)} | {fmt(r.get('peak_memory_mb'))} | {fmt(r.get('finite'))} |")
        return out

    res = Results(args.out, "ddpm_sizing", args, {"settings": f"`{' '.join(common)}` (the recipe's EMA and clipping; no warm-up); timed after {every} steps"}, render)
    for b in args.batches:
        for w in args.widths:
            for p in args.precisions:
                ov = [*common, f"model.channels={w}", f"trainer.batch_size={b}", f"device.precision={p}"]
                guarded(res, args.budget_s, {"channels": w, "batch": b, "precision": p}, lambda: {"overrides": ov} | run(ov, root, every, args.device))
    res.write(done=True)
    return res


# ----------------------------------------------------------------------------- the command line

#: Per stage: (steps, warm-up = logger.every) on the GPU and in a dry-run.
SIZES = {"smoke": ((40, 10), (4, 2)), "models": ((60, 20), (4, 2)), "streaming": ((200, 50), (4, 2)), "ddpm_sizing": ((30, 10), (4, 2))}


def wrap(argv: list[str]) -> int:
    """Run a script as ``python SCRIPT ARGS``; when matplotlib is missing (the GPU machine), the runs' curves.png is left out."""
    import importlib.util
    import runpy

    if importlib.util.find_spec("matplotlib") is None or os.environ.get("GPU_CAMPAIGN_NO_MATPLOTLIB"):
        import gentrain.metrics.report as report

        report.render_curves = lambda *a, **k: None  # what logger.curves=false does, for a script that does not pass it
        print("gpu_smoke wrap: matplotlib is missing here: the runs' curves.png (logger.curves) is left out", flush=True)
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wrap"]:
        return wrap(argv[1:])
    if argv[:1] == ["fake-fashion"]:
        folder = fake_fashion(Path(argv[1]))
        print(f"random Fashion-MNIST-format IDX files in {folder}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, a few steps: the code paths only")
    parser.add_argument("--out", type=Path, default=None, help="results (.md; a .jsonl beside it); default benchmarks/results/gpu_<stage>.md")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default per stage: smoke 40, models 60, streaming 200, ddpm_sizing 30)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before the timed span; also logger.every (default per stage: 10, 20, 50, 10)")
    parser.add_argument("--batch-size", type=int, default=None, help="smoke and streaming (default 64; dry-run 8)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS, help="smoke: all three; ddpm_sizing: fp32 bf16")
    parser.add_argument("--models", nargs="+", default=None, help="models stage: these configs/model names (default: all)")
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="ddpm_sizing: model.channels (default 32 64 128)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="ddpm_sizing: batch sizes (default 64 128)")
    parser.add_argument("--images", type=int, default=None, help="streaming: PNGs written (default 5000; dry-run 64)")
    parser.add_argument("--workers", type=int, default=None, help="streaming: DataLoader workers of the streamed row (default 4; dry-run 1)")
    parser.add_argument("--fashion-dir", default=os.environ.get("GENTRAIN_FASHION_DIR") or None, help="dataset.system_dir (default $GENTRAIN_FASHION_DIR)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="start no run after this many seconds (0: no limit); the rest is recorded as skipped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
        torch.set_num_threads(1)
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu, or --dry-run")
    (steps, warm), (dry_steps, dry_warm) = SIZES[args.stage]
    args.steps = args.steps or (dry_steps if args.dry_run else steps)
    args.warmup = args.warmup or (dry_warm if args.dry_run else warm)
    args.batch_size = args.batch_size or (8 if args.dry_run else 64)
    args.precisions = args.precisions or (list(PRECISIONS) if args.stage == "smoke" else ["fp32", "bf16"])
    args.widths = args.widths or ([8, 16] if args.dry_run else [32, 64, 128])
    args.batches = args.batches or ([4] if args.dry_run else [64, 128])
    args.images = args.images or (64 if args.dry_run else 5000)
    args.workers = args.workers if args.workers is not None else (1 if args.dry_run else 4)
    args.out = args.out or REPO / "benchmarks" / "results" / f"gpu_{args.stage}.md"
    root = Path(tempfile.mkdtemp(prefix=f"gpu_{args.stage}_"))
    try:
        res = {"smoke": stage_smoke, "models": stage_models, "streaming": stage_streaming, "ddpm_sizing": stage_ddpm_sizing}[args.stage](args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    bad = [r for r in res.records if r["status"].startswith(("error", "non-finite", "no timed"))]
    print(f"{args.stage}: {len(res.records)} runs, {len(bad)} failed; {res.out} and {res.jsonl}; {res.meta['wall_s']} s", flush=True)
    # 0: every run ok (or not available / skipped by the budget); 3: some failed; 1: all failed
    return 0 if not bad else (1 if len(bad) == len(res.records) else 3)


if __name__ == "__main__":
    sys.exit(main())
