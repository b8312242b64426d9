"""``trainer.resume``: continue a run from the config stored in its checkpoint, not from the command line's.

``gentrain trainer.resume=<run dir>`` needs no other override: the checkpoint holds the run's
resolved config and its config-group choices. Overrides given with it apply on top where they
cannot change what the checkpoint's weights and optimizer state mean:

- safe: ``trainer.max_steps``, ``trainer.ckpt_every``, ``trainer.resume``, ``device`` (the option
  and its keys), ``logger``, ``eval``, and optimizer hyperparameters
  (``model.optimizer.<phase>.<key>`` other than ``_target_``; they apply after the optimizer
  state is loaded, and the report says which changed);
- everything else (architecture, dataset, objective, batch size, seeds ...) must equal the stored
  value: repeating an original override is fine, changing it is refused with one line before
  anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gentrain.config import CONFIG_DIR
from gentrain.errors import GentrainError

SAFE_GROUPS = ("device", "logger", "eval")
SAFE_KEYS = ("trainer.max_steps", "trainer.ckpt_every", "trainer.resume")
_OPTIMIZER_HYPERPARAMETER = re.compile(r"^model\.optimizer\.[^.]+\.(?!_target_$|_partial_$)[^.]+$")
_ABSENT = object()


def is_safe(key: str) -> bool:
    """Whether an override of ``key`` may differ from the stored config on resume."""
    return (
        key in SAFE_KEYS
        or key.split(".", 1)[0] in SAFE_GROUPS
        or bool(_OPTIMIZER_HYPERPARAMETER.match(key))
    )


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _select(cfg: DictConfig, key: str) -> Any:
    return _plain(OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False))


def resume_config(composed: DictConfig, overrides: list[str], ckpt: dict[str, Any], source: Path) -> DictConfig:
    """The config to continue with: the checkpoint's, plus the safe ``overrides`` (values taken from ``composed``).

    ``overrides`` are the command line's (Hydra's ``overrides.task``); ``composed`` is the config
    Hydra composed from them. Raises a one-line GentrainError for an override that would change the run.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    stored = OmegaConf.create(ckpt["config"])
    choices: dict[str, Any] = ckpt.get("choices") or {}
    allowed = "on resume only trainer.max_steps, trainer.ckpt_every, device, logger, eval and optimizer hyperparameters may change"
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if key.startswith("hydra"):
            continue
        if (CONFIG_DIR / key).is_dir():  # a group option, e.g. model=gan_mlp or eval=standard
            if key in SAFE_GROUPS:
                stored[key] = OmegaConf.create(_select(composed, key))
                continue
            given = o.value()
            same = str(choices[key]) == str(given) if key in choices else _select(composed, key) == _select(stored, key)
            if not same:
                raise GentrainError(
                    f"{o.input_line} changes the run being resumed (its checkpoint {source} has {key}={choices.get(key, '?')}); "
                    f"drop it (resume continues the checkpoint's config) or start a new run; {allowed}"
                )
            continue
        new, old = _select(composed, key), _select(stored, key)
        if is_safe(key):
            if o.is_delete() or new is _ABSENT:
                if old is not _ABSENT:
                    parent, _, leaf = key.rpartition(".")
                    node = OmegaConf.select(stored, parent) if parent else stored
                    del node[leaf]
            else:
                OmegaConf.update(stored, key, new, merge=False, force_add=True)
            continue
        if new != old:
            shown = "absent" if old is _ABSENT else repr(old)
            raise GentrainError(
                f"{o.input_line} changes the run being resumed ({key} is {shown} in its checkpoint {source}); "
                f"drop it (resume continues the checkpoint's config) or start a new run; {allowed}"
            )
    return stored


__all__ = ["SAFE_GROUPS", "SAFE_KEYS", "is_safe", "resume_config"]
