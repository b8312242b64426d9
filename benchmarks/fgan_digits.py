"""f-GAN divergences beside the non-saturating GAN on the digits: FID and KID of DCGAN, same networks, steps and seeds.

    python benchmarks/fgan_digits.py --steps 3000 --seeds 0 1 2

Every row trains ``model=dcgan dataset=digits`` (gentrain's default networks and Adam settings) through gentrain's own
``train()`` with one objective, and its end-of-training evaluation scores the final weights (nothing selected) with the
standard protocol at the digits' scale: ``fid250`` / ``kid250`` of 250 samples against the first 250 test images
(TF-Inception pool3 of the 8x8 images resized, grayscale tiled to 3 channels). ``divergence=gan`` and
``jensen_shannon`` train exactly as the NS GAN (the same G loss; D's differs by a constant), so they are left out.
Nowozin et al. 2016 report a Parzen-window log-likelihood on MNIST (Table 4), which gentrain does not reproduce.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console

import gentrain.build
from gentrain.metrics.report import versions
from gentrain.tasks.training import train

REPO = Path(__file__).resolve().parent.parent
ROWS = {
    "non_saturating": ["objective=non_saturating"],
    "fgan_kl": ["objective=fgan", "objective.divergence=kl"],
    "fgan_reverse_kl": ["objective=fgan", "objective.divergence=reverse_kl"],
    "fgan_pearson": ["objective=fgan", "objective.divergence=pearson"],
    "fgan_squared_hellinger": ["objective=fgan", "objective.divergence=squared_hellinger"],
}


def references(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    """The floor and the real data at the same count, with the loss table's code (benchmarks/fid_table.py)."""
    import sys

    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fid_table import floor_row, real_row

    from gentrain.build import build
    from gentrain.metrics.evaluate import Evaluator, ReferenceCache
    from gentrain.metrics.inception import InceptionFeatures, resolve_weights

    base = gentrain.build.compose(["dataset=digits", "device=cpu"])
    dataset, device = build(base.dataset, "dataset"), torch.device("cpu")
    es = OmegaConf.to_container(base.eval, resolve=True)
    extractor = InceptionFeatures(resolve_weights(es["inception_weights"]), device)
    cache = ReferenceCache(Path(str(es["cache_dir"])))
    fid, kid = f"fid{args.n}", f"kid{args.n}"
    evaluator = Evaluator([fid, kid], dataset, "test", lambda: extractor, cache, device, batch_size=250, seed=0,
                          options={"kid_subsets": 100, "kid_subset_size": 1000})
    ns = argparse.Namespace(n=args.n, sample_seed=0, eval_batch_size=250, runs_dir=args.runs_dir)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    return [(r.label, r.values) for r in (floor_row(dataset, evaluator, ns), real_row(dataset, evaluator, extractor, cache, ns))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=250, help="samples per side (the digits' test split has 297)")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--references", action="store_true", help="also the floor (per-pixel histogram) and real-data (first n train images) rows")
    p.add_argument("--runs-dir", default=str(REPO / "outputs" / "fgan_digits"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fgan_digits_cpu.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    fid, kid = f"fid{args.n}", f"kid{args.n}"
    console = Console(file=open(os.devnull, "w"))
    records, t_all = [], time.perf_counter()
    for row in args.rows:
        for seed in args.seeds:
            run_dir = Path(args.runs_dir) / f"{row}_seed{seed}"
            cfg = gentrain.build.compose([
                "model=dcgan", "dataset=digits", *ROWS[row], f"seed={seed}", f"trainer.max_steps={args.steps}", "device=cpu",
                f"eval.metrics=[{fid},{kid}]", "eval.every=0", "eval.use_ema=false", "logger.samples_every=0", "logger.curves=false",
                "logger.progress=false", "logger.tensorboard=false", f"logger.every={max(1, args.steps // 10)}", "trainer.ckpt_every=0",
            ])
            t0 = time.perf_counter()
            try:
                report = train(cfg, run_dir=run_dir, console=console)
                values, status = report["metrics"], "completed"
            except Exception as e:  # a divergence stops the run with one line: the row says so
                values, status = {}, f"stopped: {str(e).splitlines()[0][:160]}"
            rec = {"row": row, "seed": seed, "steps": args.steps, "n": args.n, "status": status, fid: values.get(fid), kid: values.get(kid),
                   "wall_s": round(time.perf_counter() - t0, 1)}
            records.append(rec)
            print(json.dumps(rec), flush=True)
    refs = references(args) if args.references else []
    v = versions()
    lines = [
        "# f-GAN divergences vs the non-saturating GAN on the digits (DCGAN, CPU)",
        "",
        f"Written by `benchmarks/fgan_digits.py`; command: `python benchmarks/fgan_digits.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}`.",
        "",
        f"- device: cpu ({platform.processor() or platform.machine()}), 1 torch thread; gentrain {v['gentrain']}, torch {v['torch']}, Python {v['python']}",
        f"- every row: `model=dcgan dataset=digits` (gentrain's defaults: widths 64, z 100, Adam 2e-4 betas (0.5, 0.999), batch 64), "
        f"{args.steps} G steps, seeds {', '.join(map(str, args.seeds))}; scored: the final weights (no selection, no weight average)",
        f"- `{fid}`/`{kid}`: {args.n} samples (eval seed 0) vs the first {args.n} digits test images, TF-Inception pool3 of the "
        "8x8 images (resized by the extractor), grayscale tiled to 3 channels; small counts bias FID upward: compare rows only",
        f"- wall time {time.perf_counter() - t_all:.0f} s in all",
        "- `divergence=gan` and `jensen_shannon` train exactly as the NS GAN (same G loss, D's shifted by a constant; "
        "`benchmarks/results/fgan_toy_cpu.md` shows them equal to the digit), so they are not rerun here",
        "- the paper's MNIST comparison is a Parzen-window log-likelihood (Nowozin et al. 2016, Table 4), not reproduced",
        "",
        f"| objective | seeds finished | {fid} mean ± std | {kid} mean ± std | per seed ({fid}) |",
        "|---|---:|---:|---:|---|",
    ]
    for row in args.rows:
        rs = [r for r in records if r["row"] == row]
        ok = [r for r in rs if r[fid] is not None]
        f = [r[fid] for r in ok]
        k = [r[kid] for r in ok]

        def ms(x: list[float], d: int) -> str:
            if not x:
                return ""
            return f"{statistics.mean(x):.{d}f}" + (f" ± {statistics.stdev(x):.{d}f}" if len(x) > 1 else "")

        per = ", ".join(f"{r[fid]:.1f}" if r[fid] is not None else r["status"] for r in rs)
        lines.append(f"| {row} | {len(ok)} / {len(rs)} | {ms(f, 1)} | {ms(k, 4)} | {per} |")
    for label, values in refs:
        lines.append(f"| {label} | | {values[fid]:.1f} | {values[kid]:.4f} | |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
