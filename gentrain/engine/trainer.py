"""The generic training loop, driven by the objective's phases.

It knows no model or objective by name: for each step it runs every phase ``repeats`` times
(draw a batch, objective computes the loss, backward, optimizer step, ``after_update`` hook) and
keeps the logs on the device; it synchronises with the host only at log, sample and checkpoint
intervals.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from gentrain import __version__
from gentrain.config import LoggerSettings, TrainerSettings
from gentrain.engine.checkpoint import FORMAT, VERSION, atomic_save, rng_state, set_rng_state
from gentrain.engine.device import autocast
from gentrain.engine.ema import EMA
from gentrain.engine.loader import BatchStream, to_model_space
from gentrain.engine.loggers import ConsoleProgress, JsonlWriter, TensorBoardLogger
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import MetricResult, flat_values
from gentrain.models.base import GenerativeModel
from gentrain.objectives.base import Objective
from gentrain.visual import image_grid, sample_picture, save_png

log = logging.getLogger(__name__)

#: Offset of the seed of the fixed sampling noise, so it never coincides with the training seed's stream.
_FIXED_NOISE_SEED_OFFSET = 1_000_003


class Interrupted(GentrainError):
    """Ctrl-C during training: the checkpoint is saved first."""

    exit_code = 130


@dataclass
class EvalSchedule:
    """When to evaluate, and which result key picks ``checkpoints/best.pt`` (lower or higher is better)."""

    evaluate: Callable[[GenerativeModel], list[MetricResult]]
    every: int  # 0: never during training
    at_end: bool
    best_key: str
    higher_is_better: bool


@dataclass
class TrainResult:
    start_step: int
    step: int
    train_time_s: float  # time spent training (evaluation excluded), over all sessions of this run (resumes included)
    session_time_s: float  # wall time of this session's loop, evaluation and pictures included
    session_train_s: float  # training time of this session alone (the steps/s denominator)
    final: dict[str, float] = field(default_factory=dict)  # last logged interval means
    sample_path: Path | None = None
    evaluation: list[MetricResult] = field(default_factory=list)  # the last evaluation's results
    evaluation_step: int | None = None
    best: dict[str, Any] | None = None  # {"key", "value", "step"} of checkpoints/best.pt


class LogAccumulator:
    """Sums detached scalars on the device; ``mean()`` syncs once for all of them."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: Tensor) -> None:
        value = value.detach().float()
        if key in self.sums:
            self.sums[key] += value
            self.counts[key] += 1
        else:
            self.sums[key] = value.clone()
            self.counts[key] = 1

    def mean(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist()  # the one host sync
        self.sums.clear()
        self.counts.clear()
        return dict(zip(keys, values))


class Trainer:
    def __init__(
        self,
        model: GenerativeModel,
        objective: Objective,
        optimizers: dict[str, torch.optim.Optimizer],
        stream: BatchStream,
        device: torch.device,
        precision: str,
        run_dir: Path,
        trainer: TrainerSettings,
        logger: LoggerSettings,
        config: dict[str, Any],
        console: Console | None = None,
        evaluation: EvalSchedule | None = None,
        choices: dict[str, str] | None = None,
        sample_with_ema: bool = True,
    ) -> None:
        self.model = model
        self.objective = objective
        self.optimizers = optimizers
        self.stream = stream
        self.device = device
        self.precision = precision
        self.run_dir = run_dir
        self.settings = trainer
        self.log_settings = logger
        self.config = config
        self.console = console or Console()
        self.groups = model.param_groups()
        self.group_params = {name: [p for p in module.parameters()] for name, module in self.groups.items()}
        self.step = 0
        self.train_time_s = 0.0
        self.acc = LogAccumulator()
        self.final: dict[str, float] = {}
        self.sample_path: Path | None = None
        self.tb: TensorBoardLogger | None = None
        self.evaluation = evaluation
        self.choices = choices or {}  # the config-group options of the run (model=dcgan ...), for tasks that reload it
        self.ema = EMA(model, trainer.ema_decay) if trainer.ema_decay is not None else None
        self.sample_with_ema = sample_with_ema
        self.eval_results: list[MetricResult] = []
        self.eval_step: int | None = None
        self.best: dict[str, Any] | None = None
        # a fixed batch of real 2-D points for scatter plots (images need none)
        self.reference = stream.x[: logger.n_points].to(device) if stream.x.dim() == 2 else None
        # a fixed batch of real data for the model's own pictures (reconstructions, density plots)
        self.picture_batch = to_model_space(stream.x[: logger.n_points if self.reference is not None else logger.n_samples].to(device))

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "gentrain_version": __version__,
            "step": self.step,
            "train_time_s": self.train_time_s,
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "stream": self.stream.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "choices": self.choices,
            "config": self.config,
        }

    def load_state_dict(self, ckpt: dict[str, Any], source: str) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise GentrainError(
                f"checkpoint {source} does not fit this model ({first}); resume with the model and dataset of the run that wrote it"
            ) from None
        missing = set(self.optimizers) - set(ckpt["optimizers"])
        if missing:
            raise GentrainError(
                f"checkpoint {source} has no optimizer state for phase(s) {sorted(missing)}; resume with the objective of the run that wrote it"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        self.stream.load_state_dict(ckpt["stream"])
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.train_time_s = float(ckpt.get("train_time_s", 0.0))
        self.best = ckpt.get("best")
        if self.ema is not None:
            if ckpt.get("ema") is None and self.step > 0:
                raise GentrainError(f"checkpoint {source} has no weight average; resume without trainer.ema_decay or from a run that had it")
            self.ema.load_state_dict(ckpt.get("ema"))

    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / "last.pt"
        atomic_save(self.state_dict(), path)
        return path

    # ---- the loop ----------------------------------------------------------------------------
    def _set_trainable(self, phase: str) -> None:
        """Only the phase's parameter group builds gradients: no wasted backward through the others."""
        if len(self.groups) > 1:
            for name, module in self.groups.items():
                if name != phase:
                    module.requires_grad_(False)
            self.groups[phase].requires_grad_(True)

    def _phase_update(self, phase: str) -> None:
        batch = self.stream.next()
        with autocast(self.device, self.precision):
            out = self.objective.step(phase, self.model, batch)
        opt = self.optimizers[phase]
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        # max_norm=inf: measures the norm without clipping (a multiply by exactly 1.0)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.group_params[phase], max_norm=math.inf)
        opt.step()
        self.objective.after_update(phase, self.model)
        for key, value in out.logs.items():
            self.acc.add(f"train/{phase}/{key}", value)
        self.acc.add(f"train/{phase}/grad_norm", grad_norm)

    def fit(self) -> TrainResult:
        s, ls = self.settings, self.log_settings
        start_step = self.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "samples").mkdir(exist_ok=True)
        # on resume, drop events a crashed session wrote after the checkpoint's step
        purge = start_step + 1 if start_step else None
        self.tb = TensorBoardLogger(self.run_dir / "tensorboard", purge_step=purge) if ls.tensorboard else None
        self.jsonl = JsonlWriter(self.run_dir / "metrics.jsonl")
        if self.tb is not None and start_step == 0:
            from omegaconf import OmegaConf

            self.tb.text("config", "```yaml\n" + OmegaConf.to_yaml(OmegaConf.create(self.config)) + "\n```")
        progress = ConsoleProgress(self.console, s.max_steps, start_step, ls.progress)
        session_start = time.perf_counter()
        train_time_before = self.train_time_s
        self._mark = (time.perf_counter(), self.step)
        self._paused = 0.0
        self.model.train()
        try:
            while self.step < s.max_steps:
                if s.warmup_steps and self.step <= s.warmup_steps:
                    self._warm_up()
                for phase in self.objective.phases:
                    self._set_trainable(phase.name)
                    for _ in range(phase.repeats):
                        self._phase_update(phase.name)
                if self.ema is not None:
                    self.ema.update()
                self.step += 1
                progress.advance(self.step)
                last = self.step == s.max_steps
                if self.step % ls.every == 0 or last:
                    self._log(progress)
                t_pause = time.perf_counter()
                if self.step % ls.samples_every == 0 or last:
                    self._samples()
                ev = self.evaluation
                if ev is not None and ((ev.every and self.step % ev.every == 0) or (last and ev.at_end)):
                    self._evaluate(ev)
                self._paused += time.perf_counter() - t_pause
                if (s.ckpt_every and self.step % s.ckpt_every == 0) or last:
                    self._checkpoint()
        except KeyboardInterrupt:
            progress.close()
            path = self._checkpoint(interrupted=True)
            raise Interrupted(f"interrupted at step {self.step}; checkpoint saved to {path}; continue with trainer.resume={path}") from None
        finally:
            progress.close()
            self._set_trainable_all()
            if self.tb is not None:
                self.tb.flush()
        session = time.perf_counter() - session_start
        return TrainResult(
            start_step, self.step, self.train_time_s, session, self.train_time_s - train_time_before, dict(self.final), self.sample_path,
            self.eval_results, self.eval_step, self.best,
        )

    def _warm_up(self) -> None:
        """Linear learning-rate warm-up: step ``t`` (from 0) runs at ``lr * min(1, (t + 1) / warmup_steps)``.

        A function of the step alone, so a resumed run continues it exactly; host floats, no device sync.
        """
        factor = min(1.0, (self.step + 1) / self.settings.warmup_steps)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                # the configured rate, kept in the group (and its checkpoint) as torch's schedulers keep it
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def _set_trainable_all(self) -> None:
        for module in self.groups.values():
            module.requires_grad_(True)

    def _log(self, progress: ConsoleProgress | None = None) -> None:
        values = self.acc.mean()
        if not values:
            return
        now = time.perf_counter()
        t0, step0 = self._mark
        elapsed = now - t0 - self._paused  # pictures and evaluation are not training
        self._paused = 0.0
        self.train_time_s += elapsed
        self._mark = (now, self.step)
        steps_per_s = (self.step - step0) / elapsed if elapsed > 0 else float("nan")
        values["train/steps_per_s"] = steps_per_s
        values["train/epoch"] = float(self.stream.epoch)
        for name, opt in self.optimizers.items():
            values[f"train/lr/{name}"] = float(opt.param_groups[0]["lr"])
        self.final = values
        if self.tb is not None:
            self.tb.scalars(values, self.step)
        self.jsonl.write({"kind": "train", "step": self.step, "time_s": round(self.train_time_s, 3), **values})
        if progress is not None:
            progress.logged(self.step, values, steps_per_s)
        bad = sorted(k for k, v in values.items() if not math.isfinite(v) and k != "train/steps_per_s")
        if bad:
            raise GentrainError(
                f"{bad[0]} became {values[bad[0]]} by step {self.step}; lower the learning rate (model.optimizer.<phase>.lr) "
                f"or use device.precision=fp32; the last finite checkpoint is {self.run_dir / 'checkpoints' / 'last.pt'}"
            )

    def _sampling_weights(self) -> contextlib.AbstractContextManager[None]:
        """The averaged weights for samples and evaluation when there are any (and eval.use_ema)."""
        if self.ema is not None and self.sample_with_ema:
            return self.ema.applied(self.model)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _samples(self) -> None:
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed + _FIXED_NOISE_SEED_OFFSET)
        n = self.log_settings.n_points if self.reference is not None else self.log_settings.n_samples
        with self._sampling_weights():
            x, nrow = self.model.sample_grid(n, generator=generator)
            interpolations = self._interpolations(generator)
            extra = self.model.pictures(self.picture_batch, generator)
        self.model.train(was_training)
        picture = sample_picture(x.float(), self.reference, nrow)
        if picture is None:
            return
        path = self.run_dir / "samples" / f"step_{self.step:06d}.png"
        save_png(picture, path)
        self.sample_path = path
        if self.tb is not None:
            self.tb.image("samples", picture, self.step)
        named = {f"interp_{kind}": (grid, self.log_settings.interp_steps) for kind, grid in interpolations.items()} | extra
        for name, (images, nrow) in named.items():
            image = image_grid(images.float(), nrow, min_side=256 if images.shape[0] == 1 else 32)
            save_png(image, self.run_dir / "samples" / f"{name}_step_{self.step:06d}.png")
            if self.tb is not None:
                self.tb.image(f"pictures/{name}", image, self.step)

    def _interpolations(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Linear and spherical latent interpolation grids (images only: a path of 2-D points is no picture)."""
        ls = self.log_settings
        if not ls.interpolations or self.reference is not None:
            return {}
        grids = {}
        for kind, spherical in (("lerp", False), ("slerp", True)):
            g = torch.Generator(device=self.device).manual_seed(self.settings.seed + _FIXED_NOISE_SEED_OFFSET + 1)
            out = self.model.interpolate(ls.interp_rows, ls.interp_steps, spherical, generator=g)
            if out is None:
                return {}
            grids[kind] = out
        return grids

    def _evaluate(self, ev: EvalSchedule) -> None:
        """Evaluate (its time is not training time), log ``eval/*``, and keep ``best.pt`` by the chosen key."""
        t0 = time.perf_counter()
        with self._sampling_weights():
            results = ev.evaluate(self.model)
        elapsed = time.perf_counter() - t0
        values = flat_values(results)
        self.eval_results, self.eval_step = results, self.step
        if self.tb is not None:
            self.tb.scalars({f"eval/{k}": v for k, v in values.items()}, self.step)
        self.jsonl.write({"kind": "eval", "step": self.step, "eval_time_s": round(elapsed, 3), **values, "results": [r.as_dict() for r in results]})
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        self.console.print(f"eval at step {self.step} ({elapsed:.1f} s): {shown}", highlight=False)
        value = values.get(ev.best_key)
        if value is None or not math.isfinite(value):
            return
        best = self.best
        if best is None or (value > best["value"] if ev.higher_is_better else value < best["value"]):
            self.best = {"key": ev.best_key, "value": value, "step": self.step}
            atomic_save(self.state_dict(), self.run_dir / "checkpoints" / "best.pt")

    def _checkpoint(self, interrupted: bool = False) -> Path:
        self._log()  # syncs, and refuses to save parameters that went non-finite
        path = self.save()
        if not interrupted:
            log.debug("checkpoint at step %d: %s", self.step, path)
        return path
