"""gentrain from Python (notebooks, scripts): train, load, sample, score likelihoods, evaluate.

    import gentrain

    result = gentrain.train(["model=gan_mlp", "dataset=ring8", "trainer.max_steps=300"], quiet=True)
    points = result.sample(1000)                            # float [1000, 2]
    gentrain.evaluate(result.run_dir, metrics=["modes2500"])  # {"modes2500_fair": ..., ...}
    loaded = gentrain.load("outputs/<date>/<time>/best")    # a run dir, a .pt, or best/last inside a run dir

Everything goes through the code the ``gentrain`` command runs: overrides are composed by Hydra as
the CLI composes them (and refused with the CLI's one-line messages, as :class:`GentrainError`),
:func:`train` runs ``task=train``, :meth:`Loaded.sample` draws exactly what ``task=sample`` draws and
:func:`evaluate` runs ``task=eval``.

Importing this module is light; torch and the rest load on the first call.
"""

from __future__ import annotations

import io
import os
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gentrain.errors import GentrainError, check_int

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from rich.console import Console
    from torch import Tensor

    from gentrain.models.base import GenerativeModel

__all__ = ["Loaded", "Result", "evaluate", "load", "train"]

# ---- loading ---------------------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A trained model rebuilt from a checkpoint, ready to sample and score.

    ``model`` is in eval mode; when the run kept a weight average (``trainer.ema_decay``) and ``use_ema``
    was asked, the averaged weights are copied *into* it (``ema`` is True), so ``model`` itself is the
    model that ``task=sample`` and ``task=eval`` use.
    """

    model: GenerativeModel = field(repr=False)
    config: dict[str, Any] = field(repr=False)  # the run's resolved config
    step: int
    path: Path  # the checkpoint file
    dataset: str  # the dataset's name (digits, ring8 ...)
    model_name: str  # the model option (dcgan, made ...)
    ema: bool  # whether the averaged weights are in ``model``
    device: torch.device

    @property
    def conditional(self) -> bool:
        """Whether the model draws samples of requested classes (a :class:`~gentrain.models.base.Conditional` model)."""
        from gentrain.models.base import Conditional

        return isinstance(self.model, Conditional)

    @property
    def has_likelihood(self) -> bool:
        """Whether the model has a log-likelihood (a :class:`~gentrain.models.base.Likelihood` model)."""
        from gentrain.models.base import Likelihood

        return isinstance(self.model, Likelihood)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` for images, ``(2,)`` for the 2-D toy sets."""
        return tuple(int(s) for s in self.config["dataset"]["shape"])

    def sample(self, n: int, labels: Any = None, seed: int = 0, batch_size: int = 250) -> Tensor:
        """``n`` samples on the CPU: uint8 images ``[n, C, H, W]`` (0..255), or float points ``[n, 2]`` for 2-D data.

        Drawn exactly as ``gentrain task=sample ckpt=<path> n=<n> seed=<seed>`` draws them (and ``task=eval`` with
        ``eval.seed=<seed>`` scores them): batches of ``batch_size`` (``eval.batch_size``, 250 by default) from one
        generator seeded with ``seed``, eval mode. ``labels`` (conditional models: cgan, acgan): the class of every
        sample, an int for all of them or ``n`` class ids (list, array or tensor); the latent noise is the same as
        without labels, only the classes are chosen.
        """
        import torch

        from gentrain.sampling import sample_batches, sampling_state
        from gentrain.shared import to_uint8

        n = check_int(n, "n", example=64)
        batch_size = check_int(batch_size, "batch_size", example=250)
        y = None if labels is None else self._labels(labels, n)
        with sampling_state(self.model):
            if y is None:
                x = torch.cat([b[0] for b in sample_batches(self.model, n, int(seed), batch_size)])
            else:
                x = torch.cat(list(_labelled_batches(self.model, y, int(seed), batch_size)))
        return to_uint8(x).cpu() if x.dim() == 4 else x.float().cpu()

    def log_prob(self, x: Any, k: int | None = None, seed: int = 0, batch_size: int = 250) -> Tensor:
        """``log p(x)`` of every example in nats, ``[N]`` on the CPU (likelihood models: vae, conv_vae, realnvp, glow, pixelcnn, made, ddpm).

        ``x``: ``[N, *shape]`` uint8 images (0..255, as the datasets store them) or floats already in model space
        ([-1, 1]); points as floats. This is the number ``nll<count>`` reports (``eval.metrics``): exact for
        pixelcnn and made; for flows the dequantized bound; for ddpm the variational bound (all T terms); for VAEs the importance-weighted (IWAE) lower bound
        with ``k`` samples, by default the run's ``model.iwae_k`` (100). Noise (dequantization, IWAE) is drawn from
        the torch RNG seeded with ``seed`` inside a fork, so the caller's random stream is untouched; ``seed=0`` and
        ``batch_size=250`` on the first N test examples give exactly the per-example numbers of ``nll<N>``.
        """
        import torch

        from gentrain.sampling import sampling_state
        from gentrain.shared import to_model_space

        if not self.has_likelihood:
            from gentrain.build import models_with
            from gentrain.models.base import Likelihood

            raise GentrainError(
                f"log_prob needs a likelihood model ({', '.join(models_with(Likelihood))}); this checkpoint's model ({self.model_name}) has no likelihood"
            )
        x = self._examples(x)
        options = {} if k is None else {"k": check_int(k, "k", example=100)}  # the model's own option (the VAE's IWAE k)
        batch_size = check_int(batch_size, "batch_size", example=250)
        with torch.no_grad(), sampling_state(self.model):  # eval mode, the global RNG forked
            torch.manual_seed(int(seed))
            out = [
                self.model.log_likelihood(to_model_space(x[i : i + batch_size].to(self.device)), **options).float().cpu()  # type: ignore[attr-defined]
                for i in range(0, x.shape[0], batch_size)
            ]
        return torch.cat(out)

    def bits_per_dim(self, x: Any, **options: Any) -> Tensor:
        """``-log_prob(x) / (D ln 2)`` per example, ``D`` the dimensions of one example (options as :meth:`log_prob`)."""
        from gentrain.models.likelihood import bits_per_dim

        x = self._examples(x)
        return bits_per_dim(self.log_prob(x, **options), int(x[0].numel()))

    # ---- checks ---------------------------------------------------------------------------------------------------
    def _examples(self, x: Any) -> Tensor:
        import torch

        x = torch.as_tensor(x)
        if x.dim() == len(self.shape):  # one example
            x = x[None]
        if tuple(x.shape[1:]) != self.shape or x.shape[0] == 0:
            raise GentrainError(f"x has shape {list(x.shape)}; this {self.dataset} model takes [N, {', '.join(map(str, self.shape))}] with N >= 1")
        if len(self.shape) == 3 and x.dtype != torch.uint8:
            if not x.is_floating_point() or float(x.min()) < -1.0 - 1e-6 or float(x.max()) > 1.0 + 1e-6:
                raise GentrainError(
                    f"x holds {x.dtype} values in [{float(x.min()):g}, {float(x.max()):g}]; give uint8 images (0..255) or floats in [-1, 1] (model space)"
                )
        return x

    def _labels(self, labels: Any, n: int) -> Tensor:
        import torch

        from gentrain.build import models_with
        from gentrain.models.base import Conditional

        if not isinstance(self.model, Conditional):
            raise GentrainError(
                f"labels= needs a conditional model ({', '.join(models_with(Conditional))}); this checkpoint's model ({self.model_name}) is unconditional: leave labels out"
            )
        k = self.model.num_classes
        if isinstance(labels, bool):
            raise GentrainError(f"labels must be class ids 0..{k - 1}, got {labels!r}")
        y = torch.full((n,), int(labels)) if isinstance(labels, int) else torch.as_tensor(labels).flatten()
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise GentrainError(f"labels must be integer class ids 0..{k - 1}, got {y.dtype} values")
        if y.numel() != n:
            raise GentrainError(f"labels has {y.numel()} class ids for n={n} samples; give one per sample, or one int for all")
        if n and (int(y.min()) < 0 or int(y.max()) >= k):
            raise GentrainError(f"labels must be class ids 0..{k - 1} (the model has {k} classes), got {int(y.min())}..{int(y.max())}")
        return y.long().to(self.device)


def _labelled_batches(model: Any, y: Tensor, seed: int, batch_size: int) -> Iterator[Tensor]:
    """Samples of the classes ``y``, drawn as :func:`gentrain.sampling.sample_batches` draws (noise, then labels, per batch)."""
    import torch

    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            yield model.sample_of_labels(y[start : start + batch_size], generator)


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The checkpoint ``path`` names: a ``.pt`` file, a run directory (its ``checkpoints/last.pt``), or ``<run dir>/best``
    / ``<run dir>/last`` (its ``checkpoints/best.pt`` / ``last.pt``)."""
    from gentrain.engine.checkpoint import find_checkpoint

    p = Path(path).expanduser()
    if not p.exists() and p.name in ("best", "last"):
        for candidate in (p.parent / "checkpoints" / f"{p.name}.pt", p.parent / f"{p.name}.pt"):
            if candidate.is_file():
                return candidate
    return find_checkpoint(p)


def load(
    path: str | os.PathLike[str], device: Any = "auto", use_ema: bool = True, sampler: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
) -> Loaded:
    """The model of a checkpoint: ``path`` a run directory (its ``checkpoints/last.pt``), a ``.pt`` file, or
    ``<run dir>/best`` or ``<run dir>/last``.

    ``device``: auto (CUDA when present), cpu, cuda, cuda:N. With ``use_ema`` (default) the run's weight average,
    when it kept one, is copied into the model, as ``task=sample`` and ``task=eval`` use it. ``sampler`` (diffusion
    models) replaces the run's sampler, e.g. ``{"name": "ddim", "steps": 50}``; ``model_options`` replaces ``model.*`` keys of
    the run's config (a family's evaluation knobs, e.g. ``{"iwae_k": 1000}`` for a VAE).
    """
    from gentrain.engine.device import resolve_device
    from gentrain.tasks.common import load_trained

    spec = checkpoint_path(path)
    where = resolve_device(str(device))
    path_, ckpt, model, average, dataset = load_trained(str(spec), where, use_ema=use_ema, sampler=sampler, model_options=model_options)
    if average is not None and average.module is not None:
        getattr(model, average.name).load_state_dict(average.module.state_dict())
    model.eval()
    config = ckpt["config"]
    name = (ckpt.get("choices") or {}).get("model") or str(config["model"].get("_target_", "?")).rsplit(".", 1)[-1]
    return Loaded(
        model=model, config=config, step=int(ckpt["step"]), path=path_, dataset=dataset.name,
        model_name=str(name), ema=average is not None and average.module is not None, device=where,
    )


# ---- training --------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What :func:`train` returns: where the run went, its numbers and its trained model."""

    run_dir: Path
    metrics: dict[str, float]  # the report's evaluation results (eval.metrics), e.g. {"fid10k": ...}; {} without metrics
    final: dict[str, float]  # the training logs of the last step, e.g. {"train/G/loss": ...}
    report: dict[str, Any] = field(repr=False)  # everything report.json holds
    config: dict[str, Any] = field(repr=False)  # the run's resolved config
    value: float | None  # the number a sweep would optimise (``optimize=``; default: the headline on the validation split)
    loaded: Loaded | None = field(repr=False, default=None)  # checkpoints/last.pt, loaded (EMA weights when the run kept them)

    @property
    def model(self) -> GenerativeModel:
        """The trained model (eval mode; the weight average when the run kept one)."""
        return self._loaded().model

    def sample(self, n: int, labels: Any = None, **options: Any) -> Tensor:
        """See :meth:`Loaded.sample`."""
        return self._loaded().sample(n, labels, **options)

    def log_prob(self, x: Any, **options: Any) -> Tensor:
        """See :meth:`Loaded.log_prob`."""
        return self._loaded().log_prob(x, **options)

    def _loaded(self) -> Loaded:
        if self.loaded is None:
            raise GentrainError(f"{self.run_dir} has no checkpoints/last.pt to load the model from")
        return self.loaded


def train(overrides: Iterable[str] | str = (), run_dir: str | os.PathLike[str] | None = None, quiet: bool = False) -> Result:
    """Train as ``gentrain <overrides>`` does; return the run's :class:`Result`.

    ``overrides``: the command line's ``key=value`` words (a list, or one string split like a shell). ``run_dir``:
    where the run goes (default: ``hydra.run.dir``, ``outputs/<date>/<time>`` below the current directory; with
    ``trainer.resume=<run dir>`` that run directory, continued in place, as on the command line); a directory
    that already holds a run is left alone and the run goes to ``<dir>_1`` (``Result.run_dir`` says where).
    ``quiet``: print nothing. Bad overrides and values raise :class:`GentrainError` with the CLI's one line.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from gentrain.tasks import training
    from gentrain.tasks.optimize import value

    cfg = _compose(_as_list(overrides))
    _check_task(cfg, "train", "gentrain.train runs task=train; sample with gentrain.load(...).sample(), evaluate with gentrain.evaluate(...)")
    requested = Path(run_dir).expanduser() if run_dir is not None else _default_run_dir(cfg)
    in_place = _resumes_in_place(cfg, requested)
    actual, created = (requested, []) if in_place else _reserve(requested)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    try:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(actual.absolute())
        hydra_config.set_config(cfg)  # group choices and overrides for the run's report and .hydra/, as in the CLI
        with open_dict(cfg):
            del cfg["hydra"]
        report = training.train(cfg, run_dir=actual, console=_console(quiet))
        result_value = value(cfg, report)
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        hydra_config.cfg = previous
    samples = report.get("samples")
    if samples and Path(samples).parent.name == "samples" and Path(samples).parent.parent.resolve() != actual.resolve():
        actual = Path(samples).parent.parent  # another process took the reserved directory first: the run moved on
    last = actual / "checkpoints" / "last.pt"
    device = (report.get("device") or {}).get("type", "auto")
    loaded = load(last, device=device) if last.is_file() else None
    return Result(
        run_dir=actual, metrics=dict(report.get("metrics") or {}), final=dict(report.get("final") or {}), report=report,
        config=dict(report.get("config") or OmegaConf.to_container(cfg, resolve=True)), value=result_value, loaded=loaded,  # type: ignore[arg-type]
    )


def _default_run_dir(cfg: DictConfig) -> Path:
    """``trainer.resume=<run dir>`` continues that directory (as the CLI does); otherwise ``hydra.run.dir``."""
    from omegaconf import OmegaConf

    from gentrain.spec import Resume

    named = Resume.parse(OmegaConf.select(cfg, "trainer.resume", default=None)).run_dir
    if named is not None:
        return named
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).expanduser()
    except Exception as e:  # an interpolation in hydra.run.dir that does not resolve
        raise GentrainError(f"hydra.run.dir does not resolve ({str(e).strip().splitlines()[0]}); pass run_dir=") from None


def _resumes_in_place(cfg: DictConfig, requested: Path) -> bool:
    """Whether the run continues the checkpoint of ``requested`` itself (as ``gentrain.tasks.training.train`` decides)."""
    from omegaconf import OmegaConf

    from gentrain.spec import Resume

    return Resume.parse(OmegaConf.select(cfg, "trainer.resume", default=False)).in_place(requested)


def _reserve(requested: Path) -> tuple[Path, list[Path]]:
    """The directory a new run in ``requested`` will own (``requested``, or the first free ``requested_<n>`` when it
    holds another run or a live run owns it), and the directories created for it (removed again if the run is refused)."""
    from gentrain.engine.rundir import RunDirectory

    missing = [p for p in [requested, *requested.parents] if not p.exists()]
    rundir, _ = RunDirectory.claim(requested, resume_in_place=False)
    rundir.release()  # the run claims it again at once (an empty directory is free)
    if rundir.path != requested:
        missing = [rundir.path, *missing]
    return rundir.path, missing


def _remove_empty(paths: Sequence[Path]) -> None:
    """Remove the directories a refused run left empty (deepest first)."""
    for p in paths:
        try:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        except OSError:
            pass


# ---- evaluation ------------------------------------------------------------------------------------------------------
def evaluate(
    source: Loaded | str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | str = ("fid10k",),
    reference: Any = None,
    split: str = "test",
    device: Any = "auto",
    *,
    samples: Any = None,
    overrides: Iterable[str] = (),
    quiet: bool = False,
    model_options: dict[str, Any] | None = None,
    **eval_options: Any,
) -> dict[str, float]:
    """Score a model as ``gentrain task=eval`` does; return the flat metric values (``{"fid10k": ..., "modes2500_fair": ...}``).

    ``source``: a run directory, a checkpoint (``.pt``, ``<run dir>/best``) or a :class:`Loaded` (its checkpoint,
    with its choice of weights). ``metrics``: protocols as in ``eval.metrics`` (fid10k, kid10k, is10k, pr10k,
    nll<count>, modes<count> ...). ``split``: the data split compared with. ``samples`` / ``reference``: passed
    on as ``samples=`` / ``reference=`` (evaluating image files, where this gentrain has them). Further ``eval.*``
    settings as keywords (``batch_size=100``, ``seed=1``, ``use_ema=False`` ...); a family's own knobs in ``model_options``
    (``{"iwae_k": 1000}``); other config overrides in ``overrides``. The report is also written beside the checkpoint (``<name>.eval.json``, ``.eval.md``).
    """
    from omegaconf import open_dict

    from gentrain.config import EvalSettings
    from gentrain.tasks.evaluation import evaluate as evaluate_task

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names or not all(isinstance(m, str) and m for m in names):
        raise GentrainError(f"metrics must be protocol names such as ['fid10k'] or ['modes2500'], got {metrics!r}")
    if source is None and samples is None:
        raise GentrainError("evaluate needs a model: a run directory, a checkpoint or gentrain.load(...)")
    words = ["task=eval"]
    if isinstance(source, Loaded):
        words += [f"ckpt={_value(source.path)}", f"eval.use_ema={_value(source.ema)}"]
        device = str(source.device) if device == "auto" else device
    elif source is not None:
        words.append(f"ckpt={_value(checkpoint_path(source))}")
    words += [f"eval.metrics={_value(names)}", f"eval.split={_value(split)}", f"device.type={_value(str(device))}"]
    if samples is not None:
        words.append(f"samples={_value(samples)}")
    if reference is not None:
        words.append(f"reference={_value(reference)}")
    known = {f.name for f in EvalSettings.__dataclass_fields__.values()} - {"metrics", "split"}
    if model_options:
        words.append(f"model_options={_value(dict(model_options))}")
    for key, v in eval_options.items():
        if key == "iwae_k":
            raise GentrainError(f"iwae_k is the VAE's own option now: model_options={{'iwae_k': {v!r}}} (at training: model.iwae_k={v!r})")
        if key not in known:
            raise GentrainError(f"{key}= is not an evaluation option; use one of: {', '.join(sorted(known))} (or samples=, reference=, overrides=)")
        words.append(f"eval.{key}={_value(v)}")
    cfg = _compose([*words, *_as_list(overrides)])
    _check_task(cfg, "evaluate", "gentrain.evaluate runs task=eval; leave task= out of overrides")
    with open_dict(cfg):
        del cfg["hydra"]
    report = evaluate_task(cfg, _console(quiet))
    return {k: float(v) for k, v in (report.get("metrics") or {}).items()}


# ---- shared ----------------------------------------------------------------------------------------------------------
def _as_list(overrides: Iterable[str] | str) -> list[str]:
    if isinstance(overrides, str):
        return shlex.split(overrides)
    items = list(overrides)
    for o in items:
        if not isinstance(o, str):
            raise GentrainError(f"overrides are strings such as 'model=dcgan', got {o!r}")
    return items


def _compose(overrides: list[str]) -> DictConfig:
    """The app's config for ``overrides``, ``hydra`` key included; a bad override raises the CLI's one line."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from gentrain.cli import _one_line
    from gentrain.config import compose_app_config

    try:
        return compose_app_config(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise GentrainError(_one_line(str(e).strip() or type(e).__name__)) from None
    finally:
        GlobalHydra.instance().clear()


def _check_task(cfg: DictConfig, name: str, message: str) -> None:
    from omegaconf import OmegaConf

    if not str(OmegaConf.select(cfg, "task._target_", default="")).endswith(f".{name}"):
        raise GentrainError(message)


def _console(quiet: bool) -> Console:
    from rich.console import Console

    return Console(file=io.StringIO(), width=120) if quiet else Console()


def _value(v: Any) -> str:
    """``v`` as the value of a Hydra override (quoted where Hydra's grammar needs it)."""
    from gentrain.cli import _SIMPLE_VALUE

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if isinstance(v, str):
        return v if _SIMPLE_VALUE.match(v) else "'" + v.replace("'", "\\'") + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    raise GentrainError(f"{v!r} cannot be passed as a config value; give a number, a string, a bool, None or a list")
