"""Adversarial objectives: the discriminator (critic) ``d_steps`` times, then the generator once.

The base class draws the noise and labels, runs G and D through the model's ``generate`` and
``discriminate`` (so conditional and auxiliary-classifier models work with every objective),
adds an optional penalty and the auxiliary classification loss; subclasses give the losses.

The GAN losses (Goodfellow et al. 2014) are computed from logits, never as log of a sigmoid:
with ``l = D(x)``, ``log sigmoid(l) = -softplus(-l)`` and ``log(1 - sigmoid(l)) = -softplus(l)``,
both finite for any ``l``.

What D's outputs mean depends on the objective, and so does what is logged of them: under the GAN
losses ``sigmoid(l)`` is D's probability that ``x`` is real, logged as ``D_real`` and ``D_fake``; a
hinge or Wasserstein critic's output is an unbounded score, logged raw as ``critic_real`` and
``critic_fake``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import GentrainError, check_int
from gentrain.families.gan.base import AdversarialModel
from gentrain.objectives.base import Batch, Objective, Phase, StepOutput, mean_scalar


class AdversarialObjective(Objective):
    """Shared machinery of every adversarial objective.

    Subclasses implement :meth:`critic_loss` and :meth:`generator_loss` on logits; they may add a
    :meth:`penalty` (WGAN-GP) or an :meth:`after_update` hook (weight clipping). ``aux_weight``
    scales the auxiliary classifier's cross-entropy for models that have one (AC-GAN, Odena et al. 2017).

    ``pack`` (PacGAN, Lin et al. 2018): the discriminator judges ``pack`` samples at once, real with
    real and fake with fake. A batch of ``B`` samples becomes ``B / pack`` packs, consecutive samples
    concatenated along the first data axis (``[B, D] -> [B / pack, pack * D]``,
    ``[B, C, H, W] -> [B / pack, pack * C, H, W]``); every loss, penalty and log is then over packs.
    The batch order is random, so consecutive samples are independent draws. The model's
    discriminator must be built for it (``model.pack``, which the model configs take from
    ``objective.pack``); conditional models judge one labelled sample and refuse ``pack > 1``.

    ``ortho_reg`` (BigGAN, Brock et al. 2019): orthogonal regularisation of the generator, added to the G phase's loss
    and logged as ``ortho_reg`` when > 0; see :func:`ortho_penalty` (its factor) and
    :meth:`~gentrain.families.gan.base.AdversarialModel.ortho_weights` (which weights).
    """

    #: The phases by class (the critic's repeats come from ``objective.d_steps``, set per instance).
    phases = (Phase("D"), Phase("G", batch="labels"))

    family = AdversarialModel
    #: True where D's logit is that of a probability (the GAN losses): the D phase logs ``D_real`` and
    #: ``D_fake`` = mean ``sigmoid(D(.))``, the G phase ``D_fake``. False (hinge, Wasserstein): the D
    #: phase logs ``critic_real`` and ``critic_fake`` = mean raw ``D(.)``, the G phase ``critic_fake``.
    probability_outputs: ClassVar[bool] = False

    def __init__(self, d_steps: int = 1, aux_weight: float = 1.0, pack: int = 1, ortho_reg: float = 0.0) -> None:
        check_int(d_steps, "objective.d_steps")
        if float(aux_weight) < 0:
            raise GentrainError(f"objective.aux_weight must be >= 0, got {aux_weight!r}; e.g. objective.aux_weight=1.0")
        if isinstance(ortho_reg, bool) or not isinstance(ortho_reg, (int, float)) or not float(ortho_reg) >= 0:
            raise GentrainError(f"objective.ortho_reg must be a number >= 0, got {ortho_reg!r}; e.g. objective.ortho_reg=1e-4 (BigGAN's beta; 0 disables it)")
        self.ortho_reg = float(ortho_reg)
        self.d_steps = d_steps
        self.aux_weight = float(aux_weight)
        self.pack = check_int(pack, "objective.pack", 1, example=2)
        # the generator's phase draws its own noise: it reads only the batch's labels (a conditional model's classes) and size
        self.phases = (Phase("D", d_steps), Phase("G", 1, batch="labels"))

    def check_model(self, model: AdversarialModel, objective_name: str, model_name: str, fitting: list[str]) -> None:
        super().check_model(model, objective_name, model_name, fitting)
        if model.pack != self.pack:
            if model.conditional:
                raise GentrainError(
                    f"objective.pack={self.pack}: model={model_name} is conditional and its discriminator judges one labelled sample; "
                    "use objective.pack=1, or an unconditional model (model=gan_mlp, dcgan, wgan, wgan_gp)"
                )
            raise GentrainError(
                f"objective.pack={self.pack} but model={model_name}'s discriminator takes packs of {model.pack}; "
                f"set model.pack={self.pack} (the model configs follow objective.pack unless model.pack is set)"
            )

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.pack:
            raise GentrainError(
                f"objective.pack={self.pack} groups each batch into packs of {self.pack}, and trainer.batch_size={batch_size} "
                f"is not a multiple of it; set trainer.batch_size={max(self.pack, batch_size // self.pack * self.pack)}"
            )

    def packed(self, x: Tensor) -> Tensor:
        """``[B, C, ...] -> [B / pack, pack * C, ...]``: consecutive samples concatenated along the first data axis."""
        if self.pack == 1:
            return x
        return x.reshape(x.shape[0] // self.pack, self.pack * x.shape[1], *x.shape[2:])

    # ---- what subclasses define ---------------------------------------------------------------
    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar discriminator loss and logs from logits on real [B] and fake [B]."""
        raise NotImplementedError

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        """Per-sample generator loss [B]."""
        raise NotImplementedError

    def penalty(self, model: AdversarialModel, x_real: Tensor, x_fake: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, Tensor]] | None:
        """An extra critic term (e.g. the gradient penalty); none by default."""
        return None

    # ---- the phases ---------------------------------------------------------------------------
    def step(self, phase: str, model: AdversarialModel, batch: Batch) -> StepOutput:
        return self.discriminator_step(model, batch) if phase == "D" else self.generator_step(model, batch)

    @staticmethod
    def _labels(model: AdversarialModel, batch: Batch) -> Tensor | None:
        # conditional models: fakes take the batch's labels, so real and fake share the class balance
        return batch.y if model.conditional else None

    def _aux(self, class_logits: Tensor | None, y: Tensor | None, logs: dict[str, Tensor], name: str) -> Tensor | None:
        if class_logits is None or y is None:
            return None
        loss = F.cross_entropy(class_logits.float(), y)
        logs[f"aux_loss_{name}"] = loss.detach()
        logs[f"aux_acc_{name}"] = (class_logits.argmax(1) == y).float().mean()
        return loss

    def _output_logs(self, logits: Tensor, which: str) -> dict[str, Tensor]:
        """The log of D's mean output on ``which`` ("real" or "fake") samples; see :attr:`probability_outputs`."""
        if self.probability_outputs:
            return {f"D_{which}": mean_scalar(logits.sigmoid())}
        return {f"critic_{which}": mean_scalar(logits)}

    def discriminator_step(self, model: AdversarialModel, batch: Batch) -> StepOutput:
        y = self._labels(model, batch)
        z = model.noise(batch.x.shape[0], device=batch.x.device)
        # detach: the discriminator's phase must not push gradients into the generator
        x_fake = self.packed(model.generate(z, y).detach())
        x_real = self.packed(model.reals(batch.x))
        logits_real, class_real = model.discriminate(x_real, y)
        logits_fake, class_fake = model.discriminate(x_fake, y)
        loss, logs = self.critic_loss(logits_real, logits_fake)
        logs |= self._output_logs(logits_real, "real") | self._output_logs(logits_fake, "fake")
        extra = self.penalty(model, x_real, x_fake, y)
        if extra is not None:
            loss = loss + extra[0]
            logs.update(extra[1])
        for class_logits, name in ((class_real, "real"), (class_fake, "fake")):
            aux = self._aux(class_logits, y, logs, name)
            if aux is not None:
                loss = loss + self.aux_weight * aux
        logs["loss"] = loss.detach()
        return StepOutput(loss, logs)

    def generator_step(self, model: AdversarialModel, batch: Batch) -> StepOutput:
        y = self._labels(model, batch)
        z = model.noise(batch.size, device=batch.device)
        logits_fake, class_fake = model.discriminate(self.packed(model.generate(z, y)), y)
        loss = self.generator_loss(logits_fake).mean()
        logs = self._output_logs(logits_fake, "fake") | model.training_logs()
        aux = self._aux(class_fake, y, logs, "fake")
        if aux is not None:
            loss = loss + self.aux_weight * aux
        if self.ortho_reg > 0:
            reg = self.ortho_reg * ortho_penalty(model.ortho_weights())
            logs["ortho_reg"] = reg.detach()
            loss = loss + reg
        logs["loss"] = loss.detach()
        return StepOutput(loss, logs)


def ortho_penalty(weights: Sequence[Tensor]) -> Tensor:
    """BigGAN's orthogonal regularisation (Brock et al. 2019, section 3.1), without its strength: ``sum_W 1/2 ||W W^T * (1 - I)||_F^2``.

    Each ``W`` is read as ``[shape[0], -1]``; only the off-diagonal entries of its Gram matrix are penalised, so rows are
    pushed towards orthogonality but their norms are free. The paper writes ``R = beta ||W W^T * (1 - I)||_F^2``; its code
    (BigGAN-PyTorch, utils.ortho) adds ``beta * 2 (W W^T * (1 - I)) W`` to each gradient directly, and the gradient of the
    paper's R is ``beta * 4 (W W^T * (1 - I)) W``: the code's is that of ``beta / 2 ||...||_F^2``. This follows the code
    (the factor 1/2), so ``objective.ortho_reg=1e-4`` trains as BigGAN-PyTorch's ``--G_ortho 1e-4`` does. Computed in
    float32 with autocast off: bf16's 8-bit mantissa would round the small off-diagonal products of near-orthogonal rows.
    """
    weights = list(weights)
    if not weights:
        raise GentrainError("objective.ortho_reg > 0 but the model's generator has no weights of 2 or more axes; set objective.ortho_reg=0")
    with torch.autocast(device_type=weights[0].device.type, enabled=False):
        total = weights[0].new_zeros((), dtype=torch.float32)
        for w in weights:
            w = w.float().reshape(w.shape[0], -1)
            gram = w @ w.t()
            off = gram * (1.0 - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype))
            total = total + 0.5 * off.square().sum()
    return total


class GANObjective(AdversarialObjective):
    """The discriminator minimises ``-[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(G(z)))`` with
    ``t = 1 - label_smoothing`` (one-sided label smoothing, Salimans et al. 2016; 0 disables it).

    ``sigmoid(D(x))`` is a probability here: logs ``D_real`` and ``D_fake``, besides ``loss_real`` and ``loss_fake``.
    """

    probability_outputs = True

    def __init__(self, d_steps: int = 1, label_smoothing: float = 0.0, aux_weight: float = 1.0, pack: int = 1, ortho_reg: float = 0.0) -> None:
        super().__init__(d_steps, aux_weight, pack, ortho_reg)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise GentrainError(
                f"objective.label_smoothing must be in [0, 1), got {label_smoothing!r}; e.g. objective.label_smoothing=0.1 (0 disables it)"
            )
        self.label_smoothing = float(label_smoothing)

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample losses on real [B] and fake [B'] logits."""
        target = 1.0 - self.label_smoothing
        # BCE with logits against target t: t * softplus(-l) + (1 - t) * softplus(l)
        loss_real = target * F.softplus(-logits_real) + (1.0 - target) * F.softplus(logits_real)
        loss_fake = F.softplus(logits_fake)
        return loss_real, loss_fake

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss_real, loss_fake = self.discriminator_loss(logits_real, logits_fake)
        return loss_real.mean() + loss_fake.mean(), {"loss_real": mean_scalar(loss_real), "loss_fake": mean_scalar(loss_fake)}


class Minimax(GANObjective):
    """The original game: the generator minimises ``log(1 - D(G(z))) = -softplus(l)``.

    Its gradient vanishes where the discriminator rejects fakes confidently (early training).
    """

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -F.softplus(logits_fake)


class NonSaturating(GANObjective):
    """The non-saturating heuristic: the generator minimises ``-log D(G(z)) = softplus(-l)``."""

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return F.softplus(-logits_fake)


class Hinge(AdversarialObjective):
    """Hinge loss (Lim & Ye 2017; SNGAN, BigGAN): D minimises ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G minimises ``-D(G(z))``.

    D's output is a margin score, not a logit: logs ``critic_real`` and ``critic_fake``, besides ``loss_real`` and ``loss_fake``.
    """

    def critic_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss_real, loss_fake = F.relu(1.0 - logits_real), F.relu(1.0 + logits_fake)
        return loss_real.mean() + loss_fake.mean(), {"loss_real": mean_scalar(loss_real), "loss_fake": mean_scalar(loss_fake)}

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -logits_fake
