"""model=biggan (Brock et al. 2019, after BigGAN-PyTorch): the projection head, conditional batch norm from the shared
embedding and the z chunks, self-attention's zero gain, the orthogonal penalty, the truncation trick (sampling only),
exact resume with EMA and ortho reg, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import truncnorm

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.build import build_model
from gentrain.data.base import DataSplit
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.gan.base import truncated_normal
from gentrain.families.gan.models import DCGAN
from gentrain.families.gan.biggan import BigGAN, ConditionalBatchNorm, SelfAttention
from gentrain.families.gan.objectives import Hinge, ortho_penalty
from gentrain.objectives.base import Batch
from gentrain.tasks import train
from test_stop_resume import assert_same_state


def small(num_classes: int | None = 10, **kw) -> BigGAN:
    torch.manual_seed(0)
    return BigGAN((1, 8, 8), num_classes=num_classes, z_dim=8, shared_dim=4, g_width=2, d_width=2, attention_resolution=8, **kw)


def test_the_projection_head_is_linear_plus_the_inner_product_with_the_class_embedding():
    model = small().eval()
    d = model.discriminator
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 3, 7, 9])
    with torch.no_grad():
        h = d.features(x)
        want = d.linear(h).flatten() + (d.embed(y) * h).sum(1)  # SN-normalised weights, as the forward uses them
        assert torch.allclose(model.discriminate(x, y)[0], want, atol=1e-6)
        # the class enters only through <embed(y), h>: two labels differ by exactly that
        diff = model.discriminate(x, torch.zeros(5, dtype=torch.long))[0] - model.discriminate(x, torch.ones(5, dtype=torch.long))[0]
        assert torch.allclose(diff, ((d.embed.weight[0] - d.embed.weight[1]) * h).sum(1), atol=1e-5)
    plain = small(num_classes=None).eval()
    assert plain.discriminator.embed is None and plain.generator.shared is None


def test_conditional_bn_takes_the_shared_embedding_and_its_own_z_chunk_and_the_chunks_cover_z():
    torch.manual_seed(0)
    model = BigGAN((1, 28, 28), num_classes=10, z_dim=12, shared_dim=4, g_width=2, d_width=2, spectral_norm=False)
    g = model.generator
    assert g.chunks == [4, 4, 4] and sum(g.chunks) == model.z_dim  # 2 blocks at 28: linear + one chunk per block
    seen: dict[str, torch.Tensor] = {}
    for name, m in g.named_modules():
        if isinstance(m, ConditionalBatchNorm):
            m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[1].clone()))
    z, y = torch.randn(3, 12), torch.tensor([1, 2, 5])
    g.eval()
    with torch.no_grad():
        g(z, y)
        e = g.shared(y)
    assert set(seen) == {"blocks.0.bn1", "blocks.0.bn2", "blocks.1.bn1", "blocks.1.bn2"}
    for i in range(2):
        want = torch.cat([e, z[:, 4 * (i + 1):4 * (i + 2)]], 1)
        assert torch.equal(seen[f"blocks.{i}.bn1"], want) and torch.equal(seen[f"blocks.{i}.bn2"], want)
    # gain 1 + W_g c and bias W_b c, per sample and channel
    bn = g.blocks[0].bn1
    x = torch.randn(3, bn.norm.num_features, 7, 7)
    c = seen["blocks.0.bn1"]
    with torch.no_grad():
        normed = torch.nn.functional.batch_norm(x, bn.norm.running_mean, bn.norm.running_var, training=False)
        want = normed * (1 + c @ bn.gain.weight.t())[:, :, None, None] + (c @ bn.bias.weight.t())[:, :, None, None]
        assert torch.allclose(bn(x, c), want, atol=1e-5)
    with pytest.raises(GentrainError, match="does not split into 3 equal chunks") as err:
        BigGAN((1, 28, 28), num_classes=10, z_dim=10)
    assert "\n" not in str(err.value)


def test_self_attention_starts_as_the_identity():
    attention = SelfAttention(16)
    assert attention.gamma.item() == 0.0
    for side in (8, 7):
        x = torch.randn(2, 16, side, side)
        assert torch.equal(attention(x), x)
    model = small()
    assert model.generator.attention is not None and model.discriminator.attention is not None


def test_the_ortho_penalty_is_the_off_diagonal_gram_norm_and_zero_for_orthogonal_rows():
    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 3, 3, 3), torch.randn(4, 9)
    want = sum(0.5 * ((m @ m.t()) * (1 - torch.eye(m.shape[0]))).square().sum() for m in (w1.reshape(6, -1), w2))
    assert torch.allclose(ortho_penalty([w1, w2]), want)
    q = torch.linalg.qr(torch.randn(9, 5))[0].t() * torch.tensor([[1.0], [2.0], [3.0], [0.5], [4.0]])  # orthogonal rows, any norms
    assert ortho_penalty([q]).item() == pytest.approx(0.0, abs=1e-10)
    # its gradient is BigGAN-PyTorch's utils.ortho: 2 (W W^T * (1 - I)) W
    w = w2.clone().requires_grad_(True)
    ortho_penalty([w]).backward()
    assert torch.allclose(w.grad, 2 * ((w2 @ w2.t()) * (1 - torch.eye(4))) @ w2, atol=1e-4)
    # the model's weights: G's >= 2-D parameters, not the shared embedding; the objective adds beta * penalty to G's loss
    model = small()
    weights = model.ortho_weights()
    assert weights and all(p.dim() >= 2 for p in weights) and all(p is not model.generator.shared.weight for p in weights)
    batch = Batch(x=torch.randn(4, 1, 8, 8), y=torch.tensor([0, 1, 2, 3]))
    torch.manual_seed(1)
    plain = Hinge().step("G", model, batch)
    torch.manual_seed(1)
    reg = Hinge(ortho_reg=1e-2).step("G", model, batch)
    assert "ortho_reg" not in plain.logs
    assert reg.logs["ortho_reg"].item() == pytest.approx(1e-2 * ortho_penalty(weights).item(), rel=1e-5)
    assert (reg.loss - plain.loss).item() == pytest.approx(reg.logs["ortho_reg"].item(), rel=1e-4)


def test_truncated_noise_is_in_range_with_the_truncnorm_variance_and_training_noise_is_not():
    t, n = 0.5, 200_000
    z = truncated_normal((n,), t, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float(z.abs().max()) <= t
    var = truncnorm.var(-t, t)
    # the sample variance's standard error: sqrt((mu4 - var^2) / n)
    se = ((truncnorm.moment(4, -t, t) - var**2) / n) ** 0.5
    assert abs(float(z.var()) - var) < 5 * se and abs(float(z.mean())) < 5 * (var / n) ** 0.5
    model = small(num_classes=None)
    model.set_sampler({"name": "latent", "truncation": t})
    assert float(model.sampling_noise(2000, torch.Generator().manual_seed(1)).abs().max()) <= t
    assert torch.equal(model.sampling_noise(64, torch.Generator().manual_seed(2)), model.sampling_noise(64, torch.Generator().manual_seed(2)))
    assert float(model.noise(2000).abs().max()) > 2  # what the objectives draw in training: N(0, I)
    # the training steps draw through noise(), never sampling_noise()
    drawn = []
    model.sampling_noise = lambda *a, **k: drawn.append(1)  # type: ignore[method-assign]
    Hinge().step("D", model, Batch(x=torch.randn(4, 1, 8, 8), y=None))
    Hinge().step("G", model, Batch(x=torch.randn(4, 1, 8, 8), y=None))
    assert drawn == []
    # every GAN takes the option: the truncation trick on DCGAN's Gaussian latent
    dcgan = DCGAN(shape=[1, 8, 8], z_dim=16, g_width=4, d_width=4)
    dcgan.set_sampler({"name": "latent", "truncation": 0.25})
    with torch.no_grad():
        assert float(dcgan.sample_with_labels(4, torch.Generator().manual_seed(0))[0].abs().max()) <= 1
    assert float(dcgan.sampling_noise(500, torch.Generator().manual_seed(0)).abs().max()) <= 0.25


def test_a_tiny_run_with_ema_and_ortho_reg_resumes_exactly(tmp_path: Path):
    base = tiny_overrides("biggan", "digits", "hinge", steps=4, extra=[
        "trainer.ema_decay=0.9", "objective.ortho_reg=1e-3", "objective.d_steps=2", "trainer.ckpt_every=0", "logger.samples_every=0"])

    def run(overrides, name):
        return train(make_config(overrides), run_dir=tmp_path / name, console=quiet_console())

    run(base, "full")
    run([*base, "trainer.max_steps=2"], "half")
    report = run([*base, f"trainer.resume={tmp_path / 'half'}"], "half")
    assert report["run"]["start_step"] == 2
    full, resumed = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("full", "half"))
    assert full["ema"] and resumed["ema"]
    assert_same_state(full, resumed)


def one_line(match: str, fn) -> None:
    with pytest.raises(GentrainError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_refusals_are_one_line():
    model = small(num_classes=10)
    unlabelled = DataSplit(x=torch.zeros(4, 1, 8, 8), y=None)
    one_line("model.num_classes=null", lambda: model.check_data(unlabelled, "image_folder"))
    small(num_classes=None).check_data(unlabelled, "image_folder")  # unconditional: fine
    one_line("image model", lambda: build_model(make_config(["model=biggan", "dataset=ring8", "debug=tiny", "device=cpu"])))
    for t in (0, -1.0):
        one_line("sampler.truncation must be a number > 0", lambda t=t: model.set_sampler({"name": "latent", "truncation": t}))
    one_line("sampler.truncation must be a number > 0", lambda: build_model(make_config(
        ["model=biggan", "dataset=digits", "debug=tiny", "device=cpu", "sampler.truncation=0"])))
    one_line("8 \\* 2\\^k", lambda: BigGAN((1, 12, 12), num_classes=None))
    one_line("attention_resolution=4", lambda: BigGAN((1, 8, 8), num_classes=None, attention_resolution=4))
