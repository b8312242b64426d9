"""The one place that decides the device and the numeric precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gentrain.errors import GentrainError, check_choice

PRECISIONS = ("fp32", "bf16", "fp16")


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


#: cuBLAS needs a fixed workspace for reproducible matrix products (CUDA >= 10.2); a value the user set is kept.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """``trainer.deterministic``: deterministic kernels for the duration of the block, then the process's settings again.

    On: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic with its autotuner off
    (``benchmark`` picks kernels by timing, so two runs can differ), and ``CUBLAS_WORKSPACE_CONFIG``
    set to ``:4096:8`` unless already set. An op with no deterministic kernel on this device is refused
    with one line. The variable takes effect only if no CUDA matrix product ran before in the process
    (the command line's runs start here). Off: nothing changes.
    """
    if not on:
        yield
        return
    import os

    saved = (
        torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as e:
        if "deterministic" not in str(e):
            raise
        first = str(e).strip().splitlines()[0]
        raise GentrainError(f"trainer.deterministic=true: {first}; set trainer.deterministic=false for this model and device") from None
    finally:
        enabled, warn_only, cudnn_deterministic, benchmark, workspace = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def check_precision(precision: str) -> str:
    return check_choice(precision, PRECISIONS, "device.precision", "bf16")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 or fp16 autocast when asked; fp32 otherwise.

    bf16 needs no loss scaling (it has fp32's exponent range); fp16 does, and the engine gives
    each phase a ``GradScaler`` for it.
    """
    if precision not in ("bf16", "fp16"):  # fp32: no autocast context at all (entering a disabled one costs host time per step)
        yield
        return
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    # cache_enabled=False: a CUDA graph capture must not keep autocast's weight casts across steps
    with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())):
        yield


def set_threads(threads: int | None) -> None:
    """``device.threads``: torch's intra-op CPU threads (None leaves torch's default)."""
    if threads is not None:
        if threads < 1:
            raise GentrainError(f"device.threads must be >= 1 or null, got {threads}; e.g. device.threads=4")
        torch.set_num_threads(threads)


def use_channels_last(setting: bool | str, device: torch.device, model: torch.nn.Module) -> bool:
    """``device.channels_last``: auto takes it for convolutional networks on CUDA (tensor cores read NHWC without transposes)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise GentrainError(f"device.channels_last must be auto, true or false, got {setting!r}")
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for m in model.modules())


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
