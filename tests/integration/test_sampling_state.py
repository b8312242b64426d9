"""The weights, mode and noise samples are drawn with: one sampling state for pictures, evaluation, task=eval and
task=sample; the weight average's own statistics and warm-up; trainable flags; the batch order's generator."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.data.base import DataSplit
from gentrain.engine.ema import EMA
from gentrain.engine.loader import BatchStream
from gentrain.engine.trainer import Trainer
from gentrain.families.gan.base import AdversarialModel
from gentrain.families.gan.models import GanMLP
from gentrain.sampling import sample_batches, sampling_state
from gentrain.tasks import sample
from gentrain.tasks.training import default_callbacks, prepare
from test_metrics import TinyExtractor


def modes(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules()}


def test_samples_after_an_in_training_evaluation_use_the_average_in_eval_mode(train_run, monkeypatch, tmp_path):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    seen, original = [], AdversarialModel.sample_grid

    def sample_grid(self, n, generator=None):
        seen.append(modes(self.generator))
        return original(self, n, generator)

    monkeypatch.setattr(AdversarialModel, "sample_grid", sample_grid)
    # samples at steps 2, 4, 6; evaluations (which swap the average in) at 2, 4, 6 after them
    train_run(tiny_overrides("dcgan", "digits", steps=6, extra=["trainer.ema_decay=0.9", "eval.metrics=[fid32]", "eval.every=2", "eval.batch_size=16"]))
    assert seen == [{False}] * 3  # batch statistics never leak into a sample grid


def test_sampling_state_swaps_the_average_in_and_restores_weights_flags_and_rng():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8, 8), d_widths=(8,))
    ema = EMA(model, decay=0.9)
    ema.update()
    live = model.generator
    model.train()
    model.discriminator.eval()  # mixed flags must come back as they were, module by module
    rng = torch.get_rng_state()
    with sampling_state(model, ema):
        assert model.generator is ema.module and modes(model) == {False}
        torch.randn(3)  # anything drawn inside comes from a forked stream
    assert model.generator is live and modes(model.generator) == {True} and modes(model.discriminator) == {False} and model.training
    assert modes(ema.module) == {False} and torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(RuntimeError), sampling_state(model, ema):
        raise RuntimeError  # an error inside (e.g. a stop cutting an evaluation short) restores everything too
    assert model.generator is live and modes(model.generator) == {True}


def test_the_average_has_its_own_batch_norm_statistics_and_warms_up():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8, 8), d_widths=(8,))  # batch norm in G
    ema = EMA(model, decay=0.99)
    bn = next(m for m in model.generator.modules() if isinstance(m, nn.BatchNorm1d))
    ema.update()  # the copy
    expected_mean, decays = bn.running_mean.clone(), []
    for t in range(30):
        with torch.no_grad():
            bn.running_mean.add_(torch.full_like(bn.running_mean, 1.0 + t))
            bn.num_batches_tracked += 1
        d = ema.current_decay()
        decays.append(d)
        expected_mean = d * expected_mean + (1 - d) * bn.running_mean
        ema.update()
    # warm-up: d_t = min(decay, (1 + t) / (10 + t))
    assert decays == pytest.approx([min(0.99, (1 + t) / (10 + t)) for t in range(30)])
    ema_bn = next(m for m in ema.module.modules() if isinstance(m, nn.BatchNorm1d))
    torch.testing.assert_close(ema_bn.running_mean, expected_mean)  # averaged, not copied from the live model
    assert not torch.allclose(ema_bn.running_mean, bn.running_mean)
    assert int(ema_bn.num_batches_tracked) == int(bn.num_batches_tracked)  # integer buffers are copied
    state = ema.state_dict()
    restored = EMA(model, decay=0.99)
    restored.load_state_dict(state)
    assert restored.updates == 30 and restored.current_decay() == ema.current_decay()


def test_eval_and_sample_draw_the_same_samples_for_the_same_seed(train_run, tmp_path):
    run_dir, _ = train_run(tiny_overrides("dcgan", "digits", steps=2, extra=["trainer.ema_decay=0.9"]))
    common = ["device=cpu", "eval.batch_size=16", "seed=3", "eval.seed=3"]
    drawn = {n: np.load(sample(make_config(["task=sample", f"ckpt={run_dir}", f"n={n}", f"out={tmp_path / str(n)}", *common]), quiet_console())["npz"])["x"]
             for n in (20, 40)}
    assert np.array_equal(drawn[40][:20], drawn[20])  # sample(40) = sample(20) followed by more, not other samples
    extractor = TinyExtractor()
    from gentrain.metrics.evaluate import generated_features
    from gentrain.tasks.common import load_trained

    _, _, model, average, _ = load_trained(str(run_dir), torch.device("cpu"))
    captured = []
    original = extractor.forward
    extractor.forward = lambda x: captured.append(x.clone()) or original(x)
    with sampling_state(model, average):
        generated_features(model, 40, extractor, batch_size=16, seed=3)
    assert np.array_equal(torch.cat(captured).numpy(), drawn[40])  # what evaluation scores is what task=sample writes


def test_sample_batches_draws_n_in_fixed_batches():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,)).eval()
    batches = list(sample_batches(model, 10, seed=0, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2] and all(b[1] is None for b in batches)


def make_trainer(overrides: list[str], tmp_path, freeze: str | None = None) -> Trainer:
    """A Trainer built as task=train builds it; ``freeze`` names a parameter the model holds frozen."""
    s = prepare(make_config(overrides))
    if freeze is not None:
        s.model.get_parameter(freeze).requires_grad_(False)
    stream = BatchStream(s.dataset.load("train"), s.ts.batch_size, s.device, s.ts.seed)
    callbacks = list(default_callbacks(s, stream, None).values())
    return Trainer(s.model, s.objective, s.optimizers, stream, s.device, "fp32", tmp_path, s.ts, s.ls, {}, callbacks, quiet_console())


def test_training_leaves_frozen_parameters_frozen(tmp_path):
    trainer = make_trainer(tiny_overrides("gan_mlp", "ring8", steps=3), tmp_path / "gan", freeze="discriminator.1.bias")
    frozen = trainer.model.get_parameter("discriminator.1.bias")
    before = frozen.detach().clone()
    trainer.fit()
    assert not frozen.requires_grad and torch.equal(frozen, before)  # the D phase did not unfreeze and train it
    assert all(p.requires_grad for p in trainer.model.generator.parameters())
    vae = make_trainer(tiny_overrides("vae", "digits", "elbo", steps=3), tmp_path / "vae")  # the fixed decoder std
    assert not vae.model.log_std.requires_grad
    vae.fit()
    assert not vae.model.log_std.requires_grad


def test_the_batch_order_is_drawn_on_the_cpu_whatever_holds_the_data():
    data = DataSplit(torch.arange(20, dtype=torch.float32)[:, None].expand(-1, 2).contiguous(), None)
    stream = BatchStream(data, 5, torch.device("cpu"), seed=7)
    assert stream.generator.device.type == "cpu"
    order = torch.cat([stream.next().x[:, 0] for _ in range(4)]).long()
    assert torch.equal(order, torch.randperm(20, generator=torch.Generator().manual_seed(7)))


def test_a_checkpoint_with_a_gpu_generator_state_resumes_with_a_warning(caplog):
    data = DataSplit(torch.zeros(20, 2), None)
    stream = BatchStream(data, 5, torch.device("cpu"), seed=7)
    stream.next()
    state = stream.state_dict()
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator's state looks like
    other = BatchStream(data, 5, torch.device("cpu"), seed=7)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
    assert "GPU generator" in caplog.text and other.pos == 5 and torch.equal(other.perm, stream.perm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: data held on the GPU vs in host memory")
def test_the_same_seed_gives_the_same_order_on_the_gpu_and_in_host_memory_and_resumes_across_them():
    data = DataSplit(torch.arange(64, dtype=torch.float32)[:, None].expand(-1, 2).contiguous(), None)
    on_gpu = BatchStream(data, 8, torch.device("cuda"), seed=1, on_device=True)
    in_host = BatchStream(data, 8, torch.device("cuda"), seed=1, on_device=False)
    assert torch.equal(on_gpu.next().x.cpu(), in_host.next().x.cpu())
    resumed = BatchStream(data, 8, torch.device("cuda"), seed=1, on_device=False)
    resumed.load_state_dict(on_gpu.state_dict())
    for _ in range(20):
        assert torch.equal(on_gpu.next().x.cpu(), resumed.next().x.cpu())


@pytest.mark.parametrize("warmup", [True, False])
def test_trainer_ema_warmup_reaches_the_weight_average(train_run, warmup):
    from gentrain.engine.checkpoint import load_checkpoint

    run_dir, _ = train_run(tiny_overrides("gan_mlp", "ring8", steps=3, extra=["trainer.ema_decay=0.999", f"trainer.ema_warmup={str(warmup).lower()}"]))
    ema = load_checkpoint(run_dir / "checkpoints" / "last.pt")["ema"]
    assert ema["warmup"] is warmup and ema["updates"] == 2  # the copy at step 1, then two averaged updates


def test_a_bad_ema_warmup_is_one_line(train_run):
    from gentrain.errors import GentrainError

    with pytest.raises(GentrainError, match="trainer.ema_warmup") as e:
        train_run(tiny_overrides("gan_mlp", "ring8", extra=["trainer.ema_decay=0.999", "trainer.ema_warmup=maybe"]))
    assert "\n" not in str(e.value)
