"""The generic training loop, driven by the objective's phases; everything around the steps is a callback.

It knows no model or objective by name: for each step it runs every phase ``repeats`` times
(draw a batch, the objective computes the loss, backward, gradients averaged over ranks, clip,
optimizer step, ``after_update``) and keeps the logs on the device. It owns the step, the clock
(training time, callbacks that are not training time left out), the stop request and the interval
meter; the callbacks the task hands it (:mod:`gentrain.engine.hooks`: schedules, EMA, logging,
pictures, evaluation, checkpoints) run after the step through a read-only view and a sink, and
synchronise with the host only at their intervals.

A SIGINT or SIGTERM takes effect at a step boundary (see :mod:`gentrain.engine.signals`; under
``torchrun`` at the next log or checkpoint step, when the ranks agree); hooks a stop skipped are
recorded as pending in the checkpoint and run first on resume, so an interrupted and resumed run
ends with the weights, optimizer state and logs of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch import Tensor

from gentrain import __version__
from gentrain.config import LoggerSettings, TrainerSettings
from gentrain.engine import distributed
from gentrain.engine.checkpoint import FORMAT, VERSION, rng_kept, rng_state, set_rng_state
from gentrain.engine.device import autocast, deterministic_algorithms
from gentrain.engine.distributed import World
from gentrain.engine.ema import EMA
from gentrain.engine.hooks import SELECTION_SPLIT, EvalSchedule, Hook, LoopView
from gentrain.engine.loader import Stream
from gentrain.engine import progress as phase_progress
from gentrain.engine.console import ConsoleProgress, cli_console
from gentrain.engine.loggers import JsonlWriter, Loggers, flatten, open_loggers
from gentrain.engine.rundir import RUN_LOG
from gentrain.engine.signals import HookAborted, StopRequest
from gentrain.errors import GentrainError
from gentrain.engine.gradients import norm_and_clip
from gentrain.engine.wholestep import WholeStep, unsupported
from gentrain.models.base import GenerativeModel
from gentrain.objectives.base import Objective, StepOutput
from gentrain.shared import atomic_save

log = logging.getLogger(__name__)

__all__ = ["SELECTION_SPLIT", "EvalSchedule", "Interrupted", "LogAccumulator", "TrainResult", "Trainer"]


class Interrupted(GentrainError):
    """SIGINT or SIGTERM during training: the step finished and the checkpoint is saved; exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


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
    evaluation: list[dict[str, Any]] = field(default_factory=list)  # the last evaluation's result records
    evaluation_step: int | None = None
    best: dict[str, Any] | None = None  # {"key", "value", "step"} of checkpoints/best.pt


class LogAccumulator:
    """Sums detached scalars on the device; ``mean()`` syncs once for all of them.

    ``put`` keeps a value that is read as it is (the last one put), not averaged: the gradient norms,
    which the engine measures at the interval's last step only. ``bind`` lays the sums and those
    values out in device buffers that a captured step adds into (``trainer.compile=step``).
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Tensor] = {}
        self.bound: tuple[Tensor, Tensor] | None = None

    def add(self, key: str, value: Tensor) -> None:
        value = value.detach().float()
        if key in self.sums:
            self.sums[key] += value
            self.counts[key] += 1
        else:
            self.sums[key] = value.clone()
            self.counts[key] = 1

    def add_all(self, values: dict[str, Tensor]) -> None:
        """Add several scalars; once the keys are known, in one fused kernel (``_foreach_add_``), not one per value."""
        if values.keys() <= self.sums.keys():
            torch._foreach_add_([self.sums[k] for k in values], [v.detach().float() for v in values.values()])
            for k in values:
                self.counts[k] += 1
        else:
            for k, v in values.items():
                self.add(k, v)

    def put(self, key: str, value: Tensor) -> None:
        self.last[key] = value.detach().float()

    def bind(self, sum_keys: list[str], last_keys: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Two device buffers, the sums of ``sum_keys`` and the values of ``last_keys``, holding what the interval has so
        far; the accumulator's entries become views of them. ``count`` adds the host's counts of each captured step."""
        sums, last = torch.zeros(len(sum_keys), device=device), torch.zeros(len(last_keys), device=device)
        for buffer, keys, entries in ((sums, sum_keys, self.sums), (last, last_keys, self.last)):
            for i, key in enumerate(keys):
                if key in entries:
                    buffer[i].copy_(entries[key])
                entries[key] = buffer[i]
        for key in sum_keys:
            self.counts.setdefault(key, 0)
        self.bound = (sums, last)
        return sums, last

    def count(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] += n

    def unbind(self) -> None:
        """The entries own their tensors again (after a captured stretch)."""
        self.sums = {k: v.clone() for k, v in self.sums.items()}
        self.last = {k: v.clone() for k, v in self.last.items()}
        self.bound = None

    def mean(self, extra: dict[str, Tensor] | None = None, reset: bool = True, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The means of the interval (and ``extra`` scalars, read in the same host sync); ``reset`` starts the next interval.

        ``reduce`` maps the stacked values before the read (under DDP: their mean over ranks).
        """
        tensors = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts.get(k)}
        tensors |= self.last | {k: v.float() for k, v in (extra or {}).items()}
        if not tensors:
            return {}
        stacked = torch.stack(list(tensors.values()))
        values = (reduce(stacked) if reduce is not None else stacked).tolist()  # the one host sync
        if reset:
            if self.bound is not None:  # a captured step adds into these buffers: zero them, keep the views
                self.bound[0].zero_()
                self.counts = dict.fromkeys(self.counts, 0)
            else:
                self.sums.clear()
                self.counts.clear()
                self.last.clear()
        return dict(zip(tensors, values))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "counts": dict(self.counts), "last": {k: v.clone() for k, v in self.last.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.sums = dict((state or {}).get("sums", {}))
        self.counts = {k: int(v) for k, v in (state or {}).get("counts", {}).items()}
        self.last = dict((state or {}).get("last", {}))
        self.bound = None


class Trainer:
    def __init__(
        self,
        model: GenerativeModel,
        objective: Objective,
        optimizers: dict[str, torch.optim.Optimizer],
        stream: Stream,
        device: torch.device,
        precision: str,
        run_dir: Path,
        trainer: TrainerSettings,
        logger: LoggerSettings,
        config: dict[str, Any],
        callbacks: list[Hook],
        console: Console | None = None,
        choices: dict[str, str] | None = None,
        ema: EMA | None = None,
        sample_with_ema: bool = True,
        world: World | None = None,
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
        self.console = console or cli_console()
        self.world = world or World()
        self.groups = model.param_groups()
        self.group_params = {name: [p for p in module.parameters()] for name, module in self.groups.items()}
        # the parameters the model itself leaves trainable: phases switch only these (a frozen one,
        # such as a fixed decoder variance, stays frozen), and fit() turns them all back on
        self.switchable = {name: [p for p in params if p.requires_grad] for name, params in self.group_params.items()}
        self.batches_per_step = sum(phase.repeats for phase in objective.phases)
        self.reads = {phase.name: phase.batch for phase in objective.phases}  # what each phase reads of its batch
        self.clip = clip_norms(trainer.grad_clip, list(optimizers))
        # fp16 needs loss scaling (its exponent range is narrow); a disabled scaler passes everything through
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for name in optimizers}
        self.losses = compiled_losses(objective, trainer) if trainer.compile is True else {}
        self.log_keys: dict[str, list[str]] = {}  # the keys each phase's StepOutput logs (seen at its first eager update)
        self.whole: WholeStep | None = None  # trainer.compile=step: the captured step, from the session's second step
        self.captured = False  # the current step ran as the captured region
        self._log_next = False  # the step being run is a logging step (its gradient norms are measured)
        self.step = 0
        self.train_time_s = 0.0
        self.acc = LogAccumulator()
        self.loggers = Loggers()  # the chosen backends, opened by fit() on rank 0 (the other ranks log nothing)
        self.log_params: dict[str, Any] | None = None  # the run's parameters for the backends; None: the flattened config
        self.choices = choices or {}  # the config-group options of the run (model=dcgan ...), for tasks that reload it
        self.ema = ema
        self.sample_with_ema = sample_with_ema
        self.pending: list[str] = []  # hooks of the current step not yet run (a stop skipped them)
        self.stop = StopRequest(self._say)
        self._stop_agreed = False
        self._saved_step: int | None = None
        self.mark, self.paused = (0.0, 0), 0.0  # the clock: (time, step) of the last reading; time of non-training callbacks since
        names = [cb.name for cb in callbacks]
        if len(set(names)) != len(names) or not all(names):
            raise GentrainError(f"callbacks need distinct names (their state is saved under them), got {names}")
        self.hooks: list[Hook] = list(callbacks)
        self.view = LoopView(self)

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "gentrain_version": __version__,
            "step": self.step,
            "train_time_s": self.train_time_s,
            "model": self.model.state_dict(),
            "optimizers": {name: self.whole.portable(name, opt.state_dict()) if self.whole else opt.state_dict() for name, opt in self.optimizers.items()},
            "scalers": {name: s.state_dict() for name, s in self.scalers.items() if s.is_enabled()},
            "stream": self.stream.state_dict(),
            "rng": rng_state(),
            "rng_ranks": self._rank_rngs,
            "world_size": self.world.size,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "pending": list(self.pending),
            "log_interval": self.acc.state_dict(),
            "log_keys": self.log_keys,
            "callbacks": {cb.name: state for cb in self.hooks if (state := cb.state_dict()) is not None},
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
        for name, scaler in self.scalers.items():
            if scaler.is_enabled() and name in ckpt.get("scalers", {}):
                scaler.load_state_dict(ckpt["scalers"][name])
        self.stream.load_state_dict(ckpt["stream"])
        saved_world = int(ckpt.get("world_size", 1))
        ranks = ckpt.get("rng_ranks")
        if saved_world == self.world.size and ranks:
            set_rng_state(ranks[self.world.rank])
        else:
            set_rng_state(ckpt["rng"])
            if saved_world != self.world.size:
                message = (
                    f"checkpoint {source} was written by {saved_world} process(es) and this run has {self.world.size}: "
                    "it continues from the checkpoint's weights and optimizer state, but the batch order and noise differ from an uninterrupted run"
                )
                self._say(message) if self.world.main else None
        self.step = int(ckpt["step"])
        self._saved_step = self.step
        self.train_time_s = float(ckpt.get("train_time_s", 0.0))
        self.pending = list(ckpt.get("pending", []))
        self.acc.load_state_dict(ckpt.get("log_interval"))
        self.log_keys = {k: list(v) for k, v in (ckpt.get("log_keys") or {}).items()}
        states = ckpt.get("callbacks")
        if states is None:  # a checkpoint of gentrain before callbacks kept their own state
            states = {"schedule": ckpt.get("schedulers"), "log": {"final": ckpt.get("final", {})},
                      "evaluate": {**(ckpt.get("evaluation") or {}), "best": ckpt.get("best")}}
        for cb in self.hooks:
            cb.load_state_dict(states.get(cb.name))
        if self.ema is not None:
            if ckpt.get("ema") is None and self.step > 0:
                raise GentrainError(f"checkpoint {source} has no weight average; resume without trainer.ema_decay or from a run that had it")
            self.ema.load_state_dict(ckpt.get("ema"))
        return changes

    def checkpoint(self) -> Path:
        """Save ``last.pt`` (rank 0) unless the model or the current interval's losses are non-finite (checked in one host sync).

        Every rank's RNG state goes into it, so a resume with the same number of processes continues exactly.
        """
        self.interval_means(reset=False)  # the interval goes on: its means are logged at the next log step
        self._rank_rngs = distributed.gather_objects(rng_state(), self.world) if self.world.active else None
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.world.main:
            self.loggers.flush()  # first: a kill after this write must not lose what the backends buffered up to it
            atomic_save(self.state_dict(), path)
            RUN_LOG.info("checkpoint at step %d: %s", self.step, path)
        self._saved_step = self.step
        return path

    _rank_rngs: list[dict[str, Any]] | None = None

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        s, ls = self.settings, self.log_settings
        start_step = self.step
        main = self.world.main
        if main:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            # on resume (start_step > 0) each backend continues the run and drops what a crashed session logged past it where it can;
            # the run's RNGs are kept: MLflow names a new run from Python's global `random`
            with rng_kept():
                self.loggers = open_loggers(ls, self.run_dir, start_step, self._say)
                self.jsonl = JsonlWriter(self.run_dir / "metrics.jsonl")
                params = self.log_params if self.log_params is not None else {k: v for k, v in flatten(self.config).items() if v is not None}
                self.loggers.params(params)
                if start_step == 0:
                    from omegaconf import OmegaConf

                    self.loggers.text("config", "```yaml\n" + OmegaConf.to_yaml(OmegaConf.create(self.config)) + "\n```")
        self.progress = ConsoleProgress(self.console, s.max_steps, start_step, ls.progress and main)
        outside = phase_progress.install(self.progress.phases)  # pictures and evaluation show their progress with the steps'
        session_start = time.perf_counter()
        train_time_before = self.train_time_s
        self.mark, self.paused = (time.perf_counter(), self.step), 0.0
        try:
            # trainer.deterministic: for the steps, pictures and evaluation; under torchrun a rank that dies is named in one line
            with self.stop, deterministic_algorithms(s.deterministic), distributed.rank_failures(self.world):
                if self.pending:  # hooks the interrupted session skipped at its last step
                    RUN_LOG.info("running the %s of step %d that the stopped session skipped", " and ".join(self.pending), self.step)
                    self._run_deferred([h for h in self.hooks if h.name in self.pending], self.step >= s.max_steps)
                    self.checkpoint()  # no longer pending (and best.pt's record is current), even if no step follows
                self.model.train()
                whole = s.compile == "step"
                while self.step < s.max_steps and not self.stopping:
                    for hook in self.hooks:
                        hook.before_step(self.view)
                    self._log_next = (self.step + 1) % ls.every == 0 or self.step + 1 == s.max_steps
                    # from the run's second step: the first runs eager (lazy initialisations; the phases' log keys are seen);
                    # a resumed session captures at once where its checkpoint has the log keys
                    if whole and self.whole is None and self.step >= 1 and self.log_keys.keys() >= set(self.reads):
                        whole = self._start_whole(checked=self.step > start_step)
                    self.captured = self.whole is not None
                    self.whole.run() if self.whole is not None else self._eager_step()
                    self.step += 1
                    self.progress.advance(self.step)
                    self._after_step(self.step == s.max_steps)
                if self.stopping:
                    # the checkpoint of this step (written by its hook, with its pending hooks) unless the stop came before the loop ran
                    path = self.checkpoint() if self._saved_step != self.step else self.run_dir / "checkpoints" / "last.pt"
                    signum = self.stop.signum or 15  # a rank told by another rank stops as if signalled with SIGTERM
                    name = self.stop.name or "SIGTERM (on another rank)"
                    raise Interrupted(
                        f"stopped by {name} at step {self.step}; checkpoint saved to {path}; continue with: gentrain trainer.resume={self.run_dir}",
                        signum,
                    )
        except BaseException as e:  # the backends' runs end FAILED (KILLED when stopped); a finished run ends in the task
            self.loggers.finish("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "FAILED")
            raise
        finally:
            if self.whole is not None:
                self.whole.close()
                self.whole = None
            self.captured = False
            self.progress.close()
            phase_progress.install(outside)
            for params in self.switchable.values():
                for p in params:
                    p.requires_grad_(True)
            self.loggers.flush()
        session = time.perf_counter() - session_start
        return TrainResult(start_step, self.step, self.train_time_s, session, self.train_time_s - train_time_before, self.batches_per_step)

    def clock(self) -> tuple[float, float]:
        """Read the loop's clock: (training time of the run so far, steps per second since the last reading). The time of
        callbacks that are not ``training_time`` (pictures, evaluation) is left out of both."""
        now = time.perf_counter()
        t0, step0 = self.mark
        elapsed = now - t0 - self.paused
        self.paused = 0.0
        self.train_time_s += elapsed
        self.mark = (now, self.step)
        return self.train_time_s, (self.step - step0) / elapsed if elapsed > 0 else float("nan")

    def _set_trainable(self, phase: str) -> None:
        """Only the phase's parameter group builds gradients: no wasted backward through the others."""
        if len(self.groups) > 1:
            for name, params in self.switchable.items():
                for p in params:
                    p.requires_grad_(name == phase)

    def _start_whole(self, checked: bool) -> bool:
        """Capture the step from now on (``trainer.compile=step``), or say in one line why this run stays eager.

        ``checked``: an eager step of this session left its gradients, which show a parameter its phase does not use
        (a resumed session has none: the region's first trace refuses such a parameter, see :meth:`WholeStep.run`)."""
        reason = unsupported(self) or (_unused(self) if checked else "")
        if reason:
            self._say(f"trainer.compile=step: {reason}; this run's steps run eager")
            return False
        self.whole = WholeStep(self, on_failure=self._whole_failed)
        RUN_LOG.info("trainer.compile=step: from step %d each step runs as one %s", self.step + 1,
                     "CUDA graph" if self.device.type == "cuda" else f"torch.compile(fullgraph=True) region ({self.settings.compile_backend})")
        return True

    def _whole_failed(self, reason: str) -> None:
        """The region could not be built (its first trace failed, before it ran): this step and the rest run eager."""
        self._say(f"trainer.compile=step: {reason}; this run's steps run eager")
        self.whole = None
        self.captured = False
        self._eager_step()

    def _eager_step(self) -> None:
        """Every phase and repeat of one step, eagerly (the reference)."""
        for phase in self.objective.phases:
            self._set_trainable(phase.name)
            for _ in range(phase.repeats):
                self._update(phase.name)

    def _update(self, phase: str) -> None:
        """One optimisation of ``phase``: batch, loss, backward, gradients averaged over ranks, clip, step, ``after_update``."""
        batch = self.stream.next(labels_only=True) if self.reads[phase] == "labels" else self.stream.next()
        with autocast(self.device, self.precision):
            out: StepOutput = self.losses.get(phase, self.objective.step)(phase, self.model, batch)
        if phase not in self.log_keys:
            self.log_keys[phase] = list(out.logs)
        opt, scaler = self.optimizers[phase], self.scalers[phase]
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        params = self.group_params[phase]
        distributed.average_gradients(params, self.world)
        scaler.unscale_(opt)
        # without clipping the norm is measured only where it is logged: the interval's last step
        grad_norm = norm_and_clip(params, self.clip[phase], self.device) if self._log_next or not math.isinf(self.clip[phase]) else None
        scaler.step(opt)
        scaler.update()
        self.objective.after_update(phase, self.model)
        self.acc.add_all({f"train/{phase}/{k}": v for k, v in out.logs.items()})
        if self._log_next:  # the norm of the interval's last update of the phase
            self.acc.put(f"train/{phase}/grad_norm", grad_norm)

    def _after_step(self, last: bool) -> None:
        """The hooks due at this step, in order; the deferrable ones (pictures, evaluation) a stop may skip."""
        if self.world.active:
            distributed.broadcast_state(self.model, self.world, buffers_only=True)  # running statistics follow rank 0, as under DDP
        due = [h for h in self.hooks if h.due(self.view, last)]
        deferred = [h for h in due if h.deferrable]
        for hook in due:
            if hook.deferrable:
                if hook is deferred[0]:
                    self._run_deferred(deferred, last)
            else:
                t0 = time.perf_counter()
                hook.after_step(self.view, last)
                if not hook.training_time:
                    self.paused += time.perf_counter() - t0

    def _run_deferred(self, hooks: list[Hook], last: bool) -> None:
        """The deferrable callbacks of this step (pictures, evaluation); a stop skips or cuts them short and leaves them pending."""
        self.pending = [h.name for h in hooks]
        for hook in hooks:
            if self.stopping:
                break
            # a single process may cut a callback short; ranks must finish their collectives together
            self.stop.abortable = not self.world.active
            t0 = time.perf_counter()
            try:
                hook.after_step(self.view, last)
            except HookAborted:
                break
            finally:
                self.stop.abortable = False
                if not hook.training_time:
                    self.paused += time.perf_counter() - t0
            self.pending.remove(hook.name)

    @property
    def stopping(self) -> bool:
        """A stop was requested (under torchrun: on some rank, as agreed at the last log or checkpoint step)."""
        return self._stop_agreed if self.world.active else self.stop.requested

    def average(self) -> EMA | None:
        """The weight average samples and evaluation use (when there is one and eval.use_ema)."""
        return self.ema if self.sample_with_ema else None

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False)
        RUN_LOG.warning(message)

    # ---- interval means and the non-finite check ---------------------------------------------
    def _finite(self) -> Tensor:
        """One device bool: every floating parameter and buffer of the model (and of its weight average) is finite."""
        modules = [self.model] if self.ema is None or self.ema.module is None else [self.model, self.ema.module]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        return torch.stack([t.isfinite().all() for t in tensors]).all() if tensors else torch.ones((), dtype=torch.bool)

    def interval_means(self, reset: bool) -> dict[str, float]:
        """The interval's means over ranks, read in one host sync with the model's finiteness; a non-finite loss or model stops the run.

        Under torchrun the same sync carries the ranks' stop requests, so all ranks stop at the same step.
        """
        extra = {"finite": self._finite()}
        if self.world.active:
            extra["stop"] = torch.tensor(float(self.stop.requested), device=self.device)
        values = self.acc.mean(extra, reset=reset, reduce=lambda t: distributed.mean_over_ranks(t, self.world))
        finite = values.pop("finite") == 1.0  # a mean over ranks: 1 only when every rank is finite
        if self.world.active:
            self._stop_agreed = values.pop("stop") > 0 or self._stop_agreed
        skip_scaled = any(s.is_enabled() for s in self.scalers.values())  # fp16: the scaler skips steps with inf gradients
        bad = sorted(
            k for k, v in values.items() if not math.isfinite(v) and k != "train/steps_per_s" and not (skip_scaled and k.endswith("grad_norm"))
        )
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


def _unused(trainer: Trainer) -> str:
    """After an eager step: a trainable parameter its phase gave no gradient (the captured step updates every one)."""
    for phase, params in trainer.switchable.items():
        if phase in trainer.optimizers and any(p.grad is None for p in params):
            return f"a trainable parameter of phase {phase} gets no gradient from its loss"
    return ""


def clip_norms(setting: Any, phases: list[str]) -> dict[str, float]:
    """``trainer.grad_clip`` (null, a max norm for every phase, or ``{phase: max norm}``) as a max norm per phase (inf: none)."""
    if setting is None:
        return {p: math.inf for p in phases}
    per_phase = setting if isinstance(setting, dict) else {p: setting for p in phases}
    unknown = sorted(set(per_phase) - set(phases))
    if unknown:
        raise GentrainError(f"trainer.grad_clip names phase(s) {unknown}, and this objective's phases are {phases}; e.g. trainer.grad_clip={{{phases[0]}: 1.0}}")
    norms = {}
    for phase in phases:
        value = per_phase.get(phase)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise GentrainError(f"trainer.grad_clip for phase {phase} must be a positive max norm or null, got {value!r}; e.g. trainer.grad_clip=1.0")
        norms[phase] = math.inf if value is None else float(value)
    return norms


def compiled_losses(objective: Objective, settings: TrainerSettings) -> dict[str, Callable[..., StepOutput]]:
    """``objective.step`` compiled by ``torch.compile`` for each phase the objective allows (eager for the others)."""
    # static shapes: the batch size is fixed during training (and randn cannot take a symbolic size)
    compiled = torch.compile(
        objective.step, mode=None if settings.compile_mode == "default" else settings.compile_mode, backend=settings.compile_backend, dynamic=False,
    )
    eager = [p.name for p in objective.phases if p.name in objective.eager_phases]
    if eager:
        RUN_LOG.info("trainer.compile: phase(s) %s stay eager (%s)", eager, objective.eager_reason)
    return {p.name: compiled for p in objective.phases if p.name not in objective.eager_phases}


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any], phase: str) -> list[str]:
    """Load ``state`` into ``opt``, then put back the hyperparameters it was built with (the current config's).

    torch's ``load_state_dict`` restores the saved hyperparameters too; a learning rate given on
    resume would be silently ignored. Returns what changed, e.g. ``model.optimizer.G.lr: 1000 -> 0.0002``.
    """
    configured = [{k: v for k, v in g.items() if k not in ("params", "initial_lr")} for g in opt.param_groups]
    base = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]  # the configured rate (a scheduler keeps it as initial_lr)
    opt.load_state_dict(state)
    changes = []
    for group, conf, configured_lr in zip(opt.param_groups, configured, base):
        # the schedule's factor at the saved step (1 without a schedule), applied to the configured rate
        saved_base, state_lr = group.get("initial_lr", group["lr"]), group["lr"]
        factor = state_lr / saved_base if saved_base else 1.0
        for key, value in conf.items():
            saved = saved_base if key == "lr" else group.get(key)
            if key == "lr":
                value = configured_lr
            if saved != value and not (isinstance(saved, (tuple, list)) and list(saved) == list(value)):
                changes.append(f"model.optimizer.{phase}.{key}: {saved} -> {value}")
            group[key] = value
        # unchanged rate: the saved value exactly (a product could differ in the last bit and break an exact resume)
        group["lr"] = state_lr if configured_lr == saved_base else configured_lr * factor
        if "initial_lr" in group:
            group["initial_lr"] = configured_lr
    return list(dict.fromkeys(changes))
