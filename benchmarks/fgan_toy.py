"""f-GAN's six divergences beside the non-saturating GAN on the 2-D ring and grid mixtures (a short CPU budget).

    OMP_NUM_THREADS=1 python benchmarks/fgan_toy.py                      # the committed table: 2,500 steps, seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/fgan_toy.py --steps 20000 --device cuda   # longer, where there is time

Every row is ``model=gan_mlp`` trained through gentrain's own ``train()`` with the same networks, optimizer, batch,
steps and seeds; only the objective differs: ``objective=non_saturating`` or ``objective=fgan
objective.divergence=<d>`` (generator=alternative, the f-GAN paper's default). Training, scoring and the mode
statistics are :func:`toy_modes.run_one`'s (benchmarks/toy_modes.py): modes covered by PacGAN's released rule and by
the fair-share rule, the high-quality share and the reverse KL of the mode histogram, from ``--n-samples`` samples of
the final checkpoint. The rows reach it through toy_modes' ``DEFAULT_ROWS`` table, extended in this process (the runs
go one after another here, in-process, so no worker needs the extension).

The budget: the whole benchmark is sized to about 15 minutes of one CPU core (42 runs), so the networks are narrower
than gan_mlp's defaults (G 3 x 256, D 2 x 256) and each run is 2,500 generator steps at batch 128. That is short for
these mixtures: read the table as how each divergence behaves early in training, not as converged results.
The last logged ``D/divergence_bound`` of each run (the critic's batch estimate of the variational lower bound,
Nowozin et al. 2016 eq. 6) is reported too; it is a bound on a different divergence in each row.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_modes  # noqa: E402  (benchmarks/ is not a package)

from gentrain.engine.device import device_name, resolve_device  # noqa: E402
from gentrain.errors import GentrainError  # noqa: E402

DIVERGENCES = ("kl", "reverse_kl", "pearson", "squared_hellinger", "jensen_shannon", "gan")
ROWS: dict[str, list[str]] = {
    "non_saturating": ["objective=non_saturating"],
    **{f"fgan_{d}": ["objective=fgan", f"objective.divergence={d}"] for d in DIVERGENCES},
}
#: The same networks for every row, narrower than gan_mlp's defaults to fit the CPU budget.
NETWORKS = ["model.g_widths=[256,256,256]", "model.d_widths=[256,256]"]


def last_bound(run_dir: str) -> float:
    """The last logged ``train/D/divergence_bound`` of a run (nan for a row that logs none)."""
    value = math.nan
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and "train/D/divergence_bound" in record:
            value = float(record["train/D/divergence_bound"])
    return value


def summary(results: list[toy_modes.RunResult], bounds: dict[tuple[str, str, int], float]) -> str:
    lines = [
        "| dataset | objective | seeds finished | modes (PacGAN rule) | modes (fair share) | HQ share | reverse KL | final D bound | train s / run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[toy_modes.RunResult]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.row), []).append(r)
    for (dataset, row), rs in groups.items():
        k = rs[0].stats["num_modes"]
        ms = toy_modes.mean_std
        lines.append(
            f"| {dataset} | {row} | {len(rs)} | {ms([r.stats['modes_pacgan'] for r in rs])} / {k} | {ms([r.stats['modes_fair'] for r in rs])} / {k} "
            f"| {ms([r.stats['high_quality'] for r in rs])} | {ms([r.stats['reverse_kl'] for r in rs])} "
            f"| {ms([bounds[(r.dataset, r.row, r.seed)] for r in rs])} | {sum(r.train_time_s for r in rs) / len(rs):.0f} |"
        )
    return "\n".join(lines)


def markdown(results, bounds, failed, args, total_s: float) -> str:
    command = " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    config = results[0].config
    return "\n".join([
        "# f-GAN divergences beside the non-saturating GAN on ring8 and grid25 (short CPU budget)",
        "",
        f"Written by `benchmarks/fgan_toy.py`; command: `OMP_NUM_THREADS=1 {command}`.",
        "",
        f"- device: {args.device} ({device_name(resolve_device(args.device))}), 1 CPU thread, runs one after another; "
        f"torch {torch.__version__}, Python {platform.python_version()}; total wall time {total_s:.0f} s for {len(results)} runs",
        f"- training: {args.steps} generator steps per run (1 D step each), seeds {' '.join(map(str, args.seeds))}, "
        f"every row the same but its objective (shown for the first row): {toy_modes.settings(config)}",
        "- rows: `objective=non_saturating` and `objective=fgan objective.divergence=<d>` with `objective.generator=alternative` (the default)",
        f"- scoring: {args.n_samples} samples of `checkpoints/last.pt` (noise seed {args.sample_seed}); `gentrain.metrics.modes.mode_stats` "
        "as in `benchmarks/toy_modes.py` (modes by PacGAN's released rule, >= 1 high-quality sample; fair-share rule, >= 20% of n / K; "
        "HQ = within 3 std of the nearest centre; reverse KL of the HQ mode histogram from uniform)",
        "- final D bound: the last logged `D/divergence_bound` (a batch of 128): the critic's estimate of a lower bound on each row's own "
        "divergence (`gan`: 2 JSD - log 4; `jensen_shannon`: 2 JSD), so the column compares rows only loosely; the NS GAN logs none",
        f"- a short budget: {args.steps} steps is far from PacGAN's 400,000 (`benchmarks/toy_modes.py --paper`); the numbers show early "
        f"behaviour, with {len(args.seeds)} seeds, and differences inside one std are not findings",
        "",
        "## Mean ± std over seeds",
        "",
        summary(results, bounds),
        "",
        "Runs that stopped (gentrain refuses to go on once a logged value is nan; left out of the means above):",
        "",
        *([f"- {d} / {r} / seed {s}: {e}" for d, r, s, e in failed] or ["- none"]),
        "",
        "## Every run",
        "",
        toy_modes.runs_table(results),
        "",
        "The f-GAN paper (Nowozin, Cseke & Tomioka 2016) reports no toy-mixture table; its MNIST comparison of divergences "
        "(Table 4) is a Parzen-window log-likelihood, which gentrain does not reproduce.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(toy_modes.DATASETS), choices=toy_modes.DATASETS)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-samples", type=int, default=2500)
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--runs-dir", default=str(toy_modes.REPO / "outputs" / "fgan_toy"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fgan_toy_cpu.md"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    # what toy_modes.run_one reads of its arguments
    run_args = argparse.Namespace(
        paper=False, device=args.device, steps=args.steps, batch_size=args.batch_size, n_samples=args.n_samples,
        sample_seed=args.sample_seed, eval_every=args.eval_every, min_fraction=0.2, extra=NETWORKS, runs_dir=args.runs_dir,
        threads=1, verbose=args.verbose,
    )
    toy_modes.DEFAULT_ROWS.update(ROWS)
    jobs = [(d, r, s) for d in args.datasets for s in args.seeds for r in args.rows]
    for d, r, s in jobs:
        run_dir = Path(args.runs_dir) / f"{d}_{r}_seed{s}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"error: {run_dir} is not empty; remove it or pass --runs-dir <new folder>")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, bounds, failed = [], {}, []
    with open(out.with_suffix(".jsonl"), "w") as jsonl:
        for d, r, s in jobs:
            try:
                res = toy_modes.run_one(d, r, s, run_args)
            except GentrainError as error:  # a run whose logs became nan: recorded, and left out of the means
                print(f"{d:7s} {r:24s} seed {s}: stopped: {error}", flush=True)
                failed.append((d, r, s, str(error)))
                jsonl.write(json.dumps({"dataset": d, "row": r, "seed": s, "failed": str(error)}) + "\n")
                continue
            bounds[(d, r, s)] = last_bound(res.run_dir)
            st = res.stats
            print(f"{d:7s} {r:24s} seed {s}: {st['modes_pacgan']}/{st['num_modes']} modes, fair {st['modes_fair']}, "
                  f"HQ {st['high_quality']:.3f}, rKL {toy_modes.fmt(st['reverse_kl'])}, bound {bounds[(d, r, s)]:.3g}, "
                  f"{res.train_time_s:.0f} s", flush=True)
            jsonl.write(json.dumps({
                "dataset": d, "row": r, "seed": s, "steps": res.steps, "batch_size": args.batch_size, "n_samples": args.n_samples,
                "overrides": toy_modes.overrides_for(d, r, s, run_args), "stats": {k: v for k, v in st.items() if k != "counts"},
                "hq_counts": st["counts"], "final_divergence_bound": bounds[(d, r, s)], "train_time_s": res.train_time_s,
                "steps_per_s": res.steps_per_s, "device": device_name(resolve_device(args.device)), "torch": torch.__version__,
                "python": platform.python_version(),
            }) + "\n")
            jsonl.flush()
            results.append(res)
    out.write_text(markdown(results, bounds, failed, args, time.perf_counter() - t0))
    print()
    print(summary(results, bounds))
    print(f"\nwritten to {out} and {out.with_suffix('.jsonl')}")


if __name__ == "__main__":
    main()
