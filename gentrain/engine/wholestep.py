"""``trainer.compile=step``: the whole training step as one captured region.

One region holds every phase and repeat of a step: the batches, gathered on the device from the
stream's window at a device-side offset (:meth:`BatchStream.reserve`); the objective's losses; per-
phase gradients by ``torch.autograd.grad(loss, parameters of the phase)`` (no ``requires_grad``
toggling); their norm and the clipping; the optimizer steps (capturable, with the learning rate a
device tensor the schedules fill); ``after_update``; the log sums, added into one device buffer; and
the callbacks' every-step device work (the weight average, :meth:`Hook.step_part`). The host only
keeps count between logging intervals: it never waits on the device.

- **CUDA**: the region is captured once as a CUDA graph (``torch.cuda.graph``) after warm-up steps
  on a side stream, then replayed; the gradient penalty's double backward is captured like any other
  kernel. Optimizers use their fused kernel where they have one (Adam, AdamW, SGD), else foreach.
- **CPU** (and any other device): the region is ``torch.compile(fullgraph=True)``; Dynamo traces
  ``autograd.grad`` (double backward included) and the optimizers' foreach update; random numbers
  come from torch's own generator (inductor's ``fallback_random``), so the compiled step draws the
  noise eager draws.

The first step of every session runs eager (lazy initialisations, such as Glow's data-dependent
actnorm and the weight average's copy, happen there), and so does every step where a condition of
the mode fails; :func:`unsupported` names it in one line and the run goes on eager. Checkpoints hold
what eager would hold (learning rates as numbers, the configured optimizer flags, the stream's order
and position), so a run may stop in one mode and resume in the other; the same mode resumes exactly.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gentrain.engine.device import autocast
from gentrain.engine.gradients import norm_and_clip
from gentrain.engine.loader import BatchStream
from gentrain.models.base import Scheduled
from gentrain.objectives.base import Batch
from gentrain.shared import to_model_space

if TYPE_CHECKING:
    from gentrain.engine.trainer import Trainer


#: Steps run eagerly on a side stream before a CUDA graph is captured (cuDNN and cuBLAS pick their kernels, the caching
#: allocator settles); they are real training steps.
CUDA_WARMUP = 3
#: The optimizer flags the mode changes, put back in checkpoints and at the end of the run.
_FLAGS = ("foreach", "fused", "capturable")


def unsupported(trainer: Trainer) -> str:
    """Why ``trainer.compile=step`` cannot capture this run's step ("" where it can)."""
    objective = trainer.objective
    if objective.whole_step_unsupported:
        return f"{type(objective).__name__}: {objective.whole_step_unsupported}"
    if isinstance(trainer.model, Scheduled):
        return f"{type(trainer.model).__name__} changes its networks as training goes (set_step), which a captured step would freeze"
    if trainer.device.type != "cuda" and not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        return f"torch {torch.__version__} cannot trace torch.autograd.grad into a compiled graph (torch 2.14 can); on CUDA the step is a CUDA graph and needs no tracing"
    if trainer.world.active:
        return "under torchrun the gradients are averaged over ranks between backward and step"
    if trainer.precision == "fp16":
        return "fp16 loss scaling decides on the host whether to skip a step; use device.precision=bf16 or fp32"
    stream = trainer.stream
    if not isinstance(stream, BatchStream):
        return "the data streams through a DataLoader; the captured step gathers its batches from data held on the device"
    if stream.x.device != trainer.device:
        return "the data is in host memory (device.data_on_device=false or too large); the captured step gathers its batches on the device"
    if trainer.batches_per_step * stream.batch_size > (stream.num_examples // stream.batch_size) * stream.batch_size:
        return f"one step takes {trainer.batches_per_step} batches, more than one epoch of the training data holds"
    for name, opt in trainer.optimizers.items():
        if not type(opt).__module__.startswith("torch.optim") or "foreach" not in opt.defaults:
            return f"the optimizer of phase {name} ({type(opt).__name__}) is not a torch.optim optimizer with a foreach update"
        if opt.defaults.get("differentiable"):
            return f"the optimizer of phase {name} is differentiable=true"
    return ""


class WholeStep:
    """The captured step of a :class:`~gentrain.engine.trainer.Trainer`; built after the session's first (eager) step."""

    def __init__(self, trainer: Trainer, on_failure: Callable[[str], None] | None = None) -> None:
        self.t = trainer
        self.on_failure = on_failure
        self.device = trainer.device
        self.cuda = self.device.type == "cuda"
        stream = trainer.stream
        assert isinstance(stream, BatchStream)
        self.stream = stream
        self.phases = [(p.name, p.repeats, p.batch) for p in trainer.objective.phases]
        self.params = {name: list(params) for name, params in trainer.switchable.items() if name in trainer.optimizers}
        # the optimizers as the mode runs them: capturable, the rate a device tensor; what the config had is kept
        self.saved = {name: [{k: g[k] for k in _FLAGS if k in g} for g in opt.param_groups] for name, opt in trainer.optimizers.items()}
        for opt in trainer.optimizers.values():
            fused = self.cuda and "fused" in opt.defaults and _fused_ok(opt)
            for g in opt.param_groups:
                g["foreach"], g["capturable"] = not fused, True
                if "fused" in g:
                    g["fused"] = fused
                # float64 on the CPU keeps the configured rate exactly; the fused CUDA kernels take float32
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32 if self.cuda else torch.float64, device=self.device if self.cuda else "cpu")
            for state in opt.state.values():  # capturable keeps the step count on the parameter's device
                if "step" in state and isinstance(state["step"], Tensor):
                    state["step"] = state["step"].to(self.device, torch.float32)
        for params in trainer.switchable.values():  # every phase takes its own gradients: no toggling
            for p in params:
                p.requires_grad_(True)
        self.raw_step = {name: inspect.unwrap(type(opt).step) for name, opt in trainer.optimizers.items()}
        # static gradient tensors the region copies into (the optimizers read p.grad)
        for params in self.params.values():
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        # the log sums: one device buffer whose slots are the accumulator's sums; the gradient norms: the last step's
        self.counts = {f"train/{phase}/{k}": repeats for phase, repeats, _ in self.phases for k in trainer.log_keys[phase]}  # per step
        norm_keys = [f"train/{phase}/grad_norm" for phase, _, _ in self.phases]
        self.sums, self.norms = trainer.acc.bind(list(self.counts), norm_keys, self.device)
        self.slots = {key: i for i, key in enumerate(self.counts)}
        self.window, self.offset = stream.open_window()
        batch = stream.batch_size
        self.arange = torch.arange(trainer.batches_per_step * batch, device=self.device).view(trainer.batches_per_step, batch)
        self.parts: list[Callable[[], None]] = [part for hook in trainer.hooks if (part := hook.step_part()) is not None]
        self.graph: Any = None
        self.calls = 0
        self.warm = 0
        if self.cuda:
            self.side = torch.cuda.Stream(self.device)
        else:
            settings = trainer.settings
            mode = None if settings.compile_mode in ("default", "reduce-overhead") else settings.compile_mode
            # a code object of its own: Dynamo caches compiled code per code object, and a process that trains several runs
            # (a sweep, the tests) would otherwise pile every run's entries onto one and hit its recompile limit
            body = types.FunctionType(WholeStep.body.__code__.replace(co_name=f"whole_step_{id(self):x}"), WholeStep.body.__globals__)
            self.fn = torch.compile(types.MethodType(body, self), fullgraph=True, dynamic=False, backend=settings.compile_backend, mode=mode)

    # ---- the region --------------------------------------------------------------------------
    def body(self) -> None:
        """One step, device work only: batches, losses, gradients, clipping, optimizer steps, log sums, step parts."""
        t, x, y = self.t, self.stream.x, self.stream.y
        sums: dict[int, Tensor] = {}
        norms: list[Tensor] = []
        k = 0
        for phase, repeats, reads in self.phases:
            params, opt = self.params[phase], t.optimizers[phase]
            for _ in range(repeats):
                idx = self.window[self.offset + self.arange[k]]
                k += 1
                labels = None if y is None else y.index_select(0, idx)
                batch = Batch(None, labels, n=self.stream.batch_size, on=self.device) if reads == "labels" else Batch(to_model_space(x.index_select(0, idx)), labels)
                with autocast(self.device, t.precision):
                    out = t.objective.step(phase, t.model, batch)
                torch._foreach_copy_([p.grad for p in params], torch.autograd.grad(out.loss, params))
                norm = norm_and_clip(params, t.clip[phase], self.device)  # eager's rule
                with torch.no_grad():
                    self.raw_step[phase](opt)
                t.objective.after_update(phase, t.model)
                for name, value in out.logs.items():
                    slot = self.slots[f"train/{phase}/{name}"]
                    value = value.detach().float()
                    sums[slot] = sums[slot] + value if slot in sums else value
            norms.append(norm)
        with torch.no_grad():
            self.sums.add_(torch.stack([sums[i] for i in range(len(sums))]))
            self.norms.copy_(torch.stack(norms))
            for part in self.parts:
                part()
            self.offset.add_(k * self.stream.batch_size)

    # ---- the loop's side ---------------------------------------------------------------------
    def run(self) -> None:
        """One training step through the region: host bookkeeping, then the graph's replay or the compiled call."""
        first = not self.cuda and self.calls == 0
        saved = self.stream.state_dict() if first else None
        self.stream.reserve(self.t.batches_per_step)
        if self.cuda:
            self._run_cuda()
        else:
            try:
                with torch._dynamo.config.patch(trace_autograd_ops=True), torch._inductor.config.patch(fallback_random=True):
                    self.fn()
            except Exception as e:  # the first call traces before it runs anything: nothing has changed but the host's counts
                if not first or self.on_failure is None:
                    raise
                self.stream.load_state_dict(saved)
                self.close()
                self.on_failure(_first_line(e))
                return
        self.calls += 1
        self.stream.settle()
        self.t.acc.count(self.counts)

    def _run_cuda(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.warm < CUDA_WARMUP:  # real steps, on a side stream as torch.cuda.graph's documentation asks
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                self.body()
            torch.cuda.current_stream(self.device).wait_stream(self.side)
            self.warm += 1
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.body()  # recorded, not run
        self.graph = graph
        graph.replay()

    def portable(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """The optimizer state as eager keeps it: the rates as numbers, the configured flags (for a checkpoint)."""
        groups = []
        for group, flags in zip(state["param_groups"], self.saved[name]):
            group = dict(group)
            group.update(flags)
            if isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])
            groups.append(group)
        return {**state, "param_groups": groups}

    def close(self) -> None:
        """Back to eager: the optimizers' configured flags and numeric rates, the accumulator's own tensors."""
        for name, opt in self.t.optimizers.items():
            for group, flags in zip(opt.param_groups, self.saved[name]):
                group.update(flags)
                if isinstance(group["lr"], Tensor):
                    group["lr"] = float(group["lr"])
            if not any(g.get("capturable") or g.get("fused") for g in opt.param_groups):
                for state in opt.state.values():  # eager's non-capturable update counts steps on the host
                    if "step" in state and isinstance(state["step"], Tensor):
                        state["step"] = state["step"].to("cpu", torch.float32)
        self.t.acc.unbind()


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _fused_ok(opt: torch.optim.Optimizer) -> bool:
    """The fused kernel takes every parameter (floating, on CUDA) of ``opt``."""
    return all(p.is_cuda and p.is_floating_point() for g in opt.param_groups for p in g["params"])


__all__ = ["CUDA_WARMUP", "WholeStep", "unsupported"]
