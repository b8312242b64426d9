"""Data parallelism over processes started by ``torchrun``: one process per device, gradients averaged.

``torchrun --nproc_per_node=N gentrain ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init` then joins the process group (NCCL on CUDA, gloo on the CPU) and gives each process
its device (``cuda:LOCAL_RANK``). Rank 0 alone writes the run directory; every rank trains.

Gradients are averaged the way ``DistributedDataParallel`` averages them (a sum over ranks divided
by the world size, once per backward), with one flat all-reduce of the phase's gradients after each
backward, as NVIDIA's StyleGAN2-ADA and StyleGAN3 training loops do
(github.com/NVlabs/stylegan2-ada-pytorch, ``training/training_loop.py``). Their reason is ours:
``DistributedDataParallel``'s reducer fires inside ``backward()`` for the parameters of the module
it wraps, and the phases of an adversarial step (D, then G through a frozen D) and the gradient
penalty's double backward (``torch.autograd.grad(create_graph=True)``, which DDP documents as
unsupported) break its one-forward-one-backward assumption. An explicit all-reduce is correct for
every objective, unused parameters included (their gradient counts as zero on every rank). Buffers
(batch-norm running statistics) follow rank 0's after every step, as DDP's ``broadcast_buffers``
does; ``model.sync_batchnorm=true`` computes the batch statistics over all ranks instead.

When a rank dies, the others learn it from a collective that fails (gloo: the connection is reset;
NCCL: an error or the timeout). :func:`rank_failures` turns that into one line in rank 0's
``gentrain.log`` and on the terminal, naming the rank where it can be known: torchrun's other
workers on this node are this process's siblings, so a local rank whose process is gone is named.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from gentrain.engine import signals
from gentrain.errors import GentrainError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The world ``torchrun`` (or SLURM's ``srun`` with several tasks) describes in the environment; one process when none does.

    Under SLURM without torchrun (e.g. Hydra's submitit launcher with ``tasks_per_node=N``) each
    task is a rank: ``SLURM_NTASKS``, ``SLURM_PROCID`` and ``SLURM_LOCALID`` give the world, and
    the node that launched the tasks (``SLURM_LAUNCH_NODE_IPADDR``) hosts the rendezvous on
    ``MASTER_PORT`` (default 29500 + the job id modulo 1000) unless ``MASTER_ADDR`` is set.
    """
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ:
        os.environ.update(
            WORLD_SIZE=os.environ["SLURM_NTASKS"], RANK=os.environ["SLURM_PROCID"], LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        )
        os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 1000))
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise GentrainError("WORLD_SIZE, RANK and LOCAL_RANK must be integers; start multi-process runs with torchrun") from None
    return World(rank, size, local)


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (once per process) and return this rank's device."""
    if not world.active:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise GentrainError(
                f"LOCAL_RANK={world.local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                f"start at most {torch.cuda.device_count()} processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    if not world.main:  # rank 0 prints the job's information lines; the other ranks print only warnings and errors
        logging.getLogger("gentrain").setLevel(logging.WARNING)
    return device


def _gone_local_ranks(world: World) -> list[int] | None:
    """The ranks on this node whose process has ended (torchrun's workers are siblings), or None where that cannot be read."""
    try:
        local_size = int(os.environ["LOCAL_WORLD_SIZE"])
        first = world.rank - world.local_rank
        parent = os.getppid()
        alive = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                state, ppid = stat.rsplit(")", 1)[1].split()[:2]
                if int(ppid) != parent or state == "Z":  # a zombie has died and not yet been collected
                    continue
                env = dict(item.split("=", 1) for item in (proc / "environ").read_text(errors="replace").split("\0") if "=" in item)
                alive.add(int(env["RANK"]))
            except (OSError, ValueError, KeyError, IndexError):
                continue
    except (KeyError, ValueError, OSError):
        return None
    alive.add(world.rank)
    return [r for r in range(first, first + local_size) if r not in alive]


def _from_collective(e: BaseException) -> bool:
    """Raised inside torch.distributed (a collective or the process group), not by the training code."""
    tb = e.__traceback__
    while tb is not None:
        if f"torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return isinstance(e, getattr(dist, "DistError", ()))


@contextlib.contextmanager
def rank_failures(world: World) -> Iterator[None]:
    """A collective that fails because another rank died becomes one line (a GentrainError: rank 0 logs and prints it) naming the rank.

    torchrun sends the surviving ranks SIGTERM soon after; from the failure on, a signal changes nothing, so the line reaches the log.
    """
    try:
        yield
    except RuntimeError as e:
        if not world.active or not _from_collective(e):
            raise
        gone = _gone_local_ranks(world)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        who = (f"rank {', '.join(map(str, gone))} of {world.size} failed or was stopped (its process has ended)" if gone
               else f"another rank of the {world.size} stopped or failed")
        message = (f"{who}; rank {world.rank} stops too (the process group reported: {first[:300]}); "
                   "torchrun's summary names the failed rank, and trainer.resume continues from the last checkpoint")
        signals.ending()
        raise GentrainError(message) from None


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> World:
    """The world of the initialised process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def average_gradients(params: list[nn.Parameter], world: World) -> None:
    """Replace each gradient by its mean over ranks (one flat all-reduce; a missing gradient counts as zero)."""
    if not world.active or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(world.size)
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def broadcast_state(module: nn.Module, world: World, buffers_only: bool = False) -> None:
    """Make every rank hold rank 0's parameters (unless ``buffers_only``) and buffers."""
    if not world.active:
        return
    tensors = [*([] if buffers_only else [p.data for p in module.parameters()]), *module.buffers()]
    for dtype in sorted({t.dtype for t in tensors}, key=str):  # one flat broadcast per dtype
        same = [t for t in tensors if t.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.broadcast(flat, src=0)
        for t, value in zip(same, _unflatten_dense_tensors(flat, same)):
            t.copy_(value)


def mean_over_ranks(t: Tensor, world: World) -> Tensor:
    """The mean of ``t`` over ranks (a no-op for one process)."""
    if not world.active:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t.div_(world.size)


def any_rank(flag: bool, device: torch.device, world: World) -> bool:
    """True on every rank when it is True on any (one small all-reduce and a host read)."""
    if not world.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (on every rank)."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def gather_rows(t: Tensor, world: World) -> Tensor:
    """Rows of ``t`` from every rank, concatenated in rank order (the ranks may hold different counts)."""
    if not world.active:
        return t
    home = t.device
    if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    counts = gather_objects(int(t.shape[0]), world)
    padded = torch.zeros(max(counts), *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(home)


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


__all__ = [
    "World", "any_rank", "average_gradients", "barrier", "broadcast_state", "current", "from_env", "gather_objects", "gather_rows",
    "init", "mean_over_ranks", "rank_failures", "shutdown",
]
