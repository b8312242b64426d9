"""WaveNet on 1-D data: the generated waveforms and a folder of speech, bits per sample beside two floors, and the cached
generator's speed against the naive one.

    python benchmarks/wavenet_audio.py --budget 180 --threads 2

Data: ``dataset=waveforms`` (sines, chirps, square waves with noise; 256 values, 16 kHz nominal) and
``dataset=audio_folder`` on a speech folder this script writes with espeak-ng (Debian: ``apt-get install espeak-ng``):
``--files`` recordings of short English sentences, each with its own voice, speed and pitch, resampled to 16 kHz and cut
into chunks of ``--length`` values; files are split train/val/test (chunks of one recording never straddle splits).

Every model trains through gentrain's ``train()`` (``model=wavenet objective=ar_nll``) for about ``--budget`` seconds
(a calibration run measures the rate), ``nll<n>`` on the validation split picks ``best.pt``, and ``task=eval`` scores it
on the test split. The likelihood is that of the 8-bit mu-law levels of the amplitude (mu = 255), in bits per sample.
Floors on the same levels, fitted on the train split with add-one smoothing: an i.i.d. histogram of the levels, and an
order-1 Markov chain p(x_t | x_{t-1}) (a strong floor for smooth audio: it knows the previous value, as linear
prediction does). Speed: values per second of the cached generator (Paine et al. 2016) and of the naive one (a pass over
the prefix per value) on the trained weights, same noise, and whether they draw the same values.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from likelihood import metric_name  # noqa: E402

from gentrain.build import build, build_model, compose  # noqa: E402
from gentrain.families.autoregressive.wavenet import WaveNet, quantize  # noqa: E402
from gentrain.metrics.report import versions  # noqa: E402
from gentrain.tasks import evaluate, train  # noqa: E402

WORDS = ("the a one two three red blue green small large quick slow bird river stone window morning evening music paper "
         "light garden people water silver market winter summer yellow orange simple careful bright quiet table story "
         "house number letter sound voice carry follow open close remember answer wonder travel gather").split()
VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")


def speech_folder(folder: Path, files: int, seed: int) -> dict[str, Any]:
    """``files`` WAV recordings of random 8-14 word sentences by espeak-ng, each with a voice, speed and pitch of its own."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng (or run with --no-speech)")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(files):
        path = folder / f"utt_{i:03d}.wav"
        if path.is_file():
            continue
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
        voice, speed, pitch = VOICES[i % len(VOICES)], rng.randint(130, 190), rng.randint(30, 70)
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), words], check=True, capture_output=True)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return {"files": files, "espeak_ng": version, "voices": list(VOICES), "seed": seed}


def floors(model: WaveNet, train_x: torch.Tensor, test_x: torch.Tensor) -> dict[str, float]:
    """Bits per sample of the i.i.d. level histogram and of the order-1 Markov chain on the model's own levels."""
    k = model.levels
    tr, te = model.to_sequence(train_x), model.to_sequence(test_x)  # [N, L] levels
    hist = torch.bincount(tr.flatten(), minlength=k).double() + 1
    log_h = torch.log(hist / hist.sum())
    iid = -log_h[te].sum(1)
    pairs = torch.zeros(k, k, dtype=torch.float64)
    pairs.index_put_((tr[:, :-1].flatten(), tr[:, 1:].flatten()), torch.ones(tr[:, 1:].numel(), dtype=torch.float64), accumulate=True)
    log_t = torch.log((pairs + 1) / (pairs + 1).sum(1, keepdim=True))
    markov = -(log_h[te[:, 0]] + log_t[te[:, :-1], te[:, 1:]].sum(1))
    length = te.shape[1]
    return {"iid_bits": float(iid.mean() / (length * math.log(2))), "markov1_bits": float(markov.mean() / (length * math.log(2)))}


def sampler_speed(model: WaveNet, length: int, n: int, seed: int) -> dict[str, Any]:
    """Values per second of the cached and the naive generator on ``model``'s weights, for ``n`` sequences of ``length``."""
    m = WaveNet((1, length), levels=model.levels, mu_law=model.mu_law, dilations=model.dilations, stacks=1,  # dilations: all stacks
                residual_channels=model.net.embed.embedding_dim, dilation_channels=model.net.layers[0].skip.in_channels,
                skip_channels=model.net.layers[0].skip.out_channels)
    m.load_state_dict(model.state_dict())
    m.eval()
    out: dict[str, Any] = {"length": length, "n": n}
    draws = {}
    for name, fast in (("cached", True), ("naive", False)):
        m.fast_generation = fast
        t0 = time.perf_counter()
        draws[name] = m.sample(n, generator=torch.Generator().manual_seed(seed))
        s = time.perf_counter() - t0
        out[f"{name}_s"], out[f"{name}_values_per_s"] = round(s, 2), round(n * length / s, 1)
    out["speedup"] = round(out["cached_values_per_s"] / out["naive_values_per_s"], 1)
    out["same_draws"] = bool(torch.equal(draws["cached"], draws["naive"]))
    out["receptive_field"] = m.receptive_field
    return out


def run(name: str, overrides: list[str], args: argparse.Namespace, console: Console) -> dict[str, Any]:
    metric = metric_name(args.n_eval)
    common = ["model=wavenet", "objective=ar_nll", "device=cpu", f"seed={args.seed}", f"trainer.batch_size={args.batch_size}",
              "trainer.ckpt_every=0", "logger.progress=false", "logger.tensorboard=false", *overrides]
    runs = Path(args.runs)
    cal = train(compose([*common, f"trainer.max_steps={args.calibrate}", "logger.samples_every=0", "eval.metrics=[]", "eval.at_end=false"]),
                run_dir=runs / f"{name}_calibrate", console=console)
    rate = cal["run"]["steps"] / max(cal["run"]["train_time_s"], 1e-9)
    steps = max(args.evaluations, int(round(args.budget * rate / args.evaluations)) * args.evaluations)
    run_dir = runs / name
    cfg = compose([*common, f"trainer.max_steps={steps}", f"logger.samples_every={steps}", f"eval.metrics=[{metric}]",
                   f"eval.every={steps // args.evaluations}"])
    report = train(cfg, run_dir=run_dir, console=console)
    best_path = run_dir / "checkpoints" / "best.pt"
    ev = evaluate(compose(["task=eval", f"ckpt={best_path}", f"eval.metrics=[{metric}]", "device=cpu"]), console=console)
    (best,) = ev["evaluation"]
    (last,) = [r for r in report["evaluation"] if r["reference_split"].endswith("/test")]
    dataset = build(cfg.dataset, "dataset")
    model = build_model(cfg)
    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    n_eval = best["n_reference"]
    fl = floors(model, dataset.load("train").x, dataset.load("test").x[:n_eval])
    speed = sampler_speed(model, min(args.speed_length, model.length), args.speed_n, args.seed)
    return {
        "dataset": name, "overrides": " ".join(overrides), "steps": report["run"]["steps"], "train_s": report["run"]["train_time_s"],
        "best_step": report["best"]["step"], "length": model.length, "rate": dataset.rate, "receptive_field": model.receptive_field,
        "n_train": len(dataset.load("train")), "n_val": len(dataset.load("val")), "n_test": n_eval,
        "test_bits": best["values"][f"{metric}_bpd"], "test_bits_last": last["values"][f"{metric}_bpd"],
        "val_bits": report["best"]["value"] / (model.length * math.log(2)), "notes": best["notes"], **fl, "speed": speed,
        "samples": report.get("samples"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per dataset")
    parser.add_argument("--calibrate", type=int, default=20)
    parser.add_argument("--evaluations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stacks", type=int, default=1, help="repeats of the dilations 1..128 (CPU-sized; the paper: 1..512)")
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--files", type=int, default=40, help="speech recordings to synthesise")
    parser.add_argument("--length", type=int, default=1024, help="values per speech chunk (64 ms at 16 kHz)")
    parser.add_argument("--speed-length", type=int, default=1024)
    parser.add_argument("--speed-n", type=int, default=8)
    parser.add_argument("--no-speech", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", default="outputs/benchmarks/wavenet_audio")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "wavenet_audio_cpu.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(file=io.StringIO())
    wall0, load0 = time.perf_counter(), os.getloadavg()
    net = ["model.dilations=[1,2,4,8,16,32,64,128]", f"model.stacks={args.stacks}"]
    rows, speech = [], None
    rows.append(run("waveforms", ["dataset=waveforms", *net], args, console))
    print(json.dumps(rows[-1], default=str), flush=True)
    if not args.no_speech:
        folder = Path(args.runs) / "speech_wav"  # not the run directory: its samples/*.wav would join the folder's files
        speech = speech_folder(folder, args.files, args.seed)
        rows.append(run("speech", ["dataset=audio_folder", f"dataset.path={folder.resolve()}", "dataset.rate=16000",
                                   f"dataset.length={args.length}", *net], args, console))
        print(json.dumps(rows[-1], default=str), flush=True)
    wall = time.perf_counter() - wall0
    v = versions()
    command = "python benchmarks/wavenet_audio.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# WaveNet on 1-D data (CPU)", "",
        f"- command: `{command}`",
        f"- device: cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s); load average "
        f"{load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after; wall time {wall:.0f} s in all",
        f"- versions: gentrain {v.get('gentrain')}, torch {torch.__version__}, Python {platform.python_version()}"
        + (f", {speech['espeak_ng']}" if speech else ""),
        f"- network: `{' '.join(net)}` (residual 32, dilation 32, skip 64 channels), 256 mu-law levels; batch {args.batch_size}, "
        f"seed {args.seed}, about {args.budget:.0f} s of training each; `{metric_name(args.n_eval)}_val` {args.evaluations} times picks "
        "`best.pt`, whose test number is shown (the last step's beside it)",
        "- floors on the same mu-law levels, fitted on train with add-one smoothing: i.i.d. histogram; order-1 Markov chain p(x_t | x_{t-1})",
    ]
    if speech:
        lines.append(f"- speech: {speech['files']} espeak-ng recordings (voices {', '.join(speech['voices'])}; random 8-14 word sentences, "
                     f"seed {speech['seed']}), 16 kHz, chunks of {args.length} values, split by file")
    lines += ["", "| data | values per sample | receptive field | train / val / test chunks | steps | train s | best step | "
              "**test bits per sample** (best.pt) | last step | floor: i.i.d. histogram | floor: Markov-1 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['length']} at {r['rate']} Hz | {r['receptive_field']} | {r['n_train']} / {r['n_val']} / {r['n_test']} | "
                     f"{r['steps']} | {r['train_s']:.0f} | {r['best_step']} | **{r['test_bits']:.3f}** | {r['test_bits_last']:.3f} | "
                     f"{r['iid_bits']:.3f} | {r['markov1_bits']:.3f} |")
    lines += ["", "## Sampling speed: the cached generator (Paine et al. 2016) against the naive one", "",
              "| data | sequences x values | cached values/s | naive values/s | speed-up | same draws (same noise) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = r["speed"]
        lines.append(f"| {r['dataset']} | {s['n']} x {s['length']} | {s['cached_values_per_s']:.0f} | {s['naive_values_per_s']:.0f} | "
                     f"{s['speedup']:.1f}x | {'yes' if s['same_draws'] else '**no**'} |")
    lines += ["", "The naive generator's cost per value grows with the prefix (one pass over it), the cached one's is constant (one step "
              "of each layer), so the speed-up grows with the length. The WaveNet paper reports listening scores, not likelihoods, so there "
              "is no published bits-per-sample number for these data to set beside them.", ""]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".jsonl"), "w") as fh:
        fh.write(json.dumps({"kind": "meta", "command": command, "versions": v, "wall_s": round(wall, 1), "speech": speech,
                             "threads": torch.get_num_threads(), "seed": args.seed}) + "\n")
        for r in rows:
            fh.write(json.dumps({"kind": "row", **r}, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
