"""Small helpers the engine, the metrics and the tasks all use; this module imports neither of them.

- :func:`atomic_save`: checkpoints and caches are written to a temporary file, fsynced, then renamed.
- :func:`to_model_space` / :func:`to_uint8`: stored uint8 images (0..255) <-> model space [-1, 1].
- :func:`describe_os_error`: "no space left on the device" and the like, for one-line messages.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gentrain.errors import GentrainError


def to_model_space(x: Tensor) -> Tensor:
    """uint8 images (0..255) -> float32 in [-1, 1]; float data unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x.float()


def to_uint8(x: Tensor) -> Tensor:
    """Model-space images in [-1, 1] -> uint8 0..255 (the inverse of :func:`to_model_space`)."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def describe_os_error(e: OSError) -> str:
    """``"no space left on the device"`` and the like, for one-line messages."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
    }
    return reasons.get(e.errno or 0, e.strerror or type(e).__name__)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: a crash never leaves a half-written file.

    A failed write (full disk, read-only or vanished directory) removes the temporary file, leaves
    the previous ``path`` as it was, and raises one line that names the path and what is needed.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as RuntimeError ("unexpected pos ...")
        raise GentrainError(f"could not write {path} ({_write_failure(e, path)}); {_kept(path)}free space or point hydra.run.dir at another disk") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_failure(e: BaseException, path: Path) -> str:
    if isinstance(e, OSError):
        return describe_os_error(e)
    try:  # torch's own message is an internal assertion: say what it means
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return str(e).strip().splitlines()[0]
    return f"the write stopped short with {free / 2**20:.1f} MiB free on the device" if free < 2**30 else str(e).strip().splitlines()[0]


def _kept(path: Path) -> str:
    return f"the previous {path.name} is intact; " if path.is_file() else ""


__all__ = ["atomic_save", "describe_os_error", "to_model_space", "to_uint8"]
