"""Tests of gentrain.data: toy sets, embedded digits, file readers, image folders, YAML configs.

Offline and small: every file-based set is exercised on format-faithful files written here.
"""

from __future__ import annotations

import gzip
import inspect
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import gentrain.data as data
import gentrain.data.base as base
import gentrain.data.images as images
from gentrain.build import compose as compose_app
from gentrain.data import (
    CIFAR10,
    MNIST,
    Dataset,
    DataSplit,
    Digits,
    FashionMNIST,
    Grid25,
    ImageFolder,
    Moons,
    Ring8,
    SwissRoll,
    read_idx,
)
from gentrain.errors import GentrainError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dataset"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
SMALL = dict(n_train=3000, n_test=500)


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------ toy sets

TOYS = [Ring8, Grid25, SwissRoll, Moons]


@pytest.mark.parametrize("cls", TOYS)
def test_toy_shapes_dtypes_determinism(cls: type) -> None:
    ds = cls(**SMALL, seed=3)
    train, test = ds.load("train"), ds.load("test")
    assert ds.shape == (2,)
    assert train.x.shape == (3000, 2) and test.x.shape == (500, 2)
    assert train.x.dtype == torch.float32 and train.x.device.type == "cpu"
    assert torch.isfinite(train.x).all()
    if ds.num_classes is None:
        assert train.y is None and test.y is None
    else:
        assert train.y.dtype == torch.int64 and train.y.shape == (3000,)
    # Same seed -> same points; another seed or the other split -> different points.
    assert torch.equal(cls(**SMALL, seed=3).load("train").x, train.x)
    assert not torch.equal(cls(**SMALL, seed=4).load("train").x, train.x)
    assert not torch.equal(train.x[:500], test.x)


def test_toy_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Ring8(**SMALL).load("train")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cls", [Ring8, Grid25])
def test_mixture_samples_near_their_modes(cls: type) -> None:
    ds = cls(**SMALL)
    split = ds.load("train")
    modes = ds.modes
    assert modes.shape == (ds.num_classes, 2) and modes.dtype == torch.float32
    distance = (split.x - modes[split.y]).norm(dim=1)
    assert (distance < 5 * ds.mode_std).all()
    assert set(split.y.tolist()) == set(range(ds.num_classes))


def test_mode_geometry() -> None:
    ring = Ring8()
    assert torch.allclose(ring.modes.norm(dim=1), torch.full((8,), 2.0))
    assert ring.mode_std == 0.02
    grid = Grid25()
    assert {tuple(p) for p in grid.modes.tolist()} == {(a, b) for a in range(-4, 5, 2) for b in range(-4, 5, 2)}
    assert grid.mode_std == 0.05


def test_moons_labels() -> None:
    split = Moons(**SMALL, noise=0.0).load("train")
    assert set(split.y.tolist()) == {0, 1}
    upper, lower = split.x[split.y == 0], split.x[split.y == 1]
    assert torch.allclose(upper.norm(dim=1), torch.ones(len(upper)), atol=1e-5)
    assert (upper[:, 1] >= -1e-6).all()
    centre = torch.tensor([1.0, 0.5])
    assert torch.allclose((lower - centre).norm(dim=1), torch.ones(len(lower)), atol=1e-5)
    assert (lower[:, 1] <= 0.5 + 1e-6).all()


def test_swissroll_range() -> None:
    x = SwissRoll(**SMALL, noise=0.0).load("train").x
    assert x.abs().max() <= 2.0 + 1e-5 and x.abs().max() > 1.9


def test_toy_config_errors() -> None:
    with pytest.raises(GentrainError) as e:
        Grid25(num_classes=24)
    assert_one_line_error(e, "dataset.num_classes=25")
    with pytest.raises(GentrainError) as e:
        Ring8(shape=[3], **SMALL).load("train")
    assert_one_line_error(e, "dataset.shape=[2]")
    with pytest.raises(GentrainError) as e:
        SwissRoll(num_classes=3, **SMALL).load("train")
    assert_one_line_error(e, "dataset.num_classes=null")


@pytest.mark.parametrize("split", ["validation", "", "TRAIN"])
def test_unknown_split(split: str) -> None:
    with pytest.raises(GentrainError) as e:
        Moons(**SMALL).load(split)
    assert_one_line_error(e, "train", "val", "test")
    assert not Moons(**SMALL).has_split(split)


# -------------------------------------------------------------------------------------- digits


def test_digits_split() -> None:
    ds = Digits()
    train, test = ds.load("train"), ds.load("test")
    assert isinstance(train, DataSplit) and len(train) == 1500 and len(test) == 297
    assert train.x.shape == (1500, 1, 8, 8) and train.x.dtype == torch.uint8
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    assert ds.num_classes == 10 and set(train.y.tolist()) == set(range(10))
    assert train.y.dtype == torch.int64
    # 0..16 mapped by round(v * 255 / 16): only those 17 values appear.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.cat([train.x, test.x]).unique().tolist()) <= allowed


def test_digits_shape_mismatch() -> None:
    with pytest.raises(GentrainError) as e:
        Digits(shape=[1, 28, 28]).load("train")
    assert_one_line_error(e, "[1, 8, 8]", "dataset.shape")


# ---------------------------------------------------------------------------------- IDX files


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX as on yann.lecun.com: 0x0000, type byte, ndim, big-endian uint32 dims, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist_like(folder: Path, seed: int, side: int = 28, n_train: int = 5, n_test: int = 3) -> dict:
    """Train files gzipped, test files uncompressed; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n, compress in (("train", n_train, True), ("t10k", n_test, False)):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


def check_pixels(split: DataSplit, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
    assert torch.equal(split.x, torch.from_numpy(images)[:, None])
    assert torch.equal(split.y, torch.from_numpy(labels.astype(np.int64)))


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a", array, compress=False)
    write_idx(tmp_path / "b", array, compress=True)
    for name in ("a", "b.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == torch.int32 and torch.equal(got, torch.from_numpy(array))


def test_mnist_files(tmp_path: Path) -> None:
    arrays = write_mnist_like(tmp_path / "MNIST" / "raw", seed=0)
    ds = MNIST(root=str(tmp_path))
    check_pixels(ds.load("train"), *arrays["train"])
    check_pixels(ds.load("test"), *arrays["t10k"])


def test_fashion_mnist_files(tmp_path: Path) -> None:
    arrays = write_mnist_like(tmp_path / "FashionMNIST" / "raw", seed=1)
    empty = tmp_path / "system"
    empty.mkdir()
    ds = FashionMNIST(root=str(tmp_path), system_dir=str(empty))
    check_pixels(ds.load("train"), *arrays["train"])
    check_pixels(ds.load("test"), *arrays["t10k"])
    # A system-wide copy wins over root.
    system_arrays = write_mnist_like(empty, seed=2)
    check_pixels(ds.load("test"), *system_arrays["t10k"])


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"{DEBIAN_FASHION} absent (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_debian_package(tmp_path: Path) -> None:
    ds = FashionMNIST(root=str(tmp_path))
    train, test = ds.load("train"), ds.load("test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.uint8 and set(test.y.tolist()) == set(range(10))


@pytest.mark.parametrize(
    "cls, needles",
    [
        (MNIST, ["MNIST/raw", "dataset.download=true"]),
        (FashionMNIST, ["apt-get install dataset-fashion-mnist", "dataset.download=true"]),
        (CIFAR10, ["cifar-10-batches-py", "dataset.download=true"]),
    ],
)
def test_missing_files_offline(tmp_path: Path, cls: type, needles: list[str]) -> None:
    kwargs = {"system_dir": str(tmp_path / "nowhere")} if cls is FashionMNIST else {}
    ds = cls(root=str(tmp_path), download=False, **kwargs)
    with pytest.raises(GentrainError) as e:
        ds.load("train")
    assert_one_line_error(e, *needles)


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>", gzip.compress(b"garbage!", mtime=0), b"\x1f\x8bbroken", b""])
def test_corrupt_idx(tmp_path: Path, content: bytes) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw, seed=0)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(GentrainError) as e:
        MNIST(root=str(tmp_path)).load("train")
    assert_one_line_error(e, "train-images-idx3-ubyte.gz is not an IDX file", "re-download")


def test_truncated_idx(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw, seed=0)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(GentrainError) as e:
        MNIST(root=str(tmp_path)).load("test")
    assert_one_line_error(e, "is not an IDX file", "dataset.download=true")


def test_idx_shape_mismatch(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "MNIST" / "raw", seed=0, side=5)
    with pytest.raises(GentrainError) as e:
        MNIST(root=str(tmp_path)).load("train")
    assert_one_line_error(e, "dataset.shape=[1, 5, 5]")
    assert len(MNIST(root=str(tmp_path), shape=[1, 5, 5]).load("train")) == 5


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(self: object) -> None:  # what torchvision raises when every mirror fails
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried http://fashion-mnist.example/, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
        )

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    ds = FashionMNIST(root=str(tmp_path), download=True, system_dir=str(tmp_path / "nowhere"))
    with pytest.raises(GentrainError) as e:
        ds.load("train")
    host = torchvision.datasets.FashionMNIST.mirrors[0].split("/")[2]
    assert_one_line_error(e, "failed", "unreachable", host, "by hand", str(ds.raw_dir), "name resolution")
    with pytest.raises(GentrainError) as e:
        CIFAR10(root=str(tmp_path), download=True).load("test")
    assert_one_line_error(e, "failed", "unreachable", "www.cs.toronto.edu", "cifar-10-python.tar.gz")


def test_download_then_own_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    written = {}

    def fake_download(self: torchvision.datasets.MNIST) -> None:  # puts files where torchvision would
        written.update(write_mnist_like(Path(self.raw_folder), seed=5))
        for prefix in ("train", "t10k"):  # torchvision keeps the .gz and the extracted file
            for kind in ("images-idx3", "labels-idx1"):
                name = Path(self.raw_folder) / f"{prefix}-{kind}-ubyte"
                if not name.exists():
                    name.write_bytes(gzip.decompress(name.with_name(name.name + ".gz").read_bytes()))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    ds = MNIST(root=str(tmp_path), download=True)
    check_pixels(ds.load("train"), *written["train"])
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


# ------------------------------------------------------------------------------------ CIFAR-10


def write_cifar(root: Path, seed: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Python-2-style batches: dict with bytes keys, b"data" uint8 [N, 3072], b"labels" list."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (batch[b"data"], batch[b"labels"])
    return written


def test_cifar10_files(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, seed=0)
    ds = CIFAR10(root=str(tmp_path))
    train, test = ds.load("train"), ds.load("test")
    data_train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels_train = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.uint8
    assert torch.equal(train.x, torch.from_numpy(data_train).reshape(10, 3, 32, 32))
    assert train.y.tolist() == labels_train and train.y.dtype == torch.int64
    # Channel planes: the first 1024 bytes of a row are the red 32x32 image.
    assert torch.equal(test.x[1, 0].flatten(), torch.from_numpy(written["test_batch"][0][1, :1024]))
    assert test.y.tolist() == written["test_batch"][1]


def test_cifar10_corrupt_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, seed=0)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x00not a pickle")
    with pytest.raises(GentrainError) as e:
        CIFAR10(root=str(tmp_path)).load("train")
    assert_one_line_error(e, "data_batch_3 is not a CIFAR-10 python batch", "re-download")


# --------------------------------------------------------------------------------- ImageFolder


def save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def gradient(width: int, height: int) -> Image.Image:
    """Grayscale image whose column c has value 10 * c."""
    columns = (np.arange(width, dtype=np.uint8) * 10)[None].repeat(height, axis=0)
    return Image.fromarray(columns, mode="L")


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    root = tmp_path / "labelled"
    save(root / "cat" / "a.png", gradient(16, 8))  # no resize needed, crop columns 4..11
    save(root / "cat" / "b.PNG", Image.new("RGB", (32, 16), (10, 200, 30)))  # resize by 1/2
    save(root / "dog" / "sub" / "c.jpg", Image.new("RGB", (8, 20), (0, 0, 255)))  # nested: still "dog"
    save(root / "dog" / "d.bmp", Image.new("L", (9, 9), 77))
    (root / "dog" / "notes.txt").write_text("not an image")
    save(root / "dog" / ".hidden.png", Image.new("RGB", (8, 8)))
    return root


def test_image_folder_labelled(labelled: Path) -> None:
    ds = ImageFolder(path=str(labelled), size=8, shape=[3, 8, 8])
    assert ds.num_classes == 2 and ds.classes == ["cat", "dog"]
    split = ds.load("train")
    assert split.x.shape == (4, 3, 8, 8) and split.x.dtype == torch.uint8
    assert split.y.tolist() == [0, 0, 1, 1]  # sorted: cat/a, cat/b, dog/d, dog/sub/c
    expected_gradient = torch.tensor([40, 50, 60, 70, 80, 90, 100, 110], dtype=torch.uint8)
    assert torch.equal(split.x[0], expected_gradient.expand(3, 8, 8))
    assert torch.equal(split.x[1], torch.tensor([10, 200, 30], dtype=torch.uint8)[:, None, None].expand(3, 8, 8))
    assert torch.equal(split.x[2], torch.full((3, 8, 8), 77, dtype=torch.uint8))
    # test_fraction=0: "test" is the training set.
    assert torch.equal(ds.load("test").x, split.x)


def test_image_folder_grayscale(labelled: Path) -> None:
    split = ImageFolder(path=str(labelled), size=8, channels=1, shape=[1, 8, 8]).load("train")
    assert split.x.shape == (4, 1, 8, 8)
    gray = Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel((0, 0))
    assert (split.x[1] == gray).all()


def test_image_folder_flat_and_split(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path / f"{i}.png", Image.new("RGB", (12 + i, 10), (i, i, i)))
    save(tmp_path / "extra" / "5.webp", Image.new("RGB", (10, 10), (5, 5, 5)))
    ds = ImageFolder(path=str(tmp_path), size=10, test_fraction=0.5, seed=1, shape=[3, 10, 10])
    train, test = ds.load("train"), ds.load("test")
    assert ds.num_classes is None and train.y is None and test.y is None
    assert len(train) == 3 and len(test) == 3
    values = sorted(int(x[0, 0, 0]) for x in torch.cat([train.x, test.x]))
    assert values == list(range(6))  # disjoint and complete
    again = ImageFolder(path=str(tmp_path), size=10, test_fraction=0.5, seed=1, shape=[3, 10, 10])
    assert torch.equal(again.load("test").x, test.x)


def test_image_folder_errors(tmp_path: Path, labelled: Path) -> None:
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(tmp_path / "missing")).load("train")
    assert_one_line_error(e, "does not exist", "dataset.path=")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(tmp_path / "empty")).load("train")
    assert_one_line_error(e, "no images", "dataset.path")
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(labelled), size=8, shape=[3, 16, 16]).load("train")
    assert_one_line_error(e, "dataset.shape=[3, 8, 8]")
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(labelled), size=8, shape=[3, 8, 8], num_classes=3).load("train")
    assert_one_line_error(e, "dataset.num_classes=2")
    (labelled / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(labelled), size=8, shape=[3, 8, 8]).load("train")
    assert_one_line_error(e, "broken.png", "cannot read image")
    with pytest.raises(GentrainError) as e:
        ImageFolder(path=str(labelled), channels=4)
    assert_one_line_error(e, "dataset.channels")


# ------------------------------------------------------------------------------- YAML configs


def compose(name: str, **overrides: object) -> OmegaConf:
    """The dataset YAML alone, its ``tiny:`` block (debug=tiny's sizes) taken out as every composed config has it."""
    from gentrain.config import apply_debug

    cfg = apply_debug(OmegaConf.create({"dataset": OmegaConf.load(CONFIGS / f"{name}.yaml")}))
    for key, value in overrides.items():
        cfg.dataset[key] = value
    return cfg


ALL_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_every_dataset_has_a_config() -> None:
    assert set(ALL_CONFIGS) == {"ring8", "grid25", "swissroll", "moons", "digits", "fashion_mnist", "mnist",
                                "cifar10", "image_folder", "binarized_mnist", "binarized_fashion_mnist", "audio_folder", "waveforms"}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_matches_class(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRAIN_DATA", str(tmp_path))
    cfg = compose(name, path=str(tmp_path)) if name in ("image_folder", "audio_folder") else compose(name)
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, Dataset) and type(ds).__name__ in data.__all__
    assert ds.name == name
    assert ds.shape == tuple(cfg.dataset.shape) and all(type(s) is int for s in ds.shape)
    assert name in ("image_folder", "audio_folder") or ds.num_classes == cfg.dataset.num_classes
    # The YAML lists exactly the constructor's keyword arguments, each typed.
    params = inspect.signature(type(ds)).parameters
    assert set(params) == set(cfg.dataset) - {"_target_"}
    assert all(p.annotation is not inspect.Parameter.empty for p in params.values())
    if "root" in cfg.dataset:
        assert Path(ds.root) == tmp_path  # ${oc.env:GENTRAIN_DATA,data}


@pytest.mark.parametrize("name", ["ring8", "grid25", "swissroll", "moons", "digits"])
def test_config_loads(name: str) -> None:
    cfg = compose(name) if name == "digits" else compose(name, n_train=64, n_test=32)
    split = instantiate(cfg.dataset).load("test")
    assert tuple(split.x.shape[1:]) == tuple(cfg.dataset.shape)


def test_image_folder_config_interpolation(labelled: Path) -> None:
    assert OmegaConf.is_missing(OmegaConf.load(CONFIGS / "image_folder.yaml"), "path")
    cfg = compose("image_folder", path=str(labelled), size=8, channels=1)
    ds = instantiate(cfg.dataset)
    assert ds.shape == (1, 8, 8)
    assert ds.load("train").x.shape == (3, 1, 8, 8)  # the YAML's val_fraction=0.1 holds out 1 of the 4
    assert ds.load("val").x.shape == (1, 1, 8, 8)


# --------------------------------------------------------------------------- validation split


def raw_train(ds: Dataset) -> DataSplit:
    """The dataset's whole training data, as it was before the validation split existed."""
    return ds._load("train")


def val_mask(raw: DataSplit, val: DataSplit) -> torch.Tensor:
    """Which raw train examples are in ``val``, found by matching rows (no two raw examples are equal here)."""
    flat_raw, flat_val = raw.x.flatten(1), val.x.flatten(1)
    matches = (flat_raw[:, None] == flat_val[None]).all(dim=2)  # [n_raw, n_val]
    assert (matches.sum(dim=0) == 1).all()  # every val example is one raw example
    return matches.any(dim=1)


@pytest.mark.parametrize(
    "make", [lambda: Digits(val_fraction=0.1), lambda: Ring8(**SMALL, val_fraction=0.2)], ids=["digits", "ring8"]
)
def test_val_is_a_disjoint_part_of_train(make: object) -> None:
    ds = make()
    raw = raw_train(ds)
    train, val = ds.load("train"), ds.load("val")
    n_val = round(len(raw) * ds.val_fraction)
    assert len(val) == n_val and len(train) == len(raw) - n_val
    held_out = val_mask(raw, val)
    assert int(held_out.sum()) == n_val
    # Disjoint, complete, raw order kept within each part, labels following their samples.
    assert torch.equal(val.x, raw.x[held_out]) and torch.equal(train.x, raw.x[~held_out])
    assert torch.equal(val.y, raw.y[held_out]) and torch.equal(train.y, raw.y[~held_out])
    assert train.x.dtype == raw.x.dtype and train.y.dtype == torch.int64
    # The test split is untouched.
    assert torch.equal(ds.load("test").x, ds._load("test").x)


def test_val_without_labels() -> None:
    ds = SwissRoll(**SMALL, val_fraction=0.1)
    train, val = ds.load("train"), ds.load("val")
    assert train.y is None and val.y is None
    assert (len(train), len(val)) == (2700, 300)
    raw = raw_train(ds)
    held_out = val_mask(raw, val)
    assert torch.equal(val.x, raw.x[held_out]) and torch.equal(train.x, raw.x[~held_out])


def test_val_seed_is_fixed() -> None:
    """Every object of a dataset holds out the same examples, whatever the global RNG state."""
    torch.manual_seed(1)
    first = Digits(val_fraction=0.1).load("val")
    torch.manual_seed(2)
    again = Digits(val_fraction=0.1).load("val")
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    # ... and it depends only on (n, val_fraction), not on the dataset's own sampling seed.
    assert torch.equal(Moons(**SMALL, seed=1, val_fraction=0.1)._val_mask(3000),
                       Moons(**SMALL, seed=2, val_fraction=0.1)._val_mask(3000))


def test_val_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Digits(val_fraction=0.1).load("val")
    assert torch.equal(torch.rand(3), expected)


def test_val_fraction_zero_is_the_old_train_split() -> None:
    ds = Digits()
    assert ds.val_fraction == 0.0 and not ds.has_split("val")
    assert ds.has_split("train") and ds.has_split("test")
    train = ds.load("train")
    assert torch.equal(train.x, raw_train(ds).x) and torch.equal(train.y, raw_train(ds).y)
    assert torch.equal(Ring8(**SMALL).load("train").x, raw_train(Ring8(**SMALL)).x)
    with pytest.raises(GentrainError) as e:
        ds.load("val")
    assert_one_line_error(e, "dataset 'digits' has no validation split", "dataset.val_fraction=0.1")


def test_val_sizes_round_and_at_least_one() -> None:
    assert len(Moons(n_train=10, n_test=2, val_fraction=0.01).load("val")) == 1  # round(0.1) = 0 -> 1
    assert len(Moons(n_train=10, n_test=2, val_fraction=0.26).load("val")) == 3
    ds = Moons(n_train=10, n_test=2, val_fraction=0.26)
    assert ds.has_split("val") and len(ds.load("train")) == 7


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "0.1", None, True])
def test_val_fraction_must_be_in_unit_interval(value: object) -> None:
    with pytest.raises(GentrainError) as e:
        Digits(val_fraction=value)
    assert_one_line_error(e, f"dataset.val_fraction must be in [0, 1), got {value!r}", "dataset.val_fraction=0.1")


def test_val_fraction_leaving_no_training_example() -> None:
    ds = Moons(n_train=1, n_test=1, val_fraction=0.1)
    for split in ("train", "val"):
        with pytest.raises(GentrainError) as e:
            ds.load(split)
        assert_one_line_error(e, "dataset.val_fraction=0.1", "leaves none to train on", "lower dataset.val_fraction")
    assert len(ds.load("test")) == 1


def test_raw_train_split_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = Digits._load

    def counting(self: Digits, split: str) -> DataSplit:
        reads.append(split)
        return original(self, split)

    monkeypatch.setattr(Digits, "_load", counting)
    ds = Digits(val_fraction=0.1)
    train, val = ds.load("train"), ds.load("val")
    ds.load("train")
    assert reads == ["train"]
    ds.load("test")
    assert reads == ["train", "test"]
    # A caller's in-place change corrupts neither the cache nor the other split.
    expected_train, expected_val = train.x.clone(), val.x.clone()
    train.x.zero_(), train.y.zero_(), val.x.zero_()
    assert torch.equal(ds.load("train").x, expected_train) and torch.equal(ds.load("val").x, expected_val)
    assert int(ds.load("train").y.max()) == 9
    # val_fraction=0 also hands out copies.
    plain = Digits()
    plain.load("train").x.zero_()
    assert int(plain.load("train").x.max()) == 255


def test_mnist_files_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_mnist_like(tmp_path / "MNIST" / "raw", seed=0, n_train=12)
    reads: list[str] = []
    monkeypatch.setattr(images, "read_idx", lambda path: reads.append(Path(path).name) or read_idx(path))
    ds = MNIST(root=str(tmp_path), val_fraction=0.25)
    train, val = ds.load("train"), ds.load("val")
    assert reads == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert (len(train), len(val)) == (9, 3)
    held_out = ds._val_mask(12)
    check_pixels(val, arrays["train"][0][held_out.numpy()], arrays["train"][1][held_out.numpy()])
    check_pixels(train, arrays["train"][0][~held_out.numpy()], arrays["train"][1][~held_out.numpy()])


def test_cifar10_val(tmp_path: Path) -> None:
    write_cifar(tmp_path, seed=0)
    ds = CIFAR10(root=str(tmp_path), val_fraction=0.1)
    raw = raw_train(ds)
    train, val = ds.load("train"), ds.load("val")
    assert (len(train), len(val)) == (9, 1)
    held_out = ds._val_mask(10)
    assert torch.equal(val.x, raw.x[held_out]) and torch.equal(train.y, raw.y[~held_out])


def values(split: DataSplit) -> list[int]:
    """The grey level of each image of ``split`` (each test image is one flat colour)."""
    return [int(x[0, 0, 0]) for x in split.x]


def test_image_folder_val_and_split_note(tmp_path: Path) -> None:
    for i in range(10):
        save(tmp_path / f"{i}.png", Image.new("RGB", (10, 10), (i, i, i)))
    ds = ImageFolder(path=str(tmp_path), size=10, shape=[3, 10, 10], val_fraction=0.2)
    train, val, test = ds.load("train"), ds.load("val"), ds.load("test")
    assert len(val) == 2 and sorted(values(train) + values(val)) == list(range(10))
    assert values(test) == list(range(10))  # no held-out test images: "test" is the whole folder
    note = ds.split_note("test")
    assert note is not None and "\n" not in note
    for needle in ("no held-out test images", "(dataset.test_fraction=0)", "training images",
                   "dataset.test_fraction=0.1"):
        assert needle in note
    assert ds.split_note("train") is None and ds.split_note("val") is None
    held = ImageFolder(path=str(tmp_path), size=10, shape=[3, 10, 10], test_fraction=0.3, val_fraction=0.3)
    assert held.split_note("test") is None
    train, val, test = held.load("train"), held.load("val"), held.load("test")
    assert (len(train), len(val), len(test)) == (5, 2, 3)  # val: round(7 * 0.3) of the 7 non-test images
    assert sorted(values(train) + values(val) + values(test)) == list(range(10))


def test_split_note_default_and_repr() -> None:
    ds = Digits(val_fraction=0.1)
    assert all(ds.split_note(split) is None for split in base.SPLITS)
    assert base.SPLITS == ("train", "val", "test") and data.SPLITS is base.SPLITS
    assert "val_fraction=0.1" in repr(ds)


@pytest.mark.parametrize(
    "name, n_train, n_val",
    [("digits", 1350, 150), ("ring8", 45000, 5000), ("grid25", 45000, 5000), ("swissroll", 45000, 5000),
     ("moons", 45000, 5000)],
)
def test_yaml_default_val_sizes(name: str, n_train: int, n_val: int) -> None:
    ds = instantiate(compose_app([f"dataset={name}"]).dataset)
    assert ds.has_split("val")
    assert len(ds.load("val")) == n_val and len(ds.load("train")) == n_train


@pytest.mark.parametrize("name, n_raw, n_val", [("mnist", 60000, 5000), ("fashion_mnist", 60000, 5000),
                                                ("cifar10", 50000, 5000), ("image_folder", 1000, 100)])
def test_yaml_default_val_fraction_arithmetic(name: str, n_raw: int, n_val: int, tmp_path: Path) -> None:
    overrides = [f"dataset={name}", *([f"dataset.path={tmp_path}"] if name == "image_folder" else [])]
    ds = instantiate(compose_app(overrides).dataset)
    mask = ds._val_mask(n_raw)
    assert int(mask.sum()) == n_val


def test_val_indices_are_pinned() -> None:
    """The validation examples must not move between versions (numpy's RandomState stream is frozen)."""
    held_out = Digits(val_fraction=0.1)._val_mask(1500).nonzero().flatten()
    assert held_out[:5].tolist() == [15, 30, 35, 52, 73] and len(held_out) == 150
