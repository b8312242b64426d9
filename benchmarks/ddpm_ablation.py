"""Why gentrain's small DDPM U-Net sampled worse than diffusers' (issue 22): one change at a time, the same runs.

    python benchmarks/ddpm_ablation.py --seeds 0 1        # benchmarks/results/ddpm_ablation_digits.md

Every variant trains the same 176,849-parameter layout (``model.channels=16 model.num_res_blocks=1`` on the 8x8
digits: channels (16, 32), attention at 4x4) in the same plain loop: the same data order, timesteps and noise for
every network of a seed; 1,500 steps of batch 64, Adam 2e-4 with 150 linear warm-up steps, clip 1.0, EMA 0.9999 with
the (1 + t) / (10 + t) warm-up, dropout 0.1, T = 1000 linear betas, eps prediction. Each is scored by the same
hand-written DDIM (50 steps, eta 0, x0 clipped to [-1, 1]) on 500 samples: the Frechet distance of pixel vectors
(model space [-1, 1]) against the **validation split** (150 digits: a choice made here must not look at the test
split), and the eps-MSE of the EMA network on the validation digits in ten timestep buckets.

Variants (gentrain's U-Net unless named):

- ``gcd32``: GroupNorm groups gcd(32, C), the rule before issue 22 (16 and 32 channels: one channel per group);
- ``gcd32_nozero``: the same without the zero initialisation of the residual, attention and output convolutions;
- ``gcd16``: gcd(16, C) groups (diffusers' ``norm_num_groups=16`` of the issue's peer);
- ``per2``, ``per4``, ``per8``: the rule of ``model.group_channels`` = 2, 4 (the default), 8;
- ``diffusers``: diffusers' ``UNet2DModel`` of the same layout and ``norm_num_groups=16``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import gentrain.families.diffusion.model as M
from gentrain.data.images import Digits
from gentrain.metrics.fidelity import frechet_distance, moments
from gentrain.metrics.report import versions
from gentrain.shared import to_model_space

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("gcd32", "gcd32_nozero", "gcd16", "per2", "per4", "per8", "diffusers")


def network(variant: str, seed: int) -> tuple[Any, torch.nn.Module]:
    """The variant's eps network (a callable (x, t) -> eps) and its module. Patches are made per process (--one)."""
    torch.manual_seed(seed)
    if variant == "diffusers":
        from diffusers import UNet2DModel

        d = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                        norm_num_groups=16, dropout=0.1)
        return (lambda x, t: d(x, t).sample), d
    group_channels = M.GROUP_CHANNELS
    if variant.startswith("gcd"):
        k = int(variant[3:5])
        M.norm_groups = lambda c, _gc, k=k: math.gcd(k, c)  # group_norm looks the rule up at call time
    if variant.endswith("_nozero"):
        M._zero = lambda m: m
    if variant.startswith("per"):
        group_channels = int(variant[3:])
    net = M.UNet((1, 8, 8), 16, [1, 2], [4], 1, 0.1, None, group_channels)
    return (lambda x, t: net(x, t)), net


def plain_update(fn: Any, net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, proc: Any, xb: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor, lr: float, step: int) -> None:
    """One step of the plain DDPM loop both ablations use: L_simple, the rate ``lr``, clipping at 1, the warm-up EMA at 0.9999."""
    loss = F.mse_loss(fn(proc.q_sample(xb, t, noise).float(), t), noise)
    for pg in opt.param_groups:
        pg["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    d = min(0.9999, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - d)


def run(variant: str, seed: int, steps: int = 1500, batch: int = 64) -> dict[str, Any]:
    torch.set_num_threads(1)
    ds = Digits(val_fraction=0.1)
    x, val = to_model_space(ds.load("train").x), to_model_space(ds.load("val").x)
    fn, net = network(variant, seed)
    proc = M.GaussianDiffusion(1000, "linear", "eps", "fixedlarge")
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.Adam(net.parameters(), 2e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    perm, pos = torch.randperm(len(x), generator=g), 0
    for step in range(steps):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        xb = x[perm[pos : pos + batch]]
        pos += batch
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(xb.shape, generator=g)
        plain_update(fn, net, ema, opt, proc, xb, t, noise, 2e-4 * min(1.0, (step + 1) / 150), step)
    train_s = time.time() - t0
    efn = (lambda a, t: ema(a, t).sample) if variant == "diffusers" else (lambda a, t: ema(a, t))
    gs = torch.Generator().manual_seed(1000 + seed)
    buckets = {}
    with torch.no_grad():
        for lo in range(0, 1000, 100):
            errs = []
            for _ in range(4):
                t = torch.randint(lo, lo + 100, (len(val),), generator=gs)
                n = torch.randn(val.shape, generator=gs)
                errs.append(F.mse_loss(efn(proc.q_sample(val, t, n).float(), t), n).item())
            buckets[f"t{lo}-{lo + 99}"] = float(np.mean(errs))
        xs = torch.randn(500, 1, 8, 8, generator=gs)
        seq = proc.ddim_steps(50)
        for i, tn in enumerate(reversed(seq)):
            t = torch.full((500,), tn, dtype=torch.long)
            eps = efn(xs, t)
            a = proc.abar_host[tn]
            x0 = ((xs - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
            eps = (xs - math.sqrt(a) * x0) / math.sqrt(1 - a)
            ap = proc.abar_host[seq[len(seq) - 2 - i]] if i < len(seq) - 1 else 1.0
            xs = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
        xs = xs.clamp(-1, 1)
    fd = float(frechet_distance(moments(xs.flatten(1).double()), moments(val.flatten(1).double())))
    vals = list(buckets.values())
    return {"variant": variant, "seed": seed, "params": sum(p.numel() for p in net.parameters()), "train_s": round(train_s, 1),
            "fd_val": fd, "eps_mse": float(np.mean(vals)), "eps_mse_t>=300": float(np.mean(vals[3:])), "buckets": buckets}


def render(records: list[dict[str, Any]], out: Path, wall: float) -> None:
    v = versions()
    lines = [
        "# DDPM U-Net ablation on the digits (issue 22): one change at a time, the same runs",
        "",
        "Written by `benchmarks/ddpm_ablation.py` (its docstring: the loop, the recipe, the variants). Scores against the "
        "**validation split** (150 digits), never the test split: the default `model.group_channels` was chosen here.",
        "",
        f"- device: cpu, 1 torch thread per variant; torch {v.get('torch')}, gentrain {v.get('gentrain')}; wall time {wall:.0f} s",
        "- seeds: " + ", ".join(str(s) for s in sorted({r['seed'] for r in records})) + " (init, data order, t and noise; the same for every variant of a seed)",
        "- 1,500 steps x batch 64; 500 DDIM-50 samples; Frechet distance of pixel vectors vs the 150 val digits; eps-MSE on the val digits",
        "",
        "| variant | seed | params | train s | FD (val, 500 samples) | eps-MSE | eps-MSE t >= 300 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])):
        lines.append(f"| {r['variant']} | {r['seed']} | {r['params']} | {r['train_s']} | {r['fd_val']:.2f} | {r['eps_mse']:.4f} | {r['eps_mse_t>=300']:.4f} |")
    buckets = list(records[0]["buckets"])
    lines += ["", "eps-MSE per timestep bucket:", "", "| variant | seed | " + " | ".join(buckets) + " |", "|---|---:|" + "---:|" * len(buckets)]
    for r in sorted(records, key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])):
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(f"{r['buckets'][b]:.4f}" for b in buckets) + " |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default=str(RESULTS / "ddpm_ablation_digits.md"))
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once, each in its own process (patches stay per process)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(args.one[0], int(args.one[1]))), flush=True)
        return
    jsonl = Path(args.out).with_suffix(".jsonl")
    done = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    have = {(r["variant"], r["seed"]) for r in done}
    todo = [(v, s) for s in args.seeds for v in args.variants if (v, s) not in have]
    t0 = time.time()
    while todo:
        batch, todo = todo[: args.jobs], todo[args.jobs :]
        procs = [subprocess.Popen([sys.executable, __file__, "--one", v, str(s)], stdout=subprocess.PIPE, text=True) for v, s in batch]
        for p in procs:
            rec = json.loads(p.communicate()[0].strip().splitlines()[-1])
            done.append(rec)
            with jsonl.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{rec['variant']} seed {rec['seed']}: FD {rec['fd_val']:.2f}, eps-MSE {rec['eps_mse']:.4f}", flush=True)
    render(done, Path(args.out), time.time() - t0)


if __name__ == "__main__":
    main()
