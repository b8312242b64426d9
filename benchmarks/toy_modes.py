"""Mode-collapse benchmark on the 2-D ring and grid mixtures: modes covered, high-quality share, reverse KL.

    python benchmarks/toy_modes.py --paper --seeds 0 1 2 --steps 20000 --jobs 2   # PacGAN's Table 1 setting
    python benchmarks/toy_modes.py --steps 3000                                   # gentrain's gan_mlp defaults

``--paper`` trains the published setting of PacGAN (Lin et al. 2018, Table 1; VEEGAN's toy
experiment), ``experiment=pacgan_ring`` / ``experiment=pacgan_grid`` (see those YAML files for every
setting and where it comes from), as three rows: GAN (pack 1, batch 100), PacGAN2
(``objective.pack=2``, batch 200 = 100 packs) and WGAN-GP on the same networks (Gulrajani et al.
2017's optimizer: Adam 1e-4, betas (0, 0.9), lambda 10, 5 critic steps). Without ``--paper``:
``model=gan_mlp`` with the non-saturating loss and with WGAN-GP on gentrain's own dataset defaults.

Every run goes through gentrain's own ``train()``. During training the mode metric runs every
``--eval-every`` steps (``eval.every``, 2,500 samples, the trainer's fixed evaluation noise), which
gives the first step at which each run meets the target; at the end, ``checkpoints/last.pt`` is
reloaded as a user would and ``--n-samples`` points drawn with ``--sample-seed`` are scored with
:func:`gentrain.metrics.modes.mode_stats`: modes covered by PacGAN's released rule (at least one
high-quality sample) and by the fair-share rule (at least 20% of n / K), the high-quality share
(closer than 3 std to the nearest centre), and PacGAN's reverse KL of the mode histogram from the
uniform. The published columns are printed beside the means over seeds. ``--jobs N`` trains N runs
at once in separate processes (one CPU thread each by default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from gentrain.engine.device import device_name, resolve_device

REPO = Path(__file__).resolve().parent.parent

#: --paper rows: name -> overrides on top of experiment=pacgan_<ring|grid>.
PAPER_ROWS: dict[str, list[str]] = {
    "GAN": [],
    "PacGAN2": ["objective.pack=2", "trainer.batch_size=200"],
    "WGAN-GP": [
        "objective=wasserstein_gp",
        "model.optimizer.G.lr=1e-4", "model.optimizer.G.betas=[0.0,0.9]",
        "model.optimizer.D.lr=1e-4", "model.optimizer.D.betas=[0.0,0.9]",
    ],
}
#: Default rows: name -> overrides on top of model=gan_mlp dataset=<ring8|grid25>.
DEFAULT_ROWS: dict[str, list[str]] = {
    "non_saturating": ["objective=non_saturating"],
    "wasserstein_gp": PAPER_ROWS["WGAN-GP"],
}
PAPER_PRESET = {"ring8": "pacgan_ring", "grid25": "pacgan_grid"}
DATASETS = ("ring8", "grid25")

#: PacGAN (Lin et al. 2018) Table 1, mean over 10 runs: (modes covered by its released rule, HQ share, reverse KL).
#: Modes and HQ as quoted in gentrain's issue 10; the reverse KL values were transcribed from the paper's
#: Table 1 and should be read as such (arXiv:1712.04086, NeurIPS 2018).
PUBLISHED: dict[tuple[str, str], tuple[float, float, float]] = {
    ("ring8", "GAN"): (6.3, 0.982, 0.45),
    ("ring8", "PacGAN2"): (7.9, 0.956, 0.07),
    ("grid25", "GAN"): (17.3, 0.948, 0.70),
    ("grid25", "PacGAN2"): (23.8, 0.913, 0.13),
}
#: Issue 10's targets: (modes by PacGAN's rule, HQ share); WGAN-GP: every mode.
TARGETS = {"ring8": (6, 0.95), "grid25": (17, 0.90)}


@dataclass
class RunResult:
    dataset: str
    row: str
    seed: int
    steps: int
    stats: dict[str, Any]  # ModeStats.as_dict() of the final checkpoint
    trajectory: list[dict[str, float]]  # in-training evaluations: step, pacgan, fair, hq, rkl
    train_time_s: float
    steps_per_s: float
    run_dir: str
    pictures: list[str]
    config: dict[str, Any] = field(default_factory=dict)


def target(dataset: str, row: str) -> tuple[int, float]:
    """(modes by PacGAN's rule, HQ share) a run must reach; WGAN-GP must cover every mode."""
    modes, hq = TARGETS[dataset]
    return ({"ring8": 8, "grid25": 25}[dataset], hq) if row == "WGAN-GP" else (modes, hq)


def meets(dataset: str, row: str, modes: float, hq: float) -> bool:
    want_modes, want_hq = target(dataset, row)
    return modes >= want_modes and hq >= want_hq


def overrides_for(dataset: str, row: str, seed: int, args: argparse.Namespace) -> list[str]:
    if args.paper:
        base = [f"experiment={PAPER_PRESET[dataset]}", *PAPER_ROWS[row]]
    else:
        base = ["model=gan_mlp", f"dataset={dataset}", *DEFAULT_ROWS[row], "trainer.batch_size=256"]
    return [
        *base,
        f"device.type={args.device}",
        f"seed={seed}",
        f"trainer.max_steps={args.steps}",
        *([f"trainer.batch_size={args.batch_size}"] if args.batch_size else []),
        "trainer.ckpt_every=0",  # only the final checkpoint: it is the one scored
        "logger.progress=false",
        "logger.tensorboard=false",
        "logger.interpolations=false",
        f"logger.every={max(1, args.steps // 20)}",
        f"logger.samples_every={max(1, args.steps // 4)}",
        f"eval.metrics=[modes{args.n_samples}]",
        f"eval.every={args.eval_every}",
        *args.extra,
    ]


def run_one(dataset: str, row: str, seed: int, args: argparse.Namespace) -> RunResult:
    """Train one run through gentrain's ``train()`` and score its last checkpoint (runs in a worker process with --jobs)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import gentrain.build
    from gentrain.metrics.modes import N_SIGMA, dataset_modes, mode_stats
    from gentrain.sampling import sample_batches, sampling_state
    from gentrain.tasks.common import load_trained
    from gentrain.tasks.training import train
    from rich.console import Console

    run_dir = Path(args.runs_dir) / f"{dataset}_{row}_seed{seed}"
    cfg = gentrain.build.compose(overrides_for(dataset, row, seed, args))
    console = Console(stderr=True) if args.verbose else Console(file=open(os.devnull, "w"))
    report = train(cfg, run_dir=run_dir, console=console)

    _, _, model, average, data = load_trained(str(run_dir), resolve_device(args.device))  # checkpoints/last.pt
    modes, std = dataset_modes(data)
    with sampling_state(model, average):  # the weights and mode task=sample and task=eval use
        samples = torch.cat([x for x, _ in sample_batches(model, args.n_samples, args.sample_seed, args.n_samples)])
    stats = mode_stats(samples.float(), modes, std, n_sigma=N_SIGMA, min_fraction=args.min_fraction)
    key = f"modes{args.n_samples}"
    trajectory = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "eval":
            trajectory.append({
                "step": record["step"], "pacgan": record[f"{key}_pacgan"], "fair": record[f"{key}_fair"],
                "hq": record[f"{key}_hq"], "rkl": record.get(f"{key}_rkl", math.nan),
            })
    return RunResult(
        dataset=dataset, row=row, seed=seed, steps=int(report["run"]["steps"]), stats=stats.as_dict(), trajectory=trajectory,
        train_time_s=float(report["run"]["train_time_s"]), steps_per_s=float(report["run"]["steps_per_s"]),
        run_dir=str(run_dir), pictures=[str(p) for p in sorted((run_dir / "samples").glob("step_*.png"))],
        config=report["config"],
    )


def first_step_meeting(r: RunResult) -> int | None:
    """The first in-training evaluation at which the run met its target (None: never)."""
    for t in r.trajectory:
        if meets(r.dataset, r.row, t["pacgan"], t["hq"]):
            return int(t["step"])
    return None


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{m:.3g} ± {s:.2g}"


def fmt(v: float, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def runs_table(results: list[RunResult]) -> str:
    lines = [
        "| dataset | method | seed | steps | modes (PacGAN rule, >= 1 HQ) | modes (fair share, >= min) | min | HQ share | reverse KL "
        "| first eval step meeting the target | train s | steps/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.stats
        first = first_step_meeting(r)
        lines.append(
            f"| {r.dataset} | {r.row} | {r.seed} | {r.steps} | {s['modes_pacgan']} / {s['num_modes']} | {s['modes_fair']} / {s['num_modes']} "
            f"| {s['min_count']} | {s['high_quality']:.3f} | {fmt(s['reverse_kl'])} | {first if first is not None else 'not met'} "
            f"| {r.train_time_s:.0f} | {r.steps_per_s:.1f} |"
        )
    return "\n".join(lines)


def summary_table(results: list[RunResult]) -> str:
    lines = [
        "| dataset | method | seeds | modes (PacGAN rule) | HQ share | reverse KL | modes (fair share) | published modes | published HQ "
        "| published reverse KL | target (modes, HQ) | seeds meeting it at the end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.row), []).append(r)
    for (dataset, row), rs in groups.items():
        pub = PUBLISHED.get((dataset, row))
        want = target(dataset, row)
        met = sum(meets(dataset, row, r.stats["modes_pacgan"], r.stats["high_quality"]) for r in rs)
        lines.append(
            f"| {dataset} | {row} | {len(rs)} | {mean_std([r.stats['modes_pacgan'] for r in rs])} "
            f"| {mean_std([r.stats['high_quality'] for r in rs])} | {mean_std([r.stats['reverse_kl'] for r in rs])} "
            f"| {mean_std([r.stats['modes_fair'] for r in rs])} "
            f"| {pub[0] if pub else '-'} | {pub[1] if pub else '-'} | {pub[2] if pub else '-'} "
            f"| >= {want[0]}, >= {want[1]:.2f} | {met} / {len(rs)} |"
        )
    return "\n".join(lines)


def trajectory_table(results: list[RunResult]) -> str:
    steps = sorted({int(t["step"]) for r in results for t in r.trajectory})
    if not steps:
        return "(no in-training evaluations)"
    lines = ["| dataset | method | seed | " + " | ".join(str(s) for s in steps) + " |", "|---|---|---:|" + "---:|" * len(steps)]
    for r in results:
        by_step = {int(t["step"]): t for t in r.trajectory}
        cells = [f"{int(by_step[s]['pacgan'])} / {by_step[s]['hq']:.2f}" if s in by_step else "" for s in steps]
        lines.append(f"| {r.dataset} | {r.row} | {r.seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings(config: dict[str, Any]) -> str:
    m, o, t, d = config["model"], config["objective"], config["trainer"], config["dataset"]
    opt = m["optimizer"]
    parts = [
        f"data {d['name']} (std {d['std']}, {d['n_train']} points)",
        f"G {m['g_widths']} {m['g_activation']} batch norm {m['g_batchnorm']}, z_dim {m['z_dim']}",
        f"D {m['d_widths']} {m['d_activation']}" + (f" ({m['maxout_pieces']} pieces)" if m["d_activation"] == "maxout" else "")
        + f" batch norm {m['d_batchnorm']}, init {m['init']}",
        f"{o['_target_'].rsplit('.', 1)[-1]}, {o.get('d_steps', 1)} D step(s), pack {o.get('pack', 1)}"
        + (f", lambda {o['gp_weight']:g}" if "gp_weight" in o else ""),
        f"Adam lr {opt['G']['lr']:g} betas {tuple(opt['G']['betas'])}, batch {t['batch_size']}",
    ]
    return "; ".join(parts)


def markdown(results: list[RunResult], args: argparse.Namespace, total_s: float, load: tuple[tuple[float, ...], ...]) -> str:
    rows_seen: dict[str, dict[str, Any]] = {}
    for r in results:
        rows_seen.setdefault(f"{r.dataset} / {r.row}", r.config)
    title = "PacGAN's Table 1 setting" if args.paper else "gentrain's gan_mlp defaults"
    parts = [
        f"# Mode collapse on 2-D toy mixtures: {title}",
        "",
        f"Written by `benchmarks/toy_modes.py`; command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])}`.",
        "",
        f"- device: {args.device} ({device_name(resolve_device(args.device))}), torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} CPU thread(s) per run, {args.jobs} run(s) at once, Python {platform.python_version()}",
        f"- training: {args.steps} generator steps per run, seeds {' '.join(map(str, args.seeds))} (model init, data order; "
        "dataset sampler seed 0); total wall time {:.0f} s; 1-minute load average {:.1f} before, {:.1f} after on {} logical CPUs".format(
            total_s, load[0][0], load[1][0], os.cpu_count()),
        f"- scoring: {args.n_samples} samples from `checkpoints/last.pt` (noise seed {args.sample_seed}, sampling state: eval mode); "
        "high quality = closer than 3 std to the nearest centre; modes covered by PacGAN's released rule (>= 1 HQ sample, "
        f"`MetricLogger` in github.com/fjxmlzn/PacGAN) and by the fair-share rule (>= max(1, ceil({args.min_fraction:g} n / K)) HQ samples); "
        "reverse KL = KL(HQ mode histogram || uniform); `gentrain.metrics.modes.mode_stats`",
        f"- in-training evaluations every {args.eval_every} steps: the same metric on {args.n_samples} samples of the trainer's fixed "
        "evaluation noise (the trajectory table and the 'first step' column)",
        "- reference: the true mixture itself scores K / K modes, an HQ share of 1 - exp(-4.5) = 0.989 and a reverse KL near 0",
        "- settings per row (read back from each run's resolved config):",
        *[f"  - {name}: {settings(config)}" for name, config in rows_seen.items()],
        "",
        "## Means over seeds, next to the published values",
        "",
        summary_table(results),
        "",
        "Published: PacGAN (Lin et al. 2018) Table 1, mean of 10 runs of 400 epochs (400,000 steps) each, scored by the released "
        "rule; WGAN-GP has no published row in that table (the issue's target for it: every mode).",
        "",
        "## Every run (final checkpoint)",
        "",
        runs_table(results),
        "",
        "## Trajectory: modes (PacGAN rule) / HQ share at each in-training evaluation",
        "",
        trajectory_table(results),
        "",
        "HQ samples per mode of the final checkpoint (ring8: mode k at angle 2 pi k / 8; grid25: k = row * 5 + col):",
        "",
        *[f"- {r.dataset} / {r.row} / seed {r.seed}: {r.stats['counts']}" for r in results],
        "",
        f"Scatter plots of each run are under `{rel(args.runs_dir)}/<dataset>_<method>_seed<seed>/samples/` (not committed).",
    ]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help="PacGAN's published setting (experiment=pacgan_ring / pacgan_grid)")
    parser.add_argument("--steps", type=int, default=3000, help="generator steps per run (trainer.max_steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (seed=...)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=0, help="override every row's batch size (0: the row's own)")
    parser.add_argument("--n-samples", type=int, default=2500, help="generated samples scored per run (PacGAN: 2,500)")
    parser.add_argument("--sample-seed", type=int, default=0, help="noise seed of the final scored samples")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between in-training evaluations (eval.every)")
    parser.add_argument("--min-fraction", type=float, default=0.2, help="the fair-share rule's threshold as a share of n / K")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--rows", nargs="+", default=None, help="methods to run (--paper: GAN PacGAN2 WGAN-GP; else non_saturating wasserstein_gp)")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--runs-dir", default=None, help="default: outputs/toy_modes_paper or outputs/toy_modes")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/toy_modes_paper.md or toy_modes.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (0: torch's default)")
    parser.add_argument("--verbose", action="store_true", help="show gentrain's own training output")
    args = parser.parse_args()
    rows = PAPER_ROWS if args.paper else DEFAULT_ROWS
    args.rows = args.rows or list(rows)
    unknown = [r for r in args.rows if r not in rows]
    if unknown:
        parser.error(f"unknown --rows {unknown}; choose from {list(rows)}")
    name = "toy_modes_paper" if args.paper else "toy_modes"
    args.runs_dir = args.runs_dir or str(REPO / "outputs" / name)
    args.out = args.out or str(Path(__file__).parent / "results" / f"{name}.md")

    jobs = [(d, r, s) for s in args.seeds for d in args.datasets for r in args.rows]
    for d, r, s in jobs:
        run_dir = Path(args.runs_dir) / f"{d}_{r}_seed{s}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"error: {run_dir} is not empty; remove it or pass --runs-dir <new folder>")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results: list[RunResult] = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, d, r, s, args) for d, r, s in jobs]
        for future in futures:
            res = future.result()
            st = res.stats
            print(f"{res.dataset:7s} {res.row:15s} seed {res.seed}: {st['modes_pacgan']}/{st['num_modes']} modes (PacGAN rule), "
                  f"{st['modes_fair']} (fair share), HQ {st['high_quality']:.3f}, reverse KL {fmt(st['reverse_kl'])}, "
                  f"{res.steps} steps in {res.train_time_s:.0f} s", flush=True)
            results.append(res)
    text = markdown(results, args, time.perf_counter() - t0, (load_before, os.getloadavg()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(summary_table(results))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
