"""Variational autoencoders (Kingma & Welling 2014) trained on the ELBO.

``q(z|x) = N(mu(x), diag(exp(logvar(x))))`` with the reparameterisation ``z = mu + sigma * eps``,
prior ``p(z) = N(0, I)``, analytic KL. Decoders:

- ``bernoulli``: binarised images (a pixel is 1 where its level is in the upper half of the range,
  ``2 level >= K - 1``, K the data's levels: 8-bit value >= 128 for K = 256, digit value >= 8 of
  0..16 for K = 17); the likelihood is that of the binarised data.
- ``gaussian``: dequantised images ``(level + noise) / K`` in [0, 1) (or 2-D points as they are),
  with a fixed standard deviation ``decoder_std`` or a learned one per dimension; for images the
  reported likelihood is the discrete bound ``log N(y; mu, sigma) - D log K``.

K is ``model.data_levels`` (``${dataset.levels}``: 256 for 8-bit images, 17 for the digits).

``log_likelihood(x, k)`` is the importance-weighted bound (Burda et al. 2016, IWAE) with k
samples, which equals the ELBO at k = 1 and tightens as k grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.base import DataSplit
from gentrain.engine.progress import phase, tick
from gentrain.errors import GentrainError, check_choice, check_int
from gentrain.models.base import Latent, interpolate_latents
from gentrain.families.gan.models import dcgan_layout
from gentrain.models.likelihood import LOG_2PI, LEVELS_8BIT, LikelihoodModel, check_levels, dequantize, gaussian_log_density, to_levels

DECODERS = ("bernoulli", "gaussian")


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example [B]: ``0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


class LatentVariableModel(LikelihoodModel, Latent):
    """Encoder, decoder and prior of a VAE; subclasses give the two networks (``encoder``: x -> [B, 2 z_dim], ``decoder``: z -> params)."""

    likelihood_kind = "IWAE bound"

    def __init__(
        self, shape: Sequence[int], z_dim: int, decoder: str, decoder_std: float, learn_std: bool, data_levels: int | None = None,
        iwae_k: int = 100, encoder_input: str | None = None,
    ) -> None:
        super().__init__()
        #: What the encoder reads (``model.encoder_input``): ``target``, what the decoder models (the binarised pixels of a
        #: Bernoulli decoder, as Kingma & Welling and Burda et al. encode binarised MNIST), or ``data`` (the images in
        #: [-1, 1]; None: what a checkpoint without the key was trained with)
        self.encoder_input = check_choice(encoder_input or "data", ("target", "data"), "model.encoder_input", "target")
        #: Importance samples of the IWAE bound that evaluation reports (``nll<count>``): ``model.iwae_k``.
        self.iwae_k = check_int(iwae_k, "model.iwae_k", 1, example=100)
        self.shape = tuple(int(s) for s in shape)
        check_choice(decoder, DECODERS, "model.decoder", "bernoulli")
        self.images = len(self.shape) == 3
        self.data_levels = check_levels(data_levels, self.images)
        if decoder == "bernoulli" and not self.images:
            raise GentrainError("model.decoder=bernoulli needs images (it models binarised pixels); use model.decoder=gaussian for points")
        if not decoder_std > 0:
            raise GentrainError(f"model.decoder_std must be > 0, got {decoder_std}; e.g. model.decoder_std=0.1")
        self.z_dim = int(z_dim)
        self.decoder_kind = decoder
        if decoder == "bernoulli":
            self.likelihood_kind = f"IWAE bound of the binarised pixels, k={self.iwae_k}"
        elif self.images and self.data_levels != LEVELS_8BIT:
            self.likelihood_kind = f"IWAE bound (dequantized {self.data_levels}-level images), k={self.iwae_k}"
        else:
            self.likelihood_kind = f"IWAE bound, k={self.iwae_k}"
        dims = math.prod(self.shape)
        # learned: one log-std per data dimension, initialised at decoder_std
        self.log_std = nn.Parameter(torch.full((dims,), math.log(decoder_std)), requires_grad=learn_std)

    # ---- data --------------------------------------------------------------------------------
    def target(self, x: Tensor) -> Tensor:
        """What the decoder models: binarised pixels, dequantised pixels in [0, 1), or the points."""
        if self.decoder_kind == "bernoulli":
            return self.binarise(x)
        return dequantize(x, levels=self.data_levels) if self.images else x

    def binarise(self, x: Tensor) -> Tensor:
        """1 where a pixel's level is in the upper half of its range (``2 level >= K - 1``), else 0; float."""
        k = self.data_levels
        return (2 * to_levels(x, k) >= k - 1).float()

    def check_data(self, data: DataSplit, dataset: str) -> None:
        if tuple(data.x.shape[1:]) != self.shape:
            raise GentrainError(f"the model was built for shape {list(self.shape)} but dataset={dataset} has {list(data.x.shape[1:])}")
        super().check_data(data, dataset)

    # ---- the three distributions ---------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): (mu [B, z], logvar [B, z]); logvar clamped for numerical safety. With ``encoder_input=target`` and a
        Bernoulli decoder the encoder reads the binarised pixels (as 0 -> -1, 1 -> 1)."""
        if self.encoder_input == "target" and self.decoder_kind == "bernoulli":
            x = self.binarise(x) * 2 - 1
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder parameters in data shape: Bernoulli logits or Gaussian means."""
        return self.decoder(z).view(z.shape[0], *self.shape)

    def log_px_given_z(self, target: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) [B]; the discrete-bound offset -D log K is included for dequantised images."""
        if self.decoder_kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params, target, reduction="none").flatten(1).sum(1)
        log_std = self.log_std.view(1, *self.shape).clamp(-7, 3)
        log_p = gaussian_log_density(target, params, log_std)
        return log_p - target[0].numel() * math.log(self.data_levels) if self.images else log_p

    # ---- objectives ----------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(E_q log p(x|z) with one reparameterised sample [B], KL(q(z|x) || p(z)) [B])."""
        target = self.target(x)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation: gradients reach mu and logvar
        return self.log_px_given_z(target, self.decode(z)), gaussian_kl(mu, logvar)

    def log_prob(self, x: Tensor) -> Tensor:
        """The ELBO [B] (a lower bound on log p(x))."""
        recon, kl = self.elbo_terms(x)
        return recon - kl

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, k: int | None = None, chunk: int = 64) -> Tensor:  # type: ignore[override]
        """IWAE bound ``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, z_i ~ q(z|x): [B], ``k`` by default ``model.iwae_k``.
        Memory: ``chunk`` samples at a time."""
        k = self.iwae_k if k is None else check_int(k, "k", 1, example=100)
        target = self.target(x)
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        log_w = []
        with phase("IWAE samples", k):
            for start in range(0, k, chunk):
                m = min(chunk, k - start)
                eps = torch.randn(m, *mu.shape, device=mu.device, dtype=mu.dtype)
                z = mu + eps * std  # [m, B, z]
                params = self.decode(z.reshape(m * mu.shape[0], -1))
                log_px = self.log_px_given_z(target.repeat(m, *([1] * (target.dim() - 1))), params).view(m, -1)
                log_pz = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
                log_qz = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
                log_w.append(log_px + log_pz - log_qz)
                tick(m)
        return torch.logsumexp(torch.cat(log_w, 0), dim=0) - math.log(k)

    # ---- sampling and pictures -----------------------------------------------------------------
    def mean_of(self, params: Tensor) -> Tensor:
        """The decoder's mean in model space ([-1, 1] images, points as they are)."""
        if self.decoder_kind == "bernoulli":
            return torch.sigmoid(params) * 2 - 1
        return params.clamp(0, 1) * 2 - 1 if self.images else params

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.z_dim, device=self.device, generator=generator)
        return self.mean_of(self.decode(z))

    def interpolate(self, rows: int, steps: int, spherical: bool, generator: torch.Generator | None = None) -> Tensor:
        z0 = torch.randn(rows, self.z_dim, device=self.device, generator=generator)
        z1 = torch.randn(rows, self.z_dim, device=self.device, generator=generator)
        return self.mean_of(self.decode(interpolate_latents(z0, z1, steps, spherical).reshape(rows * steps, -1)))

    @torch.no_grad()
    def pictures(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, int]]:
        """Reconstructions (originals and their reconstructions in alternate rows) and, for a 2-D latent, the manifold."""
        if not self.images:
            return {}
        n = min(x.shape[0], 32)
        mu, _ = self.encode(x[:n])
        recon = self.mean_of(self.decode(mu))
        rows = 8
        pairs = torch.stack([x[:n].view(-1, rows, *self.shape), recon.view(-1, rows, *self.shape)], 1).reshape(-1, *self.shape) if n % rows == 0 else torch.cat([x[:n], recon])
        out = {"reconstructions": (pairs, rows if n % rows == 0 else n)}
        if self.z_dim == 2:
            side = 15
            q = torch.linspace(0.5 / side, 1 - 0.5 / side, side, device=self.device)
            g = torch.distributions.Normal(0.0, 1.0).icdf(q)  # Gaussian quantiles, as in Kingma & Welling's figure
            z = torch.stack(torch.meshgrid(g, g.flip(0), indexing="xy"), -1).reshape(-1, 2)
            out["manifold"] = (self.mean_of(self.decode(z)), side)
        return out


def _mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class VAE(LatentVariableModel):
    """The fully connected VAE of Kingma & Welling: data -> 500 -> z and z -> 500 -> data (tanh hidden units)."""

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        decoder: str = "bernoulli",
        decoder_std: float = 0.1,
        learn_std: bool = False,
        data_levels: int | None = None,
        iwae_k: int = 100,
        encoder_input: str | None = None,
    ) -> None:
        super().__init__(shape, z_dim, decoder, decoder_std, learn_std, data_levels, iwae_k, encoder_input)
        dims = math.prod(self.shape)
        hidden = [int(h) for h in hidden]
        self.encoder = nn.Sequential(nn.Flatten(), _mlp([dims, *hidden, 2 * self.z_dim], nn.Tanh))
        self.decoder = _mlp([self.z_dim, *hidden[::-1], dims], nn.Tanh)


class ConvVAE(LatentVariableModel):
    """A convolutional VAE: strided convolutions down to s0 x s0, transposed convolutions back (the DCGAN layout, no batch norm)."""

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 32,
        width: int = 32,
        decoder: str = "bernoulli",
        decoder_std: float = 0.1,
        learn_std: bool = False,
        data_levels: int | None = None,
        iwae_k: int = 100,
        encoder_input: str | None = None,
    ) -> None:
        super().__init__(shape, z_dim, decoder, decoder_std, learn_std, data_levels, iwae_k, encoder_input)
        if not self.images or self.shape[1] != self.shape[2]:
            raise GentrainError(f"model=conv_vae needs square images, got shape {list(self.shape)}; use model=vae for points")
        channels, size = self.shape[0], self.shape[1]
        s0, n_down = dcgan_layout(size)
        enc: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(n_down):
            enc += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch_in, ch = ch, ch * 2
        flat = ch_in * s0 * s0
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, 2 * self.z_dim))
        dec: list[nn.Module] = [nn.Linear(self.z_dim, flat), nn.Unflatten(1, (ch_in, s0, s0)), nn.ReLU()]
        for i in range(n_down):
            out = channels if i == n_down - 1 else ch_in // 2
            dec.append(nn.ConvTranspose2d(ch_in, out, 4, 2, 1))
            if i < n_down - 1:
                dec.append(nn.ReLU())
            ch_in = out
        self.decoder = nn.Sequential(*dec)
