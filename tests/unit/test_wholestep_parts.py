"""The parts of the whole-step mode that are plain bookkeeping: the stream's window, the bound log sums, the in-step EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gentrain.data.base import DataSplit
from gentrain.engine.ema import EMA
from gentrain.engine.loader import BatchStream
from gentrain.engine.trainer import LogAccumulator


@pytest.mark.parametrize("n,batch,k", [(100, 16, 2), (64, 8, 8), (50, 7, 3), (33, 11, 3)])
def test_the_window_serves_the_batches_next_serves_and_keeps_its_state(n, batch, k):
    """k batches per step gathered at a device offset, across several epochs: the same indices as ``next()``, and after
    every step the same state (order, position, epoch, generator) that a checkpoint saves."""
    data = DataSplit(torch.arange(n, dtype=torch.uint8).view(n, 1), torch.arange(n))
    eager, whole = (BatchStream(data, batch, torch.device("cpu"), seed=3) for _ in range(2))
    eager.next(), whole.next()  # the run's first step is eager in both modes
    window, offset = whole.open_window()
    arange = torch.arange(k * batch).view(k, batch)
    for _ in range(4 * n // (k * batch) + 3):
        expected = [eager.next().y for _ in range(k)]
        whole.reserve(k)
        got = [whole.y.index_select(0, window[offset + arange[j]]) for j in range(k)]  # what the region gathers
        offset.add_(k * batch)  # the region's own advance
        whole.settle()
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
        a, b = eager.state_dict(), whole.state_dict()
        assert (a["pos"], a["epoch"]) == (b["pos"], b["epoch"]) and torch.equal(a["perm"], b["perm"]) and torch.equal(a["generator"], b["generator"])
        assert int(offset) == whole.pos


def test_a_labels_only_batch_skips_the_images_and_keeps_the_order():
    data = DataSplit(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20))
    a, b = (BatchStream(data, 4, torch.device("cpu"), seed=0) for _ in range(2))
    labels_only = b.next(labels_only=True)
    full = a.next()
    assert labels_only.x is None and torch.equal(labels_only.y, full.y) and (labels_only.size, labels_only.device) == (4, full.device)
    assert torch.equal(a.next().y, b.next().y)


def test_bound_sums_keep_the_interval_and_the_last_values():
    acc = LogAccumulator()
    acc.add_all({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    acc.put("n", torch.tensor(9.0))
    sums, last = acc.bind(["a", "b", "c"], ["n"], torch.device("cpu"))
    assert sums.tolist() == [1.0, 4.0, 0.0] and last.tolist() == [9.0]
    sums.add_(torch.tensor([3.0, 2.0, 5.0]))  # a captured step's sums
    last.copy_(torch.tensor([7.0]))
    acc.count({"a": 1, "b": 1, "c": 1})
    assert acc.mean(reset=True) == {"a": 2.0, "b": 3.0, "c": 5.0, "n": 7.0}
    assert sums.tolist() == [0.0, 0.0, 0.0]  # zeroed in place: the region keeps adding into the same buffer
    sums.add_(torch.tensor([1.0, 1.0, 1.0]))
    acc.count({"a": 2, "b": 2, "c": 2})
    state = acc.state_dict()
    acc.unbind()
    sums.zero_()  # the accumulator no longer reads the buffer
    assert acc.mean(reset=False) == {"a": 0.5, "b": 0.5, "c": 0.5, "n": 7.0}
    fresh = LogAccumulator()
    fresh.load_state_dict(state)
    assert fresh.mean() == {"a": 0.5, "b": 0.5, "c": 0.5, "n": 7.0}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def ema_target(self) -> str:
        return "generator"


@pytest.mark.parametrize("warmup", [True, False])
def test_the_in_step_average_is_the_eager_average(warmup):
    torch.manual_seed(0)
    model = Tiny()
    eager, inside = EMA(model, 0.9, warmup), EMA(copy.deepcopy(model), 0.9, warmup)
    inside._source = eager._source  # one live network, two averages
    eager.update(), inside.update()  # the first update takes the copy (eagerly, in both modes)
    inside.start_in_step()
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.generator[1].num_batches_tracked += 1
        eager.update()
        inside.update_in_step()
        inside.counted()
    assert eager.updates == inside.updates == 6
    for (name, a), b in zip(eager.module.state_dict().items(), inside.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
