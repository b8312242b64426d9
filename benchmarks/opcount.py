"""Operations per training step: what the host issues to the device for one DCGAN-NS step (28x28, batch 64).

    python benchmarks/opcount.py                       # this checkout: eager engine, plain loop, the whole-step graph
    python benchmarks/opcount.py --out /tmp/ops.json   # also as JSON (benchmarks/results/opcount_cpu.md by default)

On a GPU a small step is launch-bound: its time is about the number of kernels the host launches.
This counts them on the CPU, where every device operation also goes through torch's dispatcher:

- **eager engine** (``trainer.compile=false``): a ``TorchDispatchMode`` counts the non-view aten
  operations between the start and the end of one step in the middle of a run (not a logging or
  checkpoint step), from inside a callback (``callbacks.opcount``), so schedules, the step's phases,
  the optimizer steps, the log accumulation and the weight average are in it. The optimizers are
  ``fused=true`` as the engine builds them on CUDA.
- **plain loop**: the same counter over one step of ``benchmarks/throughput.py``'s plain DCGAN loop
  (pytorch/examples' dcgan, ``foreach`` Adam as on CUDA, ``loss.item()`` per step).
- **whole step** (``trainer.compile=step``): the operations in the one graph that holds the step
  (counted in the AOT graph Dynamo and AOT autograd build, views excluded). On CUDA this graph is
  captured and replayed as one CUDA graph: one launch from the host per step, whatever its count.

View operations (``view``, ``expand``, ``t``, ``as_strided``, ...) launch no kernel and are left out;
``.item()`` reads (``_local_scalar_dense``) are counted apart as host reads: on the CPU they include
the optimizers' reads of their host-side step counters, which are no device work on a GPU either.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from throughput import data_source, endless, plain_step_fn  # noqa: E402

from gentrain import __version__ as gentrain_version  # noqa: E402
from gentrain.build import build, build_model, compose, seed_everything  # noqa: E402
from gentrain.engine.hooks import Hook, LoopView  # noqa: E402
from gentrain.tasks import train  # noqa: E402

#: The step counted: in the middle of the run, away from logging (every 50) and checkpoint steps.
COUNTED_STEP = 7


def is_view(func: Any) -> bool:
    schema = getattr(func, "_schema", None)
    return bool(schema is not None and func.is_view) or func.__name__.split(".")[0] in ("view", "_unsafe_view", "alias", "detach")


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.__name__.startswith("_local_scalar_dense"):
            self.host_reads += 1  # .item(): a read to the host (a sync on a GPU tensor), not a kernel
        elif not is_view(func):
            self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


class CountStep(Hook):
    """A callback that counts one step's operations (``callbacks.opcount={_target_: opcount.CountStep}``)."""

    counted: Counter[str] = Counter()
    reads = 0

    def __init__(self, step: int = COUNTED_STEP) -> None:
        self.at = step
        self.mode: OpCounter | None = None

    def before_step(self, view: LoopView) -> None:
        if view.step == self.at - 1:
            self.mode = OpCounter()
            self.mode.__enter__()

    def after_step(self, view: LoopView, last: bool) -> None:
        if self.mode is not None and view.step == self.at:
            self.mode.__exit__(None, None, None)
            CountStep.counted = self.mode.ops
            CountStep.reads = self.mode.host_reads
            self.mode = None


def engine_ops(overrides: list[str]) -> tuple[Counter[str], int]:
    cfg = compose([*overrides, f"+callbacks.opcount._target_={__name__}.CountStep"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, run_dir=Path(tmp) / "run", console=Console(file=io.StringIO()))
    return CountStep.counted, CountStep.reads


def plain_ops(overrides: list[str]) -> tuple[Counter[str], int]:
    cfg = compose([*overrides, "+model.optimizer.D.foreach=true", "+model.optimizer.G.foreach=true"])  # torch's default for CUDA tensors
    seed_everything(0)
    model = build_model(cfg).train()
    x = build(cfg.dataset, "dataset").load("train").x.float().div(127.5).sub(1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=int(cfg.trainer.batch_size), shuffle=True, drop_last=True)
    history: list = []
    step = plain_step_fn("gan", model, cfg, torch.device("cpu"), False, history)
    data = endless(loader, torch.device("cpu"))
    for _ in range(COUNTED_STEP - 1):
        step(data)
    batch = next(data)  # the batch fetch (host-side DataLoader work) is not device work: drawn outside the count
    with OpCounter() as counter:
        step(iter([batch]))
    return counter.ops, counter.host_reads


def whole_step_ops(overrides: list[str]) -> tuple[Counter[str], int]:
    """The aten operations of the whole-step graph (AOT autograd's graph, views excluded)."""
    from torch._dynamo.backends.common import aot_autograd

    counted: Counter[str] = Counter()

    def compiler(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        for node in gm.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and not is_view(node.target):
                counted[node.target.__name__] += 1
        return gm

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=compiler)
    import gentrain.engine.wholestep as ws

    original = torch.compile

    def compile_with_counter(fn: Any, **kwargs: Any) -> Any:
        kwargs["backend"] = backend
        return original(fn, **kwargs)

    ws.torch.compile = compile_with_counter  # type: ignore[assignment]
    try:
        cfg = compose([*overrides, "trainer.compile=step", "trainer.max_steps=3"])
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, run_dir=Path(tmp) / "run", console=Console(file=io.StringIO()))
    finally:
        ws.torch.compile = original  # type: ignore[assignment]
    return counted, 0  # a host read inside the region would be a graph break, which fullgraph refuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--label", default="this checkout", help="what this checkout is, for the results (e.g. 'before: 6665655')")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "opcount_cpu.jsonl"), help="a JSON line is appended here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="gentrain_opcount_"))
    data_overrides, data_text = data_source(tmp / "data", 0)
    base = ["model=dcgan", "objective=non_saturating", *data_overrides, "device=cpu", "seed=0", f"trainer.batch_size={args.batch_size}",
            "eval.metrics=[]", "logger.samples_every=0", f"trainer.max_steps={COUNTED_STEP + 2}"]
    fused = ["+model.optimizer.D.fused=true", "+model.optimizer.G.fused=true"]
    result: dict[str, Any] = {"label": args.label, "data": data_text, "batch_size": args.batch_size, "step": COUNTED_STEP,
                              "torch": torch.__version__, "gentrain": gentrain_version, "python": platform.python_version()}
    ops = {"eager engine": engine_ops([*base, *fused]), "plain loop": plain_ops(base)}
    try:
        ops["whole step (one graph)"] = whole_step_ops([*base, *fused])
    except Exception as e:  # noqa: BLE001 - a checkout without the mode
        result["whole_step"] = f"not available: {str(e).strip().splitlines()[0][:200]}"
    for name, (counter, reads) in ops.items():
        result[name] = {"total": sum(counter.values()), "host_reads": reads, "by_op": dict(counter.most_common())}
        print(f"{name}: {sum(counter.values())} non-view operations and {reads} host reads per step; top: {counter.most_common(6)}")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
