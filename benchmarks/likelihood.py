"""Likelihood benchmark: train each likelihood model and report its test NLL (nats) and bits/dim.

    python benchmarks/likelihood.py --dataset digits --steps 2000 --device cpu
    python benchmarks/likelihood.py --dataset fashion_mnist --steps 20000 --device cuda --n-test 10000

Runs gentrain's own training and evaluation (the nll<count> protocol: exact for PixelCNN and MADE,
dequantised for flows, the IWAE bound with --iwae-k samples for the VAE) and writes a markdown
table with the device, steps, wall time and sample counts to benchmarks/results/likelihood_<dataset>.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from rich.console import Console

from gentrain.build import compose
from gentrain.engine.device import device_name, resolve_device
from gentrain.tasks import train

#: model -> its objective (per-model overrides come from --set)
MODELS = {
    "vae": "elbo",
    "conv_vae": "elbo",
    "realnvp": "flow_nll",
    "glow": "flow_nll",
    "pixelcnn": "ar_nll",
    "made": "ar_nll",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-test", type=int, default=10000, help="test examples (fewer when the split is smaller)")
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="outputs/benchmarks/likelihood")
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="MODEL:KEY=VALUE",
                        help="per-model overrides, e.g. realnvp:model.hidden=32 (listed in the results file)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_model: dict[str, list[str]] = {}
    for item in args.set:
        name, _, override = item.partition(":")
        per_model.setdefault(name, []).append(override)
    device = resolve_device(args.device)
    console = Console()
    rows = []
    metric = f"nll{args.n_test // 1000}k" if args.n_test % 1000 == 0 else f"nll{args.n_test}"
    for name in args.models.split(","):
        objective = MODELS[name]
        overrides = [
            f"model={name}", f"dataset={args.dataset}", f"objective={objective}", f"device={device.type}", f"seed={args.seed}",
            f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch_size}", "logger.progress=false",
            f"logger.samples_every={args.steps}", f"eval.metrics=[{metric}]", f"eval.iwae_k={args.iwae_k}", *per_model.get(name, []),
        ]
        run_dir = Path(args.runs) / args.dataset / name
        t0 = time.perf_counter()
        report = train(compose(overrides), run_dir=run_dir, console=console)
        (result,) = report["evaluation"]
        rows.append(
            {
                "model": name,
                "objective": objective,
                "steps": report["run"]["steps"],
                "train_s": report["run"]["train_time_s"],
                "steps_per_s": report["run"]["steps_per_s"],
                "test_nll_nats": result["values"][metric],
                "test_bpd": result["values"][f"{metric}_bpd"],
                "n_test": result["n_reference"],
                "likelihood": "; ".join(result["notes"]),
                "train_bpd_last": report["final"].get("train/main/bits_per_dim"),
                "total_s": round(time.perf_counter() - t0, 1),
                "samples": report["samples"],
                "overrides": " ".join(per_model.get(name, [])) or "defaults",
            }
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"likelihood_{args.dataset}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Likelihood benchmark: {args.dataset}",
        "",
        f"Device: {device.type} ({device_name(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}.",
        f"Each model: {args.steps} steps of batch {args.batch_size}, seed {args.seed}, default architecture of its config;"
        f" test NLL on the first {args.n_test} test examples (fewer where the split is smaller: see n_test).",
        f"Command: `python benchmarks/likelihood.py --dataset {args.dataset} --steps {args.steps} --device {args.device} --n-test {args.n_test} --iwae-k {args.iwae_k}"
        + (f" --set {' '.join(args.set)}" if args.set else "") + "`",
        "",
        "| model | objective | architecture | steps | train s | steps/s | train bits/dim (last 50 steps) | test NLL (nats) | test bits/dim | n_test | what the number is |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['overrides']} | {r['steps']} | {r['train_s']:.0f} | {r['steps_per_s']:.1f} | {r['train_bpd_last']:.3f} | {r['test_nll_nats']:.2f} | "
            f"{r['test_bpd']:.3f} | {r['n_test']} | {r['likelihood']} |"
        )
    out.write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines), highlight=False)


if __name__ == "__main__":
    main()
