"""What happens around the training steps: each job is a callback (a :class:`Hook`) with a small interface.

The loop (:class:`gentrain.engine.trainer.Trainer`) owns the step, the clock, the stop request and the
interval meter. The task builds the callback list and hands it to the loop; the loop calls, for every
step, ``before_step(view)`` of every callback, runs the step's phases, then ``after_step(view, last)`` of
every callback that is ``due``. A callback sees the loop through a :class:`LoopView`: read-only
properties (step, model, settings ...) and a sink for what it produces (scalars, pictures, records,
lines). It declares whether its time counts as training time (``training_time``) and whether a stop may
defer it (``deferrable``), and keeps its own state, saved under its ``name`` in the checkpoint
(``checkpoint["callbacks"][name]``). The task reads its results from the callbacks it built. The
default list, in order:

============  =========================================================================
schedule      learning rates of the coming step (torch schedulers, linear warm-up)
ema           the weight average follows the live weights
log           interval means (one host sync) to the loggers, metrics.jsonl, terminal
samples       sample grids, interpolations and the model's own pictures (``deferrable``)
evaluate      metrics on the validation split, ``best.pt``; the test split at the end (``deferrable``)
checkpoint    ``checkpoints/last.pt``
============  =========================================================================

A stop (SIGINT/SIGTERM) skips the ``deferrable`` callbacks still to run at its step and records
them as pending in the checkpoint; a resumed run runs them first, so its logs match an
uninterrupted run's. Only rank 0 writes; under ``torchrun`` every rank runs every callback, since
the log means and the evaluation gather from all ranks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gentrain.engine.ema import EMA
from gentrain.engine.console import format_logs
from gentrain.engine.rundir import RUN_LOG
from gentrain.errors import GentrainError
from gentrain.models.base import Latent, Scheduled
from gentrain.sampling import sampling_state
from gentrain.shared import atomic_save
from gentrain.visual import image_grid, sample_clip, sample_picture, save_png

if TYPE_CHECKING:
    from gentrain.engine.trainer import Trainer

#: Offset of the seed of the fixed sampling noise, so it never coincides with the training seed's stream.
FIXED_NOISE_SEED_OFFSET = 1_000_003
#: The split in-training evaluation and ``best.pt`` use: model selection never sees the test split.
SELECTION_SPLIT = "val"

#: ``(model, splits) -> (flat values, result records)``: what the engine needs of an evaluation.
Evaluate = Callable[[Any, list[str]], tuple[dict[str, float], list[dict[str, Any]]]]


class LoopView:
    """What a callback sees of the loop, read-only, and the sink for what it produces."""

    def __init__(self, loop: Trainer) -> None:
        self._loop = loop

    # ---- read-only: the loop's state and the run's parts
    @property
    def step(self) -> int:
        """Steps done (counted from 0 before the first)."""
        return self._loop.step

    @property
    def stopping(self) -> bool:
        return self._loop.stopping

    @property
    def model(self) -> Any:
        return self._loop.model

    @property
    def device(self) -> torch.device:
        return self._loop.device

    @property
    def run_dir(self) -> Path:
        return self._loop.run_dir

    @property
    def world(self) -> Any:
        return self._loop.world

    @property
    def settings(self) -> Any:
        """The trainer settings (``trainer.*``)."""
        return self._loop.settings

    @property
    def log_settings(self) -> Any:
        """The logger settings (``logger.*``)."""
        return self._loop.log_settings

    @property
    def captured(self) -> bool:
        """This step ran as one captured region (``trainer.compile=step``): :meth:`Hook.step_part` work is done."""
        return self._loop.captured

    @property
    def epoch(self) -> float:
        return float(self._loop.stream.epoch)

    def learning_rates(self) -> dict[str, float]:
        return {name: float(opt.param_groups[0]["lr"]) for name, opt in self._loop.optimizers.items()}

    def average(self) -> EMA | None:
        """The weight average pictures and evaluation use (None: the live weights)."""
        return self._loop.average()

    # ---- the loop's meters, read at a callback's interval
    def interval_means(self, reset: bool) -> dict[str, float]:
        """The logged scalars' means since the last reset, in one host sync (see ``Trainer.interval_means``)."""
        return self._loop.interval_means(reset=reset)

    def clock(self) -> tuple[float, float]:
        """(training time of the run so far, steps per second since the last call): the loop's clock, which leaves out the
        time of callbacks that are not ``training_time``."""
        return self._loop.clock()

    # ---- the sink
    def scalars(self, values: dict[str, float]) -> None:
        self._loop.loggers.scalars(values, self._loop.step)

    def image(self, tag: str, picture: Any, path: Path) -> None:
        self._loop.loggers.image(tag, picture, self._loop.step, path)

    def audio(self, tag: str, clip: Any, rate: int, path: Path) -> None:
        """A mono clip [T] at ``rate`` samples per second (samples of 1-D data) and its WAV file."""
        self._loop.loggers.audio(tag, clip, rate, self._loop.step, path)

    def record(self, line: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``."""
        self._loop.jsonl.write(line)

    def say(self, message: str) -> None:
        """A line on the terminal and in ``gentrain.log``."""
        self._loop.console.print(message, highlight=False)
        RUN_LOG.info("%s", message)

    def progress(self, values: dict[str, float], steps_per_s: float) -> None:
        self._loop.progress.logged(self._loop.step, values, steps_per_s)

    def checkpoint(self) -> None:
        """``checkpoints/last.pt`` now."""
        self._loop.checkpoint()

    def save_checkpoint(self, path: Path) -> None:
        """The run's full state to ``path`` (``best.pt``)."""
        atomic_save(self._loop.state_dict(), path)


class Hook:
    """Base class: a named job around the steps; every method is optional."""

    name = ""
    deferrable = False  # a stop may skip it at its step; it then runs first on resume
    training_time = True  # its time counts as training time (False: pictures and evaluation, left out of steps/s)

    def before_step(self, view: LoopView) -> None:
        """Before the phases of step ``view.step`` (counted from 0)."""

    def due(self, view: LoopView, last: bool) -> bool:
        """Whether :meth:`after_step` runs after this step (``view.step`` steps done)."""
        return True

    def after_step(self, view: LoopView, last: bool) -> None:
        """After the step; ``last``: the run's final step."""

    def step_part(self) -> Callable[[], None] | None:
        """Device work due after every step that a captured step (``trainer.compile=step``) runs inside itself (no host
        sync, no Python state read that changes per step); None: nothing. :meth:`after_step` still runs after each step
        and reads ``view.captured`` to know whether that work was done in the region."""
        return None

    def state_dict(self) -> Any:
        """Saved in the checkpoint under this callback's ``name`` (None: nothing to save)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict` (``None`` from a checkpoint that has none)."""




def callback_classes(spec: dict[str, Any]) -> dict[str, type[Hook]]:
    """The classes ``callbacks.<name>._target_`` name, checked without building: each imports, is a :class:`Hook`, and
    its name is not a default callback's. One line otherwise."""
    from gentrain.build import target_class

    found: dict[str, type[Hook]] = {}
    for name, node in spec.items():
        target = str(node.get("_target_", "")) if isinstance(node, dict) else ""
        cls = target_class(target)
        if cls is None or not issubclass(cls, Hook):
            what = "does not import" if cls is None else "is not a gentrain.engine.hooks.Hook"
            raise GentrainError(
                f"callbacks.{name}._target_={target or '?'} {what}; a callback is 'callbacks.{name}={{_target_: package.module.Class, ...}}' "
                "naming a gentrain.engine.hooks.Hook subclass"
            )
        if name in _built_in_names():
            raise GentrainError(f"callbacks.{name}: '{name}' is a default callback's name (their state is saved by name); call yours otherwise")
        found[name] = cls
    return found


def _built_in_names() -> set[str]:
    """The default callbacks' names (the classes below); a user's own callback (``callbacks.<name>``) takes another."""
    return {cls.name for cls in Hook.__subclasses__() if cls.__module__ == __name__}


def user_callbacks(spec: dict[str, Any]) -> list[Hook]:
    """A user's own callbacks, ``callbacks.<name>: {_target_: ..., **options}``, built with their options; each is named
    by its key, under which its state is saved in the checkpoint."""
    built: list[Hook] = []
    for name, cls in callback_classes(spec).items():
        options = {k: v for k, v in spec[name].items() if k != "_target_"}
        try:
            callback = cls(**options)
        except TypeError as e:
            raise GentrainError(f"callbacks.{name}: {cls.__name__} does not take these options ({e}); check the keys under callbacks.{name}") from None
        callback.name = name
        built.append(callback)
    return built


class ScheduleHook(Hook):
    """Learning rates per step: ``model.scheduler.<phase>`` (torch schedulers) after an optional linear warm-up; and a
    :class:`~gentrain.models.base.Scheduled` model's form (``set_step``: a growing network's resolution).

    Before step ``t`` every scheduler has been stepped ``t`` times, so the rate a step runs with
    is a function of the step, and a resume continues it exactly (a checkpoint without scheduler
    state is fast-forwarded to its step).
    """

    name = "schedule"

    def __init__(self, schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]) -> None:
        self.schedulers = schedulers

    def before_step(self, view: LoopView) -> None:
        if isinstance(view.model, Scheduled):  # a growing network takes this step's form
            view.model.set_step(view.step)
        for scheduler in self.schedulers.values():
            if scheduler.last_epoch < view.step:
                with warnings.catch_warnings():  # on resume torch would warn that no optimizer step came first
                    warnings.simplefilter("ignore", UserWarning)
                    while scheduler.last_epoch < view.step:
                        scheduler.step()

    def due(self, view: LoopView, last: bool) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {name: s.state_dict() for name, s in self.schedulers.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for name, scheduler in self.schedulers.items():
            if state and name in state:
                configured = [g.get("initial_lr", g["lr"]) for g in scheduler.optimizer.param_groups]
                scheduler.load_state_dict(state[name])
                scheduler.base_lrs = configured  # a learning rate changed on resume applies to the rest of the schedule


class EMAHook(Hook):
    """The exponential moving average of the generator's weights, updated after every step."""

    name = "ema"

    def __init__(self, ema: EMA) -> None:
        self.ema = ema

    def step_part(self) -> Callable[[], None] | None:
        if self.ema.module is None:  # the copy is taken eagerly, at the first update
            return None
        self.ema.start_in_step()  # its device counter exists before the region is traced (no retrace when it appears)
        return self.ema.update_in_step

    def after_step(self, view: LoopView, last: bool) -> None:
        self.ema.counted() if view.captured else self.ema.update()


class LogHook(Hook):
    """Every ``logger.every`` steps: the interval's means to the logger backends, metrics.jsonl, gentrain.log and the terminal."""

    name = "log"

    def __init__(self, every: int) -> None:
        self.every = every
        self.final: dict[str, float] = {}  # the last logged interval's values: the report's "final"

    def due(self, view: LoopView, last: bool) -> bool:
        return view.step % self.every == 0 or last

    def after_step(self, view: LoopView, last: bool) -> None:
        values = view.interval_means(reset=True)
        if not values:
            return
        train_time_s, steps_per_s = view.clock()
        values["train/steps_per_s"] = steps_per_s
        values["train/epoch"] = view.epoch
        values |= {f"train/lr/{name}": lr for name, lr in view.learning_rates().items()}
        self.final = values
        if not view.world.main:
            return
        view.scalars(values)
        view.record({"kind": "train", "step": view.step, "time_s": round(train_time_s, 3), **values})
        RUN_LOG.info("step %d/%d  %.1f steps/s  %s", view.step, view.settings.max_steps, steps_per_s, format_logs(values))
        view.progress(values, steps_per_s)

    def state_dict(self) -> dict[str, Any]:
        return {"final": dict(self.final)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.final = dict((state or {}).get("final", {}))


class SampleHook(Hook):
    """Every ``logger.samples_every`` steps (0: never): sample grids at fixed noise, interpolations and the model's own pictures (rank 0)."""

    name = "samples"
    deferrable = True
    training_time = False

    def __init__(self, ls: Any, head: Tensor, device: torch.device, rate: int | None = None) -> None:
        """``ls``: the logger settings; ``head``: the first training examples (uint8 images, sequences or points), for the
        pictures; ``rate``: sequences' samples per second (``Dataset.rate``): their samples are written as WAV files too."""
        self.every = ls.samples_every
        self.rate = rate
        points = head.dim() == 2
        # a fixed batch of real 2-D points for scatter plots (images need none)
        self.reference = head[: ls.n_points].to(device) if points else None
        # a fixed batch of real data for the model's own pictures (reconstructions, density plots)
        from gentrain.shared import to_model_space

        self.picture_batch = to_model_space(head[: ls.n_points if points else ls.n_samples].to(device))
        self.path: Path | None = None

    def due(self, view: LoopView, last: bool) -> bool:
        return bool(self.every) and (view.step % self.every == 0 or last)

    @torch.no_grad()
    def after_step(self, view: LoopView, last: bool) -> None:
        if not view.world.main:
            return
        ls, model = view.log_settings, view.model
        generator = torch.Generator(device=view.device).manual_seed(view.settings.seed + FIXED_NOISE_SEED_OFFSET)
        n = ls.n_points if self.reference is not None else ls.n_samples
        # a model may draw its pictures with a cheaper sampler (sampler.pictures; said at the start and in the report)
        with sampling_state(model, view.average()), model.drawing_pictures():
            x, nrow = model.sample_grid(n, generator=generator)
            interpolations = self._interpolations(view)
            extra = model.pictures(self.picture_batch, generator)
        picture = sample_picture(x.float(), self.reference, nrow)
        if picture is None:
            return
        path = view.run_dir / "samples" / f"step_{view.step:06d}.png"
        save_png(picture, path)
        self.path = path
        view.image("samples", picture, path)
        if x.dim() == 3 and self.rate:
            self._sounds(view, x)
        named = {f"interp_{kind}": (grid, ls.interp_steps) for kind, grid in interpolations.items()} | extra
        for name, (images, rows) in named.items():
            image = image_grid(images.float(), rows, min_side=256 if images.shape[0] == 1 else 32)
            image_path = view.run_dir / "samples" / f"{name}_step_{view.step:06d}.png"
            save_png(image, image_path)
            view.image(f"pictures/{name}", image, image_path)

    def _sounds(self, view: LoopView, x: Tensor) -> None:
        """Sequences: the first samples as one clip (:func:`~gentrain.visual.sample_clip`), ``samples/step_<step>.wav`` and
        an audio clip for the loggers."""
        from gentrain.data.audio import write_wav

        assert self.rate is not None
        clip = sample_clip(x, self.rate)
        path = view.run_dir / "samples" / f"step_{view.step:06d}.wav"
        write_wav(path, clip[None], self.rate)
        view.audio("samples", clip.numpy(), self.rate, path)

    def _interpolations(self, view: LoopView) -> dict[str, Tensor]:
        """Linear and spherical latent interpolation grids (images only: a path of 2-D points is no picture)."""
        ls, model = view.log_settings, view.model
        if not ls.interpolations or self.reference is not None or not isinstance(model, Latent):
            return {}
        grids = {}
        for kind, spherical in (("lerp", False), ("slerp", True)):
            g = torch.Generator(device=view.device).manual_seed(view.settings.seed + FIXED_NOISE_SEED_OFFSET + 1)
            out = model.interpolate(ls.interp_rows, ls.interp_steps, spherical, generator=g)
            if out is None:
                return {}
            grids[kind] = out
        return grids


@dataclass
class EvalSchedule:
    """When to evaluate on which splits, and which result key picks ``checkpoints/best.pt``.

    Every ``every`` steps (and at the last step when ``every`` > 0 or ``select_at_end``) the protocols run against the
    validation split and ``best.pt`` follows ``best_key``; at the end (``at_end``) they also run
    against ``final_split`` (the test split) for the report, on the same samples.
    """

    evaluate: Evaluate
    every: int  # 0: never during training
    at_end: bool
    final_split: str
    best_key: str | None  # a key of the validation results; None: no in-training selection
    higher_is_better: bool
    select_at_end: bool = False  # the last evaluation covers the validation split too (a sweep optimises a validation number)

    def splits(self, step: int, last: bool) -> list[str]:
        periodic = (bool(self.every) and step % self.every == 0) or (last and (bool(self.every) or self.select_at_end))
        return [*([SELECTION_SPLIT] if periodic else []), *([self.final_split] if last and self.at_end else [])]


class EvalHook(Hook):
    """Evaluate on this step's splits (its time is not training time), log ``eval/*``, keep ``best.pt`` by the validation key."""

    name = "evaluate"
    deferrable = True
    training_time = False

    def __init__(self, schedule: EvalSchedule) -> None:
        self.schedule = schedule
        self.records: list[dict[str, Any]] = []
        self.step: int | None = None
        self.best: dict[str, Any] | None = None

    def due(self, view: LoopView, last: bool) -> bool:
        return bool(self.schedule.splits(view.step, last))

    def after_step(self, view: LoopView, last: bool) -> None:
        ev = self.schedule
        splits = ev.splits(view.step, last)
        t0 = time.perf_counter()
        with sampling_state(view.model, view.average()):
            values, records = ev.evaluate(view.model, splits)  # every rank: generation is split over ranks
        elapsed = time.perf_counter() - t0
        self.records, self.step = records, view.step
        value = values.get(ev.best_key) if ev.best_key else None
        better = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best["value"] if ev.higher_is_better else value < self.best["value"])
        )
        if better:
            self.best = {"key": ev.best_key, "value": value, "step": view.step, "split": SELECTION_SPLIT}
        if not view.world.main:
            return
        view.scalars({f"eval/{k}": v for k, v in values.items()})
        view.record({"kind": "eval", "step": view.step, "splits": splits, "eval_time_s": round(elapsed, 3), **values, "results": records})
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        view.say(f"eval at step {view.step} ({', '.join(splits)}; {elapsed:.1f} s): {shown}")
        if better:
            view.save_checkpoint(view.run_dir / "checkpoints" / "best.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "results": self.records, "best": self.best}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.step, self.records, self.best = state.get("step"), list(state.get("results", [])), state.get("best")


class CheckpointHook(Hook):
    """``checkpoints/last.pt`` every ``trainer.ckpt_every`` steps, at the last step and when a stop is requested."""

    name = "checkpoint"

    def __init__(self, every: int) -> None:
        self.every = every

    def due(self, view: LoopView, last: bool) -> bool:
        return bool(self.every and view.step % self.every == 0) or last or view.stopping

    def after_step(self, view: LoopView, last: bool) -> None:
        view.checkpoint()


__all__ = [
    "FIXED_NOISE_SEED_OFFSET", "SELECTION_SPLIT", "CheckpointHook", "EMAHook", "EvalHook", "EvalSchedule", "Hook", "LogHook",
    "LoopView", "SampleHook", "ScheduleHook",
]
