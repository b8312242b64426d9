"""Conditional GANs: cgan (Mirza & Osindero 2014) and acgan (Odena et al. 2017) — labels in, labels out, every objective trains."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from gentrain.errors import GentrainError
from gentrain.families.gan.conditional import ACGAN, ConditionalGAN
from gentrain.families.gan.objectives import NonSaturating
from gentrain.objectives.base import Batch
from gentrain.families.gan.wasserstein import Wasserstein

MODELS = [ConditionalGAN, ACGAN]
OBJECTIVES = ["minimax", "non_saturating", "hinge", "wasserstein", "wasserstein_gp"]
TINY_WIDTHS = dict(z_dim=8, embed_dim=4, g_width=8, d_width=8, mlp_g_widths=(16, 16), mlp_d_widths=(16,))


def tiny_model(cls: type[ConditionalGAN], shape: tuple[int, ...], num_classes: int = 10, seed: int = 0) -> ConditionalGAN:
    torch.manual_seed(seed)
    return cls(shape=shape, num_classes=num_classes, **TINY_WIDTHS)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2,)])
@pytest.mark.parametrize("cls", MODELS)
def test_samples_have_the_requested_classes_and_shapes(cls, shape):
    model = tiny_model(cls, shape)
    x, y = model.sample_with_labels(7)
    assert x.shape == (7, *shape) and y.shape == (7,) and y.dtype == torch.long
    assert 0 <= int(y.min()) and int(y.max()) < 10
    y = torch.tensor([0, 9, 3])
    assert model.generate(model.noise(3), y).shape == (3, *shape)
    logits, class_logits = model.discriminate(torch.randn(3, *shape), y)
    assert logits.shape == (3,)
    assert class_logits is None if cls is ConditionalGAN else class_logits.shape == (3, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
@pytest.mark.parametrize("cls", MODELS)
def test_sample_grid_has_one_row_per_class(cls, shape):
    model = tiny_model(cls, shape).eval()  # eval: batch norm per sample, so the grid equals the direct call
    x, nrow = model.sample_grid(32, generator=torch.Generator().manual_seed(1))
    assert nrow == 3 and x.shape == (30, *shape)
    expected = model.generate(model.noise(30, generator=torch.Generator().manual_seed(1)), torch.arange(10).repeat_interleave(3))
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
@pytest.mark.parametrize("cls", MODELS)
def test_the_generator_depends_on_the_label(cls, shape):
    model = tiny_model(cls, shape).eval()
    z = model.noise(1).repeat(10, 1)
    x = model.generate(z, torch.arange(10)).flatten(1)
    assert torch.cdist(x, x).add(torch.eye(10)).min() > 0  # ten different samples from one z


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_cgan_discriminator_depends_on_the_label_and_is_differentiable_in_x(shape):
    model = tiny_model(ConditionalGAN, shape).eval()
    x = torch.randn(1, *shape).repeat(10, *[1] * len(shape)).requires_grad_(True)
    logits, _ = model.discriminate(x, torch.arange(10))
    assert logits.shape == (10,) and len(set(logits.tolist())) == 10
    (grad,) = torch.autograd.grad(logits.sum(), x)  # what WGAN-GP's penalty needs
    assert grad.shape == x.shape and grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_acgan_discriminator_ignores_the_label_and_classifies(shape):
    model = tiny_model(ACGAN, shape).eval()
    x = torch.randn(4, *shape)
    logits_a, classes_a = model.discriminate(x, torch.tensor([0, 1, 2, 3]))
    logits_b, classes_b = model.discriminate(x, torch.tensor([9, 9, 9, 9]))
    assert torch.equal(logits_a, logits_b) and torch.equal(classes_a, classes_b)
    assert classes_a.shape == (4, 10)
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.discriminator.modules())


@pytest.mark.parametrize("cls", MODELS)
def test_label_embeddings_belong_to_the_two_parameter_groups(cls):
    model = tiny_model(cls, (1, 8, 8))
    g, d = (set(map(id, m.parameters())) for m in model.param_groups().values())
    assert not g & d and g | d == set(map(id, model.parameters()))
    assert isinstance(model.generator.embed, torch.nn.Embedding) and model.generator.embed.weight.shape == (10, 4)
    if cls is ConditionalGAN:  # D's first convolution takes C + embed_dim channels
        assert model.discriminator.net[0].in_channels == 1 + 4


def test_spectral_norm_leaves_the_label_embedding_alone():
    model = ConditionalGAN(shape=(1, 8, 8), num_classes=10, spectral_norm=True, **TINY_WIDTHS)
    assert model.discriminate(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))[0].shape == (2,)
    assert not torch.nn.utils.parametrize.is_parametrized(model.discriminator.embed)
    assert torch.nn.utils.parametrize.is_parametrized(model.discriminator.net[0])


def test_a_conditional_model_without_classes_is_one_line():
    with pytest.raises(GentrainError, match="model=cgan needs a dataset with class labels") as e:
        ConditionalGAN(shape=(2,))
    assert "\n" not in str(e.value)
    with pytest.raises(GentrainError, match="model=acgan needs a dataset with class labels"):
        ACGAN(shape=(2,), num_classes=None)
    with pytest.raises(GentrainError, match="model.embed_dim"):
        ConditionalGAN(shape=(2,), num_classes=3, embed_dim=0)


@pytest.mark.parametrize("model,extra", [("cgan", []), ("acgan", []), ("cgan", ["~model.num_classes"])])
def test_unlabelled_data_or_missing_classes_are_refused_at_start_up(train_run, model, extra):
    dataset = "digits" if extra else "swissroll"
    with pytest.raises(GentrainError, match=f"model={model} needs a dataset with class labels") as e:
        train_run(tiny_overrides(model, dataset) + extra)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dataset", ["digits", "ring8"])
@pytest.mark.parametrize("model", ["cgan", "acgan"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_trains_a_conditional_model(train_run, objective, model, dataset):
    critic_norm = ["model.d_norm=layer"] if objective == "wasserstein_gp" else []  # the penalty refuses batch norm
    run_dir, report = train_run(tiny_overrides(model, dataset, objective, steps=2) + ["objective.d_steps=1", *critic_norm])
    assert (run_dir / "samples" / "step_000002.png").is_file()
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(v)) for v in report["final"].values())
    # the auxiliary classifier is trained and logged only by AC-GAN
    assert ("train/D/aux_acc_real" in record) == (model == "acgan")
    assert ("train/G/aux_loss_fake" in record) == (model == "acgan")


def test_acgan_auxiliary_loss_reaches_the_generator():
    """G phase: d loss / d theta_G = d L_G / d theta_G + aux_weight * d CE(C(G(z, y)), y) / d theta_G, exactly linear in aux_weight."""
    model = tiny_model(ACGAN, (2,), num_classes=4)
    batch = Batch(torch.randn(16, 2), torch.arange(4).repeat(4))
    params = list(model.generator.parameters())

    def g_grads(aux_weight: float) -> torch.Tensor:
        torch.manual_seed(7)  # the same z in every call
        out = NonSaturating(aux_weight=aux_weight).step("G", model, batch)
        assert ("aux_loss_fake" in out.logs) and ("aux_acc_fake" in out.logs)
        return torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, params)])

    g0, g1, g2 = g_grads(0.0), g_grads(1.0), g_grads(2.0)
    torch.manual_seed(7)
    z = model.noise(16)
    _, class_logits = model.discriminate(model.generate(z, batch.y))
    aux = torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(class_logits, batch.y), params)])
    assert aux.abs().sum() > 0
    torch.testing.assert_close(g1 - g0, aux)
    torch.testing.assert_close(g2 - g0, 2 * aux)


CLIP = 0.01


def critic_steps(model: ConditionalGAN, shape: tuple[int, ...], steps: int = 3) -> None:
    """WGAN critic steps as the engine runs them: loss, backward, RMSprop step, then the objective's clipping."""
    objective, optimizer = Wasserstein(clip=CLIP), torch.optim.RMSprop(model.discriminator.parameters(), lr=5e-5)
    for _ in range(steps):
        out = objective.step("D", model, Batch(torch.randn(16, *shape), torch.arange(16) % 10))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.after_update("D", model)


def label_spread(model: ConditionalGAN, shape: tuple[int, ...]) -> float:
    """How far the critic's output for one x moves across the ten labels."""
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).expand(10, *shape)
    with torch.no_grad():
        f = model.eval().discriminate(x, torch.arange(10))[0]
    return (f.max() - f.min()).item()


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_wgan_clipping_keeps_the_cgan_label_embedding_and_its_signal(shape):
    model = tiny_model(ConditionalGAN, shape)
    critic_steps(model, shape)
    embed = model.discriminator.embed.weight
    assert not any(w is embed for w in model.critic_weights())
    assert all(w.abs().max() <= CLIP for w in model.critic_weights())
    assert all(p.abs().max() <= CLIP for p in model.discriminator.net.parameters())  # every weight of f(., y) is clipped
    assert embed.std() > 0.5 and embed.abs().max() > 100 * CLIP  # the label code keeps its N(0, 1) scale
    # the label signal: with the embedding clipped too, the output would move about a hundred times less across labels
    clipped = copy.deepcopy(model)
    with torch.no_grad():
        clipped.discriminator.embed.weight.clamp_(-CLIP, CLIP)
    assert label_spread(model, shape) > 20 * label_spread(clipped, shape)


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_wgan_clipping_spares_the_acgan_class_head(shape, spectral_norm):
    torch.manual_seed(0)
    model = ACGAN(shape=shape, num_classes=10, spectral_norm=spectral_norm, **TINY_WIDTHS)
    head = model.discriminator.net[-1]
    weight, bias = (head.parametrizations.weight.original, head.bias) if spectral_norm else (head.weight, head.bias)
    class_rows = weight[1:].detach().clone()
    critic_steps(model, shape)
    assert weight[0].abs().max() <= CLIP and bias[0].abs() <= CLIP  # the adversarial output: a weight of f
    trunk = [p for p in model.discriminator.parameters() if p is not weight and p is not bias]
    assert trunk and all(p.abs().max() <= CLIP for p in trunk)
    assert weight[1:].abs().max() > 2 * CLIP  # the class head is not clipped...
    assert not torch.equal(weight[1:], class_rows)  # ...and still trained (by the auxiliary cross-entropy)
    views = model.critic_weights()[-2:]  # output 0 of the head: views sharing the parameters' storage
    assert sorted(tuple(w.shape) for w in views) == [(1,), (1, *weight.shape[1:])]
    assert {w.data_ptr() for w in views} == {weight.data_ptr(), bias.data_ptr()}
