"""gentrain beside independent, well-known implementations: same data, recipe and parameter count, run in the same call.

    pip install -e .[bench]                                   # diffusers, zuko, normflows, pythae (never the package's)
    python benchmarks/peers.py                                # every part, CPU-sized: benchmarks/results/peers_cpu.md
    python benchmarks/peers.py --parts ddpm_digits ddpm_toy   # some parts (each writes its own .jsonl; the .md has all)
    python benchmarks/peers.py --render                       # the .md again from the parts' .jsonl files

Parts (each row: gentrain, the peer, the published figure where one exists, budget, seeds, verdict):

- ``ddpm_digits``, ``ddpm_fashion``: ``model=ddpm`` trained by gentrain's engine against diffusers'
  ``UNet2DModel`` of the same layout and parameter count, trained by a plain loop with diffusers' own
  ``DDPMScheduler`` (noising), ``get_scheduler("constant_with_warmup")``, ``EMAModel`` (decay 0.9999 with its
  ``(1 + t) / (10 + t)`` warm-up, as gentrain's) and sampled with ``DDIMScheduler`` (50 steps, eta 0, x0 clipped to
  [-1, 1] as gentrain's DDIM). Recipe of both: Adam 2e-4, 10% linear warm-up, gradient clip 1.0, dropout 0.1,
  T = 1000 linear betas, eps prediction. Scores of ``--n-samples`` samples: Frechet distance of pixel vectors
  (model space [-1, 1]) and of the features of a small classifier trained here on the training split
  (:class:`SmallClassifier`, its test accuracy in the file), both against the test split; ``fid<n>`` (TF-Inception
  pool3, n samples vs the first n test images: the largest n this CPU affords, the count in the name); eps-MSE of
  the EMA network on the test images per timestep bucket (the same t and noise for both). Floors beside: real
  train images and a per-pixel histogram sampler.
- ``ddpm_toy``: ``model=ddpm`` (residual MLP) on ring8/grid25 against a plain MLP of about the same parameter
  count trained with diffusers' ``DDPMScheduler`` and sampled with ``DDIMScheduler`` (100 steps, eta 0, no
  clipping), both at the ``experiment=toy_ddpm`` recipe; modes (PacGAN's rule and the fair share), high-quality
  share, reverse KL, and the largest distance of a sample from the test points.
- ``flows`` (digits): RealNVP and Glow of ``benchmarks/likelihood.py``'s CPU sizes against zuko's RealNVP and MAF
  and normflows' RealNVP, each peer's size (transforms x hidden) and stopping step chosen on the validation split
  from a small grid (the best peer, not a default one); test bits/dim of the chosen state.
- ``vae`` (binarised Fashion-MNIST): ``model=vae`` against pythae's ``VAE`` with the same encoder and decoder
  networks (gentrain's, wrapped in pythae's interfaces) trained by pythae's own ``TrainingPipeline`` for the same
  epochs; test NLL by each library's own importance-weighted estimate (gentrain's IWAE bound, pythae's ``get_nll``)
  with the same k and test images.
- ``gan_toy``: the PacGAN setting (``experiment=pacgan_ring`` / ``pacgan_grid``) by gentrain's engine against
  the plain reference loop of ``benchmarks/throughput.py`` on the same networks, 3 seeds.

Verdict: "better" / "worse" when gentrain's seeds all lie beyond the peer's (lower is better for every score
here except the mode counts and the HQ share), else "parity". Nothing is selected on the test split: the
peers' grids and stopping steps use the validation split; the test split gives the final numbers only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

import gentrain.build
from gentrain.build import build
from gentrain.engine.device import device_name
from gentrain.metrics.evaluate import ReferenceCache
from gentrain.metrics.fidelity import frechet_distance, moments
from gentrain.metrics.inception import InceptionFeatures, resolve_weights
from gentrain.metrics.report import versions
from gentrain.sampling import sample_batches, sampling_state
from gentrain.shared import to_model_space
from gentrain.tasks.common import load_trained

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, imported as modules
import diffusion  # noqa: E402
import fid_table  # noqa: E402
import likelihood  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("ddpm_digits", "ddpm_fashion", "ddpm_toy", "flows", "vae", "gan_toy")


def log(msg: str) -> None:
    print(msg, flush=True)


def lib_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("diffusers", "zuko", "normflows", "pythae"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # an optional peer that is not installed
            out[name] = "not installed"
    return out


def part_file(args: argparse.Namespace, part: str) -> Path:
    return Path(args.out).with_name(f"{Path(args.out).stem}_{part}.jsonl")


def save_rows(args: argparse.Namespace, part: str, rows: list[dict[str, Any]], wall_s: float) -> None:
    meta = {
        "meta": True, "part": part, "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
        "versions": {**versions(), **lib_versions()}, "wall_s": round(wall_s, 1), "args": {k: v for k, v in vars(args).items() if k != "parts"},
        "load": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    with part_file(args, part).open("w") as f:
        for r in [meta, *rows]:
            f.write(json.dumps(r, default=str) + "\n")
    log(f"[{part}] {len(rows)} rows in {wall_s:.0f} s -> {diffusion.rel(part_file(args, part))}")


# ---- scores ------------------------------------------------------------------------------------------------------------
def frechet(a: Tensor, b: Tensor) -> float:
    return float(frechet_distance(moments(a.double()), moments(b.double())))


class SmallClassifier(nn.Module):
    """A small CNN trained on the training split; its 64 penultimate features give a Frechet distance the CPU affords."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        self.eval()
        return torch.cat([self.body(x[i : i + 500]) for i in range(0, len(x), 500)])


def classifier(dataset: Any, args: argparse.Namespace) -> tuple[SmallClassifier, float]:
    """The dataset's classifier (trained once with seed 0 and kept under --runs-dir) and its test accuracy."""
    path = Path(args.runs_dir) / f"classifier_{dataset.name}.pt"
    train, test = dataset.load("train"), dataset.load("test")
    net = SmallClassifier(int(dataset.shape[0]), int(dataset.num_classes))
    if path.is_file():
        net.load_state_dict(torch.load(path))
    else:
        torch.manual_seed(0)
        x, y = to_model_space(train.x), train.y
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        steps = args.classifier_steps
        for _ in range(steps):
            i = torch.randint(0, len(x), (128,), generator=g)
            loss = F.cross_entropy(net(x[i]), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net.eval()
    with torch.no_grad():
        xt = to_model_space(test.x)
        acc = float(torch.cat([net(xt[i : i + 500]).argmax(1) for i in range(0, len(xt), 500)]).eq(test.y).float().mean())
    return net, acc


def eps_mse_buckets(eps_fn: Any, x0: Tensor, buckets: int = 10, timesteps: int = 1000, seed: int = 1234) -> dict[str, float]:
    """The network's eps-MSE on ``x0`` in each of ``buckets`` equal timestep ranges: the same t and noise for every network."""
    from gentrain.families.diffusion.model import GaussianDiffusion

    proc = GaussianDiffusion(timesteps, "linear", "eps", "fixedlarge")
    g = torch.Generator().manual_seed(seed)
    width = timesteps // buckets
    out = {}
    with torch.no_grad():
        for b in range(buckets):
            t = torch.randint(b * width, (b + 1) * width, (len(x0),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            xt = proc.q_sample(x0, t, noise).float()
            pred = torch.cat([eps_fn(xt[i : i + 250], t[i : i + 250]) for i in range(0, len(x0), 250)])
            out[f"t{b * width}-{(b + 1) * width - 1}"] = float(F.mse_loss(pred, noise))
    vals = list(out.values())
    cut = 300 // width
    return {"eps_mse": float(np.mean(vals)), "eps_mse_t<300": float(np.mean(vals[:cut])), "eps_mse_t>=300": float(np.mean(vals[cut:])), **out}


# ---- DDPM on images: gentrain's engine vs diffusers' UNet2DModel ------------------------------------------------------
def diffusers_unet(model: Any) -> nn.Module:
    """diffusers' UNet2DModel with gentrain's layout (channels, multipliers, attention resolutions, blocks, dropout)."""
    from diffusers import UNet2DModel

    net = model.net
    c, side = model.shape[0], model.shape[1]
    mult, attn = model.layout["channel_mult"], model.layout["attention_resolutions"]
    res = [side // 2**i for i in range(len(mult))]
    return UNet2DModel(
        sample_size=side, in_channels=c, out_channels=c, block_out_channels=tuple(net.channels * m for m in mult),
        layers_per_block=res_blocks_per_level(net),
        down_block_types=tuple("AttnDownBlock2D" if r in attn else "DownBlock2D" for r in res),
        up_block_types=tuple("AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(res)),
        norm_num_groups=net.channels, dropout=0.1,
    )


def res_blocks_per_level(net: Any) -> int:
    """Residual blocks per resolution of a gentrain U-Net (its first level's down blocks before the first Downsample)."""
    from gentrain.families.diffusion.model import Downsample

    n = 0
    for blocks in net.down:
        if isinstance(blocks[0], Downsample):
            break
        n += 1
    return n


def train_diffusers(unet: nn.Module, x: Tensor, steps: int, batch: int, warmup: int, seed: int, lr: float = 2e-4) -> tuple[nn.Module, float]:
    """The plain diffusers loop: DDPMScheduler.add_noise, Adam, constant-with-warm-up, clip 1.0, EMAModel(0.9999)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.Adam(unet.parameters(), lr)
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=warmup)
    ema = EMAModel(unet.parameters(), decay=0.9999)
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(x), generator=g), 0
    unet.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        xb = x[perm[pos : pos + batch]]
        pos += batch
        noise = torch.randn(xb.shape, generator=g)
        t = torch.randint(0, 1000, (len(xb),), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(xb, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.step(unet.parameters())
    train_s = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    return unet.eval(), train_s


@torch.no_grad()
def diffusers_ddim(eps_fn: Any, n: int, shape: tuple[int, ...], steps: int, seed: int, clip: bool, batch: int = 250) -> Tensor:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        x = torch.randn(min(batch, n - i), *shape, generator=g)
        for t in sched.timesteps:
            x = sched.step(eps_fn(x, t.expand(len(x))), t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1) if clip else x)
    return torch.cat(out)


class UNetEps(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample


def image_scores(x: Tensor, test: Tensor, clf: SmallClassifier, evaluator: Any, device: torch.device, n_fid: int) -> dict[str, float]:
    values = {"fd_pixels": frechet(x.flatten(1), test.flatten(1)), "fd_classifier": frechet(clf.features(x), clf.features(test))}
    if evaluator is not None:
        fid, _, _ = diffusion.score_images(evaluator, x[:n_fid], device)
        values.update({k: v for k, v in fid.items() if k.startswith(("fid", "kid"))})
    return values


def ddpm_images(part: str, name: str, args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    steps, batch = getattr(args, f"{part}_steps"), args.image_batch
    warm = max(1, round(0.1 * steps))
    dataset = build(gentrain.build.compose([f"dataset={name}"]).dataset, "dataset")
    train_x = to_model_space(dataset.load("train").x)
    test_x = to_model_space(dataset.load("test").x)[: args.n_test]
    n_fid = min(args.n_fid, len(test_x))
    clf, acc = classifier(dataset, args)
    device = torch.device("cpu")
    evaluator = None
    if n_fid:
        es = gentrain.build.compose([]).eval
        cache = ReferenceCache(Path(str(es.cache_dir)).expanduser())
        extractor = InceptionFeatures(resolve_weights(es.inception_weights), device)
        evaluator = diffusion.fidelity_evaluator(dataset, n_fid, SimpleNamespace(eval_batch_size=250, sample_seed=0), device, extractor, cache)
    size = ["model.channels=16", "model.num_res_blocks=1"]
    budget = f"{steps} steps x batch {batch}, Adam 2e-4, warm-up {warm}, clip 1.0, EMA 0.9999, dropout 0.1, T 1000 linear eps; DDIM 50 (eta 0)"
    rows: list[dict[str, Any]] = []
    base = {"part": part, "dataset": name, "steps": steps, "batch": batch, "budget": budget, "n_samples": args.n_samples, "n_test": len(test_x),
            "classifier_test_acc": acc}
    # references: real train images, a per-pixel histogram sampler
    real = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[: args.n_samples]]
    rows.append({**base, "impl": "reference", "method": f"real train images ({len(real)})", "values": image_scores(real, test_x, clf, evaluator, device, n_fid)})
    hist = fid_table.PixelHistogram(dataset.load("train").x)
    hx = hist.sample(args.n_samples, torch.Generator().manual_seed(0))
    rows.append({**base, "impl": "reference", "method": "floor: per-pixel histogram sampler (independent pixels)",
                 "values": image_scores(hx, test_x, clf, evaluator, device, n_fid)})
    log(f"  {name} references: " + "; ".join(f"{r['method']}: " + ", ".join(f"{k} {v:.3g}" for k, v in r["values"].items()) for r in rows))
    for seed in args.seeds:
        overrides = ["model=ddpm", f"dataset={name}", f"seed={seed}", f"trainer.batch_size={batch}", f"trainer.warmup_steps={warm}",
                     "sampler=ddim", "sampler.steps=50", *size]
        ns = SimpleNamespace(runs_dir=args.runs_dir, reuse=args.reuse, device="cpu", extra=[])
        run_dir, report = diffusion.train_run(f"{part}/gentrain_seed{seed}", overrides, steps, ns, console)
        _, _, model, average, _ = load_trained(str(run_dir), device, sampler=diffusion.sampler_spec(50))
        t0 = time.perf_counter()
        with sampling_state(model, average):
            x = torch.cat([b for b, _ in sample_batches(model, args.n_samples, seed, 250)])
            sample_s = time.perf_counter() - t0
            mse = eps_mse_buckets(lambda a, t: model.net(a, t), test_x)
        params = sum(p.numel() for p in model.net.parameters())
        values = {**image_scores(x, test_x, clf, evaluator, device, n_fid), **mse}
        rows.append({**base, "impl": "gentrain", "method": "gentrain model=ddpm (engine)", "seed": seed, "params": params,
                     "train_s": report["run"]["train_time_s"], "sample_s": round(sample_s, 1), "values": values,
                     "arch": f"U-Net channels 16, mult {model.layout['channel_mult']}, attention {model.layout['attention_resolutions']}, 1 res block, GroupNorm >= 4 channels/group"})
        log(f"  {name} gentrain seed {seed}: {json.dumps({k: round(v, 4) for k, v in values.items() if not k.startswith('t')})}")
        torch.manual_seed(seed)
        unet = diffusers_unet(model)
        peer_params = sum(p.numel() for p in unet.parameters())
        unet, train_s = train_diffusers(unet, train_x, steps, batch, warm, seed)
        t0 = time.perf_counter()
        xp = diffusers_ddim(UNetEps(unet), args.n_samples, tuple(model.shape), 50, seed, clip=True)
        sample_s = time.perf_counter() - t0
        values = {**image_scores(xp, test_x, clf, evaluator, device, n_fid), **eps_mse_buckets(UNetEps(unet), test_x)}
        rows.append({**base, "impl": "peer", "method": "diffusers UNet2DModel + DDPMScheduler/DDIMScheduler (plain loop)", "seed": seed,
                     "params": peer_params, "train_s": round(train_s, 1), "sample_s": round(sample_s, 1), "values": values,
                     "arch": f"UNet2DModel(block_out_channels={tuple(unet.config.block_out_channels)}, layers_per_block={unet.config.layers_per_block}, "
                             f"down={tuple(unet.config.down_block_types)}, norm_num_groups={unet.config.norm_num_groups})"})
        log(f"  {name} diffusers seed {seed}: {json.dumps({k: round(v, 4) for k, v in values.items() if not k.startswith('t')})}")
    return rows


# ---- DDPM on the 2-D mixtures: gentrain's residual MLP vs diffusers' schedulers with a plain MLP ------------------------
class PlainMLP(nn.Module):
    """The peer's denoiser: [x, diffusers' sinusoidal embedding of t] -> ``depth`` SiLU layers of ``width`` -> eps."""

    def __init__(self, dims: int, width: int, depth: int, emb: int = 128) -> None:
        super().__init__()
        self.emb = emb
        layers: list[nn.Module] = []
        sizes = [dims + emb, *[width] * depth]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dims))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        return self.net(torch.cat([x, get_timestep_embedding(t.reshape(-1).expand(len(x)), self.emb)], 1))


def matched_width(target: int, dims: int, depth: int, emb: int = 128) -> int:
    """The PlainMLP width whose parameter count is nearest ``target``."""
    return min(range(16, 2048), key=lambda w: abs(sum(p.numel() for p in PlainMLP(dims, w, depth, emb).parameters()) - target) if w % 8 == 0 else 1 << 60)


def toy_scores(points: Tensor, data: Any, test: Tensor) -> dict[str, float]:
    """Modes by both rules, HQ share and reverse KL (:func:`gentrain.metrics.modes.mode_stats`, as ``benchmarks/toy_modes.py``),
    the largest distance of a sample from the nearest test point and the count farther than 1."""
    s = diffusion.toy_stats(points, data)
    d = torch.cdist(points.float(), test.float()).min(1).values
    return {"modes_pacgan": s["modes_pacgan"], "modes_fair": s["modes_fair"], "num_modes": s["num_modes"], "hq_share": s["high_quality"],
            "reverse_kl": s["reverse_kl"], "max_distance": float(d.max()), "far_1": int((d > 1.0).sum())}


def ddpm_toy(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    rows: list[dict[str, Any]] = []
    steps, n = args.toy_steps, 2500
    for name in ("ring8", "grid25"):
        cfg = gentrain.build.compose(["experiment=toy_ddpm", f"dataset={name}"])
        data = build(cfg.dataset, "dataset")
        train_x, test_x = data.load("train").x.float(), data.load("test").x.float()[:5000]
        lr, batch, warm = float(cfg.model.optimizer.main.lr), int(cfg.trainer.batch_size), int(cfg.trainer.warmup_steps)
        budget = f"{steps} steps x batch {batch}, Adam {lr:g}, warm-up {warm}, clip 1.0, EMA 0.9999, T 1000 linear eps; DDIM 100 (eta 0), {n} samples"
        base = {"part": "ddpm_toy", "dataset": name, "steps": steps, "batch": batch, "budget": budget, "n_samples": n}
        rows.append({**base, "impl": "reference", "method": f"the data: {n} test points", "values": toy_scores(test_x[:n], data, test_x)})
        for seed in args.seeds:
            ns = SimpleNamespace(runs_dir=args.runs_dir, reuse=args.reuse, device="cpu", extra=[])
            over = ["experiment=toy_ddpm", f"dataset={name}", f"seed={seed}", f"trainer.max_steps={steps}", "sampler=ddim", "sampler.steps=100"]
            run_dir, report = diffusion.train_run(f"ddpm_toy/{name}_gentrain_seed{seed}", over, steps, ns, console)
            x, sample_s = diffusion.draw(run_dir, n, SimpleNamespace(sample_seed=seed, eval_batch_size=n), torch.device("cpu"), 100)
            _, _, model, _, _ = load_trained(str(run_dir), torch.device("cpu"))
            params = sum(p.numel() for p in model.net.parameters())
            rows.append({**base, "impl": "gentrain", "method": "gentrain model=ddpm (residual MLP, engine)", "seed": seed, "params": params,
                         "train_s": report["run"]["train_time_s"], "sample_s": round(sample_s, 1), "values": toy_scores(x, data, test_x),
                         "arch": f"MLPDenoiser hidden {model.net.hidden} x {len(model.net.blocks)} blocks, dropout {cfg.model.dropout}"})
            log(f"  {name} gentrain seed {seed}: {rows[-1]['values']}")
            torch.manual_seed(seed)
            width = matched_width(params, 2, 4)
            net = PlainMLP(2, width, 4)
            sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
            opt = torch.optim.Adam(net.parameters(), lr)
            lrs = get_scheduler("constant_with_warmup", opt, num_warmup_steps=warm)
            ema = EMAModel(net.parameters(), decay=0.9999)
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            for _ in range(steps):
                xb = train_x[torch.randint(0, len(train_x), (batch,), generator=g)]
                noise = torch.randn(xb.shape, generator=g)
                t = torch.randint(0, 1000, (batch,), generator=g)
                loss = F.mse_loss(net(sched.add_noise(xb, noise, t), t), noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                lrs.step()
                ema.step(net.parameters())
            train_s = time.perf_counter() - t0
            ema.copy_to(net.parameters())
            net.eval()
            t0 = time.perf_counter()
            xp = diffusers_ddim(net, n, (2,), 100, seed, clip=False, batch=n)
            rows.append({**base, "impl": "peer", "method": "diffusers DDPMScheduler/DDIMScheduler + plain MLP (plain loop)", "seed": seed,
                         "params": sum(p.numel() for p in net.parameters()), "train_s": round(train_s, 1), "sample_s": round(time.perf_counter() - t0, 1),
                         "values": toy_scores(xp, data, test_x), "arch": f"MLP [x, sinusoidal(t) 128] -> 4 x {width} SiLU -> 2"})
            log(f"  {name} diffusers seed {seed}: {rows[-1]['values']}")
    return rows


# ---- flows on the digits: gentrain's RealNVP and Glow vs zuko and normflows, the peers' size and stopping on val --------
class NormflowsRealNVP(nn.Module):
    """normflows' RealNVP as in its README: alternating-mask affine couplings (MLP s and t, zero-initialised), ActNorm."""

    def __init__(self, dims: int, transforms: int, hidden: int) -> None:
        super().__init__()
        import normflows as nf

        b = torch.tensor([i % 2 for i in range(dims)], dtype=torch.float32)
        flows = []
        for i in range(transforms):
            s = nf.nets.MLP([dims, hidden, hidden, dims], init_zeros=True)
            t = nf.nets.MLP([dims, hidden, hidden, dims], init_zeros=True)
            flows += [nf.flows.MaskedAffineFlow(b if i % 2 == 0 else 1 - b, t, s), nf.flows.ActNorm(dims)]
        self.model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dims, trainable=False), flows)

    def forward(self) -> NormflowsRealNVP:  # zuko's interface: flow() is the distribution
        return self

    def log_prob(self, h: Tensor) -> Tensor:
        return self.model.log_prob(h)


PEER_GRID = {"transforms": [3, 6, 10], "hidden": [64, 256]}


def flows(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    cfg = gentrain.build.compose(["dataset=digits"])
    dataset = build(cfg.dataset, "dataset")
    levels, dims = dataset.levels, math.prod(dataset.shape)
    train_x, val_x, test_x = (to_model_space(dataset.load(s).x) for s in ("train", "val", "test"))
    floor = likelihood.histogram_bpd(dataset.load("train").x, dataset.load("test").x, levels)
    budget = f"{args.flow_steps} steps x batch 64, validation every 100 steps (best state on val), test bits/dim of 17-level digits"
    base = {"part": "flows", "dataset": "digits", "steps": args.flow_steps, "batch": 64, "budget": budget, "n_test": len(test_x)}
    rows: list[dict[str, Any]] = [{**base, "impl": "reference", "method": "floor: per-pixel histogram (17 levels, add-one)", "values": {"test_bpd": floor}}]
    sizes = {"realnvp": likelihood.DEFAULT_SET["digits"], "glow": []}
    alpha = 0.05
    for seed in args.seeds:
        for name in ("realnvp", "glow"):
            ns = SimpleNamespace(dataset="digits", device_type="cpu", seed=seed, steps=args.flow_steps, batch_size=64, eval_every=100, n_eval=1000,
                                 iwae_k=1, runs=str(Path(args.runs_dir) / f"flows_seed{seed}"), reuse=args.reuse, shape=tuple(dataset.shape))
            extra = [o.partition(":")[2] for o in sizes[name]]
            r = likelihood.run_model(name, ns, [], extra, console)
            alpha = r["alpha"] if r["alpha"] is not None else alpha
            report = json.loads((Path(ns.runs) / "digits" / name / "report.json").read_text())
            rows.append({**base, "impl": "gentrain", "method": f"gentrain model={name}" + (f" ({' '.join(extra)})" if extra else ""), "seed": seed,
                         "params": sum(report["run"]["parameters"].values()), "train_s": r["train_s"], "values": {"test_bpd": r["test_bpd"], "val_bpd": r["val_bpd"]}, "best_step": r["best_step"],
                         "group": name})
            log(f"  gentrain {name} seed {seed}: test {r['test_bpd']:.3f} (val {r['val_bpd']:.3f}, step {r['best_step']})")
        for kind in ("zuko_maf", "zuko_realnvp", "normflows_realnvp"):
            best: dict[str, Any] | None = None
            tried = []
            for transforms in PEER_GRID["transforms"]:
                for hidden in PEER_GRID["hidden"]:
                    torch.manual_seed(seed)
                    if kind.startswith("zuko"):
                        peer = likelihood.Peer(kind.split("_")[1], dims, levels, float(alpha), transforms, hidden)
                    else:
                        peer = likelihood.Peer("realnvp", dims, levels, float(alpha), 1, 8)
                        peer.flow = NormflowsRealNVP(dims, transforms, hidden)
                        peer.arch = f"normflows RealNVP (MaskedAffineFlow + ActNorm) x {transforms}, MLP [{dims}, {hidden}, {hidden}, {dims}]"
                    out = train_peer_steps(peer, train_x, val_x, test_x, args.flow_steps, seed)
                    params = sum(p.numel() for p in peer.flow.parameters())
                    tried.append({"transforms": transforms, "hidden": hidden, "params": params, **out})
                    if best is None or out["val_bpd"] < best["val_bpd"]:
                        best = {"transforms": transforms, "hidden": hidden, "params": params, "arch": peer.arch, **out}
            assert best is not None
            rows.append({**base, "impl": "peer", "method": f"{kind.replace('_', ' ')} (best of the grid on val)", "seed": seed, "params": best["params"],
                         "train_s": best["train_s"], "values": {"test_bpd": best["test_bpd"], "val_bpd": best["val_bpd"]}, "best_step": best["best_step"],
                         "arch": best["arch"], "grid": tried, "group": "realnvp" if "realnvp" in kind else "maf"})
            log(f"  {kind} seed {seed}: best {best['transforms']} x {best['hidden']}: test {best['test_bpd']:.3f} (val {best['val_bpd']:.3f}, step {best['best_step']})")
    return rows


def train_peer_steps(peer: Any, train_x: Tensor, val_x: Tensor, test_x: Tensor, steps: int, seed: int, batch: int = 64, every: int = 100) -> dict[str, Any]:
    """``steps`` Adam (1e-3) steps of a peer flow, validation every ``every``; the test bits/dim of the best state on val."""
    from gentrain.models.likelihood import bits_per_dim

    opt = torch.optim.Adam(peer.flow.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    perm, pos, best, t = torch.randperm(len(train_x), generator=g), 0, None, 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        peer.flow.train()
        if pos + batch > len(train_x):
            perm, pos = torch.randperm(len(train_x), generator=g), 0
        x = train_x[perm[pos : pos + batch]]
        pos += batch
        loss = bits_per_dim(peer.log_prob(x), peer.dims).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t += time.perf_counter() - t0
        if step % every == 0:
            peer.flow.eval()
            v = peer.bpd(val_x)
            if math.isfinite(v) and (best is None or v < best[0]):
                best = (v, step, copy.deepcopy(peer.flow.state_dict()))
    last = peer.bpd(test_x)
    if best is None:
        return {"val_bpd": float("inf"), "test_bpd": float("inf"), "best_step": None, "train_s": round(t, 1), "test_bpd_last": last}
    peer.flow.load_state_dict(best[2])
    peer.flow.eval()
    return {"val_bpd": best[0], "test_bpd": peer.bpd(test_x), "best_step": best[1], "train_s": round(t, 1), "test_bpd_last": last}


# ---- VAE on binarised Fashion-MNIST: gentrain vs pythae with the same networks -----------------------------------------
def vae(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Any:
            mu, logvar = self.net(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar.clamp(-12, 8))

    class Decoder(BaseDecoder):
        def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.net, self.shape = net, shape

        def forward(self, z: Tensor) -> Any:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(len(z), *self.shape))

    k, n_test, batch = args.iwae_k, args.vae_test, 100
    name = "fashion_mnist"
    dataset = build(gentrain.build.compose([f"dataset={name}"]).dataset, "dataset")
    splits = {s: dataset.load(s).x for s in ("train", "val", "test")}
    epochs = args.vae_epochs
    steps = epochs * (len(splits["train"]) // batch)
    budget = f"{epochs} epochs = {steps} steps x batch {batch}, Adam 1e-3, z 20, MLP 784-500-20 (tanh), Bernoulli decoder; NLL: IWAE k={k} on {n_test} test images"
    base = {"part": "vae", "dataset": "fashion_mnist (binarised: level >= 128)", "steps": steps, "batch": batch, "budget": budget, "n_test": n_test}
    bin_ = {s: (x >= 128).float() for s, x in splits.items()}  # gentrain's binarise: 2 level >= 255
    rows: list[dict[str, Any]] = []
    floor = likelihood.histogram_bpd(splits["train"], splits["test"][:n_test], 256, binarise=True) * math.prod(dataset.shape) * math.log(2)
    rows.append({**base, "impl": "reference", "method": "floor: independent Bernoulli pixels (add-one, fitted on train)", "values": {"nll_nats": floor}})
    published = "IWAE paper (Burda et al. 2016, Table 1): VAE k=1 on binarised MNIST 86.76 nats (k=5000 evaluation); MNIST, not Fashion-MNIST"
    for seed in args.seeds:
        ns = SimpleNamespace(runs_dir=args.runs_dir, reuse=args.reuse, device="cpu", extra=[])
        over = ["model=vae", f"dataset={name}", f"seed={seed}", f"trainer.batch_size={batch}", f"model.iwae_k={k}"]
        run_dir, report = diffusion.train_run(f"vae/gentrain_seed{seed}", over, steps, ns, console)
        _, _, model, average, _ = load_trained(str(run_dir), torch.device("cpu"))
        test = to_model_space(splits["test"][:n_test])
        torch.manual_seed(10_000 + seed)  # the importance samples' noise, as for the peer below
        with sampling_state(model, average):
            ll = torch.cat([model.log_likelihood(test[i : i + 50], k=k) for i in range(0, n_test, 50)])
        rows.append({**base, "impl": "gentrain", "method": "gentrain model=vae (engine; last step)", "seed": seed, "train_s": report["run"]["train_time_s"],
                     "params": sum(p.numel() for p in model.parameters() if p.requires_grad), "values": {"nll_nats": float(-ll.mean())}, "published": published})
        log(f"  gentrain vae seed {seed}: NLL {float(-ll.mean()):.2f}")
        torch.manual_seed(seed)
        fresh = gentrain.build.build_model(gentrain.build.compose(over))
        config = VAEConfig(input_dim=tuple(dataset.shape), latent_dim=20, reconstruction_loss="bce")
        peer = VAE(config, encoder=Encoder(copy.deepcopy(fresh.encoder)), decoder=Decoder(copy.deepcopy(fresh.decoder), tuple(dataset.shape)))
        tc = BaseTrainerConfig(output_dir=str(Path(args.runs_dir) / f"vae/pythae_seed{seed}"), num_epochs=epochs, learning_rate=1e-3,
                               per_device_train_batch_size=batch, per_device_eval_batch_size=500, optimizer_cls="Adam", no_cuda=True,
                               steps_saving=None, seed=seed)
        t0 = time.perf_counter()
        TrainingPipeline(training_config=tc, model=peer)(train_data=bin_["train"].numpy(), eval_data=bin_["val"].numpy())
        train_s = time.perf_counter() - t0
        peer.eval()
        torch.manual_seed(10_000 + seed)
        # pythae's get_nll returns the mean importance-sampled log-likelihood (a positive NLL is its negative)
        nll = -float(peer.get_nll(bin_["test"][:n_test], n_samples=k, batch_size=k))
        rows.append({**base, "impl": "peer", "method": "pythae VAE (TrainingPipeline; last epoch), same networks", "seed": seed, "train_s": round(train_s, 1),
                     "params": sum(p.numel() for p in peer.parameters()), "values": {"nll_nats": nll}, "published": published})
        log(f"  pythae vae seed {seed}: NLL {nll:.2f}")
    return rows


# ---- GANs on the 2-D mixtures: gentrain's engine vs the plain reference loop, PacGAN's setting ------------------------
def gan_toy(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from torch.utils.data import DataLoader, TensorDataset

    import throughput
    from gentrain.build import build_model, seed_everything

    rows: list[dict[str, Any]] = []
    steps, n = args.gan_steps, 2500
    for name, preset in (("ring8", "pacgan_ring"), ("grid25", "pacgan_grid")):
        cfg0 = gentrain.build.compose([f"experiment={preset}"])
        data = build(cfg0.dataset, "dataset")
        train_x, test_x = data.load("train").x.float(), data.load("test").x.float()[:5000]
        budget = f"experiment={preset} (PacGAN Table 1's networks and optimizers), {steps} steps x batch {int(cfg0.trainer.batch_size)}; {n} samples"
        base = {"part": "gan_toy", "dataset": f"{name} (PacGAN's: radius {cfg0.dataset.get('radius', '')}, std {cfg0.dataset.std})", "steps": steps,
                "batch": int(cfg0.trainer.batch_size), "budget": budget, "n_samples": n,
                "published": {"ring8": "PacGAN Table 1 GAN (400k steps): 6.3 modes, HQ 0.982, reverse KL 0.45",
                              "grid25": "PacGAN Table 1 GAN (400k steps): 17.3 modes, HQ 0.948, reverse KL 0.70"}[name]}
        rows.append({**base, "impl": "reference", "method": f"the data: {n} test points", "values": toy_scores(test_x[:n], data, test_x)})
        for seed in args.gan_seeds:
            over = [f"experiment={preset}", f"seed={seed}", f"trainer.max_steps={steps}"]
            ns = SimpleNamespace(runs_dir=args.runs_dir, reuse=args.reuse, device="cpu", extra=[])
            run_dir, report = diffusion.train_run(f"gan_toy/{name}_gentrain_seed{seed}", over, steps, ns, console)
            x, _ = diffusion.draw(run_dir, n, SimpleNamespace(sample_seed=seed, eval_batch_size=n), torch.device("cpu"), diffusion=False)
            rows.append({**base, "impl": "gentrain", "method": "gentrain engine", "seed": seed, "train_s": report["run"]["train_time_s"],
                         "values": toy_scores(x, data, test_x)})
            log(f"  {name} gentrain seed {seed}: {rows[-1]['values']}")
            cfg = gentrain.build.compose(over)
            seed_everything(seed)
            model = build_model(cfg).train()
            history: list = []
            step = throughput.plain_step_fn("gan", model, cfg, torch.device("cpu"), False, history)
            loader = DataLoader(TensorDataset(train_x), batch_size=int(cfg.trainer.batch_size), shuffle=True, drop_last=True)
            stream = throughput.endless(loader, torch.device("cpu"))
            t0 = time.perf_counter()
            for _ in range(steps):
                step(stream)
            train_s = time.perf_counter() - t0
            with sampling_state(model, None):
                xp = torch.cat([b for b, _ in sample_batches(model, n, seed, n)])
            rows.append({**base, "impl": "peer", "method": "plain reference loop (benchmarks/throughput.py, pytorch/examples DCGAN step)", "seed": seed,
                         "train_s": round(train_s, 1), "values": toy_scores(xp, data, test_x)})
            log(f"  {name} plain seed {seed}: {rows[-1]['values']}")
    return rows


PART_FUNCS = {"ddpm_toy": ddpm_toy, "flows": flows, "vae": vae, "gan_toy": gan_toy}


# ---- the results file --------------------------------------------------------------------------------------------------
TITLES = {
    "ddpm_digits": "DDPM on the digits (8x8, 17 levels): gentrain vs diffusers' UNet2DModel",
    "ddpm_fashion": "DDPM on Fashion-MNIST (28x28): gentrain vs diffusers' UNet2DModel",
    "ddpm_toy": "DDPM on the 2-D mixtures: gentrain's MLP denoiser vs diffusers' schedulers with a plain MLP",
    "flows": "Flows on the digits: gentrain's RealNVP and Glow vs zuko and normflows (size and stopping chosen on val)",
    "vae": "VAE on binarised Fashion-MNIST: gentrain vs pythae, same networks",
    "gan_toy": "GANs on the 2-D mixtures (PacGAN's setting): gentrain's engine vs the plain reference loop",
}
#: the peer libraries each part uses (their versions are in the part's header)
PEER_LIBS = {"ddpm_digits": ["diffusers"], "ddpm_fashion": ["diffusers"], "ddpm_toy": ["diffusers"], "flows": ["zuko", "normflows"], "vae": ["pythae"], "gan_toy": []}
METRICS = {
    "ddpm_digits": ["fd_pixels", "fd_classifier", "fid297", "kid297", "eps_mse", "eps_mse_t<300", "eps_mse_t>=300"],
    "ddpm_fashion": ["fd_pixels", "fd_classifier", "fid250", "kid250", "eps_mse", "eps_mse_t<300", "eps_mse_t>=300"],
    "ddpm_toy": ["modes_pacgan", "modes_fair", "hq_share", "reverse_kl", "max_distance", "far_1"],
    "flows": ["test_bpd"],
    "vae": ["nll_nats"],
    "gan_toy": ["modes_pacgan", "modes_fair", "hq_share", "reverse_kl"],
}
#: the scores where higher is better; every other score is lower-is-better
HIGHER_BETTER = {"modes_pacgan", "modes_fair", "hq_share"}


def verdict(g: list[float], p: list[float], higher: bool) -> str:
    if not g or not p:
        return ""
    if higher:
        return "better" if min(g) > max(p) else "worse" if max(g) < min(p) else "parity"
    return "better" if max(g) < min(p) else "worse" if min(g) > max(p) else "parity"


def spread(v: list[float]) -> str:
    if not v:
        return ""
    m = float(np.mean(v))
    return f"{m:.4g}" if len(v) == 1 else f"{m:.4g} [{min(v):.4g}, {max(v):.4g}]"


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def read_part(args: argparse.Namespace, part: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    path = part_file(args, part)
    if not path.is_file():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[0], lines[1:]


def render(args: argparse.Namespace) -> None:
    out = Path(args.out)
    md = [
        "# gentrain beside independent implementations (peers): same data, recipe and parameter count",
        "",
        f"Written by `benchmarks/peers.py` (`python benchmarks/peers.py`; each part writes `{out.stem}_<part>.jsonl`, this file is "
        "rendered from them). **CPU-sized**: short runs of small networks on a shared 2-core CPU; compare each row only with the "
        "rows and references beside it. Verdict: better / worse when every gentrain seed lies beyond every peer seed on that "
        "score (lower is better except modes and the HQ share), else parity; each cell is the mean over seeds [min, max].",
        "",
    ]
    summary: list[str] = ["## Verdicts", "", "| part | dataset | gentrain | peer | score | gentrain | peer | verdict |", "|---|---|---|---|---|---|---|---|"]
    sections: list[str] = []
    for part in PARTS:
        got = read_part(args, part)
        if got is None:
            continue
        meta, rows = got
        v = meta["versions"]
        sections += [f"## {TITLES[part]}", ""]
        libs = ", ".join(f"{lib} {v.get(lib)}" for lib in PEER_LIBS[part])
        sections.append(
            f"- device: {meta['device']}, {meta['threads']} torch thread(s); torch {v.get('torch')}, gentrain {v.get('gentrain')}"
            f"{', ' + libs if libs else ''}; Python {v.get('python')}"
        )
        sections.append(f"- wall time {meta['wall_s']:.0f} s (load average {', '.join(f'{x:.1f}' for x in meta['load'])} at the end), written {meta['when']}")
        budgets = sorted({r["budget"] for r in rows})
        sections += [f"- budget: {b}" for b in budgets]
        seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
        sections.append(f"- seeds: {seeds} (model init, data order and sampling noise of each side)")
        if rows and rows[0].get("classifier_test_acc") is not None:
            sections.append(f"- the classifier of `fd_classifier` (SmallClassifier, trained here on the train split): test accuracy {rows[0]['classifier_test_acc']:.3f}")
        if rows and rows[0].get("published"):
            pubs = sorted({r["published"] for r in rows if r.get("published")})
            sections += [f"- published figure: {p}" for p in pubs]
        archs = sorted({f"{r['method']}: {r['arch']}" for r in rows if r.get("arch")})
        sections += [f"- {a}" for a in archs]
        sections.append("")
        metrics = [m for m in METRICS[part] if any(m in r["values"] for r in rows)]
        sections += ["| dataset | method | seed | params | train s | " + " | ".join(metrics) + " |", "|---|---|---:|---:|---:|" + "---:|" * len(metrics)]
        for r in rows:
            sections.append(f"| {r['dataset']} | {r['method']} | {cell(r.get('seed'))} | {cell(r.get('params'))} | {cell(r.get('train_s'))} | "
                            + " | ".join(cell(r["values"].get(m)) for m in metrics) + " |")
        sections.append("")
        buckets = [k for k in (rows[-1]["values"] if rows else {}) if k.startswith("t") and "-" in k]
        if buckets:
            sections += ["eps-MSE of the EMA network on the test images per timestep bucket (the same t and noise for every network):", "",
                         "| method | seed | " + " | ".join(buckets) + " |", "|---|---:|" + "---:|" * len(buckets)]
            for r in rows:
                if buckets[0] in r["values"]:
                    sections.append(f"| {r['method']} | {r['seed']} | " + " | ".join(f"{r['values'][b]:.4f}" for b in buckets) + " |")
            sections.append("")
        if part == "flows":
            sections += ["Each peer's grid (transforms x hidden; the state chosen by val bits/dim):", "", "| peer | seed | transforms | hidden | params | val bpd | test bpd | step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                for t in r.get("grid", []):
                    sections.append(f"| {r['method']} | {r['seed']} | {t['transforms']} | {t['hidden']} | {t['params']} | {t['val_bpd']:.3f} | {t['test_bpd']:.3f} | {t['best_step']} |")
            sections.append("")
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            ours = [r for r in rows if r["dataset"] == dataset and r["impl"] == "gentrain"]
            theirs = [r for r in rows if r["dataset"] == dataset and r["impl"] == "peer"]
            for gm in dict.fromkeys(r["method"] for r in ours):
                for pm in dict.fromkeys(r["method"] for r in theirs):
                    for m in metrics:
                        g = [r["values"][m] for r in ours if r["method"] == gm and m in r["values"]]
                        p = [r["values"][m] for r in theirs if r["method"] == pm and m in r["values"]]
                        if g and p:
                            summary.append(f"| {part} | {dataset} | {gm} | {pm} | {m} | {spread(g)} | {spread(p)} | {verdict(g, p, m in HIGHER_BETTER)} |")
    notes = out.read_text().split(diffusion.HAND_NOTES, 1)[1] if out.is_file() and diffusion.HAND_NOTES in out.read_text() else None
    text = "\n".join([*md, *summary, "", *sections])
    if notes is not None:
        text += "\n" + diffusion.HAND_NOTES + notes
    out.write_text(text.rstrip() + "\n")
    log(f"written {diffusion.rel(out)}")


# ---- main --------------------------------------------------------------------------------------------------------------
def run_part(part: str, args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    if part == "ddpm_digits":
        return ddpm_images(part, "digits", args, console)
    if part == "ddpm_fashion":
        return ddpm_images(part, "fashion_mnist", args, console)
    return PART_FUNCS[part](args, console)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every two-sided comparison (gan_toy: --gan-seeds)")
    parser.add_argument("--gan-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ddpm_digits-steps", dest="ddpm_digits_steps", type=int, default=1500)
    parser.add_argument("--ddpm_fashion-steps", dest="ddpm_fashion_steps", type=int, default=1500)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=500, help="samples scored per image row")
    parser.add_argument("--n-test", type=int, default=1000, help="test images the Frechet distances and eps-MSE use (digits: all 297)")
    parser.add_argument("--n-fid", type=int, default=250, help="fid<n>: n samples vs the first n test images (0: no Inception)")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--toy-steps", type=int, default=5000)
    parser.add_argument("--gan-steps", type=int, default=3000)
    parser.add_argument("--flow-steps", type=int, default=1000)
    parser.add_argument("--vae-epochs", type=int, default=5)
    parser.add_argument("--vae-test", type=int, default=1000, help="test images of the VAE NLL")
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "peers_cpu"))
    parser.add_argument("--out", default=str(RESULTS / "peers_cpu.md"))
    parser.add_argument("--reuse", action="store_true", help="read back gentrain runs already trained with the same overrides")
    parser.add_argument("--render", action="store_true", help="train nothing: write the .md from the parts' .jsonl files")
    args = parser.parse_args()
    if not args.render:
        torch.set_num_threads(args.threads)
        console = Console(file=open(os.devnull, "w"))
        for part in args.parts:
            log(f"[{part}]")
            t0 = time.perf_counter()
            rows = run_part(part, args, console)
            save_rows(args, part, rows, time.perf_counter() - t0)
    render(args)


if __name__ == "__main__":
    main()

