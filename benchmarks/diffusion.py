"""Diffusion campaign: DDPM (``model=ddpm``) next to GANs and flows on the toy mixtures, the digits and Fashion-MNIST.

    python benchmarks/diffusion.py                     # CPU-sized (32 min on 2 shared cores): benchmarks/results/diffusion_cpu.md
    python benchmarks/diffusion.py --gpu               # GPU-sized preset: longer runs, default U-Nets, fid10k, nll1000
    python benchmarks/diffusion.py --gpu --parts fashion --fashion-steps 30000   # one part, another length

One call runs three parts, each a table with device, versions, seeds, steps, sample counts and
wall time per row, and an outside reference beside every number:

1. **toy** (``ring8``, ``grid25``): ``model=ddpm`` (the residual MLP denoiser) and the non-saturating
   GAN (``model=gan_mlp objective=non_saturating``) trained for the same steps and batch; 2,500
   samples of each run's ``checkpoints/last.pt`` scored by :func:`gentrain.metrics.modes.mode_stats`
   (modes by PacGAN's rule and the fair-share rule, high-quality share, reverse KL), as
   ``benchmarks/toy_modes.py`` scores its GANs. The diffusion model is scored with DDIM
   (``--toy-ddim`` steps, eta 0) and, for the datasets in ``--toy-ancestral``, also with the
   ancestral sampler (all T = 1000 steps). Beside them: the data itself (2,500 test points), PacGAN's
   published GAN row and gentrain's earlier GAN toy tables (their per-mode counts, read from
   ``benchmarks/results/toy_modes*.md`` and scored by both rules).
2. **digits** (8x8, 17 levels): ``model=ddpm`` with a CPU-sized U-Net and the default GAN
   (``model=dcgan objective=non_saturating``) trained for the same training wall time (its steps are
   the DDPM's training seconds times the GAN's steps/s, measured by a short calibration run);
   ``fid<n>`` of both against the first n test digits (297: the whole test split) next to real
   train digits at the same n (and a per-pixel-histogram floor, ``--floors digits``); the variational bound in bits/dim
   (``nll<n>``) next to the flows' and autoregressive models' test bits/dim from
   ``benchmarks/results/likelihood_digits.jsonl`` and a histogram floor fitted here.
3. **fashion** (Fashion-MNIST): a short ``model=ddpm`` run; ``fid<n>`` (250 on a CPU: the protocol of
   ``benchmarks/results/fid_table_cpu.md``, whose GAN rows are cited) for DDIM with each of
   ``--ddim-steps`` and the ancestral sampler (``--fashion-ancestral``), all from one checkpoint
   and one noise seed; the bound on the first ``--fashion-nll`` test images.

Every run goes through gentrain's own ``train()`` (``gentrain.tasks.training.train``) with in-training
evaluation off; every score is of the run's ``checkpoints/last.pt``, reloaded with
:func:`gentrain.tasks.common.load_trained` (the diffusion sampler replaced as ``gentrain.load(path,
sampler=...)`` replaces it) and sampled inside :func:`gentrain.sampling.sampling_state` (the EMA
weights, eval mode), as ``task=eval`` scores. Nothing is selected on any split: no choice in this
campaign looks at data (the samplers and step counts are fixed in advance), so no validation split is
used, and the test split gives only the final numbers.

The DDPM recipe is ``trainer=diffusion`` (EMA 0.9999 with the engine's warm-up ``min(0.9999,
(1 + t) / (10 + t))``, gradient clipping 1.0) except ``trainer.warmup_steps``: the recipe's 5,000
steps are longer than a CPU run, so it is ``--warmup-fraction`` (10%) of the steps (at most 5,000).
Results go to ``--out`` (.md, and .jsonl beside it) after every part; run directories under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

import gentrain.build
from gentrain.build import build
from gentrain.engine.device import device_name, resolve_device
from gentrain.metrics.evaluate import Evaluator, ImageSamples, ReferenceCache
from gentrain.metrics.fidelity import flat_values
from gentrain.metrics.inception import InceptionFeatures, resolve_weights
from gentrain.metrics.modes import MIN_FRACTION, N_SIGMA, coverage_threshold, dataset_modes, mode_stats, reverse_kl
from gentrain.metrics.report import versions
from gentrain.sampling import sample_batches, sampling_state
from gentrain.shared import to_uint8
from gentrain.tasks.common import load_trained
from gentrain.tasks.training import train
from gentrain.visual import image_grid, sample_picture, save_png

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, imported as modules
import fid_table  # noqa: E402
import likelihood  # noqa: E402
import toy_modes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("toy", "digits", "fashion")
TOY_DATASETS = ("ring8", "grid25")
LOG2_17 = math.log2(17)

#: CPU-sized and GPU-sized settings; every key is also a command-line flag that overrides it.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "device": "cpu", "threads": 1, "seeds": [0], "toy_steps": 1000, "toy_ancestral": ["ring8"],
        "digits_steps": 400, "digits_batch": 64, "digits_model": ["model.channels=32", "model.num_res_blocks=1"],
        "fashion_steps": 250, "fashion_batch": 64, "fashion_model": ["model.channels=16", "model.num_res_blocks=1"],
        "fashion_n": 250, "fashion_nll": 10, "fashion_ancestral": False, "floors": [],
        "out": str(RESULTS / "diffusion_cpu.md"),
    },
    "gpu": {
        "device": "cuda", "threads": 0, "seeds": [0, 1, 2], "toy_steps": 20000, "toy_ancestral": list(TOY_DATASETS),
        "digits_steps": 10000, "digits_batch": 128, "digits_model": [],
        "fashion_steps": 20000, "fashion_batch": 128, "fashion_model": [],
        "fashion_n": 10000, "fashion_nll": 1000, "fashion_ancestral": True, "floors": ["digits", "fashion_mnist"],
        "out": str(RESULTS / "diffusion_gpu.md"),
    },
}

#: The heading of notes written by hand below a results file (kept by --render).
HAND_NOTES = "## Notes (written by hand"
#: Lucic et al. 2018 (NeurIPS), Table 2, Fashion-MNIST: the best FID (10k vs 10k) of the best GAN loss (WGAN).
TARGET_FID = 21.5


@dataclass
class Row:
    """One scored line of a table: a trained model under one sampler, or a reference that trains nothing."""

    part: str
    dataset: str
    method: str
    sampler: str = ""
    seed: int | None = None
    steps: int | None = None
    batch: int | None = None
    n: int | None = None  # samples (or test examples) scored
    values: dict[str, Any] = field(default_factory=dict)
    train_s: float | None = None
    steps_per_s: float | None = None
    sample_s: float | None = None  # drawing the scored samples
    score_s: float | None = None  # features and metrics, or the bound
    passes: int | None = None  # network evaluations per sample
    bound_s: float | None = None  # the variational bound on the test examples
    run_dir: str | None = None
    picture: str | None = None
    notes: list[str] = field(default_factory=list)
    recipe: str = ""


# ---- helpers ---------------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warmup(steps: int, args: argparse.Namespace) -> int:
    return min(5000, max(1, round(args.warmup_fraction * steps)))


def sampler_spec(steps: int | None) -> dict[str, Any]:
    """The ``sampler`` config group as a dict: DDIM with ``steps`` (eta 0), or ancestral (None)."""
    return {"name": "ddpm", "guidance": 0.0} if steps is None else {"name": "ddim", "steps": int(steps), "eta": 0.0, "guidance": 0.0}


def sampler_label(steps: int | None, timesteps: int = 1000) -> str:
    return f"ancestral ({timesteps} steps)" if steps is None else f"DDIM {steps} (eta 0)"


def train_run(name: str, overrides: list[str], steps: int, args: argparse.Namespace, console: Console) -> tuple[Path, dict[str, Any]]:
    """Train one run through gentrain's ``train()``; with ``--reuse`` a finished run with the same overrides is read back."""
    run_dir = Path(args.runs_dir) / name
    quiet = ["trainer.ckpt_every=0", "eval.metrics=[]", "eval.every=0", "logger.progress=false", "logger.tensorboard=false"]
    words = [
        *overrides, f"device.type={args.device}", f"trainer.max_steps={steps}", *quiet, "logger.interpolations=false",
        f"logger.every={max(1, steps // 20)}", f"logger.samples_every={steps}", *args.extra,
    ]
    stamp = run_dir / "benchmark_overrides.json"
    if args.reuse and stamp.is_file() and json.loads(stamp.read_text()) == words and (run_dir / "checkpoints" / "last.pt").is_file():
        print(f"  {name}: reused (same overrides)", flush=True)
        return run_dir, json.loads((run_dir / "report.json").read_text())
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: {run_dir} is not empty; remove it, pass --runs-dir <new folder>, or --reuse")
    report = train(gentrain.build.compose(words), run_dir=run_dir, console=console)
    stamp.write_text(json.dumps(words))
    r = report["run"]
    print(f"  {name}: {r['steps']} steps in {r['train_time_s']:.0f} s ({r['steps_per_s']:.2f} steps/s)", flush=True)
    return run_dir, report


def ddpm_overrides(dataset: str, steps: int, batch: int, seed: int, model: list[str], args: argparse.Namespace) -> list[str]:
    """``model=ddpm`` with its recipe, the warm-up shortened, and DDIM for the pictures drawn during training."""
    return [
        "model=ddpm", f"dataset={dataset}", f"seed={seed}", f"trainer.batch_size={batch}", f"trainer.warmup_steps={warmup(steps, args)}",
        "sampler=ddim", f"sampler.steps={args.picture_steps}", *model,
    ]


def run_row(part: str, method: str, run_dir: Path, report: dict[str, Any], **extra: Any) -> Row:
    run = report["run"]
    return Row(
        part=part, dataset=run["dataset"], method=method, seed=int(run["seed"]), steps=int(run["steps"]), batch=int(run["batch_size"]),
        train_s=float(run["train_time_s"]), steps_per_s=float(run["steps_per_s"]), run_dir=rel(run_dir), **extra,
    )


def draw(run_dir: Path, n: int, args: argparse.Namespace, device: torch.device, steps: int | None = None, diffusion: bool = True) -> tuple[Tensor, float]:
    """``n`` samples of ``run_dir``'s last checkpoint (the EMA weights, eval mode, noise seed ``--sample-seed``, batches of
    ``--eval-batch-size``: what ``task=eval`` draws) and the seconds it took."""
    sampler = sampler_spec(steps) if diffusion else None
    _, _, model, average, _ = load_trained(str(run_dir), device, sampler=sampler)
    sync(device)
    t0 = time.perf_counter()
    with sampling_state(model, average):
        x = torch.cat([b for b, _ in sample_batches(model, n, args.sample_seed, args.eval_batch_size)])
    sync(device)
    return x.cpu(), time.perf_counter() - t0


def rel(path: str | Path | None) -> str:
    return "" if path is None else toy_modes.rel(path)


def fmt(v: Any, spec: str = ".1f") -> str:
    return toy_modes.fmt(v, spec) if v is not None else ""


# ---- part 1: toy mixtures --------------------------------------------------------------------------------------------
def toy_stats(points: Tensor, data: Any) -> dict[str, Any]:
    modes, std = dataset_modes(data)
    return mode_stats(points.float(), modes, std, n_sigma=N_SIGMA, min_fraction=MIN_FRACTION).as_dict()


def toy_part(args: argparse.Namespace, device: torch.device, console: Console) -> list[Row]:
    rows: list[Row] = []
    for dataset in args.toy_datasets:
        data = build(gentrain.build.compose([f"dataset={dataset}"]).dataset, "dataset")
        real = data.load("test").x[: args.toy_n]
        rows.append(Row("toy", dataset, f"the data itself: first {len(real)} test points", n=len(real), values=toy_stats(real, data)))
        for seed in args.seeds:
            common = [f"dataset={dataset}", f"seed={seed}", f"trainer.batch_size={args.toy_batch}"]
            ddpm_dir, ddpm_report = train_run(
                f"toy/{dataset}_ddpm_seed{seed}", ddpm_overrides(dataset, args.toy_steps, args.toy_batch, seed, args.toy_model, args), args.toy_steps, args, console,
            )
            gan_dir, gan_report = train_run(f"toy/{dataset}_gan_seed{seed}", ["model=gan_mlp", "objective=non_saturating", *common], args.toy_steps, args, console)
            samplers = [args.toy_ddim, *([None] if dataset in args.toy_ancestral else [])]
            for steps in samplers:
                x, sample_s = draw(ddpm_dir, args.toy_n, args, device, steps)
                picture = ddpm_dir / f"scored_{'ancestral' if steps is None else f'ddim{steps}'}.png"
                save_png(sample_picture(x, real), picture)
                rows.append(run_row(
                    "toy", "DDPM (MLP denoiser)", ddpm_dir, ddpm_report, sampler=sampler_label(steps), n=args.toy_n, values=toy_stats(x, data),
                    sample_s=sample_s, passes=1000 if steps is None else steps, picture=rel(picture), recipe=model_recipe(ddpm_report["config"]),
                ))
            x, sample_s = draw(gan_dir, args.toy_n, args, device, diffusion=False)
            save_png(sample_picture(x, real), gan_dir / "scored.png")
            rows.append(run_row(
                "toy", "NS GAN (gan_mlp)", gan_dir, gan_report, sampler="generator", n=args.toy_n, values=toy_stats(x, data),
                sample_s=sample_s, passes=1, picture=rel(gan_dir / "scored.png"), recipe=fid_table.recipe(gan_report["config"]),
            ))
            print(f"  {dataset} seed {seed}: " + "; ".join(f"{r.method} {r.sampler}: {toy_cells(r.values)}" for r in rows[-len(samplers) - 1 :]), flush=True)
    return rows


def toy_cells(s: dict[str, Any]) -> str:
    return f"{s['modes_pacgan']} / {s['num_modes']} | {s['modes_fair']} / {s['num_modes']} | {s['high_quality']:.3f} | {fmt(s['reverse_kl'], '.3f')}"


def cited_toy_counts() -> list[tuple[str, str, str, list[int]]]:
    """(file, dataset, description, HQ counts per mode) of gentrain's earlier non-saturating ``gan_mlp`` runs."""
    found = []
    for name, what in (("toy_modes.md", "3,000 steps"), ("toy_modes_10k.md", "10,000 steps")):
        path = RESULTS / name
        text = path.read_text() if path.is_file() else ""
        for dataset, counts in re.findall(r"^- (ring8|grid25) / non_saturating / seed 0: \[([\d, ]+)\]", text, flags=re.M):
            found.append((name, dataset, f"NS GAN (gan_mlp), batch 256, {what}", [int(c) for c in counts.split(",")]))
    return found


def toy_markdown(rows: list[Row], args: argparse.Namespace) -> list[str]:
    lines = [
        "| dataset | method | sampler | seed | steps | batch | modes (PacGAN rule) | modes (fair share) | HQ share | reverse KL "
        "| train s | steps/s | sampling s (n) | PacGAN Table 1, GAN: modes / HQ / reverse KL |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pub = toy_modes.PUBLISHED.get((r.dataset, "GAN"))
        lines.append(
            f"| {r.dataset} | {r.method} | {r.sampler} | {fmt(r.seed, 'd')} | {fmt(r.steps, 'd')} | {fmt(r.batch, 'd')} | {toy_cells(r.values)} "
            f"| {fmt(r.train_s)} | {fmt(r.steps_per_s)} | {fmt(r.sample_s) or '-'} ({r.n}) | {pub[0]} / {pub[1]} / {pub[2]} |"
        )
    cited = cited_toy_counts()
    if cited:
        lines += [
            "",
            "Earlier gentrain GAN runs on the same data (their HQ counts per mode of 2,500 samples, from the files named, scored here by both rules):",
            "",
            "| dataset | run | file | modes (PacGAN rule) | modes (fair share) | HQ share | reverse KL |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for name, dataset, what, counts in cited:
            k, n = len(counts), 2500  # those runs scored 2,500 samples
            threshold = coverage_threshold(n, k, MIN_FRACTION)
            rkl = reverse_kl(torch.tensor(counts))
            lines.append(
                f"| {dataset} | {what} | `benchmarks/results/{name}` | {sum(c >= 1 for c in counts)} / {k} | {sum(c >= threshold for c in counts)} / {k} "
                f"| {sum(counts) / n:.3f} | {rkl:.3f} |"
            )
    return lines


# ---- part 2: digits --------------------------------------------------------------------------------------------------
def fidelity_evaluator(dataset: Any, n: int, args: argparse.Namespace, device: torch.device, extractor: Any, cache: ReferenceCache) -> Evaluator:
    fid, kid = fid_table.protocol_names(n)
    evaluator = Evaluator(
        [fid, kid], dataset, "test", lambda: extractor, cache, device, batch_size=args.eval_batch_size, seed=args.sample_seed,
        options={"kid_subsets": 100, "kid_subset_size": 1000},
    )
    evaluator.extractor = extractor  # fid_table.real_row reads the reference features before any sample is scored
    return evaluator


def score_images(evaluator: Evaluator, x: Tensor, device: torch.device) -> tuple[dict[str, float], list[str], float]:
    """FID/KID of generated images (model space [-1, 1]) as uint8, as ``task=eval`` scores a model's samples."""
    t0 = time.perf_counter()
    results = evaluator(ImageSamples(to_uint8(x), device), ["test"])
    return flat_values(results), sorted({note for r in results for note in r.notes}), time.perf_counter() - t0


def bound(run_dir: Path, dataset: Any, n: int, args: argparse.Namespace, device: torch.device, cache: ReferenceCache) -> tuple[dict[str, float], list[str], float]:
    """``nll<n>`` of the last checkpoint (EMA weights) on the first n test examples: the variational bound, as ``task=eval``."""
    name = likelihood.metric_name(n)
    _, _, model, average, _ = load_trained(str(run_dir), device)
    # one batch of all n examples: each of the T terms is one network pass over them
    evaluator = Evaluator([name], dataset, "test", lambda: None, cache, device, batch_size=max(n, args.eval_batch_size), seed=args.sample_seed)
    t0 = time.perf_counter()
    with sampling_state(model, average):
        results = evaluator(model, ["test"])
    sync(device)
    return flat_values(results), sorted({note for r in results for note in r.notes}), time.perf_counter() - t0


def reference_rows(part: str, dataset: Any, evaluator: Evaluator, extractor: Any, cache: ReferenceCache, n: int, args: argparse.Namespace, out: Path) -> list[Row]:
    """The real-data row (first n train images vs the test images) and, for the datasets in ``--floors``, the per-pixel
    histogram floor, by ``benchmarks/fid_table.py``'s own functions."""
    ns = SimpleNamespace(n=n, eval_batch_size=args.eval_batch_size, sample_seed=args.sample_seed, runs_dir=str(out))
    out.mkdir(parents=True, exist_ok=True)
    made = [fid_table.real_row(dataset, evaluator, extractor, cache, ns)]
    if dataset.name in args.floors:
        made.append(fid_table.floor_row(dataset, evaluator, ns))
    return [Row(part, dataset.name, r.label, n=n, values=r.values, score_s=r.score_s, notes=list(r.notes), picture=rel(r.grid)) for r in made]


def save_grid(x: Tensor, path: Path) -> str:
    save_png(image_grid(x[:64], nrow=8), path)
    return rel(path)


def digits_part(args: argparse.Namespace, device: torch.device, console: Console, extractor: Any, cache: ReferenceCache) -> list[Row]:
    dataset = build(gentrain.build.compose(["dataset=digits"]).dataset, "dataset")
    n = min(args.digits_n, len(dataset.load("test").x))
    seed = args.seeds[0]
    ddpm_dir, ddpm_report = train_run(
        "digits/ddpm", ddpm_overrides("digits", args.digits_steps, args.digits_batch, seed, args.digits_model, args), args.digits_steps, args, console,
    )
    gan = ["model=dcgan", "objective=non_saturating", "dataset=digits", f"seed={seed}"]
    _, calib = train_run("digits/gan_calibration", gan, args.calibration_steps, args, console)
    ddpm_s = float(ddpm_report["run"]["train_time_s"])
    gan_steps = max(1, round(ddpm_s * float(calib["run"]["steps_per_s"])))
    gan_dir, gan_report = train_run("digits/gan", gan, gan_steps, args, console)

    evaluator = fidelity_evaluator(dataset, n, args, device, extractor, cache)
    rows = reference_rows("digits", dataset, evaluator, extractor, cache, n, args, Path(args.runs_dir) / "digits")
    x, sample_s = draw(ddpm_dir, n, args, device, args.digits_ddim)
    values, notes, score_s = score_images(evaluator, x, device)
    nll, nll_notes, nll_s = bound(ddpm_dir, dataset, n, args, device, cache)
    rows.append(run_row(
        "digits", "DDPM (U-Net)", ddpm_dir, ddpm_report, sampler=sampler_label(args.digits_ddim), n=n, values={**values, **nll},
        sample_s=sample_s, score_s=score_s, passes=args.digits_ddim, picture=save_grid(x, ddpm_dir / "scored_samples.png"),
        notes=notes + [f"bound: {note}" for note in nll_notes], bound_s=nll_s, recipe=model_recipe(ddpm_report["config"]),
    ))
    x, sample_s = draw(gan_dir, n, args, device, diffusion=False)
    values, notes, score_s = score_images(evaluator, x, device)
    rows.append(run_row(
        "digits", "NS GAN (dcgan), same training wall time", gan_dir, gan_report, sampler="generator", n=n, values=values, sample_s=sample_s,
        score_s=score_s, passes=1, picture=save_grid(x, gan_dir / "scored_samples.png"), notes=notes, recipe=fid_table.recipe(gan_report["config"]),
    ))
    for r in rows:
        print(f"  {r.method}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.values.items() if not k.endswith("_std")), flush=True)
    return rows


def model_recipe(config: dict[str, Any]) -> str:
    """The DDPM's network and training recipe, read from a run's resolved config."""
    m, t, o = config["model"], config["trainer"], config["objective"]
    opt = m["optimizer"]["main"]
    net = (
        f"U-Net channels {m['channels']}, channel_mult {m['channel_mult'] or 'auto'}, {m['num_res_blocks']} res block(s), attention "
        f"{m['attention_resolutions'] or 'auto'}" if len(config["dataset"]["shape"]) == 3 else f"MLP hidden {m['hidden']} x {m['blocks']} blocks"
    )
    return (
        f"{net}, dropout {m['dropout']}; T {o['timesteps']} {o['schedule']}, {o['prediction']} prediction, {m['variance']} variance; "
        f"{opt['_target_'].rsplit('.', 1)[-1]} lr {opt['lr']:g}, batch {t['batch_size']}, warm-up {t['warmup_steps']} steps, "
        f"EMA {t['ema_decay']} (warm-up {t['ema_warmup']}), grad clip {t['grad_clip']}"
    )


def cited(name: str) -> list[dict[str, Any]]:
    path = RESULTS / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def digits_markdown(rows: list[Row], args: argparse.Namespace, hist: float | None) -> list[str]:
    if not rows:
        return ["(not run)"]
    n = rows[0].n
    fid, kid = fid_table.protocol_names(n)
    real = next((r.values.get(fid) for r in rows if r.method.startswith("real data")), None)
    floor = next((r.values.get(fid) for r in rows if r.method.startswith("floor")), None)
    whole = " (the whole test split)" if n == 297 else ""
    lines = [
        f"Sample quality: `{fid}` = FID of {n} samples vs the first {n} test digits{whole}, TF-Inception pool3 on the "
        f"8x8 images resized to 299 (the `task=eval` path); `{kid}` on the same features.",
        "",
        f"| row | sampler | seed | steps | batch | {fid} | {kid} | references at the same n: real data / floor | train s | steps/s | sampling s | scoring s |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.sampler} | {fmt(r.seed, 'd')} | {fmt(r.steps, 'd')} | {fmt(r.batch, 'd')} | {fmt(r.values.get(fid))} "
            f"| {fmt(r.values.get(kid), '.4f')} | {fmt(real) or '-'} / {fmt(floor) or '-'} | {fmt(r.train_s)} "
            f"| {fmt(r.steps_per_s)} | {fmt(r.sample_s)} | {fmt(r.score_s)} |"
        )
    if floor is None:
        lines += ["", "The per-pixel-histogram FID floor was not computed in this call (`--floors digits` adds it: about 150 s on this CPU)."]
    ddpm = next((r for r in rows if r.method.startswith("DDPM")), None)
    name = likelihood.metric_name(n)
    meta = next((c for c in cited("likelihood_digits.jsonl") if c.get("kind") == "meta"), {})
    lines += [
        "",
        f"Likelihood: test bits/dim of the 17-level digits (`{name}_bpd`; the bound is over the data's 17 levels, so a model that knows "
        f"nothing scores log2 17 = {LOG2_17:.3f}).",
        "",
        "| model | what the number is | test bits/dim | test digits | steps | train s | source |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    if ddpm is not None:
        lines.append(
            f"| **DDPM (this run)** | variational bound (Ho et al. eq. 5, all 1000 terms, discretised decoder over 17 levels): an upper bound "
            f"on -log2 p(x) / D | **{fmt(ddpm.values.get(f'{name}_bpd'), '.3f')}** | {n} | {ddpm.steps} | {fmt(ddpm.train_s)} "
            f"| this run, last.pt (the bound took {fmt(ddpm.bound_s, '.0f')} s) |"
        )
    for c in cited("likelihood_digits.jsonl"):
        if c.get("kind") == "model" and c.get("objective") != "elbo":
            lines.append(
                f"| {c['model']} | {c['likelihood']} | {c['test_bpd']:.3f} | {c['n_test']} | {c['steps']} | {c['train_s']:.0f} "
                f"| `likelihood_digits.jsonl` (best.pt on val) |"
            )
    if hist is not None:
        lines.append(f"| floor: per-pixel histogram (17 levels, add-one, fitted on train) | exact | {hist:.3f} | {n} | | | this run (`likelihood.histogram_bpd`) |")
    lines.append(f"| uniform over 17 levels | exact | {LOG2_17:.3f} | | | | log2 17 |")
    if meta:
        lines += ["", f"Cited rows: `{meta.get('command', '')}` ({meta.get('device')}, torch {meta.get('torch')}); the VAEs' bounds are over binarised pixels and left out."]
    return lines


# ---- part 3: Fashion-MNIST -------------------------------------------------------------------------------------------
def fashion_part(args: argparse.Namespace, device: torch.device, console: Console, extractor: Any, cache: ReferenceCache) -> list[Row]:
    dataset = build(gentrain.build.compose(["dataset=fashion_mnist"]).dataset, "dataset")
    seed = args.seeds[0]
    ddpm_dir, report = train_run(
        "fashion/ddpm", ddpm_overrides("fashion_mnist", args.fashion_steps, args.fashion_batch, seed, args.fashion_model, args), args.fashion_steps, args, console,
    )
    evaluator = fidelity_evaluator(dataset, args.fashion_n, args, device, extractor, cache)
    rows = reference_rows("fashion", dataset, evaluator, extractor, cache, args.fashion_n, args, Path(args.runs_dir) / "fashion")
    samplers: list[int | None] = [*args.ddim_steps, *([None] if args.fashion_ancestral else [])]
    for steps in samplers:
        x, sample_s = draw(ddpm_dir, args.fashion_n, args, device, steps)
        values, notes, score_s = score_images(evaluator, x, device)
        tag = "ancestral" if steps is None else f"ddim{steps}"
        rows.append(run_row(
            "fashion", "DDPM (U-Net)", ddpm_dir, report, sampler=sampler_label(steps), n=args.fashion_n, values=values, sample_s=sample_s,
            score_s=score_s, passes=1000 if steps is None else steps, picture=save_grid(x, ddpm_dir / f"scored_{tag}.png"), notes=notes,
            recipe=model_recipe(report["config"]),
        ))
        print(f"  {rows[-1].sampler}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if not k.endswith("_std")) + f" (sampling {sample_s:.0f} s)", flush=True)
    nll, notes, nll_s = bound(ddpm_dir, dataset, args.fashion_nll, args, device, cache)
    rows.append(run_row(
        "fashion", "DDPM (U-Net): bound", ddpm_dir, report, n=args.fashion_nll, values=nll, score_s=nll_s, passes=1000, notes=notes,
        recipe=model_recipe(report["config"]),
    ))
    print(f"  bound: {nll}", flush=True)
    return rows


def fashion_markdown(rows: list[Row], args: argparse.Namespace, hist: float | None) -> list[str]:
    if not rows:
        return ["(not run)"]
    n = args.fashion_n
    fid, kid = fid_table.protocol_names(n)
    sampled = [r for r in rows if r.method == "DDPM (U-Net)"]
    refs = {r.method.split(":")[0]: r.values.get(fid) for r in rows if r.steps is None}
    old = cited("fid_table_cpu.jsonl") if n == 250 else []
    old_floor = next((c["values"].get(fid) for c in old if c.get("row") == "floor"), None)
    floor = refs.get("floor", old_floor)
    floor_note = " (cited: `fid_table_cpu.jsonl`)" if "floor" not in refs and floor is not None else ""
    lines = [
        f"DDIM steps vs FID, one checkpoint (step {sampled[0].steps if sampled else '?'}) and one noise seed ({args.sample_seed}): "
        f"`{fid}` = FID of {n} samples vs the first {n} Fashion-MNIST test images (Lucic et al. 2018's protocol at {n}, as `fid_table.py`).",
        "",
        f"| sampler | network passes per sample | {fid} | {kid} | real data (same n) | floor (same n) | sampling s ({n} samples) | ms per sample | scoring s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sampled:
        lines.append(
            f"| {r.sampler} | {r.passes} | {fmt(r.values.get(fid))} | {fmt(r.values.get(kid), '.4f')} | {fmt(refs.get('real data'))} "
            f"| {fmt(floor)}{floor_note} | {fmt(r.sample_s)} | {1000 * r.sample_s / n:.0f} | {fmt(r.score_s)} |"
        )
    lines += [
        "",
        f"Beside it, at the same `{fid}` protocol (sample seed 0, batch 250):",
        "",
        f"| row | steps | {fid} | train s | source |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.steps is None:
            lines.append(f"| {r.method} | | {fmt(r.values.get(fid))} | | this run |")
    for c in old:
        if c.get("row") in ("real", "floor") and c["label"].split(":")[0] in refs:
            continue  # measured again in this run
        published = f" (published, 10k vs 10k, fully trained: {c['published_fid10k']})" if c.get("published_fid10k") else ""
        lines.append(
            f"| {c['label']}{published} | {fmt(c.get('steps'), 'd')} | {fmt(c['values'].get(fid))} | {fmt(c.get('train_s'))} | `fid_table_cpu.jsonl` |"
        )
    lines.append(f"| target: best GAN loss of Lucic et al. 2018, Table 2 (WGAN), 10k vs 10k, fully trained | | {TARGET_FID} (fid10k) | | published |")
    nll = next((r for r in rows if r.method.endswith("bound")), None)
    if nll is not None:
        name = likelihood.metric_name(nll.n)
        meta = next((c for c in cited("likelihood_fashion_mnist.jsonl") if c.get("kind") == "meta"), {})
        lines += [
            "",
            "| likelihood (bits/dim over 256 levels) | test images | test bits/dim | source |",
            "|---|---:|---:|---|",
            f"| **DDPM variational bound (this run, last.pt, {nll.steps} steps)**, {fmt(nll.score_s)} s for {nll.n} images | {nll.n} "
            f"| **{fmt(nll.values.get(f'{name}_bpd'), '.3f')}** | this run |",
        ]
        if hist is not None:
            lines.append(f"| floor: per-pixel histogram (256 levels, add-one, fitted on the 55,000 train images) | {nll.n} | {hist:.3f} | this run |")
        for c in cited("likelihood_fashion_mnist.jsonl"):
            if c.get("kind") == "model" and c.get("objective") != "elbo":
                lines.append(
                    f"| {c['model']} ({c['steps']} steps on a {meta.get('n_train')}-image subset; {c['likelihood']}) | {c['n_test']} | {c['test_bpd']:.3f} "
                    "| `likelihood_fashion_mnist.jsonl` |"
                )
        lines.append("| uniform over 256 levels | | 8.000 | log2 256 |")
    return lines


# ---- results ---------------------------------------------------------------------------------------------------------
def histogram_floor(name: str, n: int) -> float:
    """Test bits/dim of independent per-pixel categoricals fitted on the train split (``benchmarks/likelihood.py``'s floor)."""
    dataset = build(gentrain.build.compose([f"dataset={name}"]).dataset, "dataset")
    test = dataset.load("test").x
    return likelihood.histogram_bpd(dataset.load("train").x, test[: min(n, len(test))], dataset.levels)


def write_results(
    rows: list[Row], args: argparse.Namespace, device: torch.device, timing: dict[str, float], load: list[tuple[float, ...]], hist: dict[str, float],
    command: str | None = None, keep: str = "",
) -> Path:
    """The results file (.md) and its rows (.jsonl); ``command`` and ``keep`` (a hand-written tail) when rendering an earlier run again."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    v = versions()
    command = command or " ".join(shlex.quote(a) for a in ["python", rel(Path(sys.argv[0])), *sys.argv[1:]])
    by_part = {p: [r for r in rows if r.part == p] for p in PARTS}
    digits_hist, fashion_hist = hist.get("digits"), hist.get("fashion_mnist")
    scale = "GPU-sized" if args.gpu else "CPU-sized"
    recipes = dict.fromkeys(f"{r.dataset}: {r.recipe}" for r in rows if r.recipe and r.method.startswith("DDPM"))
    gan_recipes = dict.fromkeys(f"{r.dataset}: {r.recipe}" for r in rows if r.recipe and "GAN" in r.method)
    parts = [
        f"# Diffusion models (DDPM) next to GANs and flows: {scale} campaign",
        "",
        f"Written by `benchmarks/diffusion.py`; command: `{command}`.",
        "",
    ]
    if not args.gpu:
        parts += [
            "**A CPU-sized protocol: no GPU was available.** Every number below comes from short runs with small networks on a "
            "shared 2-core CPU, and FID at a few hundred samples is strongly biased upward. Compare rows only with the references "
            "measured or cited beside them at the same sample counts, never with published full-scale numbers. The published "
            f"target for Fashion-MNIST, FID < {TARGET_FID} (10k vs 10k) within 20 GPU minutes (the best GAN loss in Lucic et al. "
            "2018, Table 2), needs the GPU run (command at the end).",
            "",
        ]
    parts += [
        f"- device: {device.type} ({device_name(device)}), {torch.get_num_threads()} torch thread(s); gentrain {v['gentrain']}, torch {v['torch']}, "
        f"torchvision {v['torchvision']}, Python {v['python']}",
        f"- wall time: {timing.get('total', 0):.0f} s in all ({', '.join(f'{p} {timing[p]:.0f} s' for p in PARTS if p in timing)}); 1-minute load average "
        f"{load[0][0]:.1f} before, {load[-1][0]:.1f} after on {os.cpu_count()} logical CPUs (other jobs shared the machine: timings are slower "
        "than an idle machine's)",
        f"- seeds: {' '.join(map(str, args.seeds))} (model init, data order); scored samples drawn with noise seed {args.sample_seed} in batches of "
        f"{args.eval_batch_size} (`eval.seed`, `eval.batch_size`), from each run's `checkpoints/last.pt` with its EMA weights in eval mode",
        f"- DDPM training: `trainer=diffusion` (the paper's recipe) except **`trainer.warmup_steps` = {args.warmup_fraction:g} of the steps** "
        "(the recipe's 5,000 would outlast these runs); the EMA decay 0.9999 is warmed up by the engine as min(0.9999, (1 + t) / (10 + t)), "
        f"so a short run's average is over roughly its last tenth; pictures during training with DDIM {args.picture_steps}",
        *[f"  - {r}" for r in recipes],
        "- GAN training: the presets' own settings (`model=gan_mlp` / `model=dcgan`, `objective=non_saturating`)",
        *[f"  - {r}" for r in gan_recipes],
        "- no model selection: samplers and step counts were fixed before the runs; the test split is used only for these final numbers",
        "",
        "## 1. Toy mixtures: modes covered, high-quality share, reverse KL",
        "",
        f"{args.toy_n} samples per row scored with `gentrain.metrics.modes.mode_stats` (as `benchmarks/toy_modes.py`): high quality (HQ) = closer "
        f"than {N_SIGMA:g} std to the nearest centre; modes by PacGAN's released rule (>= 1 HQ sample) and by the fair-share rule (>= "
        f"{MIN_FRACTION:g} n / K HQ samples); reverse KL of the HQ mode histogram from the uniform. DDPM and GAN trained for the same steps "
        f"and batch. gentrain's ring8 has radius 2 and std 0.02, grid25 spacing 2 and std 0.05; PacGAN's published row (400,000 steps, "
        "its own networks and ring of std 0.01) is the target a GAN reaches, not the same setting.",
        "",
        *(toy_markdown(by_part["toy"], args) if by_part["toy"] else ["(not run)"]),
        "",
        "## 2. Digits (8x8, 17 levels): sample quality and bits/dim",
        "",
        *digits_markdown(by_part["digits"], args, digits_hist),
        "",
        "## 3. Fashion-MNIST: DDIM steps vs FID, and the bound",
        "",
        *fashion_markdown(by_part["fashion"], args, fashion_hist),
        "",
        "## Notes the metrics left",
        "",
    ]
    where = {id(r): f"{r.dataset} {r.method}" + (f", {r.sampler}" if r.sampler else "") for r in rows}
    notes = dict.fromkeys(note for r in rows for note in r.notes)
    parts += [f"- {note} ({'; '.join(where[id(r)] for r in rows if note in r.notes)})" for note in notes] or ["- none"]
    parts += ["", "## Pictures (run dirs, not committed)", ""]
    parts += [f"- {r.dataset} / {r.method} / {r.sampler or '-'}: `{r.picture}`" for r in rows if r.picture]
    parts += [
        "",
        "## The GPU-sized run",
        "",
        "`python benchmarks/diffusion.py --gpu` (device cuda; toy 20,000 steps x 3 seeds with ancestral rows; digits with the default "
        "U-Net, 10,000 steps; Fashion-MNIST with the default U-Net (channels 64, [1, 2, 2]), 20,000 steps of batch 128, `fid10k` for DDIM "
        "10/25/50/100 and ancestral, `nll1000`). Its Fashion-MNIST part alone, against the published target "
        f"(FID < {TARGET_FID} within 20 GPU minutes): `python benchmarks/diffusion.py --gpu --parts fashion --extra device.precision=bf16` "
        "(measure steps/s first and set `--fashion-steps` to what 20 minutes allow). On a machine with a 10-minute limit per command "
        "the training must be split: this script does not resume a stopped run by itself (`gentrain trainer.resume=<run dir>` does).",
    ]
    out.write_text("\n".join(parts) + "\n" + keep)
    meta = {
        "kind": "meta", "command": command, "device": f"{device.type} ({device_name(device)})", "threads": torch.get_num_threads(), "versions": v,
        "timing_s": {k: round(t, 1) for k, t in timing.items()}, "load_1min": [load[0][0], load[-1][0]], "scale": scale,
        "histogram_bpd": hist, "args": {k: val for k, val in vars(args).items() if k != "render"},
    }
    out.with_suffix(".jsonl").write_text("".join(json.dumps(d) + "\n" for d in [meta, *({"kind": "row", **asdict(r)} for r in rows)]))
    return out


def render(args: argparse.Namespace) -> None:
    """Write the .md again from the .jsonl of an earlier call (its command, timings and rows), keeping a hand-written tail."""
    out = Path(args.out)
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines() if line.strip()]
    meta = records[0]
    for key, value in meta.get("args", {}).items():
        setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = meta["timing_s"]
    load = [(meta["load_1min"][0],), (meta["load_1min"][1],)]
    rows = [Row(**{k: val for k, val in r.items() if k != "kind"}) for r in records[1:]]
    text = out.read_text() if out.is_file() else ""
    keep = text[text.index(HAND_NOTES) :] if HAND_NOTES in text else ""
    write_results(rows, args, resolve_device(args.device), timing, load, meta["histogram_bpd"], meta["command"], ("\n" + keep) if keep else "")
    print(f"rendered {rel(out)} again from its .jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU-sized preset (PRESETS['gpu']); flags given override it")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (preset: cpu, or cuda with --gpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (0: torch's default; CPU preset 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="toy runs: every seed; digits and fashion: the first")
    parser.add_argument("--toy-datasets", nargs="+", default=list(TOY_DATASETS), choices=TOY_DATASETS)
    parser.add_argument("--toy-steps", type=int, default=None, help="steps of every toy run, DDPM and GAN alike")
    parser.add_argument("--toy-batch", type=int, default=256)
    parser.add_argument("--toy-n", type=int, default=2500, help="points scored per toy row (PacGAN: 2,500)")
    parser.add_argument(
        "--toy-model", nargs="*", default=["model.optimizer.main.lr=1e-3"],
        help="overrides of the toy DDPM runs (default: experiment=toy_ddpm's lr 1e-3; model.optimizer.main.lr=2e-4 is the U-Net recipe's)",
    )
    parser.add_argument("--toy-ddim", type=int, default=100, help="DDIM steps for the toy DDPM rows")
    parser.add_argument("--toy-ancestral", nargs="*", default=None, choices=TOY_DATASETS, help="toy sets that also get an ancestral-sampler row")
    parser.add_argument("--digits-steps", type=int, default=None)
    parser.add_argument("--digits-batch", type=int, default=None)
    parser.add_argument("--digits-model", nargs="*", default=None, help="overrides of the digits U-Net (CPU preset: model.channels=32 model.num_res_blocks=1)")
    parser.add_argument("--digits-n", type=int, default=297, help="FID samples and bound examples on digits (297: the test split)")
    parser.add_argument("--digits-ddim", type=int, default=100, help="DDIM steps of the scored digits samples")
    parser.add_argument("--calibration-steps", type=int, default=100, help="GAN steps of the run that measures its steps/s on digits")
    parser.add_argument("--fashion-steps", type=int, default=None)
    parser.add_argument("--fashion-batch", type=int, default=None)
    parser.add_argument("--fashion-model", nargs="*", default=None, help="overrides of the Fashion-MNIST U-Net (CPU preset: model.channels=16 model.num_res_blocks=1)")
    parser.add_argument("--fashion-n", type=int, default=None, help="FID samples and test images (CPU 250, GPU 10,000)")
    parser.add_argument("--fashion-nll", type=int, default=None, help="test images of the bound (T network passes each)")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 25, 50, 100], help="the DDIM rows of the Fashion-MNIST table")
    parser.add_argument("--fashion-ancestral", action=argparse.BooleanOptionalAction, default=None, help="add the ancestral (1000-step) row")
    parser.add_argument("--floors", nargs="*", default=None, help="datasets whose per-pixel-histogram FID floor is computed (else cited)")
    parser.add_argument("--picture-steps", type=int, default=100, help="DDIM steps of the pictures drawn during training")
    parser.add_argument("--warmup-fraction", type=float, default=0.1, help="trainer.warmup_steps as a share of the steps (at most 5,000)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run, e.g. device.precision=bf16")
    parser.add_argument("--runs-dir", default=None, help="default outputs/diffusion_cpu or outputs/diffusion_gpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--reuse", action="store_true", help="read back runs already trained with the same overrides instead of training again")
    parser.add_argument("--verbose", action="store_true", help="show gentrain's own training output")
    parser.add_argument("--render", action="store_true", help="train nothing: write --out's .md again from its .jsonl (after editing this script)")
    args = parser.parse_args()
    preset = PRESETS["gpu" if args.gpu else "cpu"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.runs_dir = args.runs_dir or str(REPO / "outputs" / ("diffusion_gpu" if args.gpu else "diffusion_cpu"))
    if args.render:
        render(args)
        return
    if not args.reuse and Path(args.runs_dir).is_dir() and any(Path(args.runs_dir).iterdir()):
        parser.error(f"{args.runs_dir} is not empty; remove it, pass --runs-dir <new folder>, or --reuse")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    console = Console(stderr=True) if args.verbose else Console(file=open(os.devnull, "w"))
    es = gentrain.build.compose([]).eval
    cache = ReferenceCache(Path(str(es.cache_dir)).expanduser())
    extractor: Any = None
    load = [os.getloadavg()]
    timing: dict[str, float] = {}
    hist: dict[str, float] = {}
    rows: list[Row] = []
    t_all = time.perf_counter()
    for part in args.parts:
        print(f"[{part}]", flush=True)
        t0 = time.perf_counter()
        if part == "toy":
            rows += toy_part(args, device, console)
        else:
            extractor = extractor or InceptionFeatures(resolve_weights(es.inception_weights), device)
            rows += (digits_part if part == "digits" else fashion_part)(args, device, console, extractor, cache)
            name = "digits" if part == "digits" else "fashion_mnist"
            hist[name] = histogram_floor(name, args.digits_n if part == "digits" else args.fashion_nll)
        timing[part] = time.perf_counter() - t0
        timing["total"] = time.perf_counter() - t_all
        out = write_results(rows, args, device, timing, [*load, os.getloadavg()], hist)
        print(f"[{part}] {timing[part]:.0f} s; results so far in {rel(out)}", flush=True)
    print(f"written to {rel(args.out)} and its .jsonl ({timing.get('total', 0):.0f} s in all)")


if __name__ == "__main__":
    main()
