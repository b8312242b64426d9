"""One validation pass: a composed config -> a typed, checked :class:`RunSpec`, with no object built.

Every key the engine and the tasks own is read here, once: ``trainer``, ``logger``, ``eval`` and ``device`` as typed
settings, the ``trainer.resume`` grammar, and the rules across keys and groups that need no object: the model and
objective classes resolve from their ``_target_`` (not built) and fit (the objective's ``family``), optimizers and
schedulers are keyed by the objective's phases, ``trainer.grad_clip`` names phases, ``sampler=`` needs a model with
sampler options, likelihood metrics a likelihood model, ``eval.best`` a listed metric, ``optimize`` a validation
number. The CLI's precheck runs this for every job of a sweep (cheaply: nothing is built, no data read); the task
runs it once and then builds each object once. Constructors check only their own arguments; what needs two built
objects (a model's parameter groups against the objective's phases, WGAN-GP's critic without batch norm) is checked
when the task builds them, before the run writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gentrain.config import DeviceSettings, EvalSettings, LoggerSettings, TrainerSettings, logger_settings, typed
from gentrain.errors import GentrainError, check_choice

#: ``trainer.compile_mode`` values (torch.compile's modes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Resume:
    """``trainer.resume``, parsed once: false (a new run), true (the run directory's own ``checkpoints/last.pt``), or a
    path (a ``.pt`` file, or a run directory whose ``checkpoints/last.pt`` it continues, in that directory)."""

    value: bool | Path

    @staticmethod
    def parse(value: Any) -> Resume:
        if value is None or value is False or value in ("false", "null", ""):
            return Resume(False)
        if value is True or value == "true":
            return Resume(True)
        if isinstance(value, (str, Path)):
            return Resume(Path(str(value)).expanduser())
        raise GentrainError(f"trainer.resume must be true, false or a path (a run directory or a .pt file), got {value!r}")

    @property
    def wanted(self) -> bool:
        return self.value is not False

    @property
    def run_dir(self) -> Path | None:
        """The run directory ``trainer.resume`` names, which the run continues in place (None: none named)."""
        return self.value if isinstance(self.value, Path) and self.value.is_dir() else None

    def checkpoint(self, run_dir: Path) -> Path | None:
        """The checkpoint to continue, for a run that goes to ``run_dir``; None for a new run; one line if it is missing."""
        from gentrain.engine.checkpoint import find_checkpoint

        if self.value is False:
            return None
        if self.value is True:
            last = run_dir / "checkpoints" / "last.pt"
            if not last.is_file():
                raise GentrainError(
                    f"trainer.resume=true but {run_dir} has no checkpoints/last.pt; pass trainer.resume=<run dir or .pt file> "
                    "or hydra.run.dir=<the run directory to continue>"
                )
            return last
        return find_checkpoint(str(self.value))

    def in_place(self, run_dir: Path) -> bool:
        """Whether the run continues ``run_dir``'s own checkpoint (so it writes into that directory)."""
        if self.value is True:
            return True
        if self.value is False:
            return False
        try:
            ckpt = self.checkpoint(run_dir)
        except GentrainError:
            return False  # the task says what is wrong
        return ckpt is not None and ckpt.parent.name == "checkpoints" and ckpt.parent.parent.resolve() == run_dir.resolve()


@dataclass(frozen=True)
class RunSpec:
    """A run as the engine and tasks will carry it out: settings typed and checked, the resume parsed, the classes of
    model and objective resolved (None while a resume's checkpoint, not the command line, decides them)."""

    trainer: TrainerSettings
    logger: LoggerSettings
    eval: EvalSettings
    device: DeviceSettings
    resume: Resume
    model_class: type | None = None
    objective_class: type | None = None

    @property
    def phases(self) -> tuple[str, ...]:
        """The objective's phase names, by its class (``D``, ``G``; ``main``)."""
        from gentrain.objectives.base import Objective

        cls = self.objective_class
        return tuple(p.name for p in cls.phases) if cls is not None and issubclass(cls, Objective) else ()


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config with interpolations resolved; one line for one that cannot resolve."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as e:  # an interpolation that cannot resolve, e.g. a missing env var or ???
        raise GentrainError(f"the config does not resolve: {str(e).strip().splitlines()[0]}; set the key it names") from None


def run_spec(cfg: DictConfig, resumed: bool = False) -> RunSpec:
    """Check ``cfg`` as ``task=train`` will run it, building nothing; raise a one-line :class:`GentrainError`.

    A resume (``trainer.resume``) is checked as far as the command line goes; the config it continues (the
    checkpoint's with the command line's safe changes, ``resumed``) is checked in full.
    """
    from gentrain.engine.device import check_precision
    from gentrain.engine.loggers import check_backends

    resolved(cfg)
    ts = typed(cfg.trainer, TrainerSettings, "trainer")
    ls = logger_settings(cfg.logger)
    check_backends(ls)  # a chosen logger backend that is not installed (logger=mlflow without mlflow)
    _check_callbacks(cfg)
    es = typed(cfg.eval, EvalSettings, "eval")
    ds = typed(cfg.device, DeviceSettings, "device")
    check_precision(ds.precision)
    check_choice(ts.compile_mode, COMPILE_MODES, "trainer.compile_mode", "reduce-overhead")
    if ts.compile not in (False, True, "step"):
        raise GentrainError(
            f"trainer.compile must be false, true (torch.compile each phase's loss) or step (the whole step as one captured region), "
            f"got {ts.compile!r}; e.g. trainer.compile=step"
        )
    resume = Resume.parse(ts.resume)
    if resume.wanted and not resumed:  # the checkpoint's config decides the rest; checked once it is read
        return RunSpec(ts, ls, es, ds, resume)
    model_class, objective_class = _group_class(cfg, "model"), _group_class(cfg, "objective")
    spec = RunSpec(ts, ls, es, ds, resume, model_class, objective_class)
    _check_pair(cfg, spec)
    _check_phases(cfg, spec)
    _check_evaluation(cfg, spec)
    return spec


def _check_callbacks(cfg: DictConfig) -> None:
    """``callbacks.<name>``: each names an importable :class:`gentrain.engine.hooks.Hook` (built by the task, not here)."""
    from gentrain.engine.hooks import callback_classes

    node = OmegaConf.select(cfg, "callbacks", default=None)
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise GentrainError(f"callbacks must map names to {{_target_: package.Class, ...}}, got {node!r}; e.g. 'callbacks.mine={{_target_: mypkg.MyCallback}}'")
    callback_classes(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def _group_class(cfg: DictConfig, group: str) -> type:
    from gentrain.build import choice, target_class

    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    if not target:
        raise GentrainError(f"{group}={choice(cfg, group)} has no _target_; a {group} YAML names its class with _target_: package.module.Class")
    cls = target_class(str(target))
    if cls is None:
        import importlib

        module, _, name = str(target).rpartition(".")
        try:
            importlib.import_module(module)
            detail = f"{module} has no class {name!r}"
        except (ImportError, ValueError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GentrainError(f"could not build {group}: {group}._target_={target} does not import ({detail}); install its package or put it on PYTHONPATH")
    return cls


def _check_pair(cfg: DictConfig, spec: RunSpec) -> None:
    """The objective's family, and the sampler group, against the model's class."""
    from gentrain.build import choice, fitting_objectives_of, models_with
    from gentrain.models.base import GenerativeModel, SamplerOptions

    model, objective = spec.model_class, spec.objective_class
    assert model is not None and objective is not None
    if not issubclass(model, GenerativeModel):
        raise GentrainError(f"model={choice(cfg, 'model')} builds a {model.__name__}, not a gentrain model; check model._target_")
    from gentrain.objectives.base import Objective

    if not issubclass(objective, Objective):
        raise GentrainError(f"objective={choice(cfg, 'objective')} builds a {objective.__name__}, not a gentrain objective; check objective._target_")
    family = objective.family
    if not _may_be(model, family):
        options = ", ".join(f"objective={n}" for n in fitting_objectives_of(model)) or "none yet"
        raise GentrainError(
            f"objective={choice(cfg, 'objective')} needs a {family.__name__} and model={choice(cfg, 'model')} is not one; "
            f"objectives that fit model={choice(cfg, 'model')}: {options}"
        )
    if OmegaConf.select(cfg, "sampler", default=None) is not None and not _may_be(model, SamplerOptions):
        raise GentrainError(
            f"model={choice(cfg, 'model')} has no sampler options; sampler= applies to {', '.join(models_with(SamplerOptions)) or 'none'}"
        )
    sync = OmegaConf.select(cfg, "model.sync_batchnorm", default=False)
    if not isinstance(sync, bool):
        raise GentrainError(f"model.sync_batchnorm must be true or false, got {sync!r}")


def _may_be(cls: type, capability: type) -> bool:
    """Whether instances of ``cls`` are (or, built with some keys, become: ``DDPM`` with ``num_classes``) ``capability``."""
    from gentrain.build import subclasses

    return issubclass(cls, capability) or any(issubclass(sub, capability) for sub in subclasses(cls))


def _check_phases(cfg: DictConfig, spec: RunSpec) -> None:
    """Optimizers, schedulers and gradient clipping are keyed by the objective's phases."""
    from gentrain.engine.trainer import clip_norms

    phases = spec.phases
    if not phases:
        return
    specs = OmegaConf.select(cfg, "model.optimizer", default=None)
    for phase in phases:
        if specs is None or specs.get(phase) is None:
            raise GentrainError(f"model.optimizer has no entry for phase {phase!r}; add model.optimizer.{phase} (e.g. Adam)")
    schedulers = OmegaConf.select(cfg, "model.scheduler", default=None) or {}
    unknown = sorted(set(schedulers) - set(phases))
    if unknown:
        raise GentrainError(f"model.scheduler names phase(s) {unknown}, and this objective's phases are {sorted(set(phases))}; key schedulers by phase")
    clip_norms(spec.trainer.grad_clip, list(phases))


def _check_evaluation(cfg: DictConfig, spec: RunSpec) -> None:
    """The metrics parse, likelihood metrics have a likelihood model, ``eval.best`` and ``optimize`` name what is listed."""
    from gentrain.engine.hooks import SELECTION_SPLIT
    from gentrain.metrics.fidelity import parse_protocol
    from gentrain.models.base import Likelihood
    from gentrain.tasks.optimize import target

    es = spec.eval
    if es.metrics:
        from gentrain.build import choice, models_with
        from gentrain.metrics.evaluate import check_selection
        from gentrain.tasks.common import best_key

        protocols = [parse_protocol(m) for m in es.metrics]
        assert spec.model_class is not None
        for p in protocols:
            if p.family.space == "likelihood" and not issubclass(spec.model_class, Likelihood):
                raise GentrainError(f"{p.name} needs a likelihood model ({', '.join(models_with(Likelihood))}); model={choice(cfg, 'model')} has none")
        check_selection(protocols, es.every)
        best_key(es, SELECTION_SPLIT)  # checked even when nothing is selected: a wrong eval.best is a mistake
    target(cfg)  # a bad optimize= key (after eval.best's own check, whose message names the key at fault)
