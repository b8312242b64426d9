"""Mode-collapse benchmark: GAN vs WGAN-GP on the 2-D ring and grid mixtures, modes covered and HQ share.

    python benchmarks/toy_modes.py                                  # 3000 steps, seed 0, auto device
    python benchmarks/toy_modes.py --steps 1000 --seeds 0 1 2 --device cpu

Trains the fully connected GAN (``model=gan_mlp``) with the non-saturating objective and with
WGAN-GP (Gulrajani et al. 2017: lambda 10, 5 critic steps, Adam 1e-4, betas (0, 0.9); gan_mlp's
critic has no batch norm) on ``dataset=ring8`` and ``dataset=grid25`` through gentrain's own
``train()``, reloads each run's ``checkpoints/last.pt``, draws ``--n-samples`` (2,500, as in
PacGAN) points with a fixed noise seed, and scores them with :func:`gentrain.metrics.modes.mode_stats`
(VEEGAN / PacGAN: HQ within 3 std of the nearest centre; a mode is covered with at least 20% of
its fair share of HQ samples). Prints a markdown table and writes it, with the device, versions,
step, sample and seed counts, to ``--out``. Runs go to ``--runs-dir`` (default outputs/toy_modes/).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import gentrain.build
from gentrain.engine.device import device_name, resolve_device
from gentrain.metrics.modes import N_SIGMA, ModeStats, dataset_modes, mode_stats
from gentrain.sampling import sample_batches, sampling_state
from gentrain.tasks.common import load_trained
from gentrain.tasks.training import train

REPO = Path(__file__).resolve().parent.parent

#: Objective name in the table -> the overrides that select it on top of model=gan_mlp.
OBJECTIVES: dict[str, list[str]] = {
    "non_saturating": ["objective=non_saturating"],
    # the wgan_gp preset is DCGAN-based; on 2-D data take its optimizer settings onto gan_mlp
    "wasserstein_gp": [
        "objective=wasserstein_gp",
        "model.optimizer.G.lr=1e-4",
        "model.optimizer.G.betas=[0.0,0.9]",
        "model.optimizer.D.lr=1e-4",
        "model.optimizer.D.betas=[0.0,0.9]",
    ],
}
DATASETS = ("ring8", "grid25")


@dataclass
class RunResult:
    dataset: str
    objective: str
    seed: int
    steps: int
    stats: ModeStats
    train_time_s: float
    steps_per_s: float
    run_dir: Path
    pictures: list[Path]
    config: dict[str, Any]


def run_one(dataset: str, objective: str, seed: int, args: argparse.Namespace, console: Console) -> RunResult:
    run_dir = Path(args.runs_dir) / f"{dataset}_{objective}_seed{seed}"
    if run_dir.exists() and any(run_dir.iterdir()):
        # train() would otherwise mix a stale checkpoint and pictures into this run's outputs
        raise SystemExit(f"error: {run_dir} is not empty; remove it or pass --runs-dir <new folder>")
    overrides = [
        "model=gan_mlp",
        f"dataset={dataset}",
        *OBJECTIVES[objective],
        f"device.type={args.device}",
        f"seed={seed}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.ckpt_every=0",  # only the final checkpoint: it is the one scored
        "logger.progress=false",
        "logger.tensorboard=false",
        "logger.interpolations=false",  # only the scatter plots are needed
        f"logger.every={max(1, args.steps // 10)}",
        f"logger.samples_every={max(1, args.steps // 4)}",  # a few scatter plots show the trajectory
        *args.extra,
    ]
    cfg = gentrain.build.compose(overrides)
    report = train(cfg, run_dir=run_dir, console=console)

    device = resolve_device(args.device)
    _, _, model, average, data = load_trained(str(run_dir), device)  # checkpoints/last.pt, as a user would score it
    modes, std = dataset_modes(data)
    with sampling_state(model, average):  # the weights and mode task=sample and task=eval use
        samples = torch.cat([x for x, _ in sample_batches(model, args.n_samples, args.sample_seed, args.n_samples)])
    stats = mode_stats(samples.float(), modes, std, n_sigma=N_SIGMA, min_fraction=args.min_fraction)
    return RunResult(
        dataset=dataset,
        objective=objective,
        seed=seed,
        steps=int(report["run"]["steps"]),
        stats=stats,
        train_time_s=float(report["run"]["train_time_s"]),
        steps_per_s=float(report["run"]["steps_per_s"]),
        run_dir=run_dir,
        pictures=sorted((run_dir / "samples").glob("step_*.png")),
        config=report["config"],
    )


def objective_summary(config: dict[str, Any]) -> str:
    """D steps per G step, gradient penalty and the optimizers, read from a run's resolved config."""
    objective, optimizers = config["objective"], config["model"]["optimizer"]
    parts = [f"{objective.get('d_steps', 1)} D step(s) per G step"]
    if "gp_weight" in objective:
        parts.append(f"gradient penalty lambda {objective['gp_weight']:g}")
    for phase in ("G", "D"):
        o = optimizers[phase]
        parts.append(f"{phase}: {o['_target_'].rsplit('.', 1)[-1]} lr {o['lr']:g} betas {tuple(o['betas'])}")
    return ", ".join(parts)


def cpu_model() -> str:
    """The CPU's marketing name on Linux (gentrain's device_name gives only the architecture for a CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def table(results: list[RunResult]) -> str:
    lines = [
        "| dataset | objective | seed | steps | modes covered / K | high-quality share | min HQ count per mode | train wall time (s) | steps/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.stats
        lines.append(
            f"| {r.dataset} | {r.objective} | {r.seed} | {r.steps} | {s.modes_covered} / {s.num_modes} | {s.high_quality:.3f} "
            f"| {s.min_count} | {r.train_time_s:.1f} | {r.steps_per_s:.1f} |"
        )
    return "\n".join(lines)


def summary(results: list[RunResult]) -> str:
    """Mean over seeds per (dataset, objective), when there are several seeds."""
    lines = ["| dataset | objective | seeds | mean modes covered / K | mean high-quality share |", "|---|---|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.objective), []).append(r)
    for (dataset, objective), rs in groups.items():
        covered = sum(r.stats.modes_covered for r in rs) / len(rs)
        hq = sum(r.stats.high_quality for r in rs) / len(rs)
        lines.append(f"| {dataset} | {objective} | {len(rs)} | {covered:.2f} / {rs[0].stats.num_modes} | {hq:.3f} |")
    return "\n".join(lines)


def markdown(results: list[RunResult], args: argparse.Namespace, total_s: float, load: tuple[tuple[float, ...], ...]) -> str:
    device = resolve_device(args.device)
    first = results[0].config
    model = first["model"]
    seen: dict[str, dict[str, Any]] = {}
    for r in results:
        seen.setdefault(r.objective, r.config)
    parts = [
        "# Mode collapse on 2-D toy mixtures: GAN vs WGAN-GP",
        "",
        f"Written by `{rel(Path(__file__))}`; command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])}`.",
        "",
        f"- device: {device.type} ({device_name(device) if device.type == 'cuda' else cpu_model()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, Python {platform.python_version()}",
        f"- training: {args.steps} generator steps per run, batch size {args.batch_size}, seeds {' '.join(map(str, args.seeds))} "
        f"(model init, data order; dataset sampler seed 0)",
        f"- model: `model=gan_mlp` (G widths {model['g_widths']}, z_dim {model['z_dim']}, G batch norm {model['g_batchnorm']}; "
        f"D widths {model['d_widths']}, spectral norm {model.get('spectral_norm', False)}, no batch norm)" + (f", extra overrides `{' '.join(args.extra)}`" if args.extra else ""),
        "- objectives: " + "; ".join(f"`{name}` ({objective_summary(config)})" for name, config in seen.items()),
        f"- scoring: {args.n_samples} samples per run from `checkpoints/last.pt` (noise seed {args.sample_seed}, generator in eval mode); "
        f"high quality = within {N_SIGMA:g} mode std of the nearest centre; a mode is covered with at least "
        f"max(1, ceil({args.min_fraction:g} * n / K)) HQ samples (PacGAN's 20 of 2,500 on 25 modes); "
        "`gentrain.metrics.modes.mode_stats`",
        "- reference: the true mixture itself scores K / K and an HQ share of 1 - exp(-4.5) = 0.989 (2-D Gaussian within 3 std)",
        f"- total benchmark time {total_s:.0f} s; 1-minute load average {load[0][0]:.1f} before, {load[1][0]:.1f} after "
        f"on {os.cpu_count()} logical CPUs (other work on the machine slows the timings)",
        "",
        table(results),
        "",
    ]
    if len(args.seeds) > 1:
        parts += [summary(results), ""]
    parts += ["HQ samples per mode (ring8: mode k at angle 2 pi k / 8; grid25: k = row * 5 + col):", ""]
    for r in results:
        parts.append(f"- {r.dataset} / {r.objective} / seed {r.seed}: {r.stats.counts.tolist()}")
    parts += [
        "",
        "Scatter plots written during training (generated points over real ones; the last is the scored checkpoint's, "
        f"with the trainer's fixed noise, not the scoring noise). Run dirs are under `{rel(Path(args.runs_dir))}` and are not committed:",
        "",
    ]
    for r in results:
        pictures = ", ".join(f"`{rel(p)}`" for p in r.pictures) or "(none)"
        parts.append(f"- {r.dataset} / {r.objective} / seed {r.seed}: {pictures}")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="generator steps per run (trainer.max_steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (seed=...)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-samples", type=int, default=2500, help="generated samples scored per run (PacGAN: 2,500)")
    parser.add_argument("--sample-seed", type=int, default=0, help="noise seed of the scored samples")
    parser.add_argument("--min-fraction", type=float, default=0.2, help="coverage threshold as a share of n / K")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run, e.g. model.g_widths=[256,256]")
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "toy_modes"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "toy_modes.md"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 is fastest on a busy machine")
    parser.add_argument("--verbose", action="store_true", help="show gentrain's own training output")
    args = parser.parse_args()

    if args.threads > 0:
        # training runs in this process: this sets its intra-op threads (oversubscribed threads spin on a shared CPU)
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    console = Console(stderr=True) if args.verbose else Console(file=open(os.devnull, "w"))
    results: list[RunResult] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        for dataset in args.datasets:
            for objective in args.objectives:
                r = run_one(dataset, objective, seed, args, console)
                s = r.stats
                print(
                    f"{dataset:7s} {objective:15s} seed {seed}: {s.modes_covered}/{s.num_modes} modes, HQ {s.high_quality:.3f}, "
                    f"{r.steps} steps in {r.train_time_s:.1f} s ({r.steps_per_s:.1f} steps/s)",
                    flush=True,
                )
                results.append(r)
    text = markdown(results, args, time.perf_counter() - t0, (load_before, os.getloadavg()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(table(results))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
