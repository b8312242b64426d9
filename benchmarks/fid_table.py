"""Fashion-MNIST FID table: the loss-function presets and the VAE next to the published numbers.

    python benchmarks/fid_table.py --n 10000                          # full scale: each preset's own length (GPU)
    python benchmarks/fid_table.py --device cpu --threads 1 --n 500 --steps 250   # CPU scale (a smoke test)

The protocol of Lucic et al. 2018 ("Are GANs Created Equal?"): FID of ``--n`` generated samples
against the first ``--n`` test images (10,000 and 10,000 in the paper), TF-Inception pool3 features,
grayscale tiled to three channels, uint8 images; gentrain's own evaluation path
(:class:`gentrain.metrics.evaluate.Evaluator`, the code of ``task=eval`` and ``eval.metrics=[fid10k]``).

Each row trains one ``experiment=`` preset (configs/experiment/fashion_*.yaml: the published recipe,
cited there) through gentrain's own ``train()`` with in-training evaluation off, reloads the run's
``checkpoints/last.pt`` as a user would score it, and evaluates it inside
:func:`gentrain.sampling.sampling_state` (the weights and mode ``task=sample`` and ``task=eval`` use).
Nothing is selected on the test split: the final checkpoint is the one scored. Two rows that train
nothing give the numbers something to stand beside, at the same sample count: a floor (every pixel
drawn independently from its own 256-level histogram on the training split) and the real data
(the first ``--n`` training images against the test images). Reference features are cached on disk
(``eval.cache_dir``), so a second run only pays for the generated samples.

Writes a markdown table (with device, versions, seeds, steps, sample counts, wall times and the
command) to ``--out`` and one JSON line per row beside it (``.jsonl``); runs and sample grids go to
``--runs-dir`` (default outputs/fid_table/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.console import Console
from torch import Tensor, nn

import gentrain.build
from gentrain.build import build
from gentrain.data.base import Dataset
from gentrain.engine.device import device_name, resolve_device
from gentrain.metrics.evaluate import Evaluator, FeatureExtractor, ReferenceCache
from gentrain.metrics.fidelity import compute, flat_values
from gentrain.metrics.inception import InceptionFeatures, resolve_weights
from gentrain.metrics.report import versions
from gentrain.models.base import GenerativeModel
from gentrain.sampling import sample_batches, sampling_state
from gentrain.tasks.common import load_trained
from gentrain.tasks.training import train
from gentrain.visual import image_grid, save_png

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """A model row: its preset and the published Fashion-MNIST FID (10k vs 10k) with where it comes from."""

    label: str
    preset: str
    published: float | None
    source: str


#: The rows, keyed by their --models name. Published values: Lucic et al. 2018, Table 2 (the best FID of a
#: large hyperparameter search per loss, one fixed architecture for every loss); Dai & Wipf 2019, Table 1.
ROWS: dict[str, Row] = {
    "minimax": Row("minimax GAN", "fashion_minimax", 29.6, "Lucic et al. 2018, Table 2 (MM GAN)"),
    "non_saturating": Row("non-saturating GAN (DCGAN)", "fashion_dcgan", 26.5, "Lucic et al. 2018, Table 2 (NS GAN)"),
    "wgan": Row("WGAN (weight clipping)", "fashion_wgan", 21.5, "Lucic et al. 2018, Table 2 (WGAN)"),
    "wgan_gp": Row("WGAN-GP", "fashion_wgan_gp", 24.5, "Lucic et al. 2018, Table 2 (WGAN GP)"),
    "hinge_sn": Row("hinge + spectral norm (SNGAN)", "fashion_sngan", None, "none in this protocol"),
    "vae": Row("VAE (Kingma & Welling)", "fashion_vae", 43.6, "Dai & Wipf 2019, Table 1 (VAE, cross-entropy; Lucic et al. 2018: 58.7)"),
}


class PixelHistogram(GenerativeModel):
    """The floor: every pixel drawn independently from its own histogram of the 256 levels on the training split."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.shape = tuple(x.shape[1:])
        flat = x.reshape(x.shape[0], -1).long()  # [N, D] levels 0..255
        dims = flat.shape[1]
        counts = torch.bincount((flat + torch.arange(dims) * 256).flatten(), minlength=dims * 256).view(dims, 256).double()
        self.probs = nn.Parameter((counts / counts.sum(1, keepdim=True)).float(), requires_grad=False)  # [D, 256]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        levels = torch.multinomial(self.probs, n, replacement=True, generator=generator).T  # [n, D]
        return (levels.float() / 127.5 - 1.0).view(n, *self.shape)  # model space [-1, 1]; to_uint8 gives the levels back


@dataclass
class Result:
    key: str
    label: str
    preset: str | None
    seed: int | None
    steps: int | None
    values: dict[str, float]
    notes: list[str]
    train_s: float | None
    score_s: float
    steps_per_s: float | None = None
    run_dir: Path | None = None
    grid: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def protocol_names(n: int) -> tuple[str, str]:
    count = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"fid{count}", f"kid{count}"


def save_grid(model: GenerativeModel, average: Any, seed: int, batch_size: int, path: Path) -> Path:
    """The first 64 of the scored samples (same noise seed and batch size as the evaluation) as a PNG."""
    with sampling_state(model, average):
        x, _ = next(sample_batches(model, batch_size, seed, batch_size))
    save_png(image_grid(x[:64], nrow=8), path)
    return path


def train_row(key: str, seed: int, args: argparse.Namespace, evaluator: Evaluator, device: torch.device, console: Console) -> Result:
    row = ROWS[key]
    run_dir = Path(args.runs_dir) / f"{key}_seed{seed}"
    if run_dir.exists() and any(run_dir.iterdir()):
        # train() would otherwise mix a stale checkpoint and pictures into this run's outputs
        raise SystemExit(f"error: {run_dir} is not empty; remove it or pass --runs-dir <new folder>")
    preset_steps = int(gentrain.build.compose([f"experiment={row.preset}"]).trainer.max_steps)
    steps = args.steps or preset_steps
    overrides = [
        f"experiment={row.preset}",
        f"device.type={args.device}",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        "trainer.ckpt_every=0",  # only the final checkpoint: it is the one scored
        "eval.metrics=[]",  # no in-training evaluation: the table scores last.pt below, on the test split
        "eval.every=0",
        "logger.progress=false",
        "logger.tensorboard=false",
        "logger.interpolations=false",
        f"logger.every={max(1, steps // 20)}",
        f"logger.samples_every={max(1, steps // 4)}",  # a few grids show the trajectory
        *args.extra,
    ]
    cfg = gentrain.build.compose(overrides)
    report = train(cfg, run_dir=run_dir, console=console)
    t0 = time.perf_counter()
    _, _, model, average, _ = load_trained(str(run_dir), device)  # checkpoints/last.pt
    with sampling_state(model, average):
        results = evaluator(model, ["test"])
    score_s = time.perf_counter() - t0
    grid = save_grid(model, average, args.sample_seed, args.eval_batch_size, run_dir / "scored_samples.png")
    return Result(
        key, row.label, row.preset, seed, int(report["run"]["steps"]), flat_values(results), [n for r in results for n in r.notes],
        float(report["run"]["train_time_s"]), score_s, float(report["run"]["steps_per_s"]), run_dir, grid, report["config"],
    )


def floor_row(dataset: Dataset, evaluator: Evaluator, args: argparse.Namespace) -> Result:
    t0 = time.perf_counter()
    model = PixelHistogram(dataset.load("train").x).to(evaluator.device)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = evaluator(model, ["test"])
    score_s = time.perf_counter() - t0
    grid = save_grid(model, None, args.sample_seed, args.eval_batch_size, Path(args.runs_dir) / "floor_pixel_histogram.png")
    label = "floor: independent pixels (per-pixel 256-level histogram of the train split)"
    return Result("floor", label, None, None, None, flat_values(results), [n for r in results for n in r.notes], fit_s, score_s, grid=grid)


def real_row(dataset: Dataset, evaluator: Evaluator, extractor: FeatureExtractor, cache: ReferenceCache, args: argparse.Namespace) -> Result:
    t0 = time.perf_counter()
    images = dataset.load("train").x[: args.n]  # the first n images of the train split (val held out)
    features, _ = cache.features(dataset.name, "train", images, extractor, args.eval_batch_size, evaluator.device)
    reference = evaluator.reference("test", evaluator.protocols)
    options = {"kid_subsets": 100, "kid_subset_size": 1000}
    results = [compute(p, features, reference, options) for p in evaluator.protocols]
    score_s = time.perf_counter() - t0
    save_png(image_grid(images[:64].float() / 127.5 - 1, nrow=8), Path(args.runs_dir) / "real_train_images.png")
    label = f"real data: first {len(images)} train images vs the test images"
    return Result("real", label, None, None, None, flat_values(results), [n for r in results for n in r.notes], None, score_s)


def rel(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def fmt(v: float | None, digits: int = 1) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def recipe(config: dict[str, Any]) -> str:
    """Batch size, D steps per G step and the optimizers, read from a run's resolved config."""
    objective, optimizers = config.get("objective", {}), config["model"]["optimizer"]
    parts = [f"batch {config['trainer']['batch_size']}"]
    if "d_steps" in objective:
        parts.append(f"{objective['d_steps']} D step(s)/G step")
    if "gp_weight" in objective:
        parts.append(f"lambda {objective['gp_weight']:g}")
    if objective.get("_target_", "").endswith(".Wasserstein"):
        parts.append(f"clip {objective['clip']:g}")
    model = config["model"]
    if model.get("spectral_norm"):
        parts.append("spectral norm")
    if "d_norm" in model:
        parts.append(f"D norm {model['d_norm']}")
    for phase, o in optimizers.items():
        extra = "".join(f" {k} {tuple(v) if isinstance(v, list) else v}" for k, v in o.items() if k in ("betas", "weight_decay"))
        parts.append(f"{phase}: {o['_target_'].rsplit('.', 1)[-1]} lr {o['lr']:g}{extra}")
    return ", ".join(parts)


def table(results: list[Result], fid: str, kid: str, n: int) -> str:
    lines = [
        f"| row | preset | seed | steps | {fid} (measured) | {kid} (measured) | published FID (10k vs 10k, full training) | train (s) | steps/s | scoring (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        row = ROWS.get(r.key)
        published = "" if row is None else (fmt(row.published) if row.published is not None else "—")
        lines.append(
            f"| {r.label} | {('`' + r.preset + '`') if r.preset else ''} | {'' if r.seed is None else r.seed} | {'' if r.steps is None else r.steps} "
            f"| {fmt(r.values.get(fid))} | {fmt(r.values.get(kid), 4)} | {published} | {fmt(r.train_s)} | {fmt(r.steps_per_s, 2)} | {fmt(r.score_s)} |"
        )
    return "\n".join(lines)


def summary(results: list[Result], fid: str) -> str:
    lines = [f"| row | seeds | mean {fid} | min | max | published |", "|---|---:|---:|---:|---:|---:|"]
    groups: dict[str, list[Result]] = {}
    for r in results:
        if r.seed is not None:
            groups.setdefault(r.key, []).append(r)
    for key, rs in groups.items():
        v = [r.values[fid] for r in rs if fid in r.values]
        published = ROWS[key].published
        lines.append(f"| {ROWS[key].label} | {len(rs)} | {fmt(sum(v) / len(v))} | {fmt(min(v))} | {fmt(max(v))} | {fmt(published) if published else '—'} |")
    return "\n".join(lines)


def markdown(results: list[Result], args: argparse.Namespace, extractor: FeatureExtractor, total_s: float, load: tuple[tuple[float, ...], ...]) -> str:
    device = resolve_device(args.device)
    fid, kid = protocol_names(args.n)
    v = versions()
    trained = [r for r in results if r.preset]
    preset_steps = {r.preset: int(gentrain.build.compose([f"experiment={r.preset}"]).trainer.max_steps) for r in trained}
    short = [f"`{p}` {s}" for p, s in preset_steps.items() if any(r.steps is not None and r.steps < s for r in trained if r.preset == p)]
    full_scale = args.n >= 10000 and not short
    command = " ".join(shlex.quote(a) for a in ["python", rel(Path(sys.argv[0])), *sys.argv[1:]])
    parts = [
        "# Fashion-MNIST FID: loss functions and the VAE next to the published numbers",
        "",
        f"Written by `{rel(Path(__file__))}`; command: `{command}`.",
        "",
    ]
    if not full_scale:
        parts += [
            "**These CPU-scale numbers are not comparable with the published full-scale ones.** "
            f"Each model trained for {', '.join(sorted({str(r.steps) for r in trained}))} generator steps instead of its preset's length "
            f"({', '.join(short) if short else 'as configured'}) and of the papers' runs (which also tuned hyperparameters per loss), "
            f"and FID on {args.n} samples per side is biased upward (it falls as the sample count grows; below 2,048 samples the "
            "covariance estimate is rank-deficient). Compare rows only with each other and with the floor and real-data rows "
            "at the same sample count. The published column is the target a full-scale run "
            "(`--n 10000`, each preset's own length, on a GPU) must meet.",
            "",
        ]
    parts += [
        f"- device: {device.type} ({device_name(device)}), {torch.get_num_threads()} torch thread(s); "
        f"gentrain {v['gentrain']}, torch {v['torch']}, torchvision {v['torchvision']}, Python {v['python']}",
        f"- protocol (Lucic et al. 2018): `{fid}` = FID of {args.n} generated samples vs the first {args.n} Fashion-MNIST test images; "
        f"`{kid}` = KID (unbiased; subsets of min(1000, n)) on the same features; extractor `{extractor.identity}` (TF-Inception pool3), "
        f"grayscale tiled to 3 channels, uint8; sample noise seed {args.sample_seed}, evaluation batch {args.eval_batch_size}",
        f"- training: seeds {' '.join(map(str, args.seeds))}; generator steps per run: "
        + (f"{args.steps} (`--steps`)" if args.steps else "each preset's `trainer.max_steps`")
        + "; every other setting is the preset's (batch size, optimizer, D steps: column below); in-training evaluation off",
        "- scoring: each run's `checkpoints/last.pt`, reloaded and sampled in `gentrain.sampling.sampling_state` (eval mode); "
        "nothing is selected on the test split",
        f"- wall time: {total_s:.0f} s in all; 1-minute load average {load[0][0]:.1f} before, {load[1][0]:.1f} after on {os.cpu_count()} "
        "logical CPUs (other work on the machine slows the timings); reference features come from the disk cache when present "
        "(the first row to score pays for the test images' features)",
        "",
        table(results, fid, kid, args.n),
        "",
    ]
    if len(args.seeds) > 1:
        parts += [summary(results, fid), ""]
    parts += ["Recipes as trained (from each run's resolved config):", ""]
    seen: set[str] = set()
    for r in trained:
        if r.preset not in seen:
            seen.add(r.preset)
            parts.append(f"- `{r.preset}`: {recipe(r.config)}")
    parts += [
        "",
        "Published references (10,000 samples vs 10,000 test images, full training):",
        "",
        "- Lucic, Kurach, Michalski, Gelly & Bousquet 2018, \"Are GANs Created Equal? A Large-Scale Study\" (NeurIPS), Table 2, "
        "Fashion-MNIST: MM GAN 29.6, NS GAN 26.5, WGAN 21.5, WGAN GP 24.5 — the best FID of a large hyperparameter search per loss, "
        "on one fixed architecture for every loss (not the DCGAN networks trained here).",
        "- Dai & Wipf 2019, \"Diagnosing and Enhancing VAE Models\" (ICLR), Table 1, Fashion-MNIST: a VAE with the cross-entropy "
        "likelihood, 43.6 (their networks, not the fully connected one of Kingma & Welling trained here); Lucic et al. 2018 "
        "report 58.7 for their VAE.",
        "- Hinge + spectral norm (Miyato et al. 2018) has no published Fashion-MNIST FID in this protocol.",
        "",
        "Notes the metrics left:",
        "",
    ]
    by_note: dict[str, list[str]] = {}
    for r in results:
        for note in dict.fromkeys(r.notes):
            by_note.setdefault(note, []).append(r.label + ("" if r.seed is None else f" (seed {r.seed})"))
    for note, rows in by_note.items():
        parts.append(f"- {'every row' if len(rows) == len(results) else '; '.join(rows)}: {note}")
    parts += ["", f"Sample grids (the first 64 scored samples; run dirs under `{rel(Path(args.runs_dir))}`, not committed):", ""]
    if not args.no_references:
        parts.append(f"- real train images: `{rel(Path(args.runs_dir) / 'real_train_images.png')}`")
    for r in results:
        if r.grid is not None:
            parts.append(f"- {r.label}{'' if r.seed is None else f' (seed {r.seed})'}: `{rel(r.grid)}`")
    return "\n".join(parts) + "\n"


def record(r: Result, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    row = ROWS.get(r.key)
    return {
        "row": r.key, "label": r.label, "preset": r.preset, "seed": r.seed, "steps": r.steps, "n": args.n, "values": r.values,
        "published_fid10k": None if row is None else row.published, "published_source": None if row is None else row.source,
        "train_s": r.train_s, "steps_per_s": r.steps_per_s, "score_s": round(r.score_s, 2), "notes": sorted(set(r.notes)),
        "device": f"{device.type} ({device_name(device)})", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "run_dir": rel(r.run_dir) or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="generator steps per run (trainer.max_steps); 0: each preset's own length")
    parser.add_argument("--n", type=int, default=10000, help="samples per side: generated and test images (Lucic et al.: 10,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (seed=...)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS), help="the model rows to train")
    parser.add_argument("--no-references", action="store_true", help="skip the floor and real-data rows")
    parser.add_argument("--sample-seed", type=int, default=0, help="noise seed of the scored samples (eval.seed)")
    parser.add_argument("--eval-batch-size", type=int, default=250, help="images per Inception batch (eval.batch_size)")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run, e.g. device.precision=bf16")
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "fid_table"))
    parser.add_argument("--out", default="", help="markdown results file (default benchmarks/results/fid_table_<device type>.md); a .jsonl goes beside it")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 is fastest on a busy machine")
    parser.add_argument("--verbose", action="store_true", help="show gentrain's own training output")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be at least 2")

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # training and Inception run in this process
    load_before = os.getloadavg()
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"fid_table_{device.type}.md"
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)

    base = gentrain.build.compose(["dataset=fashion_mnist", f"device.type={args.device}"])
    dataset: Dataset = build(base.dataset, "dataset")
    es = OmegaConf.to_container(base.eval, resolve=True)
    extractor = InceptionFeatures(resolve_weights(es["inception_weights"]), device)
    cache = ReferenceCache(Path(str(es["cache_dir"])))
    fid, kid = protocol_names(args.n)
    evaluator = Evaluator(
        [fid, kid], dataset, "test", lambda: extractor, cache, device, batch_size=args.eval_batch_size, seed=args.sample_seed,
        options={"kid_subsets": 100, "kid_subset_size": 1000},
    )

    console = Console(stderr=True) if args.verbose else Console(file=open(os.devnull, "w"))
    results: list[Result] = []
    t0 = time.perf_counter()

    def done(r: Result) -> None:
        results.append(r)
        timing = f"train {r.train_s:.0f} s ({r.steps} steps, {r.steps_per_s:.2f}/s), " if r.steps else ""
        print(f"{r.label}{'' if r.seed is None else f' seed {r.seed}'}: {fid} {fmt(r.values.get(fid))}, {kid} {fmt(r.values.get(kid), 4)}; "
              f"{timing}scoring {r.score_s:.0f} s", flush=True)

    if not args.no_references:
        done(floor_row(dataset, evaluator, args))  # first: it runs the evaluator, which computes (or loads) the test features
        done(real_row(dataset, evaluator, extractor, cache, args))
    for seed in args.seeds:
        for key in args.models:
            done(train_row(key, seed, args, evaluator, device, console))

    text = markdown(results, args, extractor, time.perf_counter() - t0, (load_before, os.getloadavg()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(record(r, args, device)) + "\n" for r in results))
    print()
    print(table(results, fid, kid, args.n))
    print(f"\nwritten to {out} and {out.with_suffix('.jsonl').name}")


if __name__ == "__main__":
    main()
