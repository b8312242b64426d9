"""The generic training loop, driven by the objective's phases.

It knows no model or objective by name: for each step it runs every phase ``repeats`` times
(draw a batch, objective computes the loss, backward, optimizer step, ``after_update`` hook) and
keeps the logs on the device; it synchronises with the host only at log, sample and checkpoint
intervals.

After a step come its hooks: the log line, the pictures, the evaluation, the checkpoint. A
SIGINT or SIGTERM takes effect at a step boundary (see :mod:`gentrain.engine.signals`); hooks a
stop skipped are recorded as pending in the checkpoint and run first on resume, so an
interrupted and resumed run ends with the weights, optimizer state and logs of an uninterrupted
one. Pictures and evaluation draw from their own generators inside
:func:`gentrain.sampling.sampling_state`, so they never touch the training run's random stream.
"""

from __future__ import annotations

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
from gentrain.engine.loggers import ConsoleProgress, JsonlWriter, TensorBoardLogger, format_logs
from gentrain.engine.rundir import RUN_LOG
from gentrain.engine.signals import HookAborted, StopRequest
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import MetricResult, flat_values
from gentrain.models.base import GenerativeModel
from gentrain.objectives.base import Objective
from gentrain.sampling import sampling_state
from gentrain.visual import image_grid, sample_picture, save_png

log = logging.getLogger(__name__)

#: Offset of the seed of the fixed sampling noise, so it never coincides with the training seed's stream.
_FIXED_NOISE_SEED_OFFSET = 1_000_003
#: The split in-training evaluation and ``best.pt`` use: model selection never sees the test split.
SELECTION_SPLIT = "val"


class Interrupted(GentrainError):
    """SIGINT or SIGTERM during training: the step finished and the checkpoint is saved; exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class EvalSchedule:
    """When to evaluate on which splits, and which result key picks ``checkpoints/best.pt``.

    Every ``every`` steps (and at the last step when ``every`` > 0) the protocols run against the
    validation split and ``best.pt`` follows ``best_key``; at the end (``at_end``) they also run
    against ``final_split`` (the test split) for the report, on the same samples.
    """

    evaluate: Callable[[GenerativeModel, list[str]], list[MetricResult]]  # (model, splits) -> results
    every: int  # 0: never during training
    at_end: bool
    final_split: str
    best_key: str | None  # a key of the validation results; None: no in-training selection
    higher_is_better: bool

    def splits(self, step: int, last: bool) -> list[str]:
        periodic = bool(self.every) and (step % self.every == 0 or last)
        return [*([SELECTION_SPLIT] if periodic else []), *([self.final_split] if last and self.at_end else [])]


@dataclass
class TrainResult:
    start_step: int
    step: int
    train_time_s: float  # time spent training (evaluation excluded), over all sessions of this run (resumes included)
    session_time_s: float  # wall time of this session's loop, evaluation and pictures included
    session_train_s: float  # training time of this session alone (the steps/s denominator)
    batches_per_step: int  # batches one step consumes: the repeats of every phase (d_steps + 1 for GANs)
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

    def mean(self, extra: dict[str, Tensor] | None = None, reset: bool = True) -> dict[str, float]:
        """The means of the interval (and ``extra`` scalars, read in the same host sync); ``reset`` starts the next interval."""
        tensors = {k: self.sums[k] / self.counts[k] for k in self.sums} | {k: v.float() for k, v in (extra or {}).items()}
        if not tensors:
            return {}
        values = torch.stack(list(tensors.values())).tolist()  # the one host sync
        if reset:
            self.sums.clear()
            self.counts.clear()
        return dict(zip(tensors, values))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.sums = dict((state or {}).get("sums", {}))
        self.counts = {k: int(v) for k, v in (state or {}).get("counts", {}).items()}


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
        # the parameters the model itself leaves trainable: phases switch only these (a frozen one,
        # such as a fixed decoder variance, stays frozen), and fit() turns them all back on
        self.switchable = {name: [p for p in params if p.requires_grad] for name, params in self.group_params.items()}
        self.batches_per_step = sum(phase.repeats for phase in objective.phases)
        self.step = 0
        self.train_time_s = 0.0
        self.acc = LogAccumulator()
        self.final: dict[str, float] = {}
        self.sample_path: Path | None = None
        self.tb: TensorBoardLogger | None = None
        self.evaluation = evaluation
        self.choices = choices or {}  # the config-group options of the run (model=dcgan ...), for tasks that reload it
        self.ema = EMA(model, trainer.ema_decay, trainer.ema_warmup) if trainer.ema_decay is not None else None
        self.sample_with_ema = sample_with_ema
        self.eval_results: list[MetricResult] = []
        self.eval_step: int | None = None
        self.best: dict[str, Any] | None = None
        self.pending: list[str] = []  # hooks of the current step not yet run (a stop skipped them)
        self.stop = StopRequest(self._say)
        self._saved_step: int | None = None
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
            "pending": list(self.pending),
            "log_interval": self.acc.state_dict(),
            "final": dict(self.final),
            "evaluation": {"step": self.eval_step, "results": [r.as_dict() for r in self.eval_results]},
            "choices": self.choices,
            "config": self.config,
        }

    def load_state_dict(self, ckpt: dict[str, Any], source: str) -> list[str]:
        """Continue from ``ckpt``. Returns the optimizer settings that the current config changes (``lr 1000 -> 0.0002``)."""
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
        changes = []
        for name, opt in self.optimizers.items():
            changes += _load_optimizer(opt, ckpt["optimizers"][name], name)
        self.stream.load_state_dict(ckpt["stream"])
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self._saved_step = self.step
        self.train_time_s = float(ckpt.get("train_time_s", 0.0))
        self.best = ckpt.get("best")
        self.pending = list(ckpt.get("pending", []))
        self.acc.load_state_dict(ckpt.get("log_interval"))
        self.final = dict(ckpt.get("final", {}))
        evaluation = ckpt.get("evaluation") or {}
        self.eval_step = evaluation.get("step")
        self.eval_results = [MetricResult(**r) for r in evaluation.get("results", [])]
        if self.ema is not None:
            if ckpt.get("ema") is None and self.step > 0:
                raise GentrainError(f"checkpoint {source} has no weight average; resume without trainer.ema_decay or from a run that had it")
            self.ema.load_state_dict(ckpt.get("ema"))
        return changes

    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / "last.pt"
        atomic_save(self.state_dict(), path)
        return path

    # ---- the loop ----------------------------------------------------------------------------
    def _set_trainable(self, phase: str) -> None:
        """Only the phase's parameter group builds gradients: no wasted backward through the others."""
        if len(self.groups) > 1:
            for name, params in self.switchable.items():
                for p in params:
                    p.requires_grad_(name == phase)

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
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
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
        try:
            with self.stop:
                if self.pending:  # hooks the interrupted session skipped at its last step
                    RUN_LOG.info("running the %s of step %d that the stopped session skipped", " and ".join(self.pending), self.step)
                    self._run_hooks(list(self.pending), self.step >= s.max_steps)
                    self._checkpoint()  # no longer pending (and best.pt's record is current), even if no step follows
                self.model.train()
                while self.step < s.max_steps and not self.stop.requested:
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
                    self._run_hooks(self._due_hooks(last), last)
                    if (s.ckpt_every and self.step % s.ckpt_every == 0) or last or self.stop.requested:
                        self._checkpoint()
                if self.stop.requested:
                    # the checkpoint of this step (written above, with its pending hooks) unless the stop came before the loop ran
                    path = self._checkpoint() if self._saved_step != self.step else self.run_dir / "checkpoints" / "last.pt"
                    raise Interrupted(
                        f"stopped by {self.stop.name} at step {self.step}; checkpoint saved to {path}; "
                        f"continue with: gentrain trainer.resume={self.run_dir}",
                        self.stop.signum or 0,
                    )
        finally:
            progress.close()
            for params in self.switchable.values():
                for p in params:
                    p.requires_grad_(True)
            if self.tb is not None:
                self.tb.flush()
        session = time.perf_counter() - session_start
        return TrainResult(
            start_step, self.step, self.train_time_s, session, self.train_time_s - train_time_before, self.batches_per_step,
            dict(self.final), self.sample_path, self.eval_results, self.eval_step, self.best,
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

    # ---- hooks -------------------------------------------------------------------------------
    def _due_hooks(self, last: bool) -> list[str]:
        due = ["samples"] if self.step % self.log_settings.samples_every == 0 or last else []
        if self.evaluation is not None and self.evaluation.splits(self.step, last):
            due.append("evaluate")
        return due

    def _run_hooks(self, names: list[str], last: bool) -> None:
        """Pictures and evaluation of this step (not training time); a stop skips or cuts them short and leaves them pending."""
        self.pending = list(names)
        t0 = time.perf_counter()
        hooks = {"samples": self._samples, "evaluate": self._evaluate}
        try:
            for name in names:
                if self.stop.requested:
                    break
                self.stop.abortable = True
                try:
                    hooks[name](last)
                except HookAborted:
                    break
                finally:
                    self.stop.abortable = False
                self.pending.remove(name)
        finally:
            self._paused += time.perf_counter() - t0

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False)
        RUN_LOG.warning(message)

    def _finite(self) -> Tensor:
        """One device bool: every floating parameter and buffer of the model (and of its weight average) is finite."""
        modules = [self.model] if self.ema is None or self.ema.module is None else [self.model, self.ema.module]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        return torch.stack([t.isfinite().all() for t in tensors]).all() if tensors else torch.ones((), dtype=torch.bool)

    def _checked_means(self, reset: bool) -> dict[str, float]:
        """The interval's means, read in one host sync with the model's finiteness; a non-finite loss or model stops the run."""
        values = self.acc.mean({"finite": self._finite()}, reset=reset)
        finite = values.pop("finite")
        bad = sorted(k for k, v in values.items() if not math.isfinite(v) and k != "train/steps_per_s")
        last = self.run_dir / "checkpoints" / "last.pt"
        kept = f"the last finite checkpoint (step {self._saved_step}) is kept: {last}" if self._saved_step is not None else "no checkpoint was written"
        if bad:
            raise GentrainError(
                f"{bad[0]} became {values[bad[0]]} by step {self.step}; lower the learning rate (model.optimizer.<phase>.lr) "
                f"or use device.precision=fp32; {kept}"
            )
        if not finite:
            named = [(n, t) for n, t in (*self.model.named_parameters(), *self.model.named_buffers()) if t.is_floating_point()]
            first = next((n for n, t in named if not bool(t.isfinite().all())), "the weight average")
            raise GentrainError(
                f"the model became non-finite by step {self.step} ({first} holds inf or nan) though the logged losses did not; "
                f"lower the learning rate (model.optimizer.<phase>.lr); {kept}"
            )
        return values

    def _log(self, progress: ConsoleProgress | None = None) -> None:
        values = self._checked_means(reset=True)
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
        RUN_LOG.info("step %d/%d  %.1f steps/s  %s", self.step, self.settings.max_steps, steps_per_s, format_logs(values))
        if progress is not None:
            progress.logged(self.step, values, steps_per_s)

    @torch.no_grad()
    def _samples(self, last: bool) -> None:
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed + _FIXED_NOISE_SEED_OFFSET)
        n = self.log_settings.n_points if self.reference is not None else self.log_settings.n_samples
        with sampling_state(self.model, self._average()):
            x, nrow = self.model.sample_grid(n, generator=generator)
            interpolations = self._interpolations(generator)
            extra = self.model.pictures(self.picture_batch, generator)
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

    def _average(self) -> EMA | None:
        """The weight average samples and evaluation use (when there is one and eval.use_ema)."""
        return self.ema if self.sample_with_ema else None

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

    def _evaluate(self, last: bool) -> None:
        """Evaluate on this step's splits (its time is not training time), log ``eval/*``, keep ``best.pt`` by the validation key."""
        ev = self.evaluation
        assert ev is not None
        splits = ev.splits(self.step, last)
        t0 = time.perf_counter()
        with sampling_state(self.model, self._average()):
            results = ev.evaluate(self.model, splits)
        elapsed = time.perf_counter() - t0
        values = flat_values(results)
        self.eval_results, self.eval_step = results, self.step
        if self.tb is not None:
            self.tb.scalars({f"eval/{k}": v for k, v in values.items()}, self.step)
        record = {"kind": "eval", "step": self.step, "splits": splits, "eval_time_s": round(elapsed, 3), **values}
        self.jsonl.write({**record, "results": [r.as_dict() for r in results]})
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        self.console.print(f"eval at step {self.step} ({', '.join(splits)}; {elapsed:.1f} s): {shown}", highlight=False)
        RUN_LOG.info("eval at step %d (%s; %.1f s): %s", self.step, ", ".join(splits), elapsed, shown)
        value = values.get(ev.best_key) if ev.best_key else None
        if value is None or not math.isfinite(value):
            return
        best = self.best
        if best is None or (value > best["value"] if ev.higher_is_better else value < best["value"]):
            self.best = {"key": ev.best_key, "value": value, "step": self.step, "split": SELECTION_SPLIT}
            atomic_save(self.state_dict(), self.run_dir / "checkpoints" / "best.pt")

    def _checkpoint(self) -> Path:
        """Save ``last.pt`` unless the model or the current interval's losses are non-finite (checked in one host sync)."""
        self._checked_means(reset=False)  # the interval goes on: its means are logged at the next log step
        path = self.save()
        self._saved_step = self.step
        RUN_LOG.info("checkpoint at step %d: %s", self.step, path)
        return path


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any], phase: str) -> list[str]:
    """Load ``state`` into ``opt``, then put back the hyperparameters it was built with (the current config's).

    torch's ``load_state_dict`` restores the saved hyperparameters too; a learning rate given on
    resume would be silently ignored. Returns what changed, e.g. ``model.optimizer.G.lr: 1000 -> 0.0002``.
    """
    configured = [{k: v for k, v in g.items() if k not in ("params", "initial_lr")} for g in opt.param_groups]
    opt.load_state_dict(state)
    changes = []
    for group, conf in zip(opt.param_groups, configured):
        for key, value in conf.items():
            saved = group.get("initial_lr", group.get("lr")) if key == "lr" else group.get(key)
            if saved != value and not (isinstance(saved, (tuple, list)) and list(saved) == list(value)):
                changes.append(f"model.optimizer.{phase}.{key}: {saved} -> {value}")
            group[key] = value
            if key == "lr" and "initial_lr" in group:  # the warm-up rescales from the configured rate
                group["initial_lr"] = value
    return list(dict.fromkeys(changes))
