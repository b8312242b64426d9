"""Likelihood benchmark: every likelihood model's test bits/dim next to two floors measured in the same run.

    python benchmarks/likelihood.py --dataset digits --threads 1
    python benchmarks/likelihood.py --dataset fashion_mnist --n-train 6000 --n-eval 1000 --threads 1
    python benchmarks/likelihood.py --dataset fashion_mnist --device cuda --steps 20000 --n-eval 10000   (a GPU)

For each model gentrain trains it (its own CLI path, ``gentrain.tasks.train``), evaluates ``nll<n>``
on the validation split every ``--eval-every`` steps and keeps ``checkpoints/best.pt`` by it (model
selection never sees the test split); the test number is ``best.pt``'s (``gentrain.tasks.evaluate``),
with the last step's beside it. Likelihoods are of the data's own levels (``dataset.levels``: 17 for
the digits, 256 for Fashion-MNIST): exact for PixelCNN and MADE, the dequantised bound for flows,
the IWAE bound (``--iwae-k``) for the VAEs, whose Bernoulli decoder models binarised pixels.

The two floors, on the same train and test examples:

1. the per-pixel histogram: an independent categorical per pixel over the dataset's levels, fitted
   on the train split with add-one (Laplace) smoothing, scored on the test examples (for the
   Bernoulli VAEs: the same over the binarised pixels);
2. a peer implementation, zuko's MAF (``--peer maf``) or RealNVP (``--peer realnvp``)
   (``pip install -e .[bench]``), on the same dequantisation (``(level + U[0, 1)) / K``), the same
   logit transform (``alpha`` = the flows' ``model.alpha``), the same ``-D log K`` offset, the same
   batch size and threads, trained for the training wall time of each gentrain flow and selected on
   the validation split at the same number of evaluations.

``--n-train`` trains on a subset (CPU-sized runs): it holds the rest of the raw train split out as
"val" (``dataset.val_fraction``), so the subset is the dataset's own fixed-seed split and every model,
floor and peer sees the same examples; validation and test use the first ``--n-eval`` examples.
Writes ``benchmarks/results/likelihood_<dataset>.md`` and ``.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.console import Console

from gentrain.build import build, compose
from gentrain.engine.device import device_name, resolve_device
from gentrain.engine.loader import to_model_space
from gentrain.models.likelihood import bits_per_dim, dequantize, logit_transform, to_levels
from gentrain.tasks import evaluate, train

#: model -> its objective
MODELS = {
    "vae": "elbo",
    "conv_vae": "elbo",
    "realnvp": "flow_nll",
    "glow": "flow_nll",
    "pixelcnn": "ar_nll",
    "made": "ar_nll",
}
FLOWS = ("realnvp", "glow")
#: CPU-sized architectures per dataset (overridden or extended by --set); listed in the results file.
DEFAULT_SET = {
    "digits": ["realnvp:model.hidden=32", "realnvp:model.blocks=2"],
    "fashion_mnist": [
        "realnvp:model.hidden=16", "realnvp:model.blocks=1", "glow:model.hidden=64", "glow:model.steps=4",
        "pixelcnn:model.hidden=32", "pixelcnn:model.layers=3", "made:model.hidden=[64]",
    ],
}


# ----------------------------------------------------------------------------- floors


def histogram_bpd(train_x: torch.Tensor, test_x: torch.Tensor, levels: int, binarise: bool = False) -> float:
    """Test bits/dim of independent per-pixel categoricals over ``levels`` (or over {0, 1} of the binarised pixels),
    fitted on ``train_x`` with add-one smoothing. Inputs: uint8 images."""
    def states(x: torch.Tensor) -> torch.Tensor:
        u = to_levels(to_model_space(x), levels).flatten(1)
        return (2 * u >= levels - 1).long() if binarise else u

    k = 2 if binarise else levels
    train_u, test_u = states(train_x), states(test_x)
    d = train_u.shape[1]
    counts = torch.zeros(d, k, dtype=torch.float64)
    counts.scatter_add_(1, train_u.T, torch.ones_like(train_u.T, dtype=torch.float64))
    log_p = torch.log((counts + 1) / (len(train_u) + k))  # [D, K]
    per_example = log_p.gather(1, test_u.T).sum(0)  # [N]
    return float(bits_per_dim(per_example, d).mean())


class Peer:
    """A zuko flow on the same preprocessing as gentrain's flows: log p(x) = log p_zuko(h) + log|dh/dy| - D log K."""

    def __init__(self, kind: str, dims: int, levels: int, alpha: float, transforms: int, hidden: int) -> None:
        import zuko

        cls = {"maf": zuko.flows.MAF, "realnvp": zuko.flows.RealNVP}[kind]
        self.flow = cls(dims, transforms=transforms, hidden_features=(hidden, hidden))
        self.kind, self.dims, self.levels, self.alpha = kind, dims, levels, alpha
        self.arch = f"zuko.flows.{cls.__name__}(features={dims}, transforms={transforms}, hidden_features=({hidden}, {hidden}))"

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        y = dequantize(x, generator, self.levels)
        h, log_det = logit_transform(y, self.alpha)
        return self.flow().log_prob(h.flatten(1)) + log_det - self.dims * math.log(self.levels)

    @torch.no_grad()
    def bpd(self, x: torch.Tensor, seed: int = 0, batch: int = 500) -> float:
        g = torch.Generator().manual_seed(seed)
        out = torch.cat([self.log_prob(x[i : i + batch], g) for i in range(0, len(x), batch)])
        return float(bits_per_dim(out, self.dims).mean())


def train_peer(
    peer: Peer, train_x: torch.Tensor, val_x: torch.Tensor, test_x: torch.Tensor, marks: dict[str, float], eval_every: int,
    batch_size: int, lr: float, seed: int,
) -> dict[str, dict[str, Any]]:
    """Train ``peer`` until the largest of ``marks`` (seconds of training, evaluations excluded), evaluating on ``val_x``
    every ``eval_every`` steps (the gentrain models' cadence; the peer, faster per step, gets more evaluations); for each
    mark, the test bits/dim of the best of the evaluations made before it and of the state at the mark itself."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(peer.flow.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    todo = sorted(marks, key=marks.get)
    best: tuple[float, int, Any] | None = None  # (val bpd, step, state)
    evaluations = 0
    out: dict[str, dict[str, Any]] = {}
    t, step, perm, pos = 0.0, 0, torch.randperm(len(train_x), generator=g), 0
    peer.flow.train()
    while todo:
        t0 = time.perf_counter()
        if pos + batch_size > len(train_x):
            perm, pos = torch.randperm(len(train_x), generator=g), 0
        x = train_x[perm[pos : pos + batch_size]]
        pos += batch_size
        loss = bits_per_dim(peer.log_prob(x), peer.dims).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        t += time.perf_counter() - t0
        if step % eval_every == 0:
            peer.flow.eval()
            value = peer.bpd(val_x)
            evaluations += 1
            if best is None or value < best[0]:
                best = (value, step, copy.deepcopy(peer.flow.state_dict()))
            peer.flow.train()
        while todo and t >= marks[todo[0]]:
            m = todo.pop(0)
            current = copy.deepcopy(peer.flow.state_dict())
            peer.flow.eval()
            last = peer.bpd(test_x)
            if best is not None:
                peer.flow.load_state_dict(best[2])
            out[m] = {
                "train_s": round(t, 1), "steps": step, "best_step": best[1] if best else step,
                "val_bpd": best[0] if best else float("nan"), "test_bpd": peer.bpd(test_x), "test_bpd_last": last, "evaluations": evaluations,
            }
            peer.flow.load_state_dict(current)
            peer.flow.train()
    return out


# ----------------------------------------------------------------------------- gentrain runs


def metric_name(n: int) -> str:
    return f"nll{n // 1000}k" if n % 1000 == 0 else f"nll{n}"


def run_model(name: str, args: argparse.Namespace, data_overrides: list[str], extra: list[str], console: Console) -> dict[str, Any]:
    objective = MODELS[name]
    metric = metric_name(args.n_eval)
    overrides = [
        f"model={name}", f"dataset={args.dataset}", f"objective={objective}", f"device={args.device_type}", f"seed={args.seed}",
        f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch_size}", "trainer.ckpt_every=0", "logger.progress=false",
        f"logger.samples_every={args.steps}", "logger.interpolations=false", "logger.tensorboard=false",
        f"eval.metrics=[{metric}]", f"eval.every={args.eval_every}",
        *data_overrides, *extra,
    ]
    if "iwae_k" in compose([f"model={name}", f"dataset={args.dataset}", f"objective={objective}"]).model:  # the VAEs' own option
        overrides.append(f"model.iwae_k={args.iwae_k}")
    run_dir = Path(args.runs) / args.dataset / name
    cfg = compose(overrides)
    alpha = OmegaConf.select(cfg, "model.alpha", default=None)
    best_path = run_dir / "checkpoints" / "best.pt"
    stamp = run_dir / "benchmark_overrides.json"
    reused = args.reuse and stamp.is_file() and json.loads(stamp.read_text()) == overrides and best_path.with_suffix(".eval.json").is_file()
    t0 = time.perf_counter()
    if reused:  # the same overrides trained and evaluated before: read their reports
        report = json.loads((run_dir / "report.json").read_text())
        ev = json.loads(best_path.with_suffix(".eval.json").read_text())
    else:
        report = train(cfg, run_dir=run_dir, console=console)
        ev = evaluate(
            compose(["task=eval", f"ckpt={best_path}", f"eval.metrics=[{metric}]", f"device={args.device_type}"]),
            console=console,
        )
        stamp.write_text(json.dumps(overrides))
    total = time.perf_counter() - t0
    (last,) = [r for r in report["evaluation"] if r["reference_split"].endswith("/test")]  # the last step's
    (best,) = ev["evaluation"]
    return {
        "model": name,
        "objective": objective,
        "overrides": " ".join(extra) or "defaults",
        "steps": report["run"]["steps"],
        "train_s": report["run"]["train_time_s"],
        "steps_per_s": report["run"]["steps_per_s"],
        "total_s": round(total, 1),
        "reused": bool(reused),
        "best_step": report["best"]["step"],
        "val_bpd": report["best"]["value"] / (math.prod(args.shape) * math.log(2)),
        "test_bpd": best["values"][f"{metric}_bpd"],
        "test_nll_nats": best["values"][metric],
        "test_bpd_last": last["values"][f"{metric}_bpd"],
        "n_test": best["n_reference"],
        "likelihood": "; ".join(best["notes"]),
        "train_bpd_last": report["final"].get("train/main/bits_per_dim"),
        "alpha": alpha,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation evaluations (best.pt)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-train", type=int, default=None, help="train on this many examples (the rest of the raw train split is val)")
    parser.add_argument("--n-eval", type=int, default=1000, help="validation and test examples (fewer when a split is smaller)")
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer", default="maf", choices=["maf", "realnvp", "none"])
    parser.add_argument("--peer-transforms", type=int, default=5)
    parser.add_argument("--peer-hidden", type=int, default=256)
    parser.add_argument("--peer-lr", type=float, default=1e-3)
    parser.add_argument("--runs", default="outputs/benchmarks/likelihood")
    parser.add_argument("--out", default=None, help="results file (.md; a .jsonl beside it)")
    parser.add_argument("--set", nargs="*", default=None, metavar="MODEL:KEY=VALUE",
                        help="per-model overrides, e.g. realnvp:model.hidden=32 (default: the CPU-sized ones of DEFAULT_SET)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="read a model's run from --runs instead of training it again when it was made with the same overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = DEFAULT_SET.get(args.dataset, []) if args.set is None else args.set
    per_model: dict[str, list[str]] = {}
    for item in sets:
        name, _, override = item.partition(":")
        per_model.setdefault(name, []).append(override)
    device = resolve_device(args.device)
    args.device_type = device.type
    console = Console(file=io.StringIO()) if not sys.stdout.isatty() else Console()
    wall0 = time.perf_counter()

    # the data every model, floor and peer sees
    base = compose([f"dataset={args.dataset}"])
    data_overrides: list[str] = []
    if args.n_train is not None:
        raw = build(OmegaConf.merge(base.dataset, {"val_fraction": 0.0}), "dataset").load("train")
        fraction = 1 - args.n_train / len(raw)
        data_overrides.append(f"dataset.val_fraction={fraction!r}")
    cfg = compose([f"dataset={args.dataset}", *data_overrides])
    dataset = build(cfg.dataset, "dataset")
    levels = dataset.levels
    args.shape = tuple(dataset.shape)
    train_x = dataset.load("train").x
    val_x = dataset.load("val").x[: args.n_eval]
    test_x = dataset.load("test").x[: args.n_eval]
    floors = {"levels": histogram_bpd(train_x, test_x, levels), "binarised": histogram_bpd(train_x, test_x, levels, binarise=True)}
    print(f"{args.dataset}: {levels} levels, n_train {len(train_x)}, n_val {len(val_x)}, n_test {len(test_x)}; "
          f"histogram floor {floors['levels']:.3f} bits/dim ({floors['binarised']:.3f} binarised)", flush=True)

    rows = []
    for name in args.models.split(","):
        row = run_model(name, args, data_overrides, per_model.get(name, []), console)
        binarised = "binarised" in row["likelihood"]  # a Bernoulli VAE: its likelihood is of the binarised pixels
        row["floor"] = floors["binarised"] if binarised else floors["levels"]
        row["floor_kind"] = "binarised" if binarised else f"{levels} levels"
        rows.append(row)
        print(f"{name}: test {row['test_bpd']:.3f} bits/dim (best.pt at step {row['best_step']}; last step {row['test_bpd_last']:.3f}), "
              f"floor {row['floor']:.3f}, {row['train_s']:.0f} s", flush=True)

    peer_rows: dict[str, dict[str, Any]] = {}
    peer_arch = None
    flow_rows = [r for r in rows if r["model"] in FLOWS]
    if args.peer != "none" and flow_rows:
        dims = math.prod(args.shape)
        alpha = flow_rows[0]["alpha"] if flow_rows[0]["alpha"] is not None else 0.05
        torch.manual_seed(args.seed)
        peer = Peer(args.peer, dims, levels, float(alpha), args.peer_transforms, args.peer_hidden)
        peer_arch = peer.arch
        marks = {r["model"]: r["train_s"] for r in flow_rows}
        t0 = time.perf_counter()
        peer_rows = train_peer(
            peer, to_model_space(train_x), to_model_space(val_x), to_model_space(test_x), marks, args.eval_every, args.batch_size,
            args.peer_lr, args.seed,
        )
        for m, r in peer_rows.items():
            print(f"peer {args.peer} at {m}'s {r['train_s']:.0f} s: test {r['test_bpd']:.3f} bits/dim ({r['steps']} steps)", flush=True)
        peer_total = time.perf_counter() - t0
    else:
        peer_total = 0.0
    for r in rows:
        p = peer_rows.get(r["model"])
        r["peer_test_bpd"] = None if p is None else p["test_bpd"]
        r["beats_floor"] = r["test_bpd"] < r["floor"]
        r["within_5pct_of_peer"] = None if p is None else r["test_bpd"] <= 1.05 * p["test_bpd"]

    write_results(args, sets, rows, peer_rows, peer_arch, floors, levels, len(train_x), len(val_x), len(test_x), data_overrides,
                  time.perf_counter() - wall0, peer_total)


def write_results(
    args: argparse.Namespace, sets: list[str], rows: list[dict[str, Any]], peer_rows: dict[str, dict[str, Any]], peer_arch: str | None,
    floors: dict[str, float], levels: int, n_train: int, n_val: int, n_test: int, data_overrides: list[str], wall: float, peer_total: float,
) -> None:
    out = Path(args.out or Path(__file__).parent / "results" / f"likelihood_{args.dataset}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    command = "python benchmarks/likelihood.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    yes = lambda v: "n/a" if v is None else ("yes" if v else "**no**")  # noqa: E731
    lines = [
        f"# Likelihood benchmark: {args.dataset}",
        "",
        f"Device: {device.type} ({device_name(device)}), torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"Python {platform.python_version()}.",
        f"Command: `{command}`",
        f"Data: {args.dataset}, {levels} levels per pixel (`dataset.levels`); n_train {n_train}, n_val {n_val} (selection), "
        f"n_test {n_test}" + (f" (`{' '.join(data_overrides)}`: the rest of the raw train split is held out)" if data_overrides else "") + ".",
        f"Each model: {args.steps} steps of batch {args.batch_size}, seed {args.seed}, validation `{metric_name(args.n_eval)}_val` every "
        f"{args.eval_every} steps; the test number is `checkpoints/best.pt`'s (lowest validation NLL), the last step's beside it. "
        f"VAEs: IWAE bound with k={args.iwae_k}. Architecture overrides: `{' '.join(sets) or 'none'}`.",
        f"Floors, same run and examples: (1) per-pixel histogram, an independent categorical per pixel over the {levels} levels fitted "
        f"on train with add-one smoothing: **{floors['levels']:.3f}** test bits/dim (binarised pixels, the Bernoulli VAEs' data: "
        f"{floors['binarised']:.3f});",
        f"(2) peer: {peer_arch or 'none'}, the same dequantisation `(level + U[0,1)) / {levels}`, logit transform and `-D log {levels}` "
        f"offset, batch {args.batch_size}, Adam lr {args.peer_lr:g}, trained for each flow's training wall time (evaluations excluded, "
        f"as for the flows) and selected on the same validation examples every {args.eval_every} steps.",
        f"Total wall time {wall:.0f} s (peer {peer_total:.0f} s).",
        "",
        "| model | objective | steps | train s | best step (val) | val bits/dim | **test bits/dim** (best.pt) | test bits/dim (last step) | floor: histogram | beats floor | floor: peer (same wall time) | within 5% of peer | what the number is |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['steps']} | {r['train_s']:.0f} | {r['best_step']} | {r['val_bpd']:.3f} | **{r['test_bpd']:.3f}** | "
            f"{r['test_bpd_last']:.3f} | {r['floor']:.3f} ({r['floor_kind']}) | {yes(r['beats_floor'])} | {f(r['peer_test_bpd'])} | "
            f"{yes(r['within_5pct_of_peer'])} | {r['likelihood']} |"
        )
    if peer_rows:
        lines += ["", "| peer at the wall time of | train s | steps | best step (val) | val bits/dim | test bits/dim (best) | test bits/dim (last step) | evaluations |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m, p in peer_rows.items():
            lines.append(f"| {m} | {p['train_s']:.0f} | {p['steps']} | {p['best_step']} | {p['val_bpd']:.3f} | {p['test_bpd']:.3f} | "
                         f"{p['test_bpd_last']:.3f} | {p['evaluations']} |")
    reused = [r["model"] for r in rows if r.get("reused")]
    if reused:
        lines += ["", f"Runs read back with --reuse (trained by an earlier invocation with the same overrides): {', '.join(reused)}; "
                  "their train s are from that invocation."]
    out.write_text("\n".join(lines) + "\n")
    with open(out.with_suffix(".jsonl"), "w") as fh:
        meta = {"kind": "meta", "dataset": args.dataset, "levels": levels, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                "command": command, "device": device.type, "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads(), "seed": args.seed, "steps": args.steps, "floors": floors, "peer": peer_arch,
                "wall_s": round(wall, 1)}
        fh.write(json.dumps(meta) + "\n")
        for r in rows:
            fh.write(json.dumps({"kind": "model", **r}) + "\n")
        for m, p in peer_rows.items():
            fh.write(json.dumps({"kind": "peer", "at": m, **p}) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
