"""The number a run hands back to Hydra, for sweepers that optimise (Optuna): ``optimize=<key>``.

``optimize`` names one number of the run's report:

- an evaluation result such as ``fid10k_val``, ``pr10k_val_f1``, ``nll2k_val_bpd``, ``modes2500_fair``
  (``eval/`` in front is allowed, as TensorBoard shows it); its direction is the metric's own;
- a final training value such as ``train/main/loss`` or ``train/G/loss`` (the interval mean logged at the
  last step); lower is better.

``optimize=null`` (the default) takes the run's headline: the first metric of ``eval.metrics`` (or
``eval.best``) on the **validation** split, ``_bpd`` for likelihoods, and with no metrics the loss
of the objective's last phase. Hyperparameters are model selection, so a test-split key is refused:
the test split stays for the final report. The validation numbers come from the last evaluation,
which then runs on the validation split too (on the same samples as the test split's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gentrain.engine.hooks import SELECTION_SPLIT  # hyperparameters are judged where checkpoints are selected
from gentrain.errors import GentrainError


@dataclass(frozen=True)
class Target:
    """What a sweep optimises: a report key and whether higher is better."""

    key: str  # "fid10k_val" (an evaluation result) or "train/main/loss" (a final training value)
    higher_is_better: bool

    @property
    def is_metric(self) -> bool:
        return not self.key.startswith("train/")

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.higher_is_better else "minimize"


def target(cfg: DictConfig) -> Target | None:
    """The target of ``cfg`` (``optimize``, or the headline), checked; None when the run has no evaluation metrics
    and ``optimize`` is unset (the last phase's loss, known only once the objective is built)."""
    from gentrain.metrics.fidelity import headline_direction, parse_key, parse_protocol

    key = OmegaConf.select(cfg, "optimize", default=None)
    metrics = list(OmegaConf.select(cfg, "eval.metrics", default=None) or [])
    if key is None:
        if not metrics:
            return None
        protocol, suffix = parse_key(str(OmegaConf.select(cfg, "eval.best", default=None) or parse_protocol(str(metrics[0])).headline))
        suffix = "_bpd" if protocol.family.space == "likelihood" and not suffix else suffix
        key = protocol.on(SELECTION_SPLIT).name + suffix
    key = str(key).removeprefix("eval/")
    if key.startswith("train/"):
        return Target(key, False)
    try:
        protocol, _ = parse_key(key)
    except GentrainError as e:
        raise GentrainError(f"optimize={key}: {e}; or a final training value such as optimize=train/main/loss") from None
    if protocol.split == "test":
        raise GentrainError(
            f"optimize={key} would choose hyperparameters on the test split; use {protocol.on(SELECTION_SPLIT).name}{key[len(protocol.name):]}"
            " (the validation split; the test split stays for the final report)"
        )
    listed = {parse_protocol(str(m)).family.name + str(parse_protocol(str(m)).count) for m in metrics}
    if protocol.family.name + str(protocol.count) not in listed:
        raise GentrainError(f"optimize={key} but eval.metrics={metrics} does not compute it; add {protocol.family.name}{protocol.count} to eval.metrics")
    return Target(key, headline_direction(key)[1])


def sweeping() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def needs_validation(cfg: DictConfig) -> bool:
    """Whether the run's last evaluation must include the validation split: its target is a validation number and
    it is asked for (``optimize`` set, or a job of a sweep). A plain run with the default evaluates as configured."""
    from gentrain.metrics.fidelity import parse_key

    t = target(cfg)
    asked = OmegaConf.select(cfg, "optimize", default=None) is not None or sweeping()
    return asked and t is not None and t.is_metric and parse_key(t.key)[0].split == SELECTION_SPLIT


def value(cfg: DictConfig, report: dict[str, Any] | None) -> float | None:
    """The target's value in ``report`` (what ``task=train`` returns), or None when there is none to give.

    A non-finite value comes back as NaN: Optuna records that trial as failed and goes on.
    """
    if not isinstance(report, dict) or "final" not in report:
        return None
    t = target(cfg)
    final = report.get("final") or {}
    if t is None:  # no metrics: the loss of the objective's last phase (the last such key logged)
        losses = [k for k in final if k.startswith("train/") and k.endswith("/loss")]
        if not losses:
            return None
        t = Target(losses[-1], False)
    source = final if not t.is_metric else (report.get("metrics") or {})
    if t.key not in source:
        if OmegaConf.select(cfg, "optimize", default=None) is None and not sweeping():
            return None  # a plain run whose default headline was not computed (no validation pass): nothing to give
        raise GentrainError(f"optimize={t.key} is not among this run's results ({', '.join(sorted(source)) or 'none'}); choose one of those")
    v = float(source[t.key])
    return v if math.isfinite(v) else float("nan")


def check_sweeper(cfg: DictConfig) -> None:
    """Refuse an Optuna sweep whose direction is the opposite of its target's (it would seek the worst run)."""
    direction = OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)
    if direction is None or not isinstance(direction, str):
        return
    t = target(cfg)
    if t is None:
        t = Target("train/<last phase>/loss", False)
    if str(direction).lower() != t.direction:
        raise GentrainError(
            f"hydra.sweeper.direction={direction} but the sweep optimises {t.key}, where {'higher' if t.higher_is_better else 'lower'} is better; "
            f"set hydra.sweeper.direction={t.direction}"
        )
