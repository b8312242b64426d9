"""Throughput benchmark: gentrain's training engine against a plain PyTorch loop, on the same networks.

    python benchmarks/throughput.py --device cpu --threads 1 --steps 200 realnvp=20   (the CPU campaign: five workloads, 3 repeats)
    python benchmarks/throughput.py --device cuda --modes eager phase reduce-overhead step plain-compiled   (a GPU: every mode)
    python benchmarks/throughput.py --device cpu --threads 1 --modes eager phase step plain-compiled --steps 100
    python benchmarks/throughput.py --device cpu --steps 60 --warmup 10 --repeats 1 --workloads dcgan_ns vae --out /tmp/t.md

Six workloads on 28x28 images (Fashion-MNIST; random uint8 images of the same shape when
``/usr/share/datasets/fashion-mnist`` is missing), batch 64 unless ``--batch-size``:

- ``dcgan_ns``: model=dcgan objective=non_saturating, one D step and one G step per step;
- ``wgan_gp``: model=wgan_gp (objective wasserstein_gp, n_critic D steps per G step from the config);
- ``vae``: model=conv_vae objective=elbo (the convolutional VAE fits 28x28);
- ``realnvp``: model=realnvp objective=flow_nll;
- ``pixelcnn``: model=pixelcnn objective=ar_nll;
- ``ddpm``: model=ddpm objective=ddpm (the U-Net at the model's default size).

**Engine side.** ``gentrain.tasks.train(cfg, run_dir=<tmp dir>, console=<quiet rich Console>)``,
as a user's run: TensorBoard and ``metrics.jsonl`` on, the default ``logger.every``, checkpoints at
the default ``trainer.ckpt_every``; ``logger.samples_every`` beyond the run (the pictures a run
always draws after its last step fall outside the timed span) and ``eval.metrics=[]``. Its steps/s
come from ``metrics.jsonl``: the rate between the first train line at or after the warm-up and the
last one, from their ``time_s`` (cumulative training time). The engine logs every ``logger.every``
steps, so the warm-up is rounded up to a multiple of it (``--warmup 20`` -> the first 50 steps)
and the run is ``warm-up + --steps`` steps long; the plain loop excludes the same number of steps.

**Plain side.** What users write: ``DataLoader(TensorDataset(x), batch_size, shuffle=True,
drop_last=True)`` over the float32 images in [-1, 1] (host memory; each batch ``.to(device)``),
fp32 with torch's default backend flags, ``zero_grad`` / ``backward`` / ``step``, ``loss.item()``
of every trained network each step appended to a Python list. It runs the gentrain model's own
sub-networks (a deep copy of the model gentrain builds from the same config and seed, so both sides
start from identical weights) with the losses written inline, the same mathematics as the gentrain
objective, and the optimizers of ``cfg.model.optimizer``. DCGAN follows pytorch/examples' dcgan
(BCE-with-logits, ``fake.detach()`` for D; D's parameters stay trainable during G's step, so G's
backward also fills D's gradients); WGAN-GP follows Gulrajani et al.'s loop (an endless batch
generator, n_critic critic steps on fresh batches, the penalty by ``torch.autograd.grad(...,
create_graph=True)`` on random interpolates, the critic's parameters frozen for G's step).
Timing: ``W`` warm-up steps (the engine's excluded steps), then ``--steps`` timed steps between two
``torch.cuda.synchronize()`` on CUDA.

Repeats are interleaved (engine, plain, engine, plain, ...) so background load hits both alike;
the ratio is engine/plain per repeat, reported as the median with its min-max.

``--modes`` picks the engine's modes: ``eager`` (``trainer.compile=false``), ``phase``
(``trainer.compile=true``: each phase's loss compiled), ``reduce-overhead`` (the same with
``trainer.compile_mode=reduce-overhead``: CUDA graphs of each phase's forward and backward) and
``step`` (``trainer.compile=step``: the whole step as one region), each recorded as not available
when this gentrain lacks it; ``plain-compiled`` adds the plain loop with its networks wrapped in
``torch.compile`` (for WGAN-GP the penalty's double backward runs through the eager critic), the
fair peer of the compiled modes. ``--compile`` is ``--modes eager phase plain-compiled``. Every
ratio is against the eager plain loop of the same repeat. ``--threads T`` sets ``torch.set_num_threads(T)`` and passes
``device.threads=T`` to the engine where that key exists. On a shared CPU use ``--threads 1``:
with torch's default (one thread per core) another process on a core stalls OpenMP's barriers and
steps take up to 10x longer at random moments, which swamps the comparison.

RealNVP is heavy on a CPU (about 8 s a step on one thread): ``--steps 200 realnvp=20`` times 20
of its steps and 200 of the others'.

Writes ``benchmarks/results/throughput_<device>.md`` and a ``.jsonl`` beside it (a meta line, then
one line per workload, side, mode and repeat).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from gentrain import __version__ as gentrain_version
from gentrain.build import build, build_model, compose, seed_everything
from gentrain.config import DeviceSettings, TrainerSettings, typed
from gentrain.engine.device import device_name, resolve_device
from gentrain.tasks import train

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Workload:
    name: str
    overrides: tuple[str, ...]
    kind: str  # gan | vae | flow | ar
    what: str


WORKLOADS = {
    w.name: w
    for w in (
        Workload("dcgan_ns", ("model=dcgan", "objective=non_saturating"), "gan", "DCGAN, non-saturating loss, 1 D + 1 G step"),
        Workload("wgan_gp", ("model=wgan_gp",), "gan", "WGAN-GP (layer-norm critic), n_critic D steps + 1 G step"),
        Workload("vae", ("model=conv_vae", "objective=elbo"), "vae", "convolutional VAE, ELBO (Bernoulli decoder)"),
        Workload("realnvp", ("model=realnvp", "objective=flow_nll"), "flow", "RealNVP, dequantised NLL"),
        Workload("pixelcnn", ("model=pixelcnn", "objective=ar_nll"), "ar", "PixelCNN, 256-way softmax NLL"),
        Workload("ddpm", ("model=ddpm", "objective=ddpm"), "diffusion", "DDPM U-Net (the model's default size), L_simple"),
    )
}

#: The engine's modes (``--modes``) and the overrides of each; ``plain-compiled`` is the plain loop with torch.compile'd networks.
MODES = {
    "eager": [],
    "phase": ["trainer.compile=true"],
    "reduce-overhead": ["trainer.compile=true", "trainer.compile_mode=reduce-overhead"],
    "step": ["trainer.compile=step"],
}

#: Images in the picture every run draws after its last step (outside the timed span): few, since
#: PixelCNN samples sub-pixel by sub-pixel (64 images take minutes on a CPU).
N_SAMPLES = 8

#: The targets (issue 23): on the GPU, the whole-step mode >= these times the plain loop for the named workloads;
#: on the CPU, no mode slower than the plain loop (>= 1) for every workload.
GPU_TARGETS = {"dcgan_ns": 5.0, "wgan_gp": 3.0}
CPU_TARGET = 1.0

#: torch's backend flags as this process started (a fresh user process has these); the engine sets its own.
_BACKEND_DEFAULTS: dict[str, Any] = {}


def _save_backend_defaults() -> None:
    _BACKEND_DEFAULTS.update(
        matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        cudnn_tf32=torch.backends.cudnn.allow_tf32,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        matmul_precision=torch.get_float32_matmul_precision(),
    )


def _restore_backend_defaults() -> None:
    torch.backends.cuda.matmul.allow_tf32 = _BACKEND_DEFAULTS["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = _BACKEND_DEFAULTS["cudnn_tf32"]
    torch.backends.cudnn.benchmark = _BACKEND_DEFAULTS["cudnn_benchmark"]
    torch.set_float32_matmul_precision(_BACKEND_DEFAULTS["matmul_precision"])


def _load1() -> float | None:
    """The 1-minute load average (other work on a shared machine slows the timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- data


def _write_idx(path: Path, array: Tensor) -> None:
    """An uncompressed IDX file of uint8 ``array`` (the MNIST format gentrain's loaders read)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def data_source(tmp: Path, seed: int) -> tuple[list[str], str]:
    """Dataset overrides and a sentence on the data: Fashion-MNIST when installed, else random uint8 images in its format."""
    carried = os.environ.get("GENTRAIN_FASHION_DIR")  # the GPU campaign's carried subset (benchmarks/gpu_prepare.sh)
    if carried and Path(carried, "train-images-idx3-ubyte.gz").is_file():
        return ["dataset=fashion_mnist", f"dataset.system_dir={carried}"], f"Fashion-MNIST from {carried} ($GENTRAIN_FASHION_DIR: the campaign's subset)"
    if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file() or (FASHION_DIR / "train-images-idx3-ubyte").is_file():
        return ["dataset=fashion_mnist"], f"Fashion-MNIST from {FASHION_DIR} (the train split: 55,000 images, 5,000 held out as val)"
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g))
    overrides = ["dataset=fashion_mnist", f"dataset.root={tmp}", f"dataset.system_dir={tmp / 'no-system-copy'}"]
    return overrides, (f"**random uint8 images** of Fashion-MNIST's shape (60,000 x 1 x 28 x 28, seed {seed}; {FASHION_DIR} is missing), "
                       "written as IDX files and read by gentrain's Fashion-MNIST loader; the train split: 55,000 images")


# ----------------------------------------------------------------------------- the plain loop


def make_optimizer(spec: Any, params: Any) -> torch.optim.Optimizer:
    """``torch.optim.<Name>(params, **settings)`` from a ``model.optimizer.<phase>`` entry, as a user types it."""
    spec = OmegaConf.to_container(spec, resolve=True)
    target = spec.pop("_target_")
    spec.pop("_partial_", None)
    module, _, name = target.rpartition(".")
    if module != "torch.optim":
        raise SystemExit(f"the plain loop builds torch.optim optimizers; the config names {target}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return getattr(torch.optim, name)(params, **kwargs)


def endless(loader: DataLoader, device: torch.device) -> Iterator[Tensor]:
    """Batches forever, epoch after epoch (Gulrajani et al.'s ``inf_train_gen``), each moved to the device."""
    while True:
        for (x,) in loader:
            yield x.to(device)


def maybe_compile(module: Any, on: bool) -> Any:
    return torch.compile(module) if on else module


def plain_step_fn(kind: str, model: Any, cfg: Any, device: torch.device, compiled: bool, history: list) -> Callable[[Iterator[Tensor]], None]:
    """One training step of the plain loop for ``kind``, closing over its networks and optimizers."""
    opt_specs = cfg.model.optimizer
    batch = int(cfg.trainer.batch_size)
    if kind == "gan":
        G, D = model.generator, model.discriminator
        z_dim = model.z_dim
        opt_g, opt_d = make_optimizer(opt_specs.G, G.parameters()), make_optimizer(opt_specs.D, D.parameters())
        Gc, Dc = maybe_compile(G, compiled), maybe_compile(D, compiled)
        target = OmegaConf.select(cfg, "objective._target_")
        n_critic = int(cfg.objective.d_steps)
        if target.endswith("WassersteinGP"):
            lam = float(cfg.objective.gp_weight)

            def wgan_gp_step(data: Iterator[Tensor]) -> None:
                for p in D.parameters():
                    p.requires_grad = True
                for _ in range(n_critic):
                    real = next(data)
                    D.zero_grad()
                    with torch.no_grad():
                        fake = Gc(torch.randn(batch, z_dim, device=device))
                    d_real = Dc(real).view(-1)
                    d_fake = Dc(fake).view(-1)
                    # gradient penalty on random interpolates (Gulrajani et al. 2017); eager critic: no double backward through compiled graphs
                    alpha = torch.rand(batch, 1, 1, 1, device=device)
                    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
                    out = D(interpolates).view(-1)
                    (grads,) = torch.autograd.grad(outputs=out, inputs=interpolates, grad_outputs=torch.ones_like(out), create_graph=True, retain_graph=True)
                    gp = ((grads.view(batch, -1).norm(2, dim=1) - 1) ** 2).mean()
                    d_cost = d_fake.mean() - d_real.mean() + lam * gp
                    d_cost.backward()
                    opt_d.step()
                for p in D.parameters():
                    p.requires_grad = False
                G.zero_grad()
                g_cost = -Dc(Gc(torch.randn(batch, z_dim, device=device))).view(-1).mean()
                g_cost.backward()
                opt_g.step()
                history.append((d_cost.item(), g_cost.item()))

            return wgan_gp_step
        if not target.endswith("NonSaturating"):
            raise SystemExit(f"the plain GAN loop knows non_saturating and wasserstein_gp, not {target}")
        smooth = 1.0 - float(cfg.objective.label_smoothing)
        criterion = torch.nn.BCEWithLogitsLoss()

        def dcgan_step(data: Iterator[Tensor]) -> None:
            # pytorch/examples dcgan: (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
            for _ in range(n_critic):
                real = next(data)
                D.zero_grad()
                out_real = Dc(real).view(-1)
                err_real = criterion(out_real, torch.full_like(out_real, smooth))
                fake = Gc(torch.randn(batch, z_dim, device=device))
                out_fake = Dc(fake.detach()).view(-1)
                err_fake = criterion(out_fake, torch.zeros_like(out_fake))
                err_d = err_real + err_fake
                err_d.backward()
                opt_d.step()
            # (2) update G: maximize log(D(G(z))), on fresh noise (as gentrain's G phase)
            G.zero_grad()
            out = Dc(Gc(torch.randn(batch, z_dim, device=device))).view(-1)
            err_g = criterion(out, torch.ones_like(out))
            err_g.backward()
            opt_g.step()
            history.append((err_d.item(), err_g.item()))

        return dcgan_step

    opt = make_optimizer(opt_specs.main, model.parameters())
    dims = math.prod(model.shape)
    to_bpd = 1.0 / (dims * math.log(2.0))
    if kind == "vae":
        if model.decoder_kind != "bernoulli":
            raise SystemExit("the plain VAE loop writes the Bernoulli ELBO; run conv_vae with its default model.decoder=bernoulli")
        enc, dec = maybe_compile(model.encoder, compiled), maybe_compile(model.decoder, compiled)
        k = model.data_levels
        beta = float(cfg.objective.beta)
        shape = model.shape

        def vae_step(data: Iterator[Tensor]) -> None:
            x = next(data)
            target = (2 * torch.round((x + 1) * ((k - 1) / 2)) >= k - 1).float()  # binarised pixels (upper half of the levels)
            mu, logvar = enc(x).chunk(2, dim=1)
            logvar = logvar.clamp(-12, 8)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            logits = dec(z).view(x.shape[0], *shape)
            recon = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = -(recon - beta * kl).mean() * to_bpd  # negative ELBO in bits/dim
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())

        return vae_step
    if kind == "flow":
        log_prob = maybe_compile(model.log_prob, compiled)  # dequantisation, logit transform, flow, base density

        def flow_step(data: Iterator[Tensor]) -> None:
            loss = -log_prob(next(data)).mean() * to_bpd
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())

        return flow_step
    if kind == "ar":
        net = maybe_compile(model, compiled)
        k = model.data_levels

        def ar_step(data: Iterator[Tensor]) -> None:
            x = next(data)
            levels = torch.round((x + 1) * ((k - 1) / 2)).clamp(0, k - 1).long()
            logits = net(x).float()  # [B, K, C, H, W]
            loss = F.cross_entropy(logits, levels, reduction="none").flatten(1).sum(1).mean() * to_bpd
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())

        return ar_step
    if kind == "diffusion":
        net, process = maybe_compile(model.net, compiled), model.process

        def ddpm_step(data: Iterator[Tensor]) -> None:
            # Ho et al.'s L_simple: t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, MSE to eps
            x0 = next(data)
            t = torch.randint(0, process.timesteps, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            abar = process.abar[t].float().view(-1, 1, 1, 1)
            loss = (net(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t).float() - noise).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())

        return ddpm_step
    raise ValueError(kind)


def run_plain(wl: Workload, cfg: Any, model0: Any, x: Tensor, device: torch.device, seed: int, warm: int, steps: int, compiled: bool) -> dict[str, Any]:
    _restore_backend_defaults()  # a user's process: torch's own flags, not the ones the engine set
    torch.manual_seed(seed)
    model = copy.deepcopy(model0).to(device).train()
    loader = DataLoader(TensorDataset(x), batch_size=int(cfg.trainer.batch_size), shuffle=True, drop_last=True)
    history: list = []
    step = plain_step_fn(wl.kind, model, cfg, device, compiled, history)
    data = endless(loader, device)
    t_start = time.perf_counter()
    for _ in range(warm):
        step(data)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(data)
    sync(device)
    timed = time.perf_counter() - t0
    last = history[-1]
    finite = all(math.isfinite(v) for v in (last if isinstance(last, tuple) else (last,)))
    return {
        "status": "ok" if finite else "non-finite loss", "steps_per_s": steps / timed, "timed_steps": steps, "excluded_steps": warm,
        "timed_s": round(timed, 3), "warmup_s": round(t0 - t_start, 3), "last_loss": last,
    }


# ----------------------------------------------------------------------------- the engine


def key_available(override: str, node: str, schema: type, base: list[str]) -> str | None:
    """None when this gentrain composes and accepts ``override``; else why not (one line)."""
    try:
        cfg = compose([*base, override])
        typed(OmegaConf.select(cfg, node), schema, node)
    except Exception as e:  # noqa: BLE001 - Hydra's, OmegaConf's and gentrain's errors alike
        return str(e).strip().splitlines()[0][:200]
    return None


def run_engine(overrides: list[str], run_root: Path, excluded: int) -> dict[str, Any]:
    cfg = compose(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=run_root))
    t0 = time.perf_counter()
    report = train(cfg, run_dir=run_dir, console=Console(file=io.StringIO(), width=120))
    wall = time.perf_counter() - t0
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    lines = [r for r in lines if r.get("kind") == "train"]
    first = next(r for r in lines if r["step"] >= excluded)
    last = lines[-1]
    span = last["time_s"] - first["time_s"]
    steps = last["step"] - first["step"]
    shutil.rmtree(run_dir, ignore_errors=True)
    losses = {k: v for k, v in last.items() if k.endswith("/loss")}
    finite = all(math.isfinite(v) for v in losses.values())
    return {
        "status": "ok" if finite else "non-finite loss", "steps_per_s": steps / span, "timed_steps": steps, "excluded_steps": first["step"],
        "timed_s": round(span, 3), "run_wall_s": round(wall, 3), "report_steps_per_s": report["run"]["steps_per_s"],
        "last_loss": losses, "engine_settings": {g: report.get("config", {}).get(g) for g in ("trainer", "device")},
    }


# ----------------------------------------------------------------------------- main


def same_weights(model0: Any, overrides: list[str]) -> str:
    """"identical" when the engine's own build (``gentrain.tasks.training.prepare``) gives ``model0``'s weights, "different" when not."""
    from gentrain.tasks.training import prepare

    try:
        engine_model = prepare(compose(overrides)).model.cpu()
    except Exception as e:  # noqa: BLE001 - the engine's run will report its own error
        return f"not checked ({str(e).strip().splitlines()[0][:200]})"
    a, b = model0.state_dict(), engine_model.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)
    return "identical" if same else "different"


def summarise(records: list[dict[str, Any]], workloads: list[str], modes: list[str], plain_modes: list[str]) -> list[dict[str, Any]]:
    """One row per workload and engine mode (its steps/s against the eager plain loop's, the ratio per repeat), then one
    for the compiled plain loop against the eager one (the fair peer of the compiled modes)."""
    rows = []
    stat = lambda v: (statistics.median(v), min(v), max(v)) if v else None  # noqa: E731
    for name in workloads:
        of = lambda side, mode: {r["repeat"]: r for r in records if r["workload"] == name and r["side"] == side and r["mode"] == mode}  # noqa: E731
        plain = of("plain", "eager")
        p = [r["steps_per_s"] for r in plain.values() if r["status"] == "ok"]
        sides = [("engine", m) for m in modes] + [("plain", m) for m in plain_modes if m != "eager"]
        for side, mode in sides:
            runs = of(side, mode)
            e = [r["steps_per_s"] for r in runs.values() if r["status"] == "ok"]
            ratios = [runs[k]["steps_per_s"] / plain[k]["steps_per_s"] for k in runs if k in plain and runs[k]["status"] == "ok" and plain[k]["status"] == "ok"]
            notes = sorted({r["status"] for r in (*runs.values(), *plain.values()) if r["status"] != "ok"})
            rows.append({"workload": name, "side": side, "mode": mode, "engine": stat(e), "plain": stat(p), "ratio": stat(ratios), "notes": notes})
    return rows


def target_of(name: str, device: torch.device, row: dict[str, Any]) -> float | None:
    if row["side"] != "engine":
        return None
    if device.type == "cuda":
        return GPU_TARGETS.get(name) if row["mode"] == "step" else None
    return CPU_TARGET


def parse_steps(items: list[str], default: int, parser: argparse.ArgumentParser) -> dict[str, int]:
    """``["200", "realnvp=20"]`` -> timed steps of every workload."""
    named: dict[str, int] = {}
    for item in items:
        name, _, value = item.rpartition("=")
        if not value.isdigit() or int(value) < 1 or (name and name not in WORKLOADS):
            parser.error(f"--steps takes N or WORKLOAD=N with N >= 1 and WORKLOAD one of {', '.join(WORKLOADS)}; got {item!r}")
        if name:
            named[name] = int(value)
        else:
            default = int(value)
    return {n: named.get(n, default) for n in WORKLOADS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", nargs="+", default=[], metavar="N|WORKLOAD=N",
                        help="timed steps per run (default: 200 on the CPU, 2000 on CUDA), and per-workload exceptions, e.g. --steps 200 realnvp=20")
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded before timing (rounded up to the engine's logger.every)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--modes", nargs="+", default=None, choices=[*MODES, "plain-compiled"],
                        help="the engine's modes to run (eager: trainer.compile=false; phase: =true; reduce-overhead: =true with "
                        "compile_mode=reduce-overhead; step: =step), and plain-compiled for the plain loop with torch.compile; default: eager")
    parser.add_argument("--compile", action="store_true", help="shorthand for --modes eager phase plain-compiled")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=None, help="the engine's logger.every (default: the config's); the warm-up rounds up to it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results file (.md; a .jsonl beside it); default benchmarks/results/throughput_<device>.md")
    args = parser.parse_args()
    wall0 = time.perf_counter()
    load_start = _load1()
    command = "python benchmarks/throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    steps_of = parse_steps(args.steps, 2000 if device.type == "cuda" else 200, parser)
    _save_backend_defaults()
    console = Console()
    if device.type == "cpu" and not args.threads:
        console.print("note: on a shared CPU pass --threads 1 (torch's default threads make the timings swing with other load)", highlight=False)
    out = Path(args.out or Path(__file__).parent / "results" / f"throughput_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gentrain_throughput_"))
    data_overrides, data_text = data_source(tmp / "data", args.seed)

    # no curves.png at the end of a run: outside the timed span, and matplotlib may be missing (the GPU machine has none)
    common = [*data_overrides, f"device={device.type}", f"seed={args.seed}", f"trainer.batch_size={args.batch_size}", "eval.metrics=[]", "logger.curves=false"]
    if args.log_every:
        common.append(f"logger.every={args.log_every}")
    base = ["model=dcgan", *common]
    threads_note = None
    if args.threads:
        threads_note = key_available(f"device.threads={args.threads}", "device", DeviceSettings, base)
        if threads_note is None:
            common.append(f"device.threads={args.threads}")
    chosen = args.modes or (["eager", "phase", "plain-compiled"] if args.compile else ["eager"])
    modes = [m for m in MODES if m in chosen]
    plain_modes = ["eager"] + (["compiled"] if "plain-compiled" in chosen else [])
    # a mode this gentrain lacks is recorded as not available (an older checkout run by the same script)
    notes = {m: key_available(MODES[m][0], "trainer", TrainerSettings, base) if MODES[m] else None for m in modes}
    every = int(compose(base).logger.every)
    excluded = every * max(1, math.ceil(args.warmup / every))  # the first logged step at or after the warm-up

    # the plain loop's data: gentrain's train split (the same examples the engine trains on), float32 in [-1, 1]
    split = build(compose(base).dataset, "dataset").load("train")
    x = split.x.float().div(127.5).sub(1.0)
    console.print(f"data: {data_text}; {x.shape[0]} training images; device {device} ({device_name(device)}); "
                  f"{torch.get_num_threads()} thread(s); each run {excluded} excluded steps, then timed: "
                  + ", ".join(f"{n} {steps_of[n]}" for n in args.workloads), highlight=False)

    records: list[dict[str, Any]] = []
    weight_checks: dict[str, str] = {}
    what_of: dict[str, str] = {}
    jsonl = out.with_suffix(".jsonl")
    runs_total = len(args.workloads) * args.repeats * (len(modes) + len(plain_modes))
    done = 0
    for name in args.workloads:
        wl = WORKLOADS[name]
        steps = steps_of[name]
        max_steps = excluded + steps
        wl_overrides = [*wl.overrides, *common]
        cfg = compose(wl_overrides)
        seed_everything(int(cfg.trainer.seed))  # what gentrain.tasks.training.prepare does before building the model
        model0 = build_model(cfg)
        weights = same_weights(model0, wl_overrides)
        if weights == "different":
            raise SystemExit(f"{name}: the model built here differs from the engine's; the comparison would not be on the same weights")
        weight_checks[name] = weights
        d_steps = OmegaConf.select(cfg, "objective.d_steps", default=None)
        what_of[name] = wl.what.replace("n_critic", str(d_steps)) if d_steps is not None else wl.what
        info = {"n_params": sum(p.numel() for p in model0.parameters()), "d_steps": OmegaConf.select(cfg, "objective.d_steps", default=None),
                "optimizer": {k: OmegaConf.to_container(v) for k, v in cfg.model.optimizer.items()}, "initial_weights": weights}
        for r in range(args.repeats):
            for side, mode in [("engine", m) for m in modes] + [("plain", m) for m in plain_modes]:
                done += 1
                rec = {"kind": "run", "workload": name, "side": side, "mode": mode, "repeat": r, "seed": args.seed, "load_before": _load1()}
                try:
                    if side == "engine":
                        if notes[mode] is not None:
                            rec |= {"status": "not available in this gentrain", "why": notes[mode], "steps_per_s": None}
                        else:
                            ov = [*wl_overrides, f"trainer.max_steps={max_steps}", f"logger.samples_every={max_steps + 1}", f"logger.n_samples={N_SAMPLES}"]
                            rec |= {"overrides": ov + MODES[mode]} | run_engine(ov + MODES[mode], tmp, excluded)
                    else:
                        rec |= run_plain(wl, cfg, model0, x, device, args.seed, excluded, steps, mode == "compiled")
                except Exception as e:  # noqa: BLE001 - one failed run must not cost the campaign
                    rec |= {"status": f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}", "steps_per_s": None}
                rec |= {"load_after": _load1()} | ({"info": info} if side == "engine" and r == 0 and mode == modes[0] else {})
                records.append(rec)
                rate = rec.get("steps_per_s")
                shown = f"{rate:.3f} steps/s" if rate else rec["status"]
                console.print(f"[{done}/{runs_total}] {name} {side} {mode} repeat {r + 1}: {shown}", highlight=False)
                # the results so far, rewritten after every run: a campaign cut short still leaves its numbers
                write_results(out, jsonl, args, command, device, steps_of, excluded, every, data_text, records,
                              summarise(records, list(dict.fromkeys(r["workload"] for r in records)), modes, plain_modes), time.perf_counter() - wall0,
                              notes, threads_note, modes, plain_modes, weight_checks, load_start, what_of, partial=f"{done} of {runs_total} runs")
        del model0
    wall = time.perf_counter() - wall0
    rows = summarise(records, args.workloads, modes, plain_modes)
    show_table(console, rows, device)
    write_results(out, jsonl, args, command, device, steps_of, excluded, every, data_text, records, rows, wall, notes, threads_note, modes, plain_modes,
                  weight_checks, load_start, what_of)
    console.print(f"results: {out} and {jsonl}; wall time {wall:.0f} s", highlight=False)
    shutil.rmtree(tmp, ignore_errors=True)


def _fmt(s: tuple[float, float, float] | None, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    med, lo, hi = s
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def _target_text(row: dict[str, Any], device: torch.device) -> str:
    target = target_of(row["workload"], device, row)
    if target is None:
        return "-"
    if row["ratio"] is None:
        return f">= {target:g}x: not measured"
    return f">= {target:g}x: {'met' if row['ratio'][0] >= target else 'NOT met'}"


def _label(row: dict[str, Any], notes: dict[str, str | None]) -> str:
    if row["side"] == "plain":
        return "plain loop, torch.compile"
    return f"engine, {row['mode']}" + (" (not available in this gentrain)" if notes.get(row["mode"]) else "")


def show_table(console: Console, rows: list[dict[str, Any]], device: torch.device) -> None:
    table = Table(title=f"gentrain engine vs plain PyTorch loop, steps/s on {device.type}: median (min-max)")
    for col in ("workload", "side, mode", "steps/s", "plain steps/s", "ratio to plain", "target"):
        table.add_column(col, justify="left" if col in ("workload", "side, mode", "target") else "right")
    for r in rows:
        table.add_row(r["workload"], _label(r, {}), _fmt(r["engine"]), _fmt(r["plain"]), _fmt(r["ratio"]), _target_text(r, device))
    console.print(table)


def write_results(
    out: Path, jsonl: Path, args: argparse.Namespace, command: str, device: torch.device, steps_of: dict[str, int], excluded: int, every: int,
    data_text: str, records: list[dict[str, Any]], rows: list[dict[str, Any]], wall: float, notes: dict[str, str | None],
    threads_note: str | None, modes: list[str], plain_modes: list[str], weight_checks: dict[str, str], load_start: float | None,
    what_of: dict[str, str], partial: str | None = None,
) -> None:
    threads = torch.get_num_threads()
    thread_text = f"{threads} torch thread(s)" + (f" (`--threads {args.threads}`" if args.threads else " (torch's default")
    if args.threads:
        thread_text += "; `device.threads` " + ("passed to the engine)" if threads_note is None else f"not in this gentrain: {threads_note})")
    else:
        thread_text += ")"
    load_end = _load1()
    timed_text = ", ".join(f"{n} {steps_of[n]}" for n in args.workloads)
    loads = [v for rec in records for v in (rec.get("load_before"), rec.get("load_after")) if v is not None]
    load = f"{load_start} at the start, {load_end} at the end, {max(loads) if loads else 'n/a'} at most between runs"
    checks = sorted(set(weight_checks.values()))
    weights_text = "checked identical for every workload" if checks == ["identical"] else "; ".join(f"{k}: {v}" for k, v in weight_checks.items())
    lines = [
        f"# Training throughput: gentrain's engine vs a plain PyTorch loop ({device.type})",
        "",
        *([f"**Partial results: {partial} done so far.**", ""] if partial else []),
        f"Written by `benchmarks/throughput.py`; command: `{command}`.",
        "",
        f"- device: {device.type} ({device_name(device)}), {thread_text}, {os.cpu_count()} logical CPU(s); 1-minute load average {load} (other work on a shared machine slows either side; the repeats are interleaved so it hits both alike)",
        f"- versions: gentrain {gentrain_version}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- data: {data_text}",
        f"- batch {args.batch_size}; each run: {excluded} warm-up steps excluded (`--warmup {args.warmup}` rounded up to the engine's "
        f"`logger.every={every}`, the same on both sides), then timed steps: {timed_text}; {args.repeats} repeat(s), interleaved engine, plain, "
        f"engine, plain, ...; seed {args.seed} (`seed={args.seed}`: the engine's `trainer.seed`, and `torch.manual_seed` of the plain loop, "
        f"whose model is a deep copy of the one gentrain builds from the same config and seed; initial weights against the engine's own build: {weights_text})",
        f"- wall time of the whole benchmark: {wall:.0f} s" + (" so far" if partial else ""),
        "",
        "What each side does per step:",
        "",
        "- **engine**: `gentrain.tasks.train(cfg, run_dir=<tmp>, console=<quiet rich Console>)` as a user's run: data held as one uint8 "
        "tensor on the device and indexed per batch, every phase's loss, logs and gradient norm kept on the device, a host sync only "
        f"every `logger.every={every}` steps (TensorBoard scalars, a `metrics.jsonl` line, a finiteness check of the model), checkpoints at the "
        "default `trainer.ckpt_every` (1000; within the timed span when it is that long), no pictures or evaluation inside the span "
        f"(the pictures every run draws after its last step use `logger.n_samples={N_SAMPLES}`). "
        "steps/s = (last logged step - first logged step at or after the warm-up) / the difference of their `time_s` (cumulative "
        "training time) in `metrics.jsonl`.",
        "- **plain loop**: `DataLoader(TensorDataset(x_float32), batch_size, shuffle=True, drop_last=True)` (no workers; host memory; each "
        "batch `.to(device)`), fp32 with torch's default backend flags, `zero_grad()` / `backward()` / `step()`, and `loss.item()` of every "
        "trained network every step appended to a Python list (a host sync per step). The losses are written inline: DCGAN as "
        "pytorch/examples' dcgan (BCE-with-logits, `fake.detach()` for D, D left trainable during G's step); WGAN-GP as Gulrajani et al. "
        "(endless batch generator, n_critic critic steps on fresh batches, the penalty by `torch.autograd.grad(create_graph=True)` on "
        "random interpolates, the critic frozen for G's step); VAE: binarised pixels, Bernoulli log-likelihood and analytic KL, -ELBO in "
        "bits/dim; RealNVP: `-model.log_prob(x)` in bits/dim; PixelCNN: 256-way cross-entropy of `model(x)` in bits/dim. Same optimizers "
        "(`cfg.model.optimizer`); DDPM: Ho et al.'s L_simple on the model's U-Net (the engine also keeps the model config's weight "
        "average, warm-up and clipping where it sets them). The engine's generator phase gathers only labels; the plain G step draws no batch.",
        "- **engine modes**: " + ", ".join(f"`{m}` (" + (" ".join(f"`{o}`" for o in MODES[m]) or "`trainer.compile=false`") + ")"
                                           + (f" **not available in this gentrain**: {notes[m]}" if notes.get(m) else "") for m in modes)
        + (". `step` captures the whole step (every phase, optimizer steps, clipping, log sums, EMA): a CUDA graph on CUDA, "
           "`torch.compile(fullgraph=True)` on the CPU" if "step" in modes else ""),
        "- **plain-loop modes**: eager" + (", and `torch.compile` on its networks (WGAN-GP's penalty through the eager critic: compiled graphs "
                                           "have no double backward): the fair peer of the compiled engine modes" if "compiled" in plain_modes else ""),
    ]
    target_line = (
        f"Targets (issue 23): on the GPU the whole-step mode >= {GPU_TARGETS['dcgan_ns']:g}x the plain loop for dcgan_ns and >= {GPU_TARGETS['wgan_gp']:g}x "
        f"for wgan_gp; on the CPU no mode slower than the plain loop (ratio >= {CPU_TARGET:g}); judged on the median ratio."
    )
    lines += [
        "",
        target_line,
        "",
        "| workload | what | side, mode | steps/s | eager plain loop steps/s | ratio to the plain loop | target |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        row_notes = f" ({'; '.join(r['notes'])})" if r["notes"] else ""
        lines.append(
            f"| {r['workload']} | {what_of.get(r['workload'], WORKLOADS[r['workload']].what)} | {_label(r, notes)} | {_fmt(r['engine'])} | {_fmt(r['plain'])} | "
            f"**{_fmt(r['ratio'])}**{row_notes} | {_target_text(r, device)} |"
        )
    lines += ["", "Each cell: median over the repeats (min-max); the ratio is steps/s over the eager plain loop's of the same repeat. "
              f"Per-run records: `{jsonl.name}`."]
    out.write_text("\n".join(lines) + "\n")
    with open(jsonl, "w") as fh:
        meta = {
            "kind": "meta", "command": command, "device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "gentrain": gentrain_version, "python": platform.python_version(), "batch_size": args.batch_size,
            "warmup_requested": args.warmup, "excluded_steps": excluded, "timed_steps": {n: steps_of[n] for n in args.workloads}, "repeats": args.repeats, "seed": args.seed,
            "data": data_text, "wall_s": round(wall, 1), "partial": partial, "load_start": load_start, "load_end": load_end, "initial_weights": weight_checks, "modes": modes, "plain_modes": plain_modes, "not_available": {m: n for m, n in notes.items() if n},
        }
        fh.write(json.dumps(meta) + "\n")
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
    if not partial:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
