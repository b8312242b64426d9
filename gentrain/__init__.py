"""gentrain: config-driven training and evaluation of deep generative models.

The Python API (:mod:`gentrain.api`) loads on first use, so ``import gentrain`` stays light:
``gentrain.train(overrides)``, ``gentrain.load(path)``, ``gentrain.evaluate(source, metrics)``.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gentrain.api import Loaded, Result, evaluate, load, train

_API = ("Loaded", "Result", "evaluate", "load", "train")
__all__ = ["Loaded", "Result", "__version__", "evaluate", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from gentrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'gentrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
