"""Evaluation: stream samples and reference images through the feature extractor, apply the protocols.

Memory stays flat in the number of images: images pass through in batches as uint8 and only their
features are kept ([N, 2048] float32, 80 MB for 10k). Reference features are cached on disk,
keyed by dataset, split, count, extractor and a hash of the images themselves, so a changed key
never reuses stale statistics.

The two sides are generic. The generated side is a :class:`SampleSource`: a model's samples
(:class:`ModelSamples`, drawn with ``eval.seed``) or given images (:class:`ImageSamples`, e.g. a
folder or an .npz: ``task=eval samples=...``). The reference side is a dataset's splits, or an
:class:`ImageReference`: fixed images with no splits (``reference=<folder | .npz>``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol as TypingProtocol

import torch
from torch import Tensor

from gentrain.data.base import Dataset
from gentrain.engine import distributed
from gentrain.engine.progress import phase, tick
from gentrain.errors import GentrainError
from gentrain.metrics.fidelity import DEFAULT_SPLIT, FAMILIES, Features, MetricResult, Protocol, compute, parse_protocol
from gentrain.models.base import GenerativeModel, Likelihood
from gentrain.shared import atomic_save, to_model_space, to_uint8
from gentrain.sampling import eval_mode, sample_batches

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class FeatureExtractor(TypingProtocol):
    """What evaluation needs of a feature network (the Inception network, or a small stand-in in tests)."""

    identity: str
    has_logits: bool

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor | None]: ...  # uint8 [B, C, H, W] -> ([B, D], [B, K] | None)


class PointFeatures:
    """The "features" of 2-D toy points are the points themselves (mode coverage works on them directly)."""

    identity = "points"
    has_logits = False

    def __call__(self, x: Tensor) -> tuple[Tensor, None]:
        return x.float(), None


@torch.no_grad()
def extract(batches: Callable[[int, int], Tensor], n: int, extractor: FeatureExtractor, batch_size: int, label: str = "features") -> Features:
    """Features of ``n`` images produced by ``batches(start, size) -> uint8 [size, C, H, W]``, in batches (the phase ``label``)."""
    pool: Tensor | None = None
    logits: Tensor | None = None
    with phase(label, n):
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            f, lg = extractor(batches(start, size))
            if pool is None:
                # filled where the extractor runs, copied to the host once: no sync per batch
                pool = torch.empty(n, f.shape[1], dtype=torch.float32, device=f.device)
                logits = None if lg is None else torch.empty(n, lg.shape[1], dtype=torch.float32, device=lg.device)
            pool[start : start + size] = f
            if logits is not None and lg is not None:
                logits[start : start + size] = lg
            tick(size)
    assert pool is not None
    return Features(pool.cpu(), None if logits is None else logits.cpu())


#: Under torchrun rank r draws its share of the samples with seed ``eval.seed + r * stride``.
RANK_SEED_STRIDE = 1_000_003


def rank_shares(n: int, world: distributed.World) -> list[int]:
    """How many of ``n`` items each rank takes (the first ``n % size`` ranks one more)."""
    return [n // world.size + (r < n % world.size) for r in range(world.size)]


def _gathered(features: Features, world: distributed.World) -> Features:
    return Features(distributed.gather_rows(features.pool, world), None if features.logits is None else distributed.gather_rows(features.logits, world))


@torch.no_grad()
def generated_features(model: GenerativeModel, n: int, extractor: FeatureExtractor, batch_size: int, seed: int) -> Features:
    """Features of ``n`` samples of ``model`` (eval mode, drawn by :func:`gentrain.sampling.sample_batches`).

    The noise comes from a generator seeded with ``seed`` (the global RNG is untouched), in batches
    of ``batch_size``: ``task=sample`` with the same seed and batch size draws the same samples.
    Images go to the extractor as uint8, as real images do; points go as they are.

    Under torchrun the ranks split the work: rank r draws its share with seed
    ``seed + r * RANK_SEED_STRIDE`` (rank 0's share is the first part of the one-process set) and
    the features are gathered in rank order, so every rank holds all ``n``.
    """
    world = distributed.current()
    if world.active:
        share = rank_shares(n, world)[world.rank]
        local = _generated_features(model, share, extractor, batch_size, seed + RANK_SEED_STRIDE * world.rank)
        return _gathered(local, world)
    return _generated_features(model, n, extractor, batch_size, seed)


def _generated_features(model: GenerativeModel, n: int, extractor: FeatureExtractor, batch_size: int, seed: int) -> Features:
    batches = sample_batches(model, n, seed, batch_size)

    def batch(start: int, size: int) -> Tensor:
        x, _ = next(batches)
        return to_uint8(x) if x.dim() == 4 else x

    with eval_mode(model):
        return extract(batch, n, extractor, batch_size, "sampling and features")


class SampleSource(TypingProtocol):
    """The generated side of an evaluation: features of its first ``n`` images (fewer when it has fewer)."""

    def features(self, n: int, extractor: FeatureExtractor, batch_size: int) -> Features: ...


class ModelSamples:
    """Samples of a model drawn with ``seed`` (:func:`generated_features`: split over ranks under torchrun)."""

    def __init__(self, model: GenerativeModel, seed: int) -> None:
        self.model, self.seed = model, seed

    def features(self, n: int, extractor: FeatureExtractor, batch_size: int) -> Features:
        return generated_features(self.model, n, extractor, batch_size, self.seed)


class ImageBatches(TypingProtocol):
    """Images served in batches (a folder decoded on demand): ``len``, ``shape`` (C, H, W) and ``batch(start, size)``."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def batch(self, start: int, size: int) -> Tensor: ...  # uint8 [size, C, H, W]


class ImageSamples:
    """Given images as the generated side: a uint8 tensor ``[N, C, H, W]`` or :class:`ImageBatches`, in order.

    A protocol asking ``n`` uses the first ``n`` images; with fewer, all of them (the result says so).
    Under torchrun each rank featurises a contiguous share of the rows and the features are gathered
    in rank order: every rank holds the features of the one-process evaluation.
    """

    def __init__(self, images: Tensor | ImageBatches, device: torch.device, name: str = "images") -> None:
        self.images, self.device, self.name = images, device, name
        self.count = len(images)
        self.shape = _image_shape(images)

    def batch(self, start: int, size: int) -> Tensor:
        if isinstance(self.images, Tensor):
            return self.images[start : start + size]
        return self.images.batch(start, size)

    @torch.no_grad()
    def features(self, n: int, extractor: FeatureExtractor, batch_size: int) -> Features:
        n = min(n, self.count)
        world = distributed.current()
        split = world.active and n >= world.size  # fewer images than ranks: each rank takes them all
        start, size = 0, n
        if split:
            shares = rank_shares(n, world)
            start, size = sum(shares[: world.rank]), shares[world.rank]
        local = extract(lambda s, k: self.batch(start + s, k).to(self.device), size, extractor, batch_size)
        return _gathered(local, world) if split else local


class ImageReference:
    """Reference images without splits (``reference=<folder | .npz>``), in place of a dataset.

    Every protocol compares with the first ``n`` of these images; protocols that name a split
    (``fid10k_train``) are refused. ``images`` is a uint8 tensor ``[N, C, H, W]`` or an object with
    ``len``, ``shape`` and ``first(n)`` (read on first use), or None for no reference at all (only
    reference-free metrics, e.g. ``is10k``, with ``shape`` the shape of the samples).
    """

    def __init__(self, name: str, images: Any | None, shape: tuple[int, ...] | None = None) -> None:
        self.name = name
        self.images = images
        self.shape = _image_shape(images) if images is not None else tuple(int(s) for s in shape or ())
        self.count = None if images is None else len(images)

    @classmethod
    def none(cls, shape: tuple[int, ...]) -> "ImageReference":
        return cls("none", None, shape)

    def first(self, n: int) -> Tensor:
        assert self.images is not None
        return self.images[:n] if isinstance(self.images, Tensor) else self.images.first(n)


def _image_shape(images: Any) -> tuple[int, ...]:
    """(C, H, W) of a tensor [N, C, H, W] or of an object serving images (whose ``shape`` is one image's)."""
    return tuple(int(s) for s in (images.shape[1:] if isinstance(images, Tensor) else images.shape))


def _is_source(x: object) -> bool:
    """A :class:`SampleSource` (given images) rather than a model: anything that is not a :class:`GenerativeModel`."""
    return not isinstance(x, GenerativeModel)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def images_digest(x: Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()[:16]


class ReferenceCache:
    """Reference features on disk: ``<dir>/reference/<dataset>-<split>-<n>-<key hash>.pt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser() / "reference"

    def key(self, dataset: str, split: str, images: Tensor, extractor: FeatureExtractor) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "dataset": dataset,
            "split": split,
            "n": int(images.shape[0]),
            "extractor": extractor.identity,
            "images_sha1": images_digest(images),
        }

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return self.directory / f"{key['dataset']}-{key['split']}-{key['n']}-{digest}.pt"

    def features(self, dataset: str, split: str, images: Tensor, extractor: FeatureExtractor, batch_size: int, device: torch.device) -> tuple[Features, bool]:
        """(features of ``images``, whether they came from the cache)."""
        key = self.key(dataset, split, images, extractor)
        path = self.path(key)
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored.get("key") == key:
                    return Features(stored["pool"]), True
            except Exception as e:  # a damaged cache file is recomputed, never trusted
                log.warning("reference cache %s is unreadable (%s); recomputing", path, e)
        t0 = time.perf_counter()
        features = extract(lambda s, k: images[s : s + k].to(device), images.shape[0], extractor, batch_size, "reference features")
        log.info("reference features of %s/%s (%d images) in %.1f s -> %s", dataset, split, images.shape[0], time.perf_counter() - t0, path)
        try:
            atomic_save({"key": key, "pool": features.pool}, path)
        except OSError as e:
            log.warning("could not write the reference cache %s (%s); it will be recomputed next time", path, e)
        return Features(features.pool), False


def check_selection(protocols: list[Protocol], every: int) -> None:
    """Refuse in-training evaluation (``eval.every`` > 0) against the test split: that would be model selection on test."""
    if not every:
        return
    for p in protocols:
        if p.explicit and p.split == "test":
            raise GentrainError(
                f"eval.metrics lists {p.family.name}{p.count}_test, which eval.every={every} would compute during training on the test split "
                f"(model selection on test); list {p.family.name}{p.count}: during training it uses the validation split, at the end the test split"
            )


class Evaluator:
    """Runs a list of protocols on a model (or given images) against dataset splits; builds its feature network on first use.

    ``split`` is the split that protocols without one in their name compare with when a call names
    none (the test split for reports and ``task=eval``). One call may name several splits (the
    last in-training evaluation: validation for model selection, test for the report): samples
    are drawn and featurised once, and each split-dependent protocol is computed per split under
    its own name (``fid10k`` for test, ``fid10k_val``); protocols that use no split (is, modes) or
    fix theirs in the name (``fid50k_train``) are computed once.

    ``dataset`` is the reference side: a :class:`~gentrain.data.base.Dataset` (its splits) or an
    :class:`ImageReference` (fixed images: splits do not apply, every protocol keeps its plain name).
    A call scores a model's samples (drawn with ``seed``) or any :class:`SampleSource`, e.g.
    :class:`ImageSamples` of given images.
    """

    def __init__(
        self,
        metrics: list[str],
        dataset: Dataset | ImageReference,
        split: str,
        make_extractor: Callable[[], FeatureExtractor],
        cache: ReferenceCache,
        device: torch.device,
        batch_size: int = 250,
        seed: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.protocols: list[Protocol] = [parse_protocol(m) for m in metrics]
        names = [p.name for p in self.protocols]
        if len(set(names)) != len(names):
            raise GentrainError(f"eval.metrics lists a metric twice ({list(metrics)}); list each once")
        self.fixed = isinstance(dataset, ImageReference)
        if self.fixed:
            split = DEFAULT_SPLIT  # no splits: protocols keep their plain names (fid10k)
            self._check_fixed(dataset)  # type: ignore[arg-type]
        images = len(dataset.shape) == 3 and dataset.shape[0] in (1, 3)
        self.space = "inception" if images else "points"
        for p in self.protocols:
            if p.family.space not in (self.space, "likelihood"):
                kind = "1- or 3-channel images" if p.family.space == "inception" else "2-D Gaussian-mixture points (ring8, grid25)"
                fitting = [f for f in FAMILIES.values() if f.space == self.space and (images or tuple(dataset.shape) == (2,))]
                fitting += [f for f in FAMILIES.values() if f.space == "likelihood"]  # a likelihood model's nll fits any data
                hint = f"metrics for it: {', '.join(f.name + '<count>' for f in fitting)}" if fitting else "no metric fits it"
                raise GentrainError(f"{p.name} needs {kind}, but dataset {dataset.name} has samples of shape {list(dataset.shape)}; {hint}")
        if self.space == "points" and any(p.family.space == "points" for p in self.protocols):
            from gentrain.metrics.modes import dataset_modes

            modes, std = dataset_modes(dataset)  # type: ignore[arg-type]  # one clear line for a toy set without modes
            options = {**(options or {}), "modes": modes, "mode_std": std}
            make_extractor = PointFeatures
        self.dataset = dataset
        self.split = split
        self.make_extractor = make_extractor
        self.extractor: FeatureExtractor | None = None
        self.cache = cache
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.options = {"dims": math.prod(dataset.shape), **(options or {})}
        self._split_x: dict[str, Tensor] = {}
        self._reference: dict[str, Features] = {}
        self.reference_from_cache: bool | None = None

    def _check_fixed(self, reference: ImageReference) -> None:
        """One line for a protocol that an :class:`ImageReference` cannot serve."""
        for p in self.protocols:
            if p.family.space == "likelihood":
                raise GentrainError(
                    f"{p.name} is computed on the examples of a dataset split; reference={reference.name} is images without splits: "
                    "use reference=<dataset option> or leave reference out"
                )
            if p.explicit:
                raise GentrainError(
                    f"{p.name} names the {p.split} split, but reference={reference.name} is images without splits; use {p.family.name}{p.count}"
                )
            if p.family.needs_reference and reference.images is None:
                raise GentrainError(f"{p.name} compares with reference images and none were given; give a reference or ask only for is<count>")

    def protocols_on(self, splits: list[str]) -> list[Protocol]:
        """Every protocol a call on ``splits`` computes, in the order of ``eval.metrics``, split by split."""
        if self.fixed:
            splits = [DEFAULT_SPLIT]
        out: dict[str, Protocol] = {}
        for p in self.protocols:
            for q in (p.on(s) for s in splits):
                out.setdefault(q.name, q)
        return list(out.values())

    def check_selection(self, every: int) -> None:
        """Refuse, at start-up, in-training evaluation against the test split (model selection on test)."""
        check_selection(self.protocols, every)

    def split_data(self, split: str) -> Tensor:
        """The data of ``split`` (uint8 images or points), read once."""
        if split not in self._split_x:
            self._split_x[split] = self.dataset.load(split).x  # type: ignore[union-attr]
        return self._split_x[split]

    def reference_name(self, split: str) -> str:
        """What results name as their reference: ``digits/test``, or an :class:`ImageReference`'s name."""
        return self.dataset.name if self.fixed else f"{self.dataset.name}/{split}"

    def reference(self, split: str, protocols: list[Protocol]) -> Features:
        """Features of the first N examples of ``split``, N the largest count of ``protocols`` on it (cached on disk)."""
        if split not in self._reference:
            assert self.extractor is not None
            n_ref = max(p.n for p in protocols if p.family.needs_reference and p.split == split)
            if self.fixed:  # the first n given images; "all": their cache files name no split
                images, cache_split = self.dataset.first(n_ref), "all"  # type: ignore[union-attr]
            else:
                images, cache_split = self.split_data(split)[:n_ref], split  # the first n images of the split (standard protocol)
            self._reference[split], from_cache = self.cache.features(self.dataset.name, cache_split, images, self.extractor, self.batch_size, self.device)
            self.reference_from_cache = from_cache if self.reference_from_cache is None else self.reference_from_cache and from_cache
        return self._reference[split]

    def check_model(self, model: GenerativeModel) -> None:
        """Refuse, at start-up, likelihood metrics for a model that has no likelihood."""
        for p in self.protocols:
            if p.family.space == "likelihood" and not isinstance(model, Likelihood):
                from gentrain.build import models_with

                raise GentrainError(f"{p.name} needs a likelihood model ({', '.join(models_with(Likelihood))}); {type(model).__name__} has none")

    def check_source(self, source: GenerativeModel | SampleSource) -> None:
        """Refuse, at start-up, what ``source`` cannot give: likelihoods need a model, not images."""
        if not _is_source(source):
            self.check_model(source)  # type: ignore[arg-type]
            return
        for p in self.protocols:
            if p.family.space == "likelihood":
                raise GentrainError(f"{p.name} needs a model (the log-likelihoods of test data); given images have none: evaluate a checkpoint with ckpt=")

    def __call__(self, model: GenerativeModel | SampleSource, splits: list[str] | None = None) -> list[MetricResult]:
        """Results of every protocol on ``splits`` (default: ``split``) for a model's samples or a :class:`SampleSource`."""
        self.check_source(model)
        source: SampleSource = model if _is_source(model) else ModelSamples(model, self.seed)  # type: ignore[assignment,arg-type]
        protocols = self.protocols_on(list(dict.fromkeys(splits or [self.split])))
        unfinished = None if _is_source(model) else model.unfinished()  # type: ignore[union-attr]
        if unfinished:  # a growing network is evaluated at its final form only: no numbers, the reason in their place
            return [MetricResult(p.name, n_generated=None, available=False, notes=[f"not evaluated: {unfinished}"]) for p in protocols]
        sampled = [p for p in protocols if p.family.space != "likelihood"]
        gen = None
        if sampled:
            if self.extractor is None:
                self.extractor = self.make_extractor()
            for split in dict.fromkeys(p.split for p in sampled if p.family.needs_reference):
                self.reference(split, sampled)
            gen = source.features(max(p.n for p in sampled), self.extractor, self.batch_size)
        results = []
        for protocol in protocols:
            if protocol.family.space == "likelihood":
                assert protocol.split is not None
                result = compute(protocol, self.log_likelihoods(model, protocol.split, protocol.n), None, self.options)  # type: ignore[arg-type]
                result.extractor = "log-likelihood"
                result.notes.append(model.likelihood_kind)  # type: ignore[union-attr]  # which bound, with its options
            else:
                assert gen is not None and self.extractor is not None
                ref = self._reference[protocol.split] if protocol.family.needs_reference and protocol.split else None
                result = compute(protocol, gen, ref, self.options)
                result.extractor = self.extractor.identity
                if result.n_generated is not None and result.n_generated < protocol.n:
                    result.notes.append(f"only {result.n_generated} generated images were given, fewer than the {protocol.n} asked for")
                if ref is not None:
                    result.notes.extend(self._shape_notes(source))
            if protocol.split is not None:
                result.reference_split = self.reference_name(protocol.split)
                note = None if self.fixed else self.dataset.split_note(protocol.split)  # type: ignore[union-attr]
                if note:
                    result.notes.append(note)
            results.append(result)
        return results

    def _shape_notes(self, source: SampleSource) -> list[str]:
        """A caveat when given images and reference images differ in size or channels (the extractor still compares them)."""
        shape = getattr(source, "shape", None)
        if shape is None or tuple(shape) == tuple(self.dataset.shape):
            return []
        return [
            f"generated images are {_shape_text(shape)} (CxHxW), reference images {_shape_text(self.dataset.shape)}: compared through the "
            "feature extractor, which resizes every image (Inception: to 299x299) and tiles grayscale to 3 channels"
        ]

    @torch.no_grad()
    def log_likelihoods(self, model: Likelihood, split: str, n: int) -> Features:
        """log p(x) [N, 1] of the first ``n`` examples of ``split``, in batches; the global RNG is left as it was."""

        x = self.split_data(split)[:n]
        world = distributed.current()
        if world.active:  # each rank its contiguous share of the examples, gathered back in order
            shares = rank_shares(x.shape[0], world)
            start = sum(shares[: world.rank])
            x = x[start : start + shares[world.rank]]
        devices = [model.device] if model.device.type == "cuda" else []
        with eval_mode(model), torch.random.fork_rng(devices=devices):  # dequantisation and IWAE noise: seeded, and invisible to training
            torch.manual_seed(self.seed + RANK_SEED_STRIDE * world.rank)
            out = []
            with phase("log-likelihoods", x.shape[0]):
                for i in range(0, x.shape[0], self.batch_size):
                    batch = to_model_space(x[i : i + self.batch_size].to(model.device))
                    out.append(model.log_likelihood(batch).float())
                    tick(batch.shape[0])
        return _gathered(Features(torch.cat(out)[:, None].cpu()), world)
