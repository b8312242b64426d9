"""Checkpoints: written atomically, loaded safely (``weights_only``), enough state to resume exactly."""

from __future__ import annotations

import pickle
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gentrain.errors import GentrainError

FORMAT = "gentrain-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (global torch CPU/CUDA, Python, NumPy), as tensors and plain types."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


@contextmanager
def rng_kept() -> Iterator[None]:
    """Every RNG of :func:`rng_state` as it was before the block: for third-party code (a logger's run names)
    that draws from the global generators, which would shift the run's random numbers by what it happened to do."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def find_checkpoint(spec: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoints/last.pt``."""
    path = Path(spec).expanduser()
    for candidate in (path, path / "checkpoints" / "last.pt", path / "last.pt"):
        if candidate.is_file():
            return candidate
    raise GentrainError(f"no checkpoint at {str(path)!r}; give a .pt file or a run directory that has checkpoints/last.pt")


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load and check a gentrain checkpoint; anything else is refused with one line."""
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickles before failing on them; the one line below says it all
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise GentrainError(f"checkpoint {str(path)!r} does not exist; give the path of a checkpoints/*.pt file") from None
    except pickle.UnpicklingError:  # junk bytes, or a pickle with objects weights-only loading refuses
        raise GentrainError(f"{str(path)!r} is not a readable gentrain checkpoint (damaged, or not written by torch.save, or holding objects gentrain never saves); give a checkpoints/*.pt file written by gentrain") from None
    except Exception as e:  # other errors come in many types; all mean "not ours or damaged"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GentrainError(f"{str(path)!r} is not a readable gentrain checkpoint ({first}); give a checkpoints/*.pt file written by gentrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GentrainError(f"{str(path)!r} is not a gentrain checkpoint; give a checkpoints/*.pt file written by gentrain")
    if ckpt.get("version", 0) > VERSION:
        raise GentrainError(f"{str(path)!r} was written by a newer gentrain (format {ckpt['version']}); upgrade gentrain to read it")
    return ckpt
