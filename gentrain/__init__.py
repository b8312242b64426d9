"""gentrain: config-driven training and evaluation of deep generative models.

The Python API (:mod:`gentrain.api`) loads on first use, so ``import gentrain`` stays light:
``gentrain.train(overrides)``, ``gentrain.load(path)``, ``gentrain.evaluate(source, metrics)``.
"""

import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# gentrain's presets for Hydra's launcher plugins (configs/hydra/launcher/joblib.yaml ...) carry the plugins' own option
# names, so Hydra merges them onto the plugins' schemas and warns that this matching is deprecated (it works throughout
# hydra-core 1.3, which gentrain pins). Set here, on the package: a launcher's worker process imports gentrain (the
# task function's references) before it composes the job's config, but not gentrain.config.
warnings.filterwarnings("ignore", message=r"(?s)\s*'hydra/launcher/\w+' is validated against ConfigStore schema")

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
