"""The one place that decides the device and the numeric precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gentrain.errors import GentrainError, check_choice

PRECISIONS = ("fp32", "bf16")


def resolve_device(kind: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as asked."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(kind)
    except RuntimeError:
        raise GentrainError(f"device.type={kind!r} is not a device; use device=auto, device=cpu or device=cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GentrainError("device=cuda but this machine has no usable CUDA GPU; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GentrainError(
                f"device.type={kind!r} but only {torch.cuda.device_count()} CUDA device(s) exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise GentrainError(f"device.type={kind!r} is not supported; use device=auto, device=cpu or device=cuda")
    return device


def configure_backends(device: torch.device, tf32: bool) -> None:
    """TF32 matrix products on Ampere and newer: ~fp32 quality at several times the speed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def check_precision(precision: str) -> str:
    return check_choice(precision, PRECISIONS, "device.precision", "bf16")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when asked (no loss scaling needed: bf16 has fp32's exponent range)."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo on Linux, else the architecture), for reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
