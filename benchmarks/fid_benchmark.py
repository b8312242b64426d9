"""FID benchmark: Inception throughput (images/s), and the Fashion-MNIST train-vs-test FID as a sanity value.

    python benchmarks/fid_benchmark.py --device auto --n 10000          # the standard 10k vs 10k (GPU)
    python benchmarks/fid_benchmark.py --device cpu --n 1000 --throughput-images 64

Uses the same code path as training and `gentrain task=eval` (gentrain.metrics): the FID Inception
network from eval.inception_weights (auto: $GENTRAIN_INCEPTION_WEIGHTS or the file built by
`python -m gentrain.metrics.inception`), uint8 images, grayscale tiled to 3 channels. Prints a
JSON record and appends it to benchmarks/results/fid.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from gentrain.data.images import FashionMNIST
from gentrain.engine.device import device_name, resolve_device
from gentrain.metrics.evaluate import ReferenceCache, extract
from gentrain.metrics.fidelity import compute, parse_protocol
from gentrain.metrics.inception import InceptionFeatures, resolve_weights


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(net: InceptionFeatures, device: torch.device, n: int, batch_size: int) -> float:
    """Images/s of the feature network on uint8 28x28 grey images (resized to 299 inside), after one warm-up batch."""
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, device=device)
    net(images[: min(batch_size, n)])
    sync(device)
    t0 = time.perf_counter()
    extract(lambda s, k: images[s : s + k], n, net, batch_size)
    sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=10000, help="images per side for the train-vs-test FID")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--throughput-images", type=int, default=2000)
    parser.add_argument("--weights", default="auto", help="eval.inception_weights")
    parser.add_argument("--cache-dir", default="~/.cache/gentrain")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fid.jsonl"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    net = InceptionFeatures(resolve_weights(args.weights), device)
    record: dict = {
        "device": f"{device.type} ({device_name(device)})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "extractor": net.identity,
        "batch_size": args.batch_size,
    }
    record["inception_images_per_s"] = round(throughput(net, device, args.throughput_images, args.batch_size), 2)
    record["throughput_images"] = args.throughput_images

    data = FashionMNIST()
    train, test = data.load("train").x[: args.n], data.load("test").x[: args.n]
    t0 = time.perf_counter()
    test_features, cached = ReferenceCache(Path(args.cache_dir)).features("fashion_mnist", "test", test, net, args.batch_size, device)
    train_features = extract(lambda s, k: train[s : s + k].to(device), train.shape[0], net, args.batch_size)
    sync(device)
    protocol = parse_protocol(f"fid{args.n // 1000}k" if args.n % 1000 == 0 else f"fid{args.n}")
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
    print(json.dumps(record, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
