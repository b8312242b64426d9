"""Class-conditional GANs: the generator draws ``x ~ G(z, y)`` for a requested class ``y``.

``ConditionalGAN`` (``model=cgan``, Mirza & Osindero 2014): both networks see the label. It enters
G as a learned embedding concatenated to ``z``; it enters D as a learned embedding concatenated to
the input, broadcast over the image as extra channels (images) or appended to the vector (2-D toy
sets). D then judges whether ``x`` is a real sample *of class y*.

``ACGAN`` (``model=acgan``, Odena et al. 2017): G as in cgan; D does not see the label, it has two
heads on a shared trunk, the real/fake logit and ``K`` class logits. The objectives add the
auxiliary cross-entropy on real and fake samples (``objective.aux_weight``) whenever
:meth:`~gentrain.models.base.AdversarialModel.discriminate` returns class logits.

WGAN's weight clipping (:meth:`critic_weights`) clamps only the weights of the critic ``f(x)``: cgan's
D network without its label embedding, acgan's trunk and adversarial output without the class head.

Like ``DCGAN``, images ([C, H, W]) use the DCGAN networks and vectors ([D]) the MLP networks.
Sampling with labels, the one-row-per-class grid and the refusal of unlabelled data come from
:class:`~gentrain.models.base.AdversarialModel` through ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gentrain.errors import GentrainError, check_int
from gentrain.families.gan.base import AdversarialModel
from gentrain.models.base import Conditional
from gentrain.families.gan.models import (
    _check_d_norm,
    _check_shape,
    _check_square,
    dcgan_discriminator,
    dcgan_generator,
    dcgan_init_,
    mlp_discriminator,
    mlp_generator,
)


class _ConditionalG(nn.Module):
    """``(z [B, z_dim], y [B]) -> x [B, *shape]``: ``net`` applied to ``cat(z, embed(y))`` [B, z_dim + embed_dim]."""

    def __init__(self, net: nn.Module, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        # nn.Embedding's N(0, 1) initialisation puts the label code on the same scale as z ~ N(0, I)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = net

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))


class _ConditionalD(nn.Module):
    """``(x [B, *shape], y [B]) -> logit [B, 1, ...]``: ``net`` applied to ``x`` with the label's embedding appended.

    Images: the embedding [B, E] is broadcast to [B, E, H, W] and concatenated as extra channels, so
    ``net`` takes C + E input channels. Vectors: concatenated to x, so ``net`` takes D + E features.
    The embedding does not depend on x: the gradient w.r.t. x (WGAN-GP's penalty) is that of ``net``.
    """

    def __init__(self, net: nn.Module, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = net

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        e = self.embed(y).to(x.dtype)  # the same dtype as x under mixed precision, for the concatenation
        if x.dim() == 4:
            e = e[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
            return self.net(torch.cat([x, e], dim=1))
        return self.net(torch.cat([x.flatten(1), e], dim=1))


def _conditional_generator(
    name: str, shape: tuple[int, ...], num_classes: int, z_dim: int, embed_dim: int, g_width: int, mlp_g_widths: Sequence[int]
) -> _ConditionalG:
    """G(z, y) for images (DCGAN, DCGAN initialisation) or vectors (MLP), input ``z_dim + embed_dim``."""
    if len(shape) == 1:
        return _ConditionalG(mlp_generator(z_dim + embed_dim, shape, list(mlp_g_widths)), num_classes, embed_dim)
    _check_square(name, shape)
    net = dcgan_generator(z_dim + embed_dim, shape, g_width)
    dcgan_init_(net)
    return _ConditionalG(net, num_classes, embed_dim)


def _check_classes(name: str, num_classes: int | None, embed_dim: int) -> int:
    if num_classes is None:
        raise GentrainError(
            f"model={name} needs a dataset with class labels, but model.num_classes is null (it follows dataset.num_classes, "
            "null when the dataset has none); use a labelled dataset (e.g. dataset=digits) or an unconditional model (e.g. model=dcgan)"
        )
    check_int(num_classes, "model.num_classes", example=10)
    check_int(embed_dim, "model.embed_dim", example=50)
    return num_classes


class ConditionalGAN(AdversarialModel, Conditional):
    """Conditional GAN (Mirza & Osindero 2014): ``G(z, y) -> x``, ``D(x, y) -> logit``; ``model=cgan``.

    G: ``cat(z [B, z_dim], embed_G(y) [B, embed_dim])`` into the DCGAN (images) or MLP (vectors)
    generator. D: ``embed_D(y)`` [B, embed_dim] broadcast to [B, embed_dim, H, W] and concatenated to
    the image, so the DCGAN discriminator takes C + embed_dim channels; for vectors, concatenated to
    x before the MLP. Each embedding lives inside its network, so ``param_groups()`` stays {G, D}.

    ``embed_dim`` (default 50, the size of the paper's label layer in D on MNIST): the width of
    both label embeddings. The other keys are those of :class:`~gentrain.families.gan.models.DCGAN`.
    """

    config_name = "cgan"  # the configs/model option, for messages

    def __init__(
        self,
        shape: Sequence[int],
        num_classes: int | None = None,
        z_dim: int = 100,
        embed_dim: int = 50,
        g_width: int = 64,
        d_width: int = 64,
        d_norm: str = "batch",
        spectral_norm: bool = False,
        mlp_g_widths: Sequence[int] = (128, 256, 512, 1024),
        mlp_d_widths: Sequence[int] = (512, 256),
    ) -> None:
        shape = _check_shape(shape)
        num_classes = _check_classes(self.config_name, num_classes, embed_dim)
        _check_d_norm(d_norm)
        generator = _conditional_generator(self.config_name, shape, num_classes, z_dim, embed_dim, g_width, mlp_g_widths)
        discriminator = self._discriminator(shape, num_classes, embed_dim, d_width, d_norm, mlp_d_widths)
        super().__init__(generator, discriminator, z_dim, spectral_norm)
        self.num_classes = num_classes
        self.embed_dim = embed_dim

    def _discriminator(
        self, shape: tuple[int, ...], num_classes: int, embed_dim: int, d_width: int, d_norm: str, mlp_d_widths: Sequence[int]
    ) -> nn.Module:
        """D(x, y): the label's embedding as extra input channels (images) or features (vectors)."""
        if len(shape) == 1:
            net: nn.Module = mlp_discriminator((shape[0] + embed_dim,), list(mlp_d_widths))
        else:
            net = dcgan_discriminator((shape[0] + embed_dim, shape[1], shape[2]), d_width, d_norm)
            dcgan_init_(net)
        return _ConditionalD(net, num_classes, embed_dim)

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """``x [B, *shape]`` of classes ``y [B]`` from ``z [B, z_dim]``."""
        return self.generator(z, self._need_labels(y))

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(logit [B] that x is a real sample of class y, None)``."""
        return self.discriminator(x, self._need_labels(y)).flatten(), None

    def critic_weights(self) -> list[Tensor]:
        """Every parameter of D's network, not its label embedding.

        The embedding table is a per-class input (the extra channels or features), not a weight of
        ``f(., y)``: it does not act on ``x``, so it does not enter the Lipschitz constant in ``x`` that
        WGAN's clipping bounds. Clipping its N(0, 1) entries to [-0.01, 0.01] would shrink the label
        signal about a hundredfold.
        """
        return list(self.discriminator.net.parameters())

    def _need_labels(self, y: Tensor | None) -> Tensor:
        if y is None:
            raise GentrainError(f"model={self.config_name} is conditional: generate and discriminate need class labels y in [0, {self.num_classes})")
        return y


class _AuxiliaryD(nn.Module):
    """``x [B, *shape] -> [B, 1 + K]``: a shared trunk whose last layer gives the real/fake logit and K class logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ACGAN(ConditionalGAN):
    """Auxiliary-classifier GAN (Odena et al. 2017): ``G(z, y) -> x``, ``D(x) -> (logit, class logits)``; ``model=acgan``.

    G is cgan's (``embed_dim`` sizes its label embedding). D is not given the label: its DCGAN
    (images) or MLP (vectors) trunk ends in one layer of ``1 + K`` outputs, split into the
    adversarial logit [B] and the class logits [B, K]; the objectives train both heads.
    """

    config_name = "acgan"

    def _discriminator(
        self, shape: tuple[int, ...], num_classes: int, embed_dim: int, d_width: int, d_norm: str, mlp_d_widths: Sequence[int]
    ) -> nn.Module:
        if len(shape) == 1:
            net = mlp_discriminator(shape, list(mlp_d_widths), out_features=1 + num_classes)  # both heads on one trunk
        else:
            net = dcgan_discriminator(shape, d_width, d_norm, out_channels=1 + num_classes)
            dcgan_init_(net)
        return _AuxiliaryD(net)

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(logit [B], class logits [B, K])``; ``y`` is ignored: AC-GAN's D must infer the class."""
        out = self.discriminator(x)
        return out[:, 0], out[:, 1:]

    def critic_weights(self) -> list[Tensor]:
        """The trunk's parameters and output 0 of the last layer (the adversarial logit), not the class head.

        ``f`` is the trunk followed by row (linear) or output channel (convolution) 0 of the last
        layer; rows 1..K give the class logits, trained by the auxiliary cross-entropy, which is no
        part of ``f``. The head's weight and bias enter as views ``[:1]`` of the parameters (their
        originals under spectral norm), so clamping them in place clamps output 0 only.
        """
        head = self.discriminator.net[-1]
        head_params = list(head.parameters())
        in_head = set(map(id, head_params))
        trunk = [p for p in self.discriminator.parameters() if id(p) not in in_head]
        return trunk + [p.detach()[:1] for p in head_params]
