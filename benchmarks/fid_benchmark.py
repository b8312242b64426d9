"""FID benchmark: Inception throughput (images/s), and the Fashion-MNIST train-vs-test FID as a sanity value.

    python benchmarks/fid_benchmark.py --device auto --n 10000          # the standard 10k vs 10k (GPU)
    python benchmarks/fid_benchmark.py --device cpu --n 1000 --throughput-images 64
    python benchmarks/fid_benchmark.py --device cuda --n 10000 --precisions fp32 bf16 fp16 fp16-half \\
        --fid-precisions bf16 fp16 --protocol-calls 2 --md benchmarks/results/gpu_inception.md --out benchmarks/results/gpu_inception.jsonl   # the GPU campaign's stage

Uses the same code path as training and `gentrain task=eval` (gentrain.metrics): the FID Inception
network from eval.inception_weights (auto: $GENTRAIN_INCEPTION_WEIGHTS or the file built by
`python -m gentrain.metrics.inception`), uint8 images, grayscale tiled to 3 channels. Prints a
JSON record and appends it to ``--out`` (default benchmarks/results/fid.jsonl); ``--md`` also writes it as a table.

``--precisions`` times the extractor in other arithmetic and measures what it changes, against the
reference ``fp32-strict`` (fp32 with TF32 off) on the first ``--error-images`` test images:

- ``fp32``: torch's defaults (on CUDA cuDNN's convolutions may use TF32: ``torch.backends.cudnn.allow_tf32``);
- ``bf16`` / ``fp16``: the same network under ``torch.autocast`` (convolutions in bf16 / fp16, the resize and
  the output in fp32);
- ``fp16-half``: the network itself in fp16 (``.half()``; the resize stays in torch-fidelity's fp32, its output
  cast to fp16 at the first convolution).

For each: images/s on ``--throughput-images`` random 28x28 images (after one warm-up batch), the max and mean
abs feature difference from the reference, and (``--fid-precisions``) the train-vs-test FID computed with
its features, beside the fp32 one.

``--protocol-calls K`` times gentrain's own evaluation (:class:`gentrain.metrics.evaluate.Evaluator`, the
``eval.metrics=[fid<n>]`` path): ``--n`` samples of an untrained ``--protocol-model`` (the timing is the point,
not the score) against the first ``--n`` test images, K times, each with a fresh Evaluator: the first call
computes and caches the reference features under ``--cache-dir`` (unless a cache is there already: each
call records whether its reference came from the cache), the later ones read them back.

``--fashion-dir`` is the folder of the Fashion-MNIST files (``dataset.system_dir``; default
``$GENTRAIN_FASHION_DIR``, else gentrain's own search). ``--stub-if-missing``: when no Inception weights can
be found, a small random convolutional stand-in (for a dry-run's code paths only; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gentrain.data.images import FashionMNIST
from gentrain.engine.device import device_name, resolve_device
from gentrain.metrics.evaluate import Evaluator, ReferenceCache, extract
from gentrain.metrics.fidelity import compute, parse_protocol
from gentrain.metrics.inception import InceptionFeatures, resolve_weights

VARIANTS = ("fp32-strict", "fp32", "bf16", "fp16", "fp16-half")
REFERENCE = "fp32-strict"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StubExtractor(nn.Module):
    """A random stand-in for the Inception network (uint8 images -> 2048 features), for dry-runs without the weights."""

    identity = "stub"
    has_logits = False

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 2048))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        x = x.to(next(self.parameters()).device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128).float(), None


class Variant:
    """The extractor in one arithmetic (see the module docstring), with the FeatureExtractor interface evaluation uses.

    ``keep`` > 0 returns only the first ``keep`` pool features (``--dry-run-features``: the network runs whole, but a
    Frechet distance of 64 features takes milliseconds where 2,048 take ~10 s on a busy 2-core CPU).
    """

    def __init__(self, base: Any, mode: str, device: torch.device, keep: int = 0) -> None:
        self.mode, self.device, self.keep, self.has_logits = mode, device, keep, base.has_logits and not keep
        self.identity = base.identity if mode in ("fp32", REFERENCE) else f"{base.identity}+{mode}"
        if keep:
            self.identity += f":first{keep}"
        self.net = base
        if mode == "fp16-half":
            inner = getattr(base, "net", None)
            first = getattr(inner, "Conv2d_1a_3x3", None)
            if first is None:
                raise RuntimeError(f"{base.identity} is not torch-fidelity's Inception: no .half() variant")
            self.net = copy.deepcopy(base)
            self.net.net.half()
            # torch-fidelity resizes in its internal dtype (fp32) and the resize promotes to fp32: the first conv gets fp16
            self.net.net.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, a: (a[0].half(),))

    @contextlib.contextmanager
    def arithmetic(self) -> Iterator[None]:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        try:
            if self.mode == REFERENCE:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            if self.mode in ("bf16", "fp16"):
                with torch.autocast(self.device.type, dtype=torch.bfloat16 if self.mode == "bf16" else torch.float16):
                    yield
            else:
                yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        with self.arithmetic():
            f, lg = self.net(x)
        if self.keep:
            return f[:, : self.keep].float(), None
        return f.float(), None if lg is None else lg.float()


def throughput(net: Any, device: torch.device, n: int, batch_size: int) -> float:
    """Images/s of the feature network on uint8 28x28 grey images (resized to 299 inside), after one warm-up batch."""
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, device=device)
    net(images[: min(batch_size, n)])
    sync(device)
    t0 = time.perf_counter()
    extract(lambda s, k: images[s : s + k], n, net, batch_size)
    sync(device)
    return n / (time.perf_counter() - t0)


def protocol_name(n: int) -> str:
    return f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}"


def load_extractor(args: argparse.Namespace, device: torch.device) -> Any:
    try:
        path = resolve_weights(args.weights)
    except Exception:
        if not args.stub_if_missing:
            raise
        path = None
    if path is None and args.stub_if_missing:
        print("fid_benchmark: no Inception weights found: a random stand-in (--stub-if-missing); its numbers mean nothing", flush=True)
        return StubExtractor(device)
    return InceptionFeatures(path, device)


def protocol_timing(args: argparse.Namespace, net: Any, data: FashionMNIST, device: torch.device) -> list[dict[str, Any]]:
    """``--protocol-calls`` evaluations of an untrained model's samples by gentrain's Evaluator, each with a fresh Evaluator,
    all on one fresh disk cache (``<cache-dir>/protocol_timing``): the first call computes the reference features, the later ones read them."""
    import shutil

    from gentrain.build import compose
    from gentrain.tasks.training import prepare

    overrides = [f"model={args.protocol_model}", "dataset=fashion_mnist", f"device={device.type}", "eval.metrics=[]", "logger=base"]
    if args.fashion_dir:
        overrides.append(f"dataset.system_dir={args.fashion_dir}")
    model = prepare(compose(overrides)).model
    cache = Path(args.cache_dir).expanduser() / "protocol_timing"
    shutil.rmtree(cache, ignore_errors=True)
    name = protocol_name(args.n)
    calls = []
    for k in range(args.protocol_calls):
        evaluator = Evaluator([name], data, "test", lambda: net, ReferenceCache(cache), device, batch_size=args.batch_size, seed=0)
        t0 = time.perf_counter()
        results = evaluator(model)
        sync(device)
        calls.append({
            "call": k + 1, "protocol": name, "wall_s": round(time.perf_counter() - t0, 2), "reference_from_cache": evaluator.reference_from_cache,
            "value": round(float(results[0].values[name]), 3), "model": f"untrained {args.protocol_model}",
        })
        print(f"protocol {name} call {k + 1}: {calls[-1]['wall_s']} s (reference from cache: {evaluator.reference_from_cache})", flush=True)
    return calls


def _g(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def write_md(path: Path, record: dict[str, Any], done: bool) -> None:
    """The record as markdown; rewritten after each part, so a run cut short keeps what it measured."""
    lines = [
        f"# Inception feature extractor: throughput, precision and FID timing ({record['device']})",
        "",
        *([] if done else ["**Partial: the benchmark had not finished when this was written.**", ""]),
        f"Written by `benchmarks/fid_benchmark.py`; command: `{record['command']}`.",
        "",
        f"- torch {record['torch']}, Python {record['python']}, {record['threads']} CPU thread(s); extractor {record['extractor']}; batch {record['batch_size']}; {record['date']}",
        f"- data: {record['data']}",
        f"- backend flags as torch starts: cudnn.allow_tf32={record['tf32_default']['cudnn']}, cuda.matmul.allow_tf32={record['tf32_default']['matmul']}",
        f"- wall time {record.get('wall_s', '?')} s; images/s of the extractor as evaluation runs it: {record.get('inception_images_per_s', '-')} "
        f"({record.get('throughput_images', '-')} random 28x28 images)",
    ]
    if "fid_train_vs_test" in record:
        lines += ["", f"Train-vs-test {record['fid_protocol']} (fp32, torch's defaults): **{record['fid_train_vs_test']}** ({record['n_train']} train vs "
                  f"{record['n_test']} test images; {record['fid_total_s']} s; test features from the cache: {record['reference_cached']})."]
    if record.get("variants"):
        fid = record.get("fid_protocol", "fid")
        lines += ["", f"| arithmetic | images/s | max abs feature error vs {REFERENCE} | mean abs error | max abs error / max abs feature | train-vs-test {fid} |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for v in record["variants"]:
            if v.get("status") != "ok":
                lines.append(f"| {v['mode']} | {v.get('status')} | | | | |")
                continue
            lines.append(f"| {v['mode']} | {v['images_per_s']:.1f} | {_g(v.get('max_abs_error'))} | {_g(v.get('mean_abs_error'))} | "
                         f"{_g(v.get('relative_max_error'))} | {_g(v.get('fid_train_vs_test'), 6)} |")
        lines += ["", f"images/s on {record.get('throughput_images')} random images; feature errors on the first {record.get('error_images')} test images. "
                  f"`{REFERENCE}`: fp32 with TF32 off (the reference); `fp32`: torch's defaults; `bf16`/`fp16`: torch.autocast; `fp16-half`: the network in fp16."]
    if record.get("protocol_calls"):
        calls = record["protocol_calls"]
        lines += ["", f"gentrain's evaluation path (`Evaluator`, `eval.metrics=[{calls[0]['protocol']}]`), {calls[0]['model']} samples vs the first test images, "
                  "a fresh Evaluator per call on one fresh cache:", "", "| call | wall (s) | reference from the cache | value |", "| ---: | ---: | --- | ---: |"]
        lines += [f"| {c['call']} | {c['wall_s']} | {c['reference_from_cache']} | {c['value']} |" for c in calls]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def compare(args: argparse.Namespace, base: Any, device: torch.device, record: dict[str, Any], train: Tensor, test: Tensor, flush: Any) -> None:
    """Throughput, feature error and (``--fid-precisions``) the train-vs-test FID of each arithmetic in ``--precisions``."""
    protocol = parse_protocol(protocol_name(args.n))
    probe = test[: args.error_images]
    record["variants"], record["error_images"] = [], int(probe.shape[0])
    reference = None
    for mode in (REFERENCE, *[p for p in args.precisions if p != REFERENCE]):
        entry: dict[str, Any] = {"mode": mode}
        try:
            v = Variant(base, mode, device, args.dry_run_features)
            entry["images_per_s"] = round(throughput(v, device, args.throughput_images, args.batch_size), 2)
            feats = extract(lambda s, k: probe[s : s + k].to(device), probe.shape[0], v, args.batch_size).pool
            if reference is None:
                reference = feats
            diff = (feats - reference).abs()
            entry |= {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
                      "relative_max_error": float(diff.max() / reference.abs().max().clamp_min(1e-12)), "max_abs_feature": float(reference.abs().max())}
            if mode == "fp32" and "fid_train_vs_test" in record:
                entry["fid_train_vs_test"] = record["fid_train_vs_test"]
            elif mode in args.fid_precisions:
                tf = extract(lambda s, k: test[s : s + k].to(device), test.shape[0], v, args.batch_size)
                gf = extract(lambda s, k: train[s : s + k].to(device), train.shape[0], v, args.batch_size)
                entry["fid_train_vs_test"] = round(compute(protocol, gf, tf, {}).values[protocol.name], 4)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one arithmetic that fails must not cost the others
            entry["status"] = f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        record["variants"].append(entry)
        print(f"{mode}: {entry.get('status')} {entry.get('images_per_s', '')} images/s", flush=True)
        flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=10000, help="images per side for the train-vs-test FID (and the protocol timing)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--throughput-images", type=int, default=2000)
    parser.add_argument("--weights", default="auto", help="eval.inception_weights")
    parser.add_argument("--cache-dir", default=os.environ.get("GENTRAIN_CACHE") or "~/.cache/gentrain")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fid.jsonl"), help="JSON lines file the record is appended to")
    parser.add_argument("--md", default=None, help="also write the record as markdown here (rewritten after each part)")
    choices = [v for v in VARIANTS if v != REFERENCE]
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=choices,
                        help="arithmetic to time and compare with fp32-strict (default: fp32 only: no comparison)")
    parser.add_argument("--error-images", type=int, default=500, help="test images the feature errors are measured on")
    parser.add_argument("--fid-precisions", nargs="*", default=[], choices=[REFERENCE, *choices],
                        help="also the train-vs-test FID with these arithmetics' features (2 x --n images each)")
    parser.add_argument("--protocol-calls", type=int, default=0, help="time gentrain's Evaluator fid<n> this many times (the first fills a fresh cache)")
    parser.add_argument("--protocol-model", default="dcgan", help="the (untrained) model whose samples the protocol timing scores")
    parser.add_argument("--fashion-dir", default=os.environ.get("GENTRAIN_FASHION_DIR") or None, help="folder of the Fashion-MNIST files (dataset.system_dir)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--stub-if-missing", action="store_true", help="a random stand-in when no Inception weights are found (dry-runs)")
    parser.add_argument("--dry-run-features", type=int, default=0, metavar="K",
                        help="dry-runs: every FID on the first K pool features only (the network still runs whole); 0: all 2,048")
    args = parser.parse_args()
    wall0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    tf32_default = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    base = load_extractor(args, device)
    net = Variant(base, "fp32", device, args.dry_run_features) if args.dry_run_features else base
    data = FashionMNIST(**({"system_dir": args.fashion_dir} if args.fashion_dir else {}))
    record: dict = {
        "command": "python benchmarks/fid_benchmark.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": f"{device.type} ({device_name(device)})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "extractor": net.identity + (f" (DRY RUN: FIDs on the first {args.dry_run_features} features)" if args.dry_run_features else ""),
        "batch_size": args.batch_size,
        "data": f"Fashion-MNIST from {args.fashion_dir or 'gentrain default search'}",
        "tf32_default": tf32_default,
    }

    def flush(done: bool = False) -> None:
        record["wall_s"] = round(time.perf_counter() - wall0, 1)
        if args.md:
            write_md(Path(args.md), record, done)

    record["inception_images_per_s"] = round(throughput(net, device, args.throughput_images, args.batch_size), 2)
    record["throughput_images"] = args.throughput_images
    flush()
    if args.protocol_calls:  # first: its fresh cache shows the uncached call, whatever the other parts cache
        record["protocol_calls"] = protocol_timing(args, net, data, device)
        flush()

    train, test = data.load("train").x[: args.n], data.load("test").x[: args.n]
    t0 = time.perf_counter()
    test_features, cached = ReferenceCache(Path(args.cache_dir).expanduser()).features("fashion_mnist", "test", test, net, args.batch_size, device)
    train_features = extract(lambda s, k: train[s : s + k].to(device), train.shape[0], net, args.batch_size)
    sync(device)
    protocol = parse_protocol(protocol_name(args.n))
    result = compute(protocol, train_features, test_features, {})
    record.update(
        fid_train_vs_test=round(result.values[protocol.name], 4),
        fid_protocol=protocol.name,
        n_train=len(train_features),
        n_test=len(test_features),
        reference_cached=cached,
        fid_total_s=round(time.perf_counter() - t0, 2),
        notes=result.notes,
    )
    flush()
    if args.precisions != ["fp32"] or args.fid_precisions:
        compare(args, base, device, record, train, test, flush)
    flush(done=True)
    print(json.dumps(record, indent=2, default=str))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    failed = [v["mode"] for v in record.get("variants", []) if v.get("status") != "ok"]
    if failed:
        print(f"fid_benchmark: failed arithmetic: {', '.join(failed)}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
