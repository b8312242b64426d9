"""Pieces the tasks share: the device, the evaluator, and models rebuilt from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gentrain.build import build, build_model
from gentrain.config import DeviceSettings, EvalSettings, typed
from gentrain.data.base import Dataset
from gentrain.engine.checkpoint import find_checkpoint, load_checkpoint
from gentrain.engine.ema import EMA
from gentrain.engine import distributed
from gentrain.engine.device import check_precision, configure_backends, resolve_device, set_threads
from gentrain.errors import GentrainError
from gentrain.metrics.evaluate import Evaluator, FeatureExtractor, ReferenceCache
from gentrain.metrics.fidelity import headline_direction, parse_protocol
from gentrain.models.base import GenerativeModel, apply_sampler


def setup_device(cfg: DictConfig, ds: DeviceSettings | None = None) -> tuple[torch.device, DeviceSettings]:
    """The run's device (under torchrun: this rank's), threads and backends; ``ds``: the settings already checked."""
    if ds is None:
        ds = typed(cfg.device, DeviceSettings, "device")
        check_precision(ds.precision)
    set_threads(ds.threads)
    device = distributed.init(distributed.from_env(), resolve_device(ds.type))  # under torchrun: this rank's device
    configure_backends(device, ds.tf32)
    return device, ds


def inception_extractor(es: EvalSettings, device: torch.device) -> FeatureExtractor:
    """The standard FID Inception network (imported on first use: training without metrics never loads it)."""
    from gentrain.metrics.inception import InceptionFeatures, resolve_weights

    return InceptionFeatures(resolve_weights(es.inception_weights), device)


def make_evaluator(es: EvalSettings, dataset: Dataset, device: torch.device) -> Evaluator:
    options = {"kid_subsets": es.kid_subsets, "kid_subset_size": es.kid_subset_size}
    return Evaluator(
        es.metrics, dataset, es.split, lambda: inception_extractor(es, device), ReferenceCache(Path(es.cache_dir)), device,
        batch_size=es.batch_size, seed=es.seed, options=options,
    )


def best_key(es: EvalSettings, split: str) -> tuple[str, bool]:
    """The result key that picks best.pt among evaluations on ``split`` (default: the first metric's headline) and whether higher is better.

    ``eval.best`` names a headline as listed (``fid10k``, ``pr10k_f1``); the key is that protocol on
    ``split`` (``fid10k_val``), unless its name fixes another split.
    """
    name = es.best or parse_protocol(es.metrics[0]).headline
    protocol, higher = headline_direction(name)
    listed = [parse_protocol(m).name for m in es.metrics]
    if protocol.name not in listed:
        raise GentrainError(f"eval.best={name} but {protocol.name} is not in eval.metrics={es.metrics}; add it or choose another eval.best")
    suffix = name[len(protocol.name) :]
    return protocol.on(split).name + suffix, higher


def model_options(cfg: DictConfig) -> dict[str, Any]:
    """``model_options`` of task=eval/sample: ``model.*`` keys the checkpoint's model is rebuilt with ({iwae_k: 1000})."""
    value = OmegaConf.select(cfg, "model_options", default=None)
    if value is None:
        return {}
    if not isinstance(value, DictConfig):
        raise GentrainError(f"model_options must be a mapping of model keys, got {value!r}; e.g. 'model_options={{iwae_k: 1000}}'")
    return dict(OmegaConf.to_container(value, resolve=True))  # type: ignore[arg-type]


def required(cfg: DictConfig, key: str, example: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if value is None or OmegaConf.is_missing(cfg, key):
        raise GentrainError(f"{key} is required for task={cfg_task_name(cfg)}; e.g. {example}")
    return value


def cfg_task_name(cfg: DictConfig) -> str:
    target = str(OmegaConf.select(cfg, "task._target_", default="?"))
    return {"evaluate": "eval"}.get(target.rsplit(".", 1)[-1], target.rsplit(".", 1)[-1])


def load_trained(
    spec: str, device: torch.device, use_ema: bool = True, sampler: Any = None, model_options: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any], GenerativeModel, EMA | None, Dataset]:
    """Checkpoint path, its contents, its model (trained weights, on ``device``, eval mode), its weight average and its dataset.

    The average is None without ``use_ema`` or when the run kept none; sample and evaluate inside
    ``gentrain.sampling.sampling_state(model, average)``, as training does. The model samples with the
    run's own ``sampler`` choice unless ``sampler`` (the config group, e.g. ``sampler=ddim``) replaces it, and with the
    run's ``model.*`` keys except those ``model_options`` replaces (a family's evaluation knobs, e.g. the VAE's ``iwae_k``).
    """
    path = find_checkpoint(spec)
    ckpt = load_checkpoint(path)
    config = ckpt.get("config")
    if not isinstance(config, dict) or "model" not in config or "dataset" not in config:
        raise GentrainError(f"{path} holds no run config; it was not written by gentrain's trainer")
    model_config = dict(config["model"])
    for key, value in (model_options or {}).items():
        if key not in model_config:
            raise GentrainError(
                f"model_options.{key}: this checkpoint's model has no key {key!r}; its keys: {', '.join(sorted(map(str, model_config)))}"
            )
        model_config[key] = value
    model = build_model(OmegaConf.create({"model": model_config, "sampler": config.get("sampler")})).to(device)
    apply_sampler(model, sampler, str((ckpt.get("choices") or {}).get("model") or "?"))  # on top of the run's own (a guidance left null keeps the run's)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise GentrainError(f"{path}: the weights do not fit the model of its own config ({str(e).splitlines()[0]})") from None
    model.eval()  # a script that samples without sampling_state still gets running statistics
    average = EMA.from_checkpoint(model, ckpt.get("ema")) if use_ema else None
    dataset = build(OmegaConf.create(config["dataset"]), "dataset")
    return path, ckpt, model, average, dataset
