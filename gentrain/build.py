"""Build the parts of a run from the composed config: data, model, objective, optimizers."""

from __future__ import annotations

import importlib
import random
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gentrain.config import CONFIG_DIR, compose_app_config
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel, apply_sampler
from gentrain.objectives.base import Objective


def compose(overrides: list[str]) -> DictConfig:
    """The config the ``gentrain`` CLI would compose for ``overrides``, for scripts and tests.

    HydraConfig is set (so group choices such as ``model=dcgan`` are known) and the ``hydra`` key removed.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = compose_app_config(overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (``model=dcgan`` -> "dcgan"), for messages and reports."""
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get(group)
        if name:
            return str(name)
    except ValueError:  # not inside a Hydra app (e.g. the compose API in tests)
        pass
    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    return str(OmegaConf.select(cfg, f"{group}.name", default=None) or (target or "?").rsplit(".", 1)[-1])


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with the user's mistakes turned into one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, GentrainError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, GentrainError):
            raise cause from None
        detail = str(cause or e).strip().splitlines()[0]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if isinstance(cause, ImportError) or (cause is None and "Error locating target" in str(e)):
            raise GentrainError(
                f"could not build {what}: {what}._target_={target} does not import ({detail}); install its package or put it on PYTHONPATH"
            ) from None
        raise GentrainError(f"could not build {what}: {detail}; check the {what}.* overrides") from None
    except OmegaConfBaseException as e:
        raise GentrainError(f"{what} config does not resolve: {str(e).strip().splitlines()[0]}; check the {what}.* overrides") from None


#: ``model.*`` keys the engine reads: optimizers and schedulers per phase, synchronised batch norm under torchrun.
ENGINE_KEYS = ("optimizer", "scheduler", "sync_batchnorm")


def build_model(cfg: DictConfig) -> GenerativeModel:
    # resolve against the whole config first (${dataset.shape}), then drop the optimizer specs
    net = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    for engine_key in ENGINE_KEYS:  # read by the engine, not the model's constructor
        net.pop(engine_key, None)
    model = build(net, "model")
    if not isinstance(model, GenerativeModel):
        raise GentrainError(f"model={choice(cfg, 'model')} builds a {type(model).__name__}, not a gentrain model; check model._target_")
    apply_sampler(model, sampler_choice(cfg), choice(cfg, "model"))  # the sampler group; models without SamplerOptions refuse one
    return model


def sampler_choice(cfg: DictConfig) -> Any:
    """The ``sampler`` group's choice (``sampler=ddim sampler.steps=50``) as a dict; None when none is chosen."""
    chosen = OmegaConf.select(cfg, "sampler", default=None)
    return None if chosen is None else OmegaConf.to_container(chosen, resolve=True)


def target_class(target: str) -> type | None:
    """The class a ``_target_`` names, or None where it does not import."""
    module, _, name = target.rpartition(".")
    if not module:
        return None
    try:
        found = vars(importlib.import_module(module)).get(name)
    except (ImportError, ValueError):
        return None
    return found if isinstance(found, type) else None


def config_options(group: str) -> list[tuple[str, DictConfig]]:
    """(name, YAML) of every option of a config group: gentrain's ``configs/<group>/*.yaml`` and those of the
    directories a user adds (``--config-dir``, ``hydra.searchpath``: the ``GENTRAIN_CONFIG_PATH`` directories)."""
    from gentrain.config import user_config_dirs

    found: dict[str, DictConfig] = {}
    for root in [CONFIG_DIR, *user_config_dirs()]:
        for path in sorted((root / group).glob("*.yaml")):
            try:
                found.setdefault(path.stem, OmegaConf.load(path))
            except Exception:  # a broken YAML of someone else's is not this message's business
                continue
    return sorted(found.items())


def models_with(capability: type) -> list[str]:
    """The ``model=`` options whose class has ``capability`` (read from the YAMLs, for messages; called on error paths).

    A model YAML whose class gains the capability with ``num_classes`` (``model=ddpm model.num_classes=10``) is named
    with that key.
    """
    names = []
    for name, node in config_options("model"):
        cls = target_class(str(node.get("_target_", "")))
        if cls is None:
            continue
        if issubclass(cls, capability):
            names.append(name)
        elif "num_classes" in node and any(issubclass(sub, capability) for sub in subclasses(cls)):
            names.append(f"{name} with model.num_classes")
    return names


def subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls``, at any depth."""
    out = list(cls.__subclasses__())
    for sub in list(out):
        out.extend(subclasses(sub))
    return out


def fitting_objectives(model: GenerativeModel) -> list[str]:
    """The names of the ``objective=`` options whose objective accepts ``model`` (for the refusal's message)."""
    return fitting_objectives_of(type(model))


def fitting_objectives_of(model_class: type) -> list[str]:
    """The names of the ``objective=`` options whose objective's family ``model_class`` is."""
    names = []
    for name, node in config_options("objective"):
        cls = target_class(str(node.get("_target_", "")))
        if cls is not None and issubclass(cls, Objective) and issubclass(model_class, cls.family):
            names.append(name)
    return names


def build_objective(cfg: DictConfig, model: GenerativeModel) -> Objective:
    objective = build(cfg.objective, "objective")
    objective.check_model(model, choice(cfg, "objective"), choice(cfg, "model"), lambda: fitting_objectives(model))
    groups = model.param_groups()
    for phase in objective.phases:
        if phase.name not in groups:
            raise GentrainError(
                f"objective={choice(cfg, 'objective')} trains phase {phase.name!r} but model={choice(cfg, 'model')} "
                f"has parameter groups {sorted(groups)}; pick an objective that fits the model"
            )
    return objective


def build_optimizers(cfg: DictConfig, model: GenerativeModel, objective: Objective, fused: bool = False) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per phase, from ``model.optimizer.<phase>`` (partial ``torch.optim`` configs).

    ``fused`` (on CUDA): optimizers that have a fused kernel (Adam, AdamW, SGD) use it unless the
    config sets ``fused`` itself; one kernel for every parameter instead of several per tensor,
    and no host sync for loss scaling.
    """
    specs = OmegaConf.select(cfg, "model.optimizer", default=None)
    groups = model.param_groups()
    optimizers = {}
    for phase in objective.phases:
        if phase.name in optimizers:
            continue
        spec = None if specs is None else specs.get(phase.name)
        if spec is None:
            raise GentrainError(f"model.optimizer has no entry for phase {phase.name!r}; add model.optimizer.{phase.name} (e.g. Adam)")
        factory = build(spec, f"model.optimizer.{phase.name}")
        extra = {"fused": True} if fused and "fused" not in spec and _has_fused(factory) else {}
        try:
            optimizers[phase.name] = factory(groups[phase.name].parameters(), **extra)
        except (TypeError, ValueError) as e:
            raise GentrainError(f"model.optimizer.{phase.name}: {str(e).splitlines()[0]}; fix the optimizer's keys") from None
    return optimizers


def _has_fused(factory: Any) -> bool:
    import inspect

    cls = getattr(factory, "func", factory)
    try:
        return "fused" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def build_schedulers(cfg: DictConfig, optimizers: dict[str, torch.optim.Optimizer], warmup_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """A learning-rate schedule per phase: ``model.scheduler.<phase>`` (partial ``torch.optim.lr_scheduler`` configs), stepped once per step.

    ``trainer.warmup_steps=W`` puts a linear warm-up before it (step ``t`` runs at
    ``lr * min(1, (t + 1) / W)``), then the phase's scheduler (if any) from step ``W`` on.
    """
    specs = OmegaConf.select(cfg, "model.scheduler", default=None) or {}
    unknown = sorted(set(specs) - set(optimizers))
    if unknown:
        raise GentrainError(f"model.scheduler names phase(s) {unknown}, and this objective's phases are {sorted(optimizers)}; key schedulers by phase")
    schedulers = {}
    for phase, opt in optimizers.items():
        spec = specs.get(phase)
        main = None
        if spec is not None:
            try:
                main = build(spec, f"model.scheduler.{phase}")(opt)
            except (TypeError, ValueError) as e:
                raise GentrainError(f"model.scheduler.{phase}: {str(e).splitlines()[0]}; fix the scheduler's keys") from None
        if warmup_steps > 1:
            warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda t, w=warmup_steps: min(1.0, (t + 1) / w))
            main = warm if main is None else torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup_steps])
        if main is not None:
            schedulers[phase] = main
    return schedulers
