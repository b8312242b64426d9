"""Image datasets: ``x`` uint8 ``[N, C, H, W]`` (0..255) on the CPU, ``y`` int64 ``[N]`` or None.

Each declares its levels per sub-pixel (``dataset.levels``): 256 for the 8-bit sets, 17 for the
digits (values 0..16); see :class:`~gentrain.data.base.Dataset`.

* :class:`Digits` - scikit-learn's 8x8 digits, embedded in the package (no files needed).
* :class:`MNIST`, :class:`FashionMNIST` - IDX files, read by :func:`read_idx`.
* :class:`CIFAR10` - the "python version" pickled batches, read by our own reader.
* :class:`ImageFolder` - any folder of image files.

Each reads its own "train" and "test" data; "val" is held out of "train" by
:class:`~gentrain.data.base.Dataset` (``val_fraction``).

The file readers are our own: torchvision is imported only to *download* missing files, so a
copy put in place by hand (or by a Debian package) never needs torchvision's checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from gentrain.data.base import DataSplit, Dataset, available_memory
from gentrain.errors import GentrainError, check_int

log = logging.getLogger(__name__)

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's text squeezed onto one line (GentrainError messages are single lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_root() -> str:
    """Same default as the YAML: ``${oc.env:GENTRAIN_DATA,data}``."""
    return os.environ.get("GENTRAIN_DATA", "data")


# --------------------------------------------------------------------------------------- IDX


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (MNIST format), gzip-compressed or not, into a CPU tensor.

    Compression is detected from the content (gzip magic bytes), so a file works whatever its
    extension. Returns a tensor of the dims stored in the header, in native byte order
    (uint8 files give uint8 tensors). Raises GentrainError if the file is missing, unreadable,
    or not a complete IDX file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GentrainError(f"cannot read {path} ({_one_line(e)}); check the file and its permissions") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _not_idx(path, f"broken gzip data: {_one_line(e, 80)}") from e
    # Header: two zero bytes, a type byte, the number of dims, then one big-endian uint32 per dim.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise _not_idx(path, f"bad magic number {raw[:4].hex() or 'none'}")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise _not_idx(path, "header cut short")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - offset != count * dtype.itemsize:
        raise _not_idx(path, f"{len(raw) - offset} data bytes for dims {list(dims)}, expected {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
    # astype copies into native byte order and a writable buffer, which torch needs.
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


def _not_idx(path: Path, reason: str) -> GentrainError:
    return GentrainError(
        f"{path} is not an IDX file ({reason}); delete it and re-download (dataset.download=true) "
        "or reinstall the package"
    )


def _download_failed(
    title: str, url: str, target: Path, files: Sequence[str], error: BaseException, extra: str = ""
) -> GentrainError:
    """One line: what failed, why, and how to put the files in place by hand."""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return GentrainError(
        f"downloading {title} from {url} failed ({_one_line(error)}); {host} is unreachable from here "
        f"(offline?) - fetch {', '.join(files)} by hand and put them in {target}{extra}"
    )


class _IdxImageDataset(Dataset):
    """MNIST-format sets: four IDX files, looked up in :meth:`_search_dirs` in order.

    Subclasses set ``_title`` (for messages) and ``_torchvision_name`` (the torchvision class,
    which also names the folder ``root/<name>/raw`` it downloads into).
    """

    _title: str
    _torchvision_name: str
    _FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        num_classes: int | None,
        root: str | None,
        download: bool,
        val_fraction: float,
        levels: int | None = 256,
        binarize: bool = False,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction, levels=levels)
        self.root = Path(_default_root() if root is None else root)
        self.download = bool(download)
        if not isinstance(binarize, bool):
            raise GentrainError(f"dataset.binarize must be true or false, got {binarize!r}; e.g. dataset.binarize=true dataset.levels=2")
        if binarize and self.levels != 2:
            raise GentrainError(f"dataset.binarize=true makes two levels per pixel but dataset.levels={self.levels}; add dataset.levels=2")
        self.binarize = binarize

    @property
    def raw_dir(self) -> Path:
        """Where torchvision downloads to and where hand-copied files may go: ``root/<Name>/raw``."""
        return self.root / self._torchvision_name / "raw"

    def _search_dirs(self) -> list[Path]:
        return [self.raw_dir]

    def _find(self, split: str) -> tuple[Path, Path] | None:
        """The (images, labels) files of ``split`` from the first folder holding both, else None."""
        for folder in self._search_dirs():
            # Prefer the uncompressed copy (torchvision leaves both): no need to gunzip 47 MB.
            found = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None)
                     for n in self._FILES[split]]
            if found[0] is not None and found[1] is not None:
                return found[0], found[1]
        return None

    def _not_found(self) -> GentrainError:
        where = " or ".join(str(d) for d in self._search_dirs())
        files = ", ".join(f"{n}.gz" for pair in self._FILES.values() for n in pair)
        return GentrainError(
            f"{self._title} not found in {where}; put {files} in {self.raw_dir} "
            "or allow a download with dataset.download=true"
        )

    def _fetch(self) -> None:
        """Download the four files into ``raw_dir`` with torchvision (it knows the mirrors)."""
        import torchvision.datasets  # only needed here; importing it costs about a second

        cls = getattr(torchvision.datasets, self._torchvision_name)
        try:
            cls(str(self.root), train=True, download=True)
        except Exception as e:  # network, disk and checksum failures all end up here
            files = [n for n, _ in cls.resources]
            raise self._download_error(cls.mirrors[0], files, e) from e

    def _download_error(self, url: str, files: list[str], error: BaseException) -> GentrainError:
        return _download_failed(self._title, url, self.raw_dir, files, error)

    def _load(self, split: str) -> DataSplit:
        found = self._find(split)
        if found is None:
            if not self.download:
                raise self._not_found()
            self._fetch()
            found = self._find(split)
            if found is None:
                raise GentrainError(
                    f"the {self._title} download finished but its files are not in {self.raw_dir}; "
                    f"delete {self.raw_dir} and try again"
                )
        images_path, labels_path = found
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != torch.uint8:
            got = f"holds {images.dtype} data of dims {list(images.shape)}"
            raise _not_idx(images_path, f"{got}, expected uint8 [N, H, W] images")
        if labels.ndim != 1:
            raise _not_idx(labels_path, f"holds dims {list(labels.shape)}, expected [N] labels")
        if len(images) != len(labels):
            raise GentrainError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                "delete both and re-download (dataset.download=true) or reinstall the package"
            )
        if self.binarize:  # a fixed threshold at half intensity: 0 or 255 (level 0 or 1 of 2)
            images = torch.where(images >= 128, 255, 0).to(torch.uint8)
        return DataSplit(x=images.unsqueeze(1), y=labels.to(torch.int64))


class MNIST(_IdxImageDataset):
    """MNIST handwritten digits, 60,000 train / 10,000 test, uint8 ``[N, 1, 28, 28]``, 10 classes.

    Files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root/MNIST/raw``
    (torchvision's layout). The YAML holds out the conventional 5,000 of the 60,000 training
    images as "val".

    Args:
        name, shape, num_classes, val_fraction, levels: see :class:`~gentrain.data.base.Dataset`.
        root: data folder; None means ``$GENTRAIN_DATA`` or ``data``.
        download: if the files are missing, download them with torchvision.
        binarize: threshold every pixel at 128 (to 0 or 255; needs ``levels=2``): binarised MNIST.
    """

    _title = "MNIST"
    _torchvision_name = "MNIST"

    def __init__(
        self,
        name: str = "mnist",
        shape: Sequence[int] = (1, 28, 28),
        num_classes: int | None = 10,
        root: str | None = None,
        download: bool = False,
        val_fraction: float = 0.0,
        levels: int | None = 256,
        binarize: bool = False,
    ) -> None:
        super().__init__(
            name=name, shape=shape, num_classes=num_classes, root=root, download=download, val_fraction=val_fraction,
            levels=levels, binarize=binarize,
        )


class FashionMNIST(_IdxImageDataset):
    """Fashion-MNIST (Zalando), 60,000 train / 10,000 test, uint8 ``[N, 1, 28, 28]``, 10 classes.

    Files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, looked up first in
    ``system_dir`` (where Debian's ``dataset-fashion-mnist`` installs them), then in
    ``root/FashionMNIST/raw`` (torchvision's layout). The YAML holds out 5,000 of the 60,000
    training images as "val", as is conventional for MNIST.

    Args:
        name, shape, num_classes, val_fraction, levels: see :class:`~gentrain.data.base.Dataset`.
        root: data folder; None means ``$GENTRAIN_DATA`` or ``data``.
        download: if the files are missing, download them with torchvision into ``root``.
        system_dir: system-wide copy, searched first.
        binarize: threshold every pixel at 128 (to 0 or 255; needs ``levels=2``): binarised Fashion-MNIST.
    """

    _title = "Fashion-MNIST"
    _torchvision_name = "FashionMNIST"

    def __init__(
        self,
        name: str = "fashion_mnist",
        shape: Sequence[int] = (1, 28, 28),
        num_classes: int | None = 10,
        root: str | None = None,
        download: bool = False,
        system_dir: str = "/usr/share/datasets/fashion-mnist",
        val_fraction: float = 0.0,
        levels: int | None = 256,
        binarize: bool = False,
    ) -> None:
        super().__init__(
            name=name, shape=shape, num_classes=num_classes, root=root, download=download, val_fraction=val_fraction,
            levels=levels, binarize=binarize,
        )
        self.system_dir = Path(system_dir)

    def _search_dirs(self) -> list[Path]:
        return [self.system_dir, self.raw_dir]

    def _not_found(self) -> GentrainError:
        return GentrainError(
            f"Fashion-MNIST not found in {self.system_dir} or {self.raw_dir}; install it with "
            "'apt-get install dataset-fashion-mnist' or allow a download with dataset.download=true"
        )

    def _download_error(self, url: str, files: list[str], error: BaseException) -> GentrainError:
        return _download_failed(self._title, url, self.raw_dir, files, error,
                                extra=" (or apt-get install dataset-fashion-mnist)")


# ----------------------------------------------------------------------------------- CIFAR-10


class CIFAR10(Dataset):
    """CIFAR-10, 50,000 train / 10,000 test, uint8 ``[N, 3, 32, 32]``, 10 classes.

    Reads the "python version" batches ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``:
    pickled dicts with ``b"data"`` uint8 ``[N, 3072]`` (R, G, B planes of 32x32) and
    ``b"labels"``, read by a restricted unpickler that admits only NumPy arrays, dicts, lists, strings and numbers
    (a crafted batch that would run code is refused with one line before any of it runs). The YAML
    holds out 5,000 of the 50,000 training images as "val".

    Args:
        name, shape, num_classes, val_fraction, levels: see :class:`~gentrain.data.base.Dataset`.
        root: data folder; None means ``$GENTRAIN_DATA`` or ``data``.
        download: if batches are missing, download and unpack them with torchvision into ``root``.
    """

    _BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

    def __init__(
        self,
        name: str = "cifar10",
        shape: Sequence[int] = (3, 32, 32),
        num_classes: int | None = 10,
        root: str | None = None,
        download: bool = False,
        val_fraction: float = 0.0,
        levels: int | None = 256,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction, levels=levels)
        self.root = Path(_default_root() if root is None else root)
        self.download = bool(download)

    @property
    def batch_dir(self) -> Path:
        """``root/cifar-10-batches-py``, the folder the official archive unpacks to."""
        return self.root / "cifar-10-batches-py"

    def _load(self, split: str) -> DataSplit:
        paths = [self.batch_dir / b for b in self._BATCHES[split]]
        if not all(p.is_file() for p in paths):
            if not self.download:
                missing = ", ".join(p.name for p in paths if not p.is_file())
                raise GentrainError(
                    f"CIFAR-10 not found in {self.batch_dir} (missing {missing}); unpack "
                    "cifar-10-python.tar.gz into "
                    f"{self.root} or allow a download with dataset.download=true"
                )
            self._fetch()
        parts = [_read_cifar_batch(p) for p in paths]
        return DataSplit(x=torch.cat([x for x, _ in parts]), y=torch.cat([y for _, y in parts]))

    def _fetch(self) -> None:
        import torchvision.datasets  # only needed to download

        cls = torchvision.datasets.CIFAR10
        try:
            cls(str(self.root), train=True, download=True)
        except Exception as e:  # network, disk and checksum failures all end up here
            raise _download_failed("CIFAR-10", cls.url, self.root, [cls.filename], e,
                                   extra=" (it unpacks to cifar-10-batches-py)") from e


class _RefusedGlobal(Exception):
    """A pickle names a callable the restricted unpickler does not admit (the message is its dotted name)."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 python batches hold: dicts, lists, str/bytes, ints and NumPy arrays.

    A pickle can call any importable callable (``os.system`` ...) through its GLOBAL/REDUCE opcodes; ``find_class``
    is where every such name is looked up, so admitting only NumPy's array reconstruction here means a crafted
    batch is refused before any of its code runs. The batches are Python 2 pickles, hence ``encoding="bytes"``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes re-pickled under Python 3 with protocol 2: encode(str, "latin1")
    }

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch -> (uint8 ``[N, 3, 32, 32]``, int64 ``[N]``)."""
    bad = f"{path} is not a CIFAR-10 python batch"
    fix = f"delete {path.parent} and re-download (dataset.download=true)"
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f).load()
    except _RefusedGlobal as e:  # checked before anything is called: no code from the file has run
        raise GentrainError(f"{bad}: it asks to call {e} while unpickling, which a real batch never does; refused, nothing was run; {fix}") from None
    except Exception as e:  # unpickling a damaged file can raise almost any exception type
        raise GentrainError(f"{bad} ({_one_line(e, 80)}); {fix}") from e
    if not isinstance(batch, dict):
        raise GentrainError(f"{bad} (holds a {type(batch).__name__}, not a dict); {fix}")
    # Python 2 pickles give bytes keys; accept str keys from files re-pickled under Python 3.
    data = _get(batch, "data")
    labels = _get(batch, "labels")
    data = np.asarray(data) if data is not None else None
    if data is None or labels is None or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise GentrainError(f"{bad} (needs b'data' uint8 [N, 3072] and b'labels'); {fix}")
    labels_array = np.asarray(labels, dtype=np.int64)
    if labels_array.shape != (len(data),):
        raise GentrainError(f"{bad} ({len(data)} images but {labels_array.size} labels); {fix}")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels_array)


def _get(batch: dict[Any, Any], key: str) -> Any:
    return batch.get(key.encode(), batch.get(key))


# ------------------------------------------------------------------------------------- Digits


class Digits(Dataset):
    """scikit-learn's 1,797 handwritten digits, uint8 ``[N, 1, 8, 8]``, 10 classes.

    Embedded in the package as ``gentrain/data/assets/digits.npz`` (built by
    ``scripts/make_digits_asset.py`` from ``sklearn.datasets.load_digits``; pixels 0..16 mapped
    to ``round(v * 255 / 16)``, the stored values of 17 levels, so ``levels`` is 17 and the
    likelihood models see the data as it is). Fixed split: the first 1,500 samples are train, the
    remaining 297 are test; the YAML holds out 150 of the 1,500 as "val".

    Args:
        name, shape, num_classes, val_fraction, levels: see :class:`~gentrain.data.base.Dataset`;
            ``levels=256`` treats the digits as 8-bit images.
    """

    N_TRAIN = 1500
    LEVELS = 17

    def __init__(
        self,
        name: str = "digits",
        shape: Sequence[int] = (1, 8, 8),
        num_classes: int | None = 10,
        val_fraction: float = 0.0,
        levels: int | None = LEVELS,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction, levels=levels)

    def _load(self, split: str) -> DataSplit:
        images, labels = _digits_asset()
        part = slice(None, self.N_TRAIN) if split == "train" else slice(self.N_TRAIN, None)
        return DataSplit(x=images[part].unsqueeze(1).clone(), y=labels[part].clone())


def _digits_asset() -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [1797, 8, 8], labels int64 [1797]) from the packaged npz."""
    asset = resources.files("gentrain.data").joinpath("assets").joinpath("digits.npz")
    try:
        with np.load(io.BytesIO(asset.read_bytes()), allow_pickle=False) as npz:
            return torch.from_numpy(npz["images"].astype(np.uint8)), torch.from_numpy(npz["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError) as e:
        raise GentrainError(
            f"the digits asset of this gentrain install is missing or broken ({_one_line(e, 80)}); "
            "reinstall gentrain (or run scripts/make_digits_asset.py in a checkout)"
        ) from e


# -------------------------------------------------------------------------------- ImageFolder

#: ``dataset.stream=auto`` streams when the decoded training images need more than this share of the available memory.
_MEMORY_SHARE = 0.25


class ImageFolder(Dataset):
    """Every image under ``path`` (recursively), resized and centre-cropped to ``size x size``.

    Files ending in .png/.jpg/.jpeg/.bmp/.webp (any case) are used, sorted by relative path;
    names starting with "." (e.g. macOS ``._x.jpg``, ``.ipynb_checkpoints``) are skipped. Each
    image is turned upright by its EXIF orientation, converted to RGB (``channels=3``) or
    grayscale (``channels=1``), its shorter side resized to ``size`` (bicubic), then the centre
    ``size x size`` cropped.

    Labels: if every image sits inside a first-level subfolder, the sorted subfolder names are
    classes 0..K-1 and ``num_classes`` may be left null (it is then inferred as K); otherwise
    there are no labels (``y=None``) and ``num_classes`` must be null.

    Split: with ``test_fraction=0`` (the default) there are no held-out test images and
    **"test" returns every image of the folder**, the training images (and the "val" ones)
    included; :meth:`split_note` then says so on every result computed against "test".
    Otherwise ``round(N * test_fraction)`` images (at least one), chosen by a permutation seeded
    with ``seed``, form "test" and the rest the raw train split. "val" is then held out of that
    raw train split (``val_fraction``, see :class:`~gentrain.data.base.Dataset`).

    Size: a folder too big for memory (FFHQ, LSUN) trains from :meth:`indexed`, decoded by
    DataLoader workers, instead of one tensor (:meth:`streams`). Decoding a JPEG costs far more than
    reading its pixels, so ``cache`` keeps a decoded uint8 copy of the whole folder on disk, built
    once and memory-mapped after: the page cache then holds what fits, and workers only copy rows.

    Args:
        name, shape, num_classes, val_fraction: see :class:`~gentrain.data.base.Dataset`; shape
            must be ``[channels, size, size]``.
        path: folder of images.
        size: output height and width.
        channels: 3 for RGB, 1 for grayscale.
        test_fraction: fraction of images held out for "test", in [0, 1).
        seed: seed of the train/test split.
        levels: levels per sub-pixel (see :class:`~gentrain.data.base.Dataset`); 256 for 8-bit
            files, fewer for images with fewer grey levels (e.g. 2 for black-and-white scans).
        stream: "auto" streams when the decoded raw train split (N x C x size x size bytes, N
            counted by the file scan) needs more than a quarter of the available memory; True or
            False forces either way.
        workers: DataLoader worker processes that decode while streaming (0: the training process).
        cache: None (decode from the image files), "auto" (``$GENTRAIN_CACHE/image_folder/<hash>.npy``,
            GENTRAIN_CACHE defaulting to ~/.cache/gentrain; the hash covers the folder, each file's
            name, size and mtime, ``size`` and ``channels``, so a changed folder gets a new file) or
            a file path (rebuilt when its shape is not ``[N, channels, size, size]``; delete it when
            images change but their count does not).
    """

    EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

    def __init__(
        self,
        name: str = "image_folder",
        shape: Sequence[int] = (3, 64, 64),
        num_classes: int | None = None,
        *,
        path: str,
        size: int = 64,
        channels: int = 3,
        test_fraction: float = 0.0,
        seed: int = 0,
        val_fraction: float = 0.0,
        levels: int | None = 256,
        stream: bool | str = "auto",
        workers: int = 4,
        cache: str | None = None,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction, levels=levels)
        self.path = str(path)
        self.size = int(size)
        self.channels = int(channels)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        if self.channels not in (1, 3):
            raise GentrainError(f"dataset.channels={channels} is not supported; use 3 (RGB) or 1 (grayscale)")
        if self.size < 1:
            raise GentrainError(f"dataset.size={size} must be at least 1; set dataset.size=<pixels>")
        if not 0.0 <= self.test_fraction < 1.0:
            raise GentrainError(
                f"dataset.test_fraction={test_fraction} must be in [0, 1); e.g. dataset.test_fraction=0.1"
            )
        if not isinstance(stream, bool) and stream != "auto":
            raise GentrainError(f"dataset.stream={stream!r} is not one of auto, true, false; e.g. dataset.stream=true")
        self.stream = stream
        self.workers = check_int(workers, "dataset.workers", minimum=0, example=4)
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise GentrainError(f"dataset.cache={cache!r} must be null, auto or a file path; e.g. dataset.cache=auto")
        self.cache = cache
        # The folder is scanned lazily (constructing must not touch the disk); see _scan.
        self._files: list[Path] | None = None
        self._classes: list[str] | None = None
        self._cache_file: Path | None = None

    @property
    def num_classes(self) -> int | None:
        """The configured count, or (when null) the number of class subfolders; scans ``path``."""
        if self._num_classes is not None:
            return self._num_classes
        _, classes = self._scan()
        return None if classes is None else len(classes)

    @property
    def classes(self) -> list[str] | None:
        """Sorted class subfolder names (label k is ``classes[k]``), or None when unlabelled."""
        return self._scan()[1]

    def _scan(self) -> tuple[list[Path], list[str] | None]:
        """Sorted image files under ``path`` and the class names (None when unlabelled), cached."""
        if self._files is None:
            root = Path(self.path).expanduser()
            if not root.is_dir():
                state = "is not a folder" if root.exists() else "does not exist"
                raise GentrainError(f"dataset.path={self.path!r} {state}; pass dataset.path=<folder of images>")
            rel = sorted(
                (p.relative_to(root) for p in root.rglob("*") if p.suffix.lower() in self.EXTENSIONS),
                key=lambda r: r.as_posix(),
            )
            rel = [r for r in rel if not any(part.startswith(".") for part in r.parts) and (root / r).is_file()]
            if not rel:
                raise GentrainError(
                    f"no images ({', '.join(sorted(self.EXTENSIONS))}) found under dataset.path={self.path!r}; "
                    "put images there or point dataset.path at another folder"
                )
            labelled = all(len(r.parts) >= 2 for r in rel)
            self._classes = sorted({r.parts[0] for r in rel}) if labelled else None
            self._files = [root / r for r in rel]
        return self._files, self._classes

    def split_note(self, split: str) -> str | None:
        """For "test" without held-out images (``test_fraction=0``): the reference is the training
        images, so a test metric measures fit to them, not generalisation. None otherwise."""
        if split != "test" or self.test_fraction > 0:
            return None
        return (
            f"dataset.path={self.path!r} has no held-out test images (dataset.test_fraction=0), so the "
            "reference is the training images; hold some out with dataset.test_fraction=0.1"
        )

    def streams(self) -> bool:
        """``stream`` when forced; with "auto", whether the decoded raw train split needs more than
        a quarter of the available memory (counted from the file scan, nothing decoded)."""
        if isinstance(self.stream, bool):
            return self.stream
        files, _ = self._scan()
        decoded = len(self._split(len(files), "train")) * self.channels * self.size * self.size
        return decoded > _MEMORY_SHARE * available_memory()

    def indexed(self, split: str) -> FolderExamples:
        """``split`` example by example: the examples of ``load(split)``, in the same order.

        Checks what ``load`` checks without decoding (the split, the shape, the labels against
        ``num_classes``); pixel values are not checked against ``levels`` here.
        """
        self._check_split(split)
        files, classes = self._scan()
        self._check_classes(classes)
        no_pixels = torch.empty((0, self.channels, self.size, self.size), dtype=torch.uint8)
        self._check(DataSplit(x=no_pixels, y=None if classes is None else torch.empty(0, dtype=torch.int64)))
        index = self._split(len(files), "test" if split == "test" else "train")
        if split != "test" and self.val_fraction > 0:  # as Dataset.load carves "val" out of the raw train split
            held_out = self._val_mask(len(index))
            index = index[held_out if split == "val" else ~held_out]
        labels = None if classes is None else self._labels(files, classes, index)
        cache = self._cached()
        items = index.numpy() if cache is not None else [str(files[i]) for i in index.tolist()]
        return FolderExamples(items, labels, self.size, self.channels, self.path, cache)

    def _split(self, n: int, split: str) -> torch.Tensor:
        """Sorted indices of ``split`` among ``n`` files."""
        if self.test_fraction == 0.0:
            return torch.arange(n)
        n_test = max(1, round(n * self.test_fraction))
        if n_test >= n:
            raise GentrainError(
                f"dataset.test_fraction={self.test_fraction} leaves no training images out of {n} in "
                f"{self.path!r}; lower dataset.test_fraction or add images"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        chosen = perm[:n_test] if split == "test" else perm[n_test:]
        return chosen.sort().values

    def _load(self, split: str) -> DataSplit:
        files, classes = self._scan()
        self._check_classes(classes)
        index = self._split(len(files), split)
        cache = self._cached()
        if cache is not None:
            pixels = np.load(cache, mmap_mode="r", allow_pickle=False)[index.numpy()]  # fancy indexing copies the rows into memory
        else:
            pixels = np.empty((len(index), self.channels, self.size, self.size), dtype=np.uint8)
            for row, i in enumerate(index.tolist()):
                pixels[row] = _read_image(files[i], self.size, self.channels, self.path)
        y = None if classes is None else self._labels(files, classes, index)
        return DataSplit(x=torch.from_numpy(pixels), y=y)

    def _labels(self, files: list[Path], classes: list[str], index: torch.Tensor) -> torch.Tensor:
        """int64 ``[len(index)]``: the class of each file's first-level subfolder."""
        lookup = {c: k for k, c in enumerate(classes)}
        root = Path(self.path).expanduser()
        return torch.tensor([lookup[files[i].relative_to(root).parts[0]] for i in index.tolist()], dtype=torch.int64)

    def _check_classes(self, classes: list[str] | None) -> None:
        if self._num_classes is None:
            return
        if classes is None:
            raise GentrainError(
                f"dataset.num_classes={self._num_classes} but the images in {self.path!r} are not all in "
                "class subfolders; set dataset.num_classes=null or sort every image into a subfolder"
            )
        if len(classes) != self._num_classes:
            raise GentrainError(
                f"dataset.num_classes={self._num_classes} but {self.path!r} has {len(classes)} class "
                f"subfolders; set dataset.num_classes={len(classes)} (or null to infer it)"
            )

    def _cached(self) -> Path | None:
        """The decoded copy of every image, uint8 ``[N, C, size, size]`` in file order, built on first
        use (None without ``cache``). Rows are file indices, so every split reads the one file."""
        if self.cache is None or self._cache_file is not None:
            return self._cache_file
        files, _ = self._scan()
        target = self._cache_target(files)
        shape = (len(files), self.channels, self.size, self.size)
        try:
            current = np.load(target, mmap_mode="r", allow_pickle=False)
            fits = current.shape == shape and current.dtype == np.uint8
        except (OSError, ValueError, EOFError):  # missing, or not a whole .npy file
            fits = False
        if not fits:
            self._build_cache(files, target, shape)
        self._cache_file = target
        return target

    def _cache_target(self, files: list[Path]) -> Path:
        if self.cache != "auto":
            return Path(str(self.cache)).expanduser()
        root = Path(self.path).expanduser()
        key = hashlib.sha256(f"{root.resolve()}\0{self.size}\0{self.channels}\0".encode())
        for file in files:
            stat = file.stat()
            key.update(f"{file.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        cache_home = Path(os.environ.get("GENTRAIN_CACHE") or "~/.cache/gentrain").expanduser()
        return cache_home / "image_folder" / f"{key.hexdigest()[:32]}.npy"

    def _build_cache(self, files: list[Path], target: Path, shape: tuple[int, ...]) -> None:
        """Decode every file once into ``target``: written under a temporary name and renamed, so
        an interrupted build (or a second process building the same cache) never leaves half a file."""
        log.info("decoding the %d images of %s once into %s (%.0f MB)", len(files), self.path, target, math.prod(shape) / 1e6)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        every = math.ceil(len(files) / 10)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            array = open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
            for i, file in enumerate(files):
                array[i] = _read_image(file, self.size, self.channels, self.path)
                if (i + 1) % every == 0 or i + 1 == len(files):
                    log.info("image cache %s: %d/%d images decoded", target.name, i + 1, len(files))
            array.flush()
            del array
            os.replace(partial, target)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise GentrainError(
                f"cannot write the image cache {target} ({_one_line(e, 120)}); free disk space, "
                "set dataset.cache=<a writable file path> or dataset.cache=null"
            ) from e
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class FolderExamples(torch.utils.data.Dataset):
    """One split of an :class:`ImageFolder`, map-style: ``[i]`` is ``(x, y)``, x uint8 ``[C, size, size]``,
    y an int64 scalar (-1 when ``labelled`` is False), decoded from the file or read from the cache.

    Picklable for DataLoader workers: it holds file names or cache rows (``items``), never an open
    file; the cache is memory-mapped on first use in each process.
    """

    def __init__(
        self, items: list[str] | np.ndarray, labels: torch.Tensor | None, size: int, channels: int, folder: str, cache: Path | None,
    ) -> None:
        self.items, self.labels = items, labels
        self.size, self.channels, self.folder, self.cache = size, channels, folder, cache
        self.labelled = labels is not None
        self._rows: np.ndarray | None = None  # the memory-mapped cache, per process

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            x = _read_image(Path(self.items[i]), self.size, self.channels, self.folder)
        else:
            if self._rows is None:
                self._rows = np.load(self.cache, mmap_mode="r", allow_pickle=False)
            x = self._rows[self.items[i]]
        y = self.labels[i] if self.labels is not None else torch.tensor(-1)
        return torch.from_numpy(np.array(x, order="C")), y  # a copy: writable, contiguous, off the map

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap is a full in-memory copy; each worker maps the file itself instead.
        return {**self.__dict__, "_rows": None}


def _read_image(file: Path, size: int, channels: int, folder: str) -> np.ndarray:
    """Decode one file to uint8 ``[channels, size, size]`` (``folder``: dataset.path, for the message)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened).convert("L" if channels == 1 else "RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise GentrainError(
            f"cannot read image {file} ({_one_line(e, 120)}); fix or delete it, or move it out of "
            f"dataset.path={folder!r}"
        ) from e
    image = _resize_centre_crop(image, size)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _resize_centre_crop(image: Any, size: int) -> Any:
    """Resize a PIL image so its shorter side is ``size``, then crop the centre ``size x size``."""
    from PIL import Image

    width, height = image.size
    if min(width, height) != size:
        scale = size / min(width, height)
        # max() guards against rounding the shorter side below size.
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        width, height = new
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))
