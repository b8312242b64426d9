"""What happens around the training steps: each job is a hook with a small interface.

The loop (:class:`gentrain.engine.trainer.Trainer`) calls, for every step, ``before_step`` of
every hook, runs the step's phases, then ``after_step(loop, last)`` of every hook that is ``due``,
in order:

============  =========================================================================
schedule      learning rates of the coming step (torch schedulers, linear warm-up)
ema           the weight average follows the live weights
log           interval means (one host sync) to the loggers, metrics.jsonl, terminal
samples       sample grids, interpolations and the model's own pictures (``deferrable``)
evaluate      metrics on the validation split, ``best.pt``; the test split at the end (``deferrable``)
checkpoint    ``checkpoints/last.pt``
============  =========================================================================

A stop (SIGINT/SIGTERM) skips the ``deferrable`` hooks still to run at its step and records
them as pending in the checkpoint; a resumed run runs them first, so its logs match an
uninterrupted run's. Only rank 0 writes; under ``torchrun`` every rank runs every hook, since
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
from gentrain.models.base import Latent
from gentrain.sampling import sampling_state
from gentrain.shared import atomic_save
from gentrain.visual import image_grid, sample_picture, save_png

if TYPE_CHECKING:
    from gentrain.engine.trainer import Trainer

#: Offset of the seed of the fixed sampling noise, so it never coincides with the training seed's stream.
FIXED_NOISE_SEED_OFFSET = 1_000_003
#: The split in-training evaluation and ``best.pt`` use: model selection never sees the test split.
SELECTION_SPLIT = "val"

#: ``(model, splits) -> (flat values, result records)``: what the engine needs of an evaluation.
Evaluate = Callable[[Any, list[str]], tuple[dict[str, float], list[dict[str, Any]]]]


class Hook:
    """Base class: a named job around the steps; every method is optional."""

    name = ""
    deferrable = False  # a stop may skip it at its step; it then runs first on resume

    def before_step(self, loop: Trainer) -> None:
        """Before the phases of step ``loop.step`` (counted from 0)."""

    def due(self, loop: Trainer, last: bool) -> bool:
        """Whether :meth:`after_step` runs after this step (``loop.step`` steps done)."""
        return True

    def after_step(self, loop: Trainer, last: bool) -> None:
        """After the step; ``last``: the run's final step."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict` (``None`` from a checkpoint that has none)."""


class ScheduleHook(Hook):
    """Learning rates per step: ``model.scheduler.<phase>`` (torch schedulers) after an optional linear warm-up.

    Before step ``t`` every scheduler has been stepped ``t`` times, so the rate a step runs with
    is a function of the step, and a resume continues it exactly (a checkpoint without scheduler
    state is fast-forwarded to its step).
    """

    name = "schedule"

    def __init__(self, schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]) -> None:
        self.schedulers = schedulers

    def before_step(self, loop: Trainer) -> None:
        for scheduler in self.schedulers.values():
            if scheduler.last_epoch < loop.step:
                with warnings.catch_warnings():  # on resume torch would warn that no optimizer step came first
                    warnings.simplefilter("ignore", UserWarning)
                    while scheduler.last_epoch < loop.step:
                        scheduler.step()

    def due(self, loop: Trainer, last: bool) -> bool:
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

    def after_step(self, loop: Trainer, last: bool) -> None:
        self.ema.update()


class LogHook(Hook):
    """Every ``logger.every`` steps: the interval's means to the logger backends, metrics.jsonl, gentrain.log and the terminal."""

    name = "log"

    def __init__(self, every: int) -> None:
        self.every = every

    def due(self, loop: Trainer, last: bool) -> bool:
        return loop.step % self.every == 0 or last

    def after_step(self, loop: Trainer, last: bool) -> None:
        values = loop.interval_means(reset=True)
        if not values:
            return
        now = time.perf_counter()
        t0, step0 = loop.mark
        elapsed = now - t0 - loop.paused  # pictures and evaluation are not training
        loop.paused = 0.0
        loop.train_time_s += elapsed
        loop.mark = (now, loop.step)
        steps_per_s = (loop.step - step0) / elapsed if elapsed > 0 else float("nan")
        values["train/steps_per_s"] = steps_per_s
        values["train/epoch"] = float(loop.stream.epoch)
        for name, opt in loop.optimizers.items():
            values[f"train/lr/{name}"] = float(opt.param_groups[0]["lr"])
        loop.final = values
        if not loop.world.main:
            return
        loop.loggers.scalars(values, loop.step)
        loop.jsonl.write({"kind": "train", "step": loop.step, "time_s": round(loop.train_time_s, 3), **values})
        RUN_LOG.info("step %d/%d  %.1f steps/s  %s", loop.step, loop.settings.max_steps, steps_per_s, format_logs(values))
        loop.progress.logged(loop.step, values, steps_per_s)


class SampleHook(Hook):
    """Every ``logger.samples_every`` steps (0: never): sample grids at fixed noise, interpolations and the model's own pictures (rank 0)."""

    name = "samples"
    deferrable = True

    def __init__(self, loop: Trainer) -> None:
        ls = loop.log_settings
        self.every = ls.samples_every
        head = loop.stream.head(max(ls.n_points, ls.n_samples)).x
        points = head.dim() == 2
        # a fixed batch of real 2-D points for scatter plots (images need none)
        self.reference = head[: ls.n_points].to(loop.device) if points else None
        # a fixed batch of real data for the model's own pictures (reconstructions, density plots)
        from gentrain.shared import to_model_space

        self.picture_batch = to_model_space(head[: ls.n_points if points else ls.n_samples].to(loop.device))
        self.path: Path | None = None

    def due(self, loop: Trainer, last: bool) -> bool:
        return bool(self.every) and (loop.step % self.every == 0 or last)

    @torch.no_grad()
    def after_step(self, loop: Trainer, last: bool) -> None:
        if not loop.world.main:
            return
        ls = loop.log_settings
        generator = torch.Generator(device=loop.device).manual_seed(loop.settings.seed + FIXED_NOISE_SEED_OFFSET)
        n = ls.n_points if self.reference is not None else ls.n_samples
        # a model may draw its pictures with a cheaper sampler (sampler.pictures; said at the start and in the report)
        with sampling_state(loop.model, loop.average()), loop.model.drawing_pictures():
            x, nrow = loop.model.sample_grid(n, generator=generator)
            interpolations = self._interpolations(loop)
            extra = loop.model.pictures(self.picture_batch, generator)
        picture = sample_picture(x.float(), self.reference, nrow)
        if picture is None:
            return
        path = loop.run_dir / "samples" / f"step_{loop.step:06d}.png"
        save_png(picture, path)
        self.path = path
        loop.loggers.image("samples", picture, loop.step, path)
        named = {f"interp_{kind}": (grid, ls.interp_steps) for kind, grid in interpolations.items()} | extra
        for name, (images, rows) in named.items():
            image = image_grid(images.float(), rows, min_side=256 if images.shape[0] == 1 else 32)
            image_path = loop.run_dir / "samples" / f"{name}_step_{loop.step:06d}.png"
            save_png(image, image_path)
            loop.loggers.image(f"pictures/{name}", image, loop.step, image_path)

    def _interpolations(self, loop: Trainer) -> dict[str, Tensor]:
        """Linear and spherical latent interpolation grids (images only: a path of 2-D points is no picture)."""
        ls = loop.log_settings
        if not ls.interpolations or self.reference is not None or not isinstance(loop.model, Latent):
            return {}
        grids = {}
        for kind, spherical in (("lerp", False), ("slerp", True)):
            g = torch.Generator(device=loop.device).manual_seed(loop.settings.seed + FIXED_NOISE_SEED_OFFSET + 1)
            out = loop.model.interpolate(ls.interp_rows, ls.interp_steps, spherical, generator=g)
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

    def __init__(self, schedule: EvalSchedule) -> None:
        self.schedule = schedule
        self.records: list[dict[str, Any]] = []
        self.step: int | None = None
        self.best: dict[str, Any] | None = None

    def due(self, loop: Trainer, last: bool) -> bool:
        return bool(self.schedule.splits(loop.step, last))

    def after_step(self, loop: Trainer, last: bool) -> None:
        ev = self.schedule
        splits = ev.splits(loop.step, last)
        t0 = time.perf_counter()
        with sampling_state(loop.model, loop.average()):
            values, records = ev.evaluate(loop.model, splits)  # every rank: generation is split over ranks
        elapsed = time.perf_counter() - t0
        self.records, self.step = records, loop.step
        value = values.get(ev.best_key) if ev.best_key else None
        better = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best["value"] if ev.higher_is_better else value < self.best["value"])
        )
        if better:
            self.best = {"key": ev.best_key, "value": value, "step": loop.step, "split": SELECTION_SPLIT}
        if not loop.world.main:
            return
        loop.loggers.scalars({f"eval/{k}": v for k, v in values.items()}, loop.step)
        loop.jsonl.write({"kind": "eval", "step": loop.step, "splits": splits, "eval_time_s": round(elapsed, 3), **values, "results": records})
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        loop.console.print(f"eval at step {loop.step} ({', '.join(splits)}; {elapsed:.1f} s): {shown}", highlight=False)
        RUN_LOG.info("eval at step %d (%s; %.1f s): %s", loop.step, ", ".join(splits), elapsed, shown)
        if better:
            atomic_save(loop.state_dict(), loop.run_dir / "checkpoints" / "best.pt")

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

    def due(self, loop: Trainer, last: bool) -> bool:
        return bool(self.every and loop.step % self.every == 0) or last or loop.stopping

    def after_step(self, loop: Trainer, last: bool) -> None:
        loop.checkpoint()


__all__ = [
    "FIXED_NOISE_SEED_OFFSET", "SELECTION_SPLIT", "CheckpointHook", "EMAHook", "EvalHook", "EvalSchedule", "Hook", "LogHook",
    "SampleHook", "ScheduleHook",
]
