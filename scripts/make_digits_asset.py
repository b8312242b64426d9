"""Build gentrain/data/assets/digits.npz, the embedded copy of scikit-learn's 8x8 digits.

Source: ``sklearn.datasets.load_digits()``, which ships with scikit-learn (no download). It is
the test part of the UCI "Optical Recognition of Handwritten Digits" data set (Alpaydin &
Kaynak, 1998; https://archive.ics.uci.edu/dataset/80): 1,797 images of 8x8 pixels, each pixel
a count 0..16 of set pixels in a 4x4 block of a 32x32 bitmap, with labels 0..9.

Stored arrays (np.savez_compressed):
    images: uint8 [1797, 8, 8], pixel v in 0..16 mapped to round(v * 255 / 16) (so 8 -> 128, 16 -> 255)
    labels: int64 [1797]
in scikit-learn's order; gentrain's Digits dataset uses the first 1,500 as train, the rest as test.

scikit-learn is needed only to run this script, not at runtime. Usage:
    python scripts/make_digits_asset.py [--out gentrain/data/assets/digits.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "gentrain" / "data" / "assets" / "digits.npz"


def build() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [1797, 8, 8], labels int64 [1797]) from scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = digits.images  # float64 [1797, 8, 8], integer values 0..16
    assert values.shape == (1797, 8, 8) and values.min() >= 0 and values.max() <= 16
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .npz")
    args = parser.parse_args()
    images, labels = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")


if __name__ == "__main__":
    main()
