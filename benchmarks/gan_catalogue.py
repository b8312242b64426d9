"""Progressive GAN and BigGAN beside DCGAN on Fashion-MNIST at about the same CPU wall time, and BigGAN's truncation table.

    python benchmarks/gan_catalogue.py --device cpu --threads 2 --n 1000 --steps dcgan=800 progan=2000 biggan=1200

Each model row trains its CPU-sized ``experiment=`` preset (``fashion_dcgan``, ``fashion_progan``, ``fashion_biggan``)
through gentrain's own ``train()`` for the steps given (chosen from measured rates so the train times are about equal;
the table shows each run's own time), reloads ``checkpoints/last.pt`` and scores it on the test split with gentrain's
evaluation path (:func:`benchmarks.fid_table.train_row`: the same code, protocol and reference rows as the loss table).
The floor (independent pixels) and real-data rows stand beside them at the same sample count. Then the BigGAN run's
checkpoint is scored again at each ``--truncations`` value (``sampler=latent sampler.truncation=t``; "none" is plain
N(0, I)): FID, KID and precision/recall (Kynkaanniemi et al. 2019, k = 3) on the same test images and noise seed.

Writes ``--out`` (markdown) and a ``.jsonl`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fid_table  # noqa: E402  (the loss table's rows, training and scoring)
from fid_table import REPO, Result, Row, floor_row, fmt, protocol_names, real_row, recipe, rel, train_row  # noqa: E402

import gentrain.build  # noqa: E402
from gentrain.build import build  # noqa: E402
from gentrain.engine.device import device_name, resolve_device  # noqa: E402
from gentrain.metrics.evaluate import Evaluator, ReferenceCache  # noqa: E402
from gentrain.metrics.fidelity import flat_values  # noqa: E402
from gentrain.metrics.inception import InceptionFeatures, resolve_weights  # noqa: E402
from gentrain.metrics.report import versions  # noqa: E402
from gentrain.sampling import sampling_state  # noqa: E402
from gentrain.tasks.common import load_trained  # noqa: E402

ROWS = {
    "dcgan": Row("DCGAN (non-saturating)", "fashion_dcgan", 26.5, "FID 26.5: NS GAN, Lucic et al. 2018, Table 2 (10k vs 10k, full training, tuned)"),
    "progan": Row("Progressive GAN", "fashion_progan", None, "none on Fashion-MNIST (CIFAR-10: IS 8.80, Karras et al. 2018, Table 3)"),
    "biggan": Row("BigGAN (conditional)", "fashion_biggan", None, "none on Fashion-MNIST (CIFAR-10: IS 9.22, FID 14.73, Brock et al. 2019)"),
}


def truncation_rows(run_dir: Path, values: list[str], evaluator: Evaluator, device: torch.device) -> list[dict]:
    rows = []
    for v in values:
        t = None if v == "none" else float(v)
        _, _, model, average, _ = load_trained(str(run_dir), device, sampler={"name": "latent", "truncation": t})
        t0 = time.perf_counter()
        with sampling_state(model, average):
            results = evaluator(model, ["test"])
        rows.append({"truncation": v, "values": flat_values(results), "score_s": round(time.perf_counter() - t0, 1)})
        print(f"truncation {v}: " + ", ".join(f"{k} {x:.4g}" for k, x in rows[-1]["values"].items()), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", nargs="+", default=["dcgan=800", "progan=2000", "biggan=1200"], help="row=steps for each model row")
    p.add_argument("--n", type=int, default=1000, help="samples per side (generated and test images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--truncations", nargs="*", default=["none", "2.0", "1.0", "0.5", "0.25"])
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--eval-batch-size", type=int, default=250)
    p.add_argument("--runs-dir", default=str(REPO / "outputs" / "gan_catalogue"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gan_catalogue_cpu.md"))
    p.add_argument("--no-references", action="store_true", help="skip the floor and real-data rows (e.g. a second run adding a row)")
    args = p.parse_args()
    steps = dict(s.split("=") for s in args.steps)
    args.extra, args.seeds = [], [args.seed]
    if args.threads:
        torch.set_num_threads(args.threads)
    fid_table.ROWS.update(ROWS)  # train_row reads its row there
    device = resolve_device(args.device)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    base = gentrain.build.compose(["dataset=fashion_mnist", f"device.type={args.device}"])
    dataset = build(base.dataset, "dataset")
    es = OmegaConf.to_container(base.eval, resolve=True)
    extractor = InceptionFeatures(resolve_weights(es["inception_weights"]), device)
    cache = ReferenceCache(Path(str(es["cache_dir"])))
    fid, kid = protocol_names(args.n)
    pr = fid.replace("fid", "pr")
    options = {"kid_subsets": 100, "kid_subset_size": 1000}
    evaluator = Evaluator([fid, kid], dataset, "test", lambda: extractor, cache, device, batch_size=args.eval_batch_size, seed=args.sample_seed, options=options)
    console = Console(file=open(os.devnull, "w"))
    load_before, t_all = os.getloadavg(), time.perf_counter()
    results: list[Result] = [] if args.no_references else [floor_row(dataset, evaluator, args), real_row(dataset, evaluator, extractor, cache, args)]
    for key, n_steps in steps.items():
        args.steps = int(n_steps)
        r = train_row(key, args.seed, args, evaluator, device, console)
        results.append(r)
        print(f"{r.label}: {fid} {fmt(r.values.get(fid))}, train {r.train_s:.0f} s ({r.steps} steps)", flush=True)
    trunc_eval = Evaluator([fid, kid, pr], dataset, "test", lambda: extractor, cache, device, batch_size=args.eval_batch_size, seed=args.sample_seed, options=options)
    biggan = next((r for r in results if r.key == "biggan"), None)
    trunc = truncation_rows(biggan.run_dir, args.truncations, trunc_eval, device) if args.truncations and biggan else []
    total_s, v = time.perf_counter() - t_all, versions()

    command = " ".join(shlex.quote(a) for a in ["python", rel(Path(sys.argv[0])), *sys.argv[1:]])
    lines = [
        "# Progressive GAN and BigGAN beside DCGAN on Fashion-MNIST (CPU, about equal wall time)",
        "",
        f"Written by `{rel(Path(__file__))}`; command: `{command}`.",
        "",
        "**CPU scale: not comparable with published full-scale numbers.** Each model trained its CPU-sized preset for the steps "
        f"below (about equal train time on this machine), and FID on {args.n} samples per side is biased upward (it falls as the "
        "count grows). Compare rows with each other and with the floor and real-data rows at the same count.",
        "",
        f"- device: {device.type} ({device_name(device)}), {torch.get_num_threads()} torch thread(s); gentrain {v['gentrain']}, "
        f"torch {v['torch']}, Python {v['python']}",
        f"- protocol (Lucic et al. 2018): `{fid}` = FID of {args.n} generated samples vs the first {args.n} Fashion-MNIST test images, "
        f"`{kid}` KID on the same features, `{pr}` precision/recall (k = 3); TF-Inception pool3 (`{extractor.identity}`), grayscale "
        f"tiled to 3 channels, uint8; sample noise seed {args.sample_seed}",
        f"- training: seed {args.seed}; each preset's settings; scored: `checkpoints/last.pt` (nothing selected on the test split), "
        "with the weight average where the preset keeps one (Progressive GAN and BigGAN: 0.999; DCGAN: none)",
        f"- wall time {total_s:.0f} s in all; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} logical CPUs",
        "",
        f"| row | preset | steps | {fid} | {kid} | train (s) | steps/s | published anchor |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        row = ROWS.get(r.key)
        lines.append(
            f"| {r.label} | {('`' + r.preset + '`') if r.preset else ''} | {r.steps or ''} | {fmt(r.values.get(fid))} | "
            f"{fmt(r.values.get(kid), 4)} | {fmt(r.train_s)} | {fmt(r.steps_per_s, 2)} | {row.source if row else ''} |"
        )
    if trunc:
        lines += [
            "",
            f"## BigGAN: the truncation trick (`sampler.truncation`), the `{biggan.preset}` run above",  # type: ignore[union-attr]
            "",
            "z drawn from N(0, I) with every entry outside [-t, t] redrawn (Brock et al. 2019, section 3.1); training always "
            "used N(0, I). Smaller t trades variety (recall) for fidelity (precision).",
            "",
            f"| truncation | {fid} | {kid} | precision | recall | scoring (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in trunc:
            x = t["values"]
            lines.append(f"| {t['truncation']} | {fmt(x.get(fid))} | {fmt(x.get(kid), 4)} | {fmt(x.get(pr + '_precision'), 3)} | "
                         f"{fmt(x.get(pr + '_recall'), 3)} | {t['score_s']} |")
    lines += ["", "Recipes as trained:", ""] + [f"- `{r.preset}`: {recipe(r.config)}" for r in results if r.preset]
    lines += [
        "",
        "Published anchors are for other data and full training: Progressive GAN CIFAR-10 inception score 8.80 (Karras et al. "
        "2018, Table 3; `experiment=cifar10_progan`), BigGAN CIFAR-10 IS 9.22 and FID 14.73 (Brock et al. 2019; "
        "`experiment=cifar10_biggan`); DCGAN's row cites the best NS GAN of Lucic et al. 2018 on Fashion-MNIST. The GPU rows: "
        "`gentrain experiment=cifar10_progan` and `gentrain experiment=cifar10_biggan` (eval=standard: fid10k, kid10k, pr10k, is10k).",
        "",
        "Sample grids (the first 64 scored samples, not committed): " + ", ".join(f"`{rel(r.grid)}`" for r in results if r.grid),
        "",
    ]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    records = [fid_table.record(r, args, device) for r in results] + [{"truncation": t["truncation"], "n": args.n, **t} for t in trunc]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
