"""GAN architectures: the layer structure the issue names, and shapes that adapt to the data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gentrain.errors import GentrainError
from gentrain.families.gan.models import DCGAN, GanMLP, dcgan_layout


def layers_of(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 64), (2,)])
@pytest.mark.parametrize("cls", [GanMLP, DCGAN])
def test_generator_and_discriminator_fit_the_data_shape(cls, shape):
    torch.manual_seed(0)
    model = cls(shape=shape, z_dim=16)
    x = model.sample(5)
    assert x.shape == (5, *shape)
    if len(shape) == 3:
        assert x.min() >= -1 and x.max() <= 1  # tanh images
    logits = model.discriminator(torch.randn(5, *shape))
    assert logits.numel() == 5


def test_mlp_gan_is_the_course_architecture():
    model = GanMLP(shape=(1, 28, 28))
    g_linear = layers_of(model.generator, nn.Linear)
    assert [(m.in_features, m.out_features) for m in g_linear] == [(100, 128), (128, 256), (256, 512), (512, 1024), (1024, 784)]
    assert len(layers_of(model.generator, nn.BatchNorm1d)) == 3
    assert all(m.negative_slope == 0.2 for m in layers_of(model, nn.LeakyReLU))
    assert isinstance(list(model.generator.modules())[-2], nn.Tanh)
    d_linear = layers_of(model.discriminator, nn.Linear)
    assert [(m.in_features, m.out_features) for m in d_linear] == [(784, 512), (512, 256), (256, 1)]
    assert not layers_of(model.discriminator, nn.Sigmoid)  # objectives work on logits


def test_dcgan_follows_the_architecture_rules():
    model = DCGAN(shape=(3, 32, 32))
    g, d = model.generator, model.discriminator
    assert not layers_of(g, nn.Linear) and not layers_of(d, nn.Linear)  # all convolutional
    convs_t = layers_of(g, nn.ConvTranspose2d)
    assert all(m.stride == (2, 2) for m in convs_t[1:])  # fractionally strided up-sampling
    assert all(m.stride == (2, 2) for m in layers_of(d, nn.Conv2d)[:-1])  # strided down-sampling, no pooling
    assert not layers_of(d, nn.MaxPool2d) and not layers_of(d, nn.AvgPool2d)
    # batch norm everywhere but the generator's output layer and the discriminator's input layer
    g_seq, d_seq = list(g), list(d)
    assert isinstance(g_seq[-1], nn.Tanh) and isinstance(g_seq[-2], nn.ConvTranspose2d)
    assert len(layers_of(g, nn.BatchNorm2d)) == len(convs_t) - 1
    assert isinstance(d_seq[0], nn.Conv2d) and isinstance(d_seq[1], nn.LeakyReLU)
    assert len(layers_of(d, nn.BatchNorm2d)) == len(layers_of(d, nn.Conv2d)) - 2
    assert layers_of(g, nn.ReLU) and not layers_of(g, nn.LeakyReLU)
    assert all(m.negative_slope == 0.2 for m in layers_of(d, nn.LeakyReLU)) and not layers_of(d, nn.ReLU)


def test_dcgan_initialisation():
    torch.manual_seed(0)
    model = DCGAN(shape=(3, 64, 64))
    w = torch.cat([m.weight.flatten() for m in layers_of(model, nn.Conv2d) + layers_of(model, nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.001


@pytest.mark.parametrize("size,layout", [(28, (7, 2)), (32, (4, 3)), (64, (4, 4)), (8, (2, 2)), (12, (3, 2)), (6, (3, 1))])
def test_dcgan_layout(size, layout):
    assert dcgan_layout(size) == layout


def test_dcgan_refuses_shapes_it_cannot_build():
    with pytest.raises(GentrainError, match="dataset.size"):
        DCGAN(shape=(1, 7, 7))
    with pytest.raises(GentrainError, match="square"):
        DCGAN(shape=(1, 32, 16))


def test_dcgan_on_vectors_uses_the_mlp_networks():
    model = DCGAN(shape=(2,), z_dim=8)
    assert layers_of(model, nn.Linear) and not layers_of(model, nn.Conv2d)


def test_param_groups_split_generator_and_discriminator():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,))
    groups = model.param_groups()
    assert set(groups) == {"G", "D"}
    g_ids = {id(p) for p in groups["G"].parameters()}
    d_ids = {id(p) for p in groups["D"].parameters()}
    assert not g_ids & d_ids and g_ids | d_ids == {id(p) for p in model.parameters()}


def test_fixed_generator_gives_fixed_samples():
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,)).eval()
    a = model.sample(10, generator=torch.Generator().manual_seed(5))
    torch.randn(3)  # the global RNG moving on changes nothing
    b = model.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_critic_weights_of_unconditional_models_are_every_discriminator_parameter(spectral_norm):
    # what WGAN clips, as the paper's code: every parameter of the critic, batch-norm scales and shifts included
    for model in (DCGAN(shape=(1, 8, 8), g_width=8, d_width=8, z_dim=8, spectral_norm=spectral_norm), GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,))):
        assert list(map(id, model.critic_weights())) == list(map(id, model.discriminator.parameters()))


@pytest.mark.parametrize("cls", ["VAE", "ConvVAE"])
def test_vae_encoder_reads_the_binarised_target_or_the_images(cls):
    """model.encoder_input=target: with a Bernoulli decoder the encoder sees only the binarised pixels, so two images
    that binarise alike encode alike; =data (and a checkpoint without the key) reads the images themselves."""
    from gentrain.families.vae import model as vae

    torch.manual_seed(0)
    a = torch.rand(4, 1, 8, 8) * 2 - 1
    target = getattr(vae, cls)(shape=[1, 8, 8], data_levels=17, encoder_input="target")
    b = torch.where(target.binarise(a) > 0, torch.full_like(a, 0.9), torch.full_like(a, -0.8))  # other levels, the same binarisation
    assert target.encoder_input == "target"
    assert torch.allclose(target.encode(a)[0], target.encode(b)[0])
    data = getattr(vae, cls)(shape=[1, 8, 8], data_levels=17)
    assert data.encoder_input == "data"
    data.load_state_dict(target.state_dict())
    assert not torch.allclose(data.encode(a)[0], data.encode(b)[0])
    with pytest.raises(GentrainError, match="model.encoder_input"):
        getattr(vae, cls)(shape=[1, 8, 8], data_levels=17, encoder_input="pixels")


def test_ddpm_input_skip_is_a_flag():
    from gentrain.families.diffusion.model import DDPM

    assert DDPM(shape=[2], hidden=8, blocks=1, timesteps=10, input_skip=True).net.gate is not None
    assert DDPM(shape=[2], hidden=8, blocks=1, timesteps=10).net.gate is None  # a checkpoint from before the key
    with pytest.raises(GentrainError, match="model.input_skip must be true or false"):
        DDPM(shape=[2], hidden=8, blocks=1, timesteps=10, input_skip="yes")
