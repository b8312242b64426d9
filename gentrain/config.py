"""Typed, validated views of the config groups the engine reads.

Hydra composes plain YAML; these schemas check types and ranges once at start-up and turn every
mistake into one line that names the key and a valid example.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from gentrain.errors import GentrainError

#: The app's config tree, shipped inside the package (the project's top-level ``configs`` links here).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def compose_app_config(overrides: list[str]) -> DictConfig:
    """The config the ``gentrain`` app composes for ``overrides``, ``hydra`` key included.

    Raises Hydra's and OmegaConf's own errors for bad overrides; imports no torch (the CLI checks
    overrides with it before anything heavy loads).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return apply_debug(compose(config_name="config", overrides=overrides, return_hydra_config=True), overrides)


def apply_debug(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """``debug=tiny``: merge each group's ``tiny:`` block (its own small sizes: ``model.tiny.g_width=8``) into the group,
    except the keys ``overrides`` (the command line's) set: what the user typed wins, as everywhere in Hydra.

    The blocks are taken out either way (they are no constructor keys), so this runs once on every composed config
    (the CLI's, the API's, :func:`gentrain.build.compose`'s) before anything reads it; a second call changes nothing.
    """
    from omegaconf import open_dict

    typed_keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides or [] if "=" in o}

    tiny = OmegaConf.select(cfg, "debug.tiny", default=False)
    if not isinstance(tiny, bool):
        raise GentrainError(f"debug.tiny must be true or false, got {tiny!r}; e.g. debug=tiny")
    with open_dict(cfg):
        for key in list(cfg.keys()):
            node = cfg._get_node(key)
            if key == "debug" or not isinstance(node, DictConfig) or "tiny" not in node:
                continue
            block = node.pop("tiny")
            if tiny and block:
                if not isinstance(block, DictConfig):
                    raise GentrainError(f"{key}.tiny must be a mapping of {key} keys (the sizes of debug=tiny), got {block!r}")
                for name in [k for k in block if any(t == f"{key}.{k}" or t.startswith(f"{key}.{k}.") for t in typed_keys)]:
                    block.pop(name)
                node.merge_with(block)
    return cfg


def user_config_dirs() -> list[Path]:
    """The config directories a run adds to gentrain's own (``--config-dir``, ``hydra.searchpath=[file://...]``,
    ``pkg://`` packages), as this Hydra run composed them; [] outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except (ValueError, ImportError):
        return []
    dirs = []
    for source in sources:
        path = str(source.get("path") or "")
        if source.get("schema") == "file":
            dirs.append(Path(path))
        elif source.get("schema") == "pkg":
            import importlib.util

            spec = importlib.util.find_spec(path.replace("/", ".")) if path else None
            if spec is not None and spec.submodule_search_locations:
                dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return [d for d in dirs if d.resolve() != CONFIG_DIR]


@dataclass
class TrainerSettings:
    max_steps: int = 2000  # generator (or main-phase) updates
    batch_size: int = 64
    seed: int = 0
    resume: Any = False  # false | true (this run dir's checkpoints/last.pt) | path to a .pt or a run dir
    ckpt_every: int = 1000  # steps between checkpoints/last.pt writes; 0: only at the end
    ema_decay: Optional[float] = None  # exponential moving average of the generator's weights (e.g. 0.999); None: off
    ema_warmup: bool = True  # the average's decay is min(ema_decay, (1 + t) / (10 + t)) at its t-th update
    warmup_steps: int = 0  # learning rates rise linearly from lr / warmup_steps to lr over these first steps; 0: off
    grad_clip: Any = None  # max gradient norm: null (none), one number for every phase, or {phase: number}
    compile: Any = False  # false | true (torch.compile each phase's loss) | step (the whole step as one captured region)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs, for launch-bound small models) | max-autotune | max-autotune-no-cudagraphs
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no code generation, for checks)
    deterministic: bool = False  # deterministic kernels while training (torch.use_deterministic_algorithms, cuDNN, cuBLAS workspace)

    at_least_one: ClassVar[frozenset[str]] = frozenset({"max_steps", "batch_size"})


@dataclass
class LoggerSettings:
    """``logger=<backend>`` or ``logger=[a,b]``: each option's file adds its backend, a key of ``logger`` whose value
    names a class (``tensorboard: {_target_: gentrain.engine.loggers.TensorBoardLogger}``) with its options; ``null`` or
    ``false`` turns a chosen one off (``logger.tensorboard=false``). :func:`logger_settings` splits them from the
    settings every run has (these fields)."""

    every: int = 50  # steps between logged scalars (every backend), metrics.jsonl lines and console lines
    samples_every: int = 500  # steps between sample pictures; 0: none (not even at the end)
    n_samples: int = 64  # images in a sample grid
    n_points: int = 2048  # points in a 2-D scatter plot
    interpolations: bool = True  # latent interpolation grids (linear and spherical) with the samples, for image models
    interp_rows: int = 8
    interp_steps: int = 10
    progress: bool = True  # rich progress bar on a terminal (plain lines elsewhere)
    curves: bool = True  # curves.png (matplotlib) from metrics.jsonl at the end, shown in report.md

    #: backend name -> its spec (``_target_`` and the class's options), in the order the logger options were chosen
    backends: dict[str, Any] = field(default_factory=dict)

    at_least_one: ClassVar[frozenset[str]] = frozenset({"every", "n_samples", "n_points", "interp_rows", "interp_steps"})


@dataclass
class DeviceSettings:
    type: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (with loss scaling, for GPUs without bf16)
    tf32: bool = True
    data_on_device: Any = "auto"  # auto | true | false
    threads: Optional[int] = None  # torch's CPU threads (torch.set_num_threads); null: torch's default
    channels_last: Any = "auto"  # auto (convolutional networks on CUDA) | true | false


@dataclass
class EvalSettings:
    metrics: list[str] = field(default_factory=list)  # protocols: fid10k, kid10k, is10k, pr10k, fid1k, ...
    every: int = 0  # steps between evaluations during training; 0: none
    at_end: bool = True  # evaluate after the last step (the report's numbers)
    use_ema: bool = True  # evaluate and sample with the averaged weights when trainer.ema_decay is set
    best: Optional[str] = None  # headline that picks checkpoints/best.pt on the validation split; default: the first metric's
    split: str = "test"  # the split of the final report and task=eval (in-training evaluation always uses val)
    batch_size: int = 250
    seed: int = 0  # noise of the generated samples
    inception_weights: str = "auto"  # auto | path to a state dict (python -m gentrain.metrics.inception builds one offline)
    cache_dir: str = "~/.cache/gentrain"  # reference features are cached under <cache_dir>/reference
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    at_least_one: ClassVar[frozenset[str]] = frozenset({"batch_size", "kid_subsets", "kid_subset_size"})


S = TypeVar("S")


def typed(node: DictConfig, schema: type[S], prefix: str) -> S:
    """Check ``node`` against the dataclass ``schema``; raise a one-line GentrainError on a bad key or value."""
    defaults = schema()
    try:
        # resolve in place first: interpolations like ${seed} point into the whole config
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "key", None) or getattr(e, "full_key", None) or "?"
        msg = str(e).strip().splitlines()[0]
        example = getattr(defaults, str(key), None)
        hint = f"; e.g. {prefix}.{key}={_show(example)}" if example is not None else ""
        if isinstance(e, ConfigKeyError):
            valid = ", ".join(f.name for f in fields(schema))
            raise GentrainError(f"{prefix}.{key} is not an option; valid keys: {valid}") from None
        raise GentrainError(f"{prefix}.{key}: {msg}{hint}") from None
    for f in fields(schema):
        value = getattr(settings, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and getattr(defaults, f.name) is not None:  # optional keys check their own
            # ints must be >= 0; those a schema lists in ``at_least_one`` must be >= 1
            low = 1 if f.name in getattr(schema, "at_least_one", ()) else 0
            if value < low:
                raise GentrainError(f"{prefix}.{f.name} must be >= {low}, got {value}; e.g. {prefix}.{f.name}={getattr(defaults, f.name)}")
    return settings


def logger_settings(node: DictConfig) -> LoggerSettings:
    """``logger.*`` typed: the keys whose value is a mapping with ``_target_`` are the backends, the rest the settings."""
    try:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    except OmegaConfBaseException as e:
        raise GentrainError(f"logger config does not resolve: {str(e).strip().splitlines()[0]}; check the logger.* overrides") from None
    assert isinstance(values, dict)
    own = {f.name for f in fields(LoggerSettings)}
    backends = {}
    for key in [k for k in values if k not in own]:
        value = values[key]
        if isinstance(value, dict) and "_target_" in value:
            backends[str(key)] = values.pop(key)
        elif value is None or value is False:  # logger.tensorboard=false: a chosen backend turned off
            values.pop(key)
        elif value is True:  # the node was replaced by a flag: a backend is turned on by choosing it
            raise GentrainError(f"logger.{key}=true replaces the {key} backend's settings; a backend is on when chosen (logger={key}, or logger=[...,{key}]) and off with logger.{key}=false")
    settings = typed(values, LoggerSettings, "logger")
    settings.backends = backends
    return settings


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
