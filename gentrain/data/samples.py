"""Images given as files, for ``task=eval samples=... reference=...``: a folder of image files, or an array in an .npz/.npy.

Both read as uint8 ``[N, C, H, W]`` with C = 1 (grayscale) or 3 (RGB), in a fixed order; evaluation
uses the first N of them for a protocol that asks N. The rules (each refusal is one line naming
the file and the fix):

Folder (:class:`FolderImages`): every file under it, subfolders included (as ``dataset=image_folder``
reads a folder), sorted by relative path as text (``img10.png`` before ``img2.png``: zero-pad the
names when the order matters); names starting with "." are skipped. Every other file must be an
image PIL reads (PNG, JPEG, BMP, WebP, TIFF, ...): any other file is refused, by name. All images
must have one size and one kind: grayscale (PIL modes 1, L, LA: 1 channel) or colour (RGB, RGBA,
P, CMYK, ...: converted to RGB, alpha dropped: 3 channels); a folder mixing them, or sizes, is
refused, naming two files that differ. 16-bit and float images are refused (8-bit only). Pixels
are read as stored: no resize, no crop, no EXIF rotation. Files are opened once for their headers
(size, mode) and decoded batch by batch as evaluation consumes them.

Array (:class:`ArrayImages`): an .npz's array ``x`` (what ``task=sample`` writes), else ``arr_0``
(``numpy.savez(path, images)`` and other tools), or a .npy's array. Layouts: ``[N, C, H, W]`` or
``[N, H, W, C]`` with C = 1 or 3 (a shape where both positions could be the channels, such as
``[N, 3, 8, 3]``, is ambiguous and refused), or ``[N, H, W]`` (grayscale). Values: uint8 as they
are; other integers when they lie in 0..255; floats when they lie in [0, 1] (scaled by 255) or,
with a negative value, in [-1, 1] (model space: ``(x + 1) * 127.5``), rounded; anything else
(floats in 0..255, NaN, booleans) is refused: write uint8.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gentrain.errors import GentrainError
from gentrain.shared import to_uint8

#: Keys of an .npz that hold the images, in the order they are looked for.
ARRAY_KEYS = ("x", "arr_0")

#: PIL modes read as grayscale (1 channel); other 8-bit modes are converted to RGB (3 channels).
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La"})

#: PIL modes of more than 8 bits per sample: refused rather than clipped.
WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "BGR;15", "BGR;16", "BGR;24"})


def _safe(name: str) -> str:
    """A name fit for a cache file name."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "images"


class ImageFiles:
    """Images read from ``path``: ``len`` images of ``shape`` (C, H, W), served as uint8 tensors."""

    path: Path
    name: str  # folder-<dirname>, npz-<stem>: the name of the set in reports and in the reference cache
    shape: tuple[int, int, int]
    kind: str  # "folder" | "npz" | "npy"

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, start: int, size: int) -> Tensor:
        """uint8 ``[size', C, H, W]``: images ``start .. start + size`` (fewer at the end)."""
        raise NotImplementedError

    def first(self, n: int) -> Tensor:
        """The first ``n`` images (all of them when there are fewer), uint8 ``[n', C, H, W]``."""
        return self.batch(0, n)

    def describe(self) -> str:
        c, h, w = self.shape
        return f"{len(self)} images of {c}x{h}x{w}"


class ArrayImages(ImageFiles):
    """The images of an .npz (key ``x`` or ``arr_0``) or a .npy, held in memory."""

    def __init__(self, path: Path, what: str = "samples") -> None:
        self.path = path
        self.kind = "npy" if path.suffix.lower() == ".npy" else "npz"
        self.name = f"{self.kind}-{_safe(path.stem)}"
        self.images = _array_images(path, what)
        self.shape = tuple(int(s) for s in self.images.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, start: int, size: int) -> Tensor:
        return self.images[start : start + size]


class FolderImages(ImageFiles):
    """The image files of a folder (see the module's rules), decoded on demand."""

    def __init__(self, path: Path, what: str = "samples") -> None:
        self.path = path
        self.kind = "folder"
        self.name = f"folder-{_safe(path.name)}"
        self.what = what
        self.files, self.mode, self.shape = _scan_folder(path, what)

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, start: int, size: int) -> Tensor:
        files = self.files[start : start + size]
        out = np.empty((len(files), *self.shape), dtype=np.uint8)
        for i, file in enumerate(files):
            out[i] = self._decode(file)
        return torch.from_numpy(out)

    def _decode(self, file: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert(self.mode), dtype=np.uint8)
        except Exception as e:  # a file whose header reads but whose pixels do not (truncated, corrupt)
            raise GentrainError(f"cannot decode image {file} ({_first_line(e)}); fix or delete it, or move it out of {self.what}={str(self.path)!r}") from None
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        if array.shape != self.shape:  # a header that lied about the size
            raise GentrainError(f"image {file} decodes to {_size(array.shape)} but its header says {_size(self.shape)}; fix or delete it")
        return array


def open_images(spec: object, what: str = "samples") -> ImageFiles:
    """The images at ``spec`` (a folder, an .npz or a .npy); ``what`` (samples, reference) names the option in messages."""
    path = Path(str(spec)).expanduser()
    example = f"{what}=<folder of images | .npz file>"
    if not path.exists():
        raise GentrainError(f"{what}={str(spec)!r} does not exist; pass {example}")
    path = path.resolve()
    if path.is_dir():
        return FolderImages(path, what)
    if path.suffix.lower() in (".npz", ".npy"):
        return ArrayImages(path, what)
    raise GentrainError(f"{what}={str(spec)!r} is a file but not an .npz or .npy; pass {example} (a single image is not a sample set)")


# ------------------------------------------------------------------------------------------ folders


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _scan_folder(root: Path, what: str) -> tuple[list[Path], str, tuple[int, int, int]]:
    """(sorted image files, the PIL mode to decode them in, (C, H, W)), checked from the headers alone."""
    from PIL import Image

    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise GentrainError(f"{what} folder {root} is empty; put the images there (PNG, JPEG, ...) or pass an .npz")
    first: tuple[str, tuple[int, int], Path] | None = None  # (decode mode, (width, height), file) of the first image
    unreadable: list[tuple[Path, str]] = []
    for file in files:
        try:
            with Image.open(file) as image:
                mode, size = image.mode, image.size
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError...
            unreadable.append((file, _first_line(e, 80)))
            continue
        if mode in WIDE_MODES:
            raise GentrainError(f"{file} is a {mode} image (more than 8 bits per sample); {what}= reads 8-bit images: convert it to 8-bit")
        decode = "L" if mode in GRAYSCALE_MODES else "RGB"
        if first is None:
            first = (decode, size, file)
            continue
        one, other = first[2].relative_to(root), file.relative_to(root)
        if size != first[1]:
            raise GentrainError(
                f"{what} folder {root} has images of different sizes: {one} is {first[1][0]}x{first[1][1]} and {other} is "
                f"{size[0]}x{size[1]} (width x height); give it images of one size"
            )
        if decode != first[0]:
            raise GentrainError(
                f"{what} folder {root} mixes grayscale and colour images: {one} is {_kind(first[0])} and {other} is "
                f"{_kind(decode)} (PIL mode {mode}); convert them to one kind"
            )
    if first is None:
        file, reason = unreadable[0]
        raise GentrainError(f"{what} folder {root} holds no images: none of its {len(files)} files is one PIL reads (e.g. {file.name}: {reason})")
    if unreadable:
        file, reason = unreadable[0]
        others = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise GentrainError(f"{file} is not an image PIL reads ({reason}){others}; move it out of {what} folder {root}")
    mode, (width, height), _ = first
    return files, mode, (1 if mode == "L" else 3, height, width)


def _kind(mode: str) -> str:
    return "grayscale" if mode == "L" else "colour"


# ------------------------------------------------------------------------------------------- arrays


def _array_images(path: Path, what: str) -> Tensor:
    """uint8 ``[N, C, H, W]`` from the array of an .npz or .npy (see the module's rules)."""
    fix = "write it with numpy.savez(path, x=images)"
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] != b"PK\x03\x04" and head != b"\x93NUMPY":  # neither a zip (.npz) nor an .npy header
        raise GentrainError(f"{what}={str(path)!r} is not a NumPy .npz or .npy file (it starts with {head!r}); {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:  # numpy's advice to unpickle "if you trust the file" is not ours to give
        if "pickle" not in str(e):
            raise GentrainError(f"cannot read {what}={str(path)!r} as {path.suffix} ({_first_line(e)}); {fix}") from None
        raise GentrainError(f"{what}={str(path)!r} holds an object array, which needs unpickling (gentrain never unpickles); {fix}") from None
    except Exception as e:  # a truncated or damaged file
        raise GentrainError(f"cannot read {what}={str(path)!r} as {path.suffix} ({_first_line(e)}); write it with numpy.savez(path, x=images)") from None
    if isinstance(loaded, np.ndarray):
        array, label = loaded, "its array"
    else:
        with loaded:
            key = next((k for k in ARRAY_KEYS if k in loaded.files), None)
            if key is None:
                found = ", ".join(loaded.files) or "none"
                raise GentrainError(f"{path} holds no image array: expected the key x (or arr_0), found: {found}; write it with numpy.savez(path, x=images)")
            try:
                array = loaded[key]
            except Exception as e:
                raise GentrainError(f"cannot read the array {key} of {path} ({_first_line(e)}); write uint8 images with numpy.savez(path, x=images)") from None
            label = f"its array {key}"
    where = f"{path.name}: {label}"
    shape = list(array.shape)
    layouts = "[N, C, H, W] or [N, H, W, C] with C = 1 or 3, or [N, H, W]"
    if array.ndim == 2:
        raise GentrainError(f"{where} has shape {shape}: vectors or points, not images; {what}= takes images ({layouts})")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first and last:
            raise GentrainError(f"{where} has shape {shape}, ambiguous: channels first or last? Write it as [N, C, H, W] with H, W not 1 or 3, or as uint8 [N, H, W] for grayscale")
        if last:
            array = array.transpose(0, 3, 1, 2)
        elif not first:
            raise GentrainError(f"{where} has shape {shape}: neither [N, C, H, W] nor [N, H, W, C] with C = 1 or 3 channels; convert to {layouts}")
    else:
        raise GentrainError(f"{where} has shape {shape}, not images; {what}= takes {layouts}")
    if array.shape[0] == 0:
        raise GentrainError(f"{where} holds no images (shape {shape}); write at least one")
    return torch.from_numpy(np.ascontiguousarray(_to_uint8(array, where)))


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    fix = "write uint8 images (0..255), or floats in [0, 1] or [-1, 1]"
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise GentrainError(f"{where} is {array.dtype} with values {lo}..{hi}, outside 0..255; {fix}")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise GentrainError(f"{where} holds NaN or infinite values; {fix}")
        lo, hi = float(array.min()), float(array.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
        if lo >= -1.0 and hi <= 1.0:  # model space: the conversion task=sample applies to a model's samples
            return to_uint8(torch.from_numpy(array)).numpy()
        raise GentrainError(f"{where} is {array.dtype} with values in [{lo:.4g}, {hi:.4g}]: floats must lie in [0, 1] or [-1, 1]; {fix}")
    raise GentrainError(f"{where} has dtype {array.dtype}, not image values; {fix}")


__all__ = ["ARRAY_KEYS", "ArrayImages", "FolderImages", "ImageFiles", "open_images"]
