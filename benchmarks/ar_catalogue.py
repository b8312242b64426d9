"""The autoregressive catalogue at equal CPU wall time: NADE, MADE, PixelCNN, PixelRNN (Row LSTM, Diagonal BiLSTM) and
WaveNet on the pixels, on the digits (17 levels) and on binarised Fashion-MNIST, beside the per-pixel histogram floor and
the published numbers of each model (their datasets said).

    python benchmarks/ar_catalogue.py --budget 45 --datasets digits
    python benchmarks/ar_catalogue.py --budget 120 --datasets binarized_fashion_mnist --n-train 6000 --n-eval 1000

Every row trains through gentrain's own ``train()`` (``model=<name> objective=ar_nll``). Equal wall time: a short
calibration run (``--calibrate`` steps) measures each model's training rate on this machine, and the run then takes
``budget x rate`` steps (its measured train time is in the table). ``nll<n>`` on the validation split every
``steps / --evaluations`` steps picks ``checkpoints/best.pt``; the test number is ``best.pt``'s (``task=eval``), so
nothing is selected on the test split. Likelihoods are exact, of the data's own levels (17 for the digits, 2 for the
binarised set: nats per image are then comparable in kind with the binarised-MNIST tables, on another dataset).
The floor: an independent categorical per pixel fitted on the train split with add-one smoothing.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from likelihood import histogram_bpd, metric_name  # noqa: E402

from gentrain.build import build, compose  # noqa: E402
from gentrain.metrics.report import versions  # noqa: E402
from gentrain.tasks import evaluate, train  # noqa: E402

#: row -> (model option, overrides per dataset kind). CPU-sized where the defaults are GPU-sized; listed in the results file.
ROWS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "nade": ("nade", {"digits": [], "fashion": []}),
    "made": ("made", {"digits": [], "fashion": ["model.hidden=[500]"]}),
    "pixelcnn": ("pixelcnn", {"digits": [], "fashion": ["model.hidden=32", "model.layers=4"]}),
    "pixelrnn_row_lstm": ("pixelrnn", {"digits": ["model.cell=row_lstm"], "fashion": ["model.cell=row_lstm", "model.hidden=16", "model.layers=2"]}),
    "pixelrnn_diagonal_bilstm": ("pixelrnn", {"digits": ["model.cell=diagonal_bilstm"],
                                              "fashion": ["model.cell=diagonal_bilstm", "model.hidden=16", "model.layers=2"]}),
    "wavenet_pixels": ("wavenet", {"digits": ["model.dilations=[1,2,4,8,16,32]", "model.stacks=1"],
                                   "fashion": ["model.dilations=[1,2,4,8,16,32,64,128]", "model.stacks=1"]}),
}

#: Published test NLLs, each with its dataset: none is on these datasets, so they say what the models reach at full size.
PUBLISHED = [
    ("NADE", "binarised MNIST", "88.86 nats", "Larochelle & Murray 2011"),
    ("MADE (one mask)", "binarised MNIST", "88.04 nats", "Germain et al. 2015"),
    ("PixelRNN, Diagonal BiLSTM, 7 layers", "binarised MNIST", "79.20 nats", "van den Oord et al. 2016, Table 4"),
    ("PixelRNN, Diagonal BiLSTM / Row LSTM", "CIFAR-10", "3.00 / 3.07 bits/dim", "van den Oord et al. 2016, Table 5"),
    ("PixelCNN", "CIFAR-10", "3.14 bits/dim", "van den Oord et al. 2016, Table 5"),
]


def run_row(row: str, dataset: str, kind: str, args: argparse.Namespace, data: list[str], console: Console) -> dict[str, Any]:
    model, extra = ROWS[row][0], ROWS[row][1][kind]
    metric = metric_name(args.n_eval)
    common = [f"model={model}", f"dataset={dataset}", "objective=ar_nll", "device=cpu", f"seed={args.seed}",
              f"trainer.batch_size={args.batch_size}", "trainer.ckpt_every=0", "logger.progress=false", "logger.interpolations=false",
              "logger.tensorboard=false", *data, *extra]
    runs = Path(args.runs) / dataset
    # calibration: the training rate of this model here (pictures and evaluation off)
    cal = train(compose([*common, f"trainer.max_steps={args.calibrate}", "logger.samples_every=0", "eval.metrics=[]", "eval.at_end=false"]),
                run_dir=runs / f"{row}_calibrate", console=console)
    rate = cal["run"]["steps"] / max(cal["run"]["train_time_s"], 1e-9)
    steps = max(args.evaluations, int(round(args.budget * rate / args.evaluations)) * args.evaluations)
    every = steps // args.evaluations
    overrides = [*common, f"trainer.max_steps={steps}", f"logger.samples_every={steps}", f"eval.metrics=[{metric}]", f"eval.every={every}"]
    run_dir = runs / row
    t0 = time.perf_counter()
    report = train(compose(overrides), run_dir=run_dir, console=console)
    best_path = run_dir / "checkpoints" / "best.pt"
    ev = evaluate(compose(["task=eval", f"ckpt={best_path}", f"eval.metrics=[{metric}]", "device=cpu"]), console=console)
    total = time.perf_counter() - t0
    (last,) = [r for r in report["evaluation"] if r["reference_split"].endswith("/test")]
    (best,) = ev["evaluation"]
    dims = math.prod(args.shape)
    return {
        "row": row, "model": model, "overrides": " ".join(extra) or "defaults", "steps": report["run"]["steps"],
        "train_s": report["run"]["train_time_s"], "steps_per_s": report["run"]["steps_per_s"], "total_s": round(total, 1),
        "calibrated_rate": round(rate, 2), "best_step": report["best"]["step"],
        "val_nats": report["best"]["value"], "val_bpd": report["best"]["value"] / (dims * math.log(2)),
        "test_nats": best["values"][metric], "test_bpd": best["values"][f"{metric}_bpd"],
        "test_nats_last": last["values"][metric], "n_test": best["n_reference"], "likelihood": "; ".join(best["notes"]),
        "params": sum(int(t.numel()) for k, t in torch.load(best_path, map_location="cpu", weights_only=False)["model"].items()
                      if not k.endswith("mask") and t.is_floating_point()),
        "samples": report.get("samples"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,binarized_fashion_mnist")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--budget", type=float, default=45.0, help="training seconds per model (evaluations excluded)")
    parser.add_argument("--calibrate", type=int, default=30, help="steps of the rate-measuring run")
    parser.add_argument("--evaluations", type=int, default=8, help="validation evaluations per run (best.pt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=None, help="train on this many examples (the rest of the raw train split is val)")
    parser.add_argument("--n-eval", type=int, default=1000, help="validation and test examples (fewer when a split is smaller)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", default="outputs/benchmarks/ar_catalogue")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(file=io.StringIO())
    wall0, load0 = time.perf_counter(), os.getloadavg()
    sections, records = [], []
    for dataset in args.datasets.split(","):
        kind = "digits" if dataset == "digits" else "fashion"
        data: list[str] = []
        base = compose([f"dataset={dataset}"])
        if args.n_train is not None and kind != "digits":
            raw = build(OmegaConf.merge(base.dataset, {"val_fraction": 0.0}), "dataset").load("train")
            data.append(f"dataset.val_fraction={1 - args.n_train / len(raw)!r}")
        ds = build(compose([f"dataset={dataset}", *data]).dataset, "dataset")
        args.shape, levels = tuple(ds.shape), ds.levels
        train_x, val_x, test_x = ds.load("train").x, ds.load("val").x[: args.n_eval], ds.load("test").x[: args.n_eval]
        dims = math.prod(args.shape)
        floor_bpd = histogram_bpd(train_x, test_x, levels)
        floor_nats = floor_bpd * dims * math.log(2)
        print(f"{dataset}: {levels} levels, n_train {len(train_x)}, n_val {len(val_x)}, n_test {len(test_x)}; floor {floor_bpd:.3f} bits/dim", flush=True)
        rows = []
        for row in args.rows.split(","):
            r = run_row(row, dataset, kind, args, data, console)
            r["beats_floor"] = r["test_nats"] < floor_nats
            rows.append(r)
            records.append({"kind": "row", "dataset": dataset, **r})
            print(f"  {row}: test {r['test_nats']:.2f} nats ({r['test_bpd']:.3f} bits/dim), best.pt at {r['best_step']}/{r['steps']} steps, "
                  f"{r['train_s']:.0f} s", flush=True)
        records.append({"kind": "floor", "dataset": dataset, "bpd": floor_bpd, "nats": floor_nats, "n_train": len(train_x),
                        "n_val": len(val_x), "n_test": len(test_x), "levels": levels, "data_overrides": data})
        sections.append((dataset, levels, len(train_x), len(val_x), len(test_x), data, floor_bpd, floor_nats, rows))
    write(args, sections, records, time.perf_counter() - wall0, load0)


def write(args: argparse.Namespace, sections: list, records: list, wall: float, load0: tuple) -> None:
    names = "_".join("digits" if d == "digits" else "bfashion" for d in args.datasets.split(","))
    out = Path(args.out or Path(__file__).parent / "results" / f"ar_catalogue_cpu_{names}.md")
    command = "python benchmarks/ar_catalogue.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    v = versions()
    lines = [
        "# The autoregressive catalogue at equal CPU wall time",
        "",
        f"- command: `{command}`",
        f"- device: cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s), {os.cpu_count()} logical CPUs; "
        f"load average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
        f"- versions: gentrain {v.get('gentrain')}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- each model: calibrated to **{args.budget:.0f} s** of training (a {args.calibrate}-step run measures its rate), batch "
        f"{args.batch_size}, seed {args.seed}; `{metric_name(args.n_eval)}_val` {args.evaluations} times per run picks `best.pt`; "
        "the test number is `best.pt`'s (`task=eval`), the last step's beside it",
        f"- wall time {wall:.0f} s in all (calibrations and evaluations included)",
        "- the floor: an independent categorical per pixel over the data's levels, fitted on train (add-one smoothing), scored on the same test examples",
        "",
    ]
    for dataset, levels, n_train, n_val, n_test, data, floor_bpd, floor_nats, rows in sections:
        lines += [f"## {dataset} ({levels} levels; n_train {n_train}, n_val {n_val}, n_test {n_test}"
                  + (f"; `{' '.join(data)}`" if data else "") + ")", "",
                  "| model | overrides | params | steps | train s | best step (val) | val nats | **test nats** (best.pt) | test bits/dim | test nats (last step) | beats floor |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['row']} | `{r['overrides']}` | {r['params'] / 1e3:.0f}k | {r['steps']} | {r['train_s']:.0f} | {r['best_step']} | "
                         f"{r['val_nats']:.2f} | **{r['test_nats']:.2f}** | {r['test_bpd']:.3f} | {r['test_nats_last']:.2f} | "
                         f"{'yes' if r['beats_floor'] else '**no**'} |")
        lines += [f"| floor: per-pixel histogram | | | | | | | **{floor_nats:.2f}** | {floor_bpd:.3f} | | |", ""]
    lines += ["## Published numbers (other datasets, full-size models, GPU-days of training)", "",
              "| model | dataset | test NLL | source |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {d} | {v_} | {s} |" for m, d, v_, s in PUBLISHED]
    lines += ["", "None of these is on the digits or on binarised Fashion-MNIST, and each took far more compute: they say where the "
              "models go at full size, not what these runs should reach. The order they report (PixelRNN well below MADE and NADE on "
              "binarised MNIST; the Diagonal BiLSTM below the Row LSTM and PixelCNN on CIFAR-10) is what this table can check at equal CPU time.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".jsonl"), "w") as fh:
        fh.write(json.dumps({"kind": "meta", "command": command, "budget_s": args.budget, "seed": args.seed, "threads": torch.get_num_threads(),
                             "versions": v, "wall_s": round(wall, 1)}) + "\n")
        for r in records:
            fh.write(json.dumps(r, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
