"""Why DDIM sent a few vector samples far off the data (issue 22), and what fixes it without losing precision.

    python benchmarks/ddpm_ablation_toy.py grid25 0 lnskip     # one run: prints its JSON line

``model=ddpm``'s residual MLP denoiser (hidden 256 x 4 blocks, dropout 0.1 unless ``_nodrop``) trained in a plain loop at the
``experiment=toy_ddpm`` recipe (5,000 steps of batch 256, Adam 1e-3, linear warm-up, clip 1.0, EMA 0.9999 with the
(1 + t) / (10 + t) warm-up, T = 1000 linear eps), then 2,500 DDIM-100 samples (eta 0) from noise seed 0; scored by
:func:`gentrain.metrics.modes.mode_stats` and the largest distance of a sample from the nearest of 5,000 training points.
Read-outs: ``ln`` LayerNorm -> SiLU -> linear (before issue 22); ``noln`` SiLU -> linear; ``preln`` a LayerNorm inside each
block and none at the read-out; ``lnskip`` the LayerNorm read-out plus a time-gated linear path ``gate(t) * x_t`` (the fix,
``model.input_skip=true``). Results: ``benchmarks/results/ddpm_ablation_toy.md``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

import gentrain.build
import gentrain.families.diffusion.model as M
from gentrain.build import build
from gentrain.metrics.modes import MIN_FRACTION, N_SIGMA, dataset_modes, mode_stats

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from ddpm_ablation import plain_update  # noqa: E402


def denoiser(variant: str) -> nn.Module:
    base = variant.replace("_nodrop", "")
    net = M.MLPDenoiser(2, 256, 4, 0.0 if variant.endswith("_nodrop") else 0.1, None, input_skip=base == "lnskip")
    if base in ("noln", "preln"):
        net.out = nn.Sequential(nn.SiLU(), M._zero(nn.Linear(256, 2)))
    if base == "preln":
        for b in net.blocks:
            b["norm"] = nn.LayerNorm(256)

        def forward(self: M.MLPDenoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            emb = self.time(M.timestep_embedding(t, self.hidden))
            h = self.inp(x)
            for b in self.blocks:
                h = h + b["fc2"](b["drop"](F.silu(b["fc1"](F.silu(b["norm"](h))) + b["emb"](F.silu(emb)))))
            return self.out(h)

        net.forward = types.MethodType(forward, net)
    return net


def run(dataset: str, seed: int, variant: str, steps: int = 5000, batch: int = 256, lr: float = 1e-3, warm: int = 300) -> dict:
    torch.set_num_threads(1)
    data = build(gentrain.build.compose([f"dataset={dataset}"]).dataset, "dataset")
    x = data.load("train").x.float()
    torch.manual_seed(seed)
    net = denoiser(variant)
    proc = M.GaussianDiffusion(1000, "linear", "eps", "fixedlarge")
    ema, opt = copy.deepcopy(net).eval(), torch.optim.Adam(net.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(xb.shape, generator=g)
        plain_update(net, net, ema, opt, proc, xb, t, noise, lr * min(1.0, (step + 1) / warm), step)
    gs = torch.Generator().manual_seed(0)
    with torch.no_grad():
        xs = torch.randn(2500, 2, generator=gs)
        seq = proc.ddim_steps(100)
        for i, tn in enumerate(reversed(seq)):
            eps = ema(xs, torch.full((2500,), tn, dtype=torch.long))
            a = proc.abar_host[tn]
            x0 = (xs - math.sqrt(1 - a) * eps) / math.sqrt(a)
            ap = proc.abar_host[seq[len(seq) - 2 - i]] if i < len(seq) - 1 else 1.0
            xs = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
    dist = torch.cdist(xs, x[:5000]).min(1).values
    modes, std = dataset_modes(data)
    s = mode_stats(xs, modes, std, n_sigma=N_SIGMA, min_fraction=MIN_FRACTION)
    return {"dataset": dataset, "seed": seed, "variant": variant, "modes_pacgan": s.modes_pacgan, "modes_fair": s.modes_fair,
            "hq_share": s.high_quality, "reverse_kl": s.reverse_kl, "max_distance": float(dist.max()), "far_0.5": int((dist > 0.5).sum())}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
