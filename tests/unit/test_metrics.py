"""Evaluation metrics against references: SciPy for FID, hand computations for KID, IS and precision/recall;
the protocol registry, the reference cache, and the evaluator's streaming."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from gentrain.data.images import Digits
from gentrain.data.toy import Ring8
from gentrain.errors import GentrainError
from gentrain.metrics.evaluate import Evaluator, ReferenceCache, extract, to_uint8
from gentrain.metrics.fidelity import Features, compute, frechet_distance, headline_direction, moments, parse_protocol
from gentrain.families.gan.models import DCGAN


class TinyExtractor(nn.Module):
    """A fixed random feature map standing in for Inception (16 features, 10 logits), fast on a CPU."""

    def __init__(self, seed: int = 0, has_logits: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(48, 16, generator=g), requires_grad=False)
        self.head = nn.Parameter(torch.randn(16, 10, generator=g), requires_grad=False)
        self.identity = f"tiny:{seed}"
        self.has_logits = has_logits
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        assert x.dtype == torch.uint8
        self.batch_sizes.append(x.shape[0])
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        f = torch.tanh(h @ self.proj)
        return f, (f @ self.head if self.has_logits else None)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ------------------------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero():
    f = torch.randn(500, 32, dtype=torch.float64).float()
    assert abs(frechet_distance(moments(f), moments(f))) < 1e-6


def test_fid_matches_a_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) * 0.5 + 0.3
    ours = frechet_distance(moments(torch.from_numpy(a).float()), moments(torch.from_numpy(b).float()))
    assert ours == pytest.approx(scipy_fid(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)), rel=1e-6)


def test_moments_are_mean_and_unbiased_covariance():
    f = torch.randn(50, 5)
    m = moments(f)
    np.testing.assert_allclose(m["mu"], f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(m["sigma"], np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)


def test_fid_from_fewer_samples_than_dimensions_works_and_is_flagged():
    gen, ref = Features(torch.randn(20, 64)), Features(torch.randn(20, 64) + 1)
    result = compute(parse_protocol("fid20"), gen, ref, {})
    assert np.isfinite(result.values["fid20"]) and result.values["fid20"] > 0
    assert any("strongly biased" in n for n in result.notes)
    assert not any("strongly biased" in n for n in compute(parse_protocol("fid100"), Features(torch.randn(100, 8)), Features(torch.randn(100, 8)), {}).notes)


def test_kid_says_when_its_subsets_are_smaller_than_asked():
    gen, ref = Features(torch.randn(30, 8)), Features(torch.randn(40, 8))
    small = compute(parse_protocol("kid30"), gen, ref, {"kid_subsets": 5, "kid_subset_size": 100})
    assert small.notes == ["KID subsets of 30 samples (fewer than the usual 100)"]
    assert compute(parse_protocol("kid30"), gen, ref, {"kid_subsets": 5, "kid_subset_size": 20}).notes == []


# ------------------------------------------------------------------------------------------- KID


def hand_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_matches_a_hand_computation():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 0.5
    # one subset of all samples: the estimate is the full unbiased MMD^2 (a permutation changes nothing)
    result = compute(parse_protocol("kid60"), Features(torch.from_numpy(x)), Features(torch.from_numpy(y)), {"kid_subsets": 1, "kid_subset_size": 60})
    assert result.values["kid60"] == pytest.approx(hand_kid(x, y), rel=1e-9)
    assert result.values["kid60_std"] == 0


def test_kid_is_near_zero_for_two_samples_of_one_distribution():
    g = torch.Generator().manual_seed(0)
    result = compute(parse_protocol("kid400"), Features(torch.randn(400, 8, generator=g)), Features(torch.randn(400, 8, generator=g)), {"kid_subsets": 10, "kid_subset_size": 200})
    assert abs(result.values["kid400"]) < 0.05


# -------------------------------------------------------------------------------------------- IS


def hand_inception_score(logits: np.ndarray) -> float:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def test_inception_score_matches_a_hand_computation():
    logits = np.random.default_rng(2).normal(size=(100, 10)) * 3
    result = compute(parse_protocol("is100"), Features(torch.zeros(100, 4), torch.from_numpy(logits)), None, {"is_splits": 1})
    assert result.values["is100"] == pytest.approx(hand_inception_score(logits), rel=1e-9)


def test_inception_score_of_confident_uniform_classes_is_the_class_count():
    logits = torch.full((1000, 10), -50.0)
    logits[torch.arange(1000), torch.arange(1000) % 10] = 50.0
    # one split: the marginal over all 1000 is exactly uniform (10 random splits of 100 are not)
    result = compute(parse_protocol("is1k"), Features(torch.zeros(1000, 4), logits), None, {"is_splits": 1})
    assert result.values["is1k"] == pytest.approx(10.0, rel=1e-6)


def test_inception_score_without_logits_is_reported_unavailable():
    result = compute(parse_protocol("is10"), Features(torch.zeros(10, 4)), None, {})
    assert not result.available and not result.values and "logits" in result.notes[0]


# ---------------------------------------------------------------------------- precision / recall


def test_precision_recall_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    same = compute(parse_protocol("pr200"), Features(real.clone()), Features(real), {}).values
    assert same["pr200_precision"] == 1.0 and same["pr200_recall"] == 1.0
    far = compute(parse_protocol("pr200"), Features(real + 100), Features(real), {}).values
    assert far["pr200_precision"] == 0.0 and far["pr200_recall"] == 0.0
    # half the fakes are real points, half are far away: precision exactly 1/2; recall covers at least those real points
    mixed = compute(parse_protocol("pr200"), Features(torch.cat([real[:100], real[:100] + 100])), Features(real), {}).values
    assert mixed["pr200_precision"] == 0.5 and 0.5 <= mixed["pr200_recall"] < 1.0


# ------------------------------------------------------------------------------- protocol names


@pytest.mark.parametrize("name,family,n", [("fid10k", "fid", 10000), ("kid50k", "kid", 50000), ("is500", "is", 500), ("pr2", "pr", 2)])
def test_protocol_names_carry_their_sample_count(name, family, n):
    protocol = parse_protocol(name)
    assert (protocol.family.name, protocol.n) == (family, n)


@pytest.mark.parametrize("name,fragment", [("fid1", "at least 2"), ("fid0k", "at least 2"), ("fdi10k", "unknown metric"), ("fid", "unknown metric"), ("lpips10k", "unknown metric")])
def test_bad_metric_names_are_one_line(name, fragment):
    with pytest.raises(GentrainError, match=fragment) as e:
        parse_protocol(name)
    assert "\n" not in str(e.value)


def test_best_key_direction():
    assert headline_direction("fid10k")[1] is False and headline_direction("is10k")[1] is True
    assert headline_direction("pr10k_recall")[1] is True
    with pytest.raises(GentrainError, match="choose one of"):
        headline_direction("fid10k_precision")


# ------------------------------------------------------------------------------ reference cache


def test_reference_cache_hits_and_invalidates(tmp_path):
    cache = ReferenceCache(tmp_path)
    images = Digits().load("test").x[:40]
    ext = TinyExtractor(0)
    device = torch.device("cpu")
    first, hit = cache.features("digits", "test", images, ext, 16, device)
    assert not hit and ext.batch_sizes == [16, 16, 8]
    again, hit = cache.features("digits", "test", images, ext, 16, device)
    assert hit and torch.equal(first.pool, again.pool) and ext.batch_sizes == [16, 16, 8]  # nothing recomputed
    # every part of the key invalidates: count, split name, extractor, the images themselves
    for args in (
        ("digits", "test", images[:30], ext),
        ("digits", "train", images, ext),
        ("digits", "test", images, TinyExtractor(1)),
        ("digits", "test", images.flip(0), ext),
        ("mnist", "test", images, ext),
    ):
        assert cache.features(*args, 16, device)[1] is False
        assert cache.features(*args, 16, device)[1] is True
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 6


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    cache = ReferenceCache(tmp_path)
    images = Digits().load("test").x[:10]
    cache.features("digits", "test", images, TinyExtractor(), 8, torch.device("cpu"))
    (path,) = (tmp_path / "reference").glob("*.pt")
    path.write_bytes(b"garbage")
    features, hit = cache.features("digits", "test", images, TinyExtractor(), 8, torch.device("cpu"))
    assert not hit and features.pool.shape == (10, 16)


# ----------------------------------------------------------------------------------- evaluator


def tiny_model() -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(shape=(1, 8, 8), z_dim=8, g_width=8, d_width=8)


def test_evaluator_streams_in_batches_and_reports_counts(tmp_path):
    ext = TinyExtractor()
    ev = Evaluator(["fid100", "kid50", "is60", "pr30"], Digits(), "test", lambda: ext, ReferenceCache(tmp_path), torch.device("cpu"), batch_size=32)
    results = {r.name: r for r in ev(tiny_model())}
    assert max(ext.batch_sizes) <= 32
    assert results["fid100"].n_generated == 100 and results["fid100"].n_reference == 100
    assert results["fid100"].reference_split == "digits/test" and results["fid100"].extractor == "tiny:0"
    assert results["kid50"].n_generated == 50 and results["pr30"].n_reference == 30
    assert results["is60"].n_reference is None and results["is60"].values["is60"] >= 1.0
    assert ev.reference_from_cache is False
    # the reference split has only 297 images: a larger count says so
    big = Evaluator(["fid400"], Digits(), "test", lambda: ext, ReferenceCache(tmp_path), torch.device("cpu"))(tiny_model())[0]
    assert big.n_reference == 297 and any("only 297" in n for n in big.notes)


def test_evaluation_is_deterministic_and_leaves_the_global_rng_alone(tmp_path):
    ev = Evaluator(["fid50"], Digits(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))
    model = tiny_model()
    torch.manual_seed(5)
    a = ev(model)[0].values["fid50"]
    state = torch.get_rng_state()
    b = ev(model)[0].values["fid50"]
    assert a == b and torch.equal(state, torch.get_rng_state()) and model.training


def test_evaluator_refuses_vector_data_and_duplicates(tmp_path):
    with pytest.raises(GentrainError, match="images"):
        Evaluator(["fid100"], Ring8(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))
    with pytest.raises(GentrainError, match="twice"):
        Evaluator(["fid100", "fid100"], Digits(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))


def test_to_uint8_inverts_the_data_scaling():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(u.float() / 127.5 - 1), u)


def test_extract_keeps_features_not_images():
    ext = TinyExtractor()
    feats = extract(lambda s, k: torch.full((k, 1, 8, 8), s % 256, dtype=torch.uint8), 70, ext, 25)
    assert feats.pool.shape == (70, 16) and feats.pool.dtype == torch.float32 and ext.batch_sizes == [25, 25, 20]


def test_mode_coverage_protocol_on_toy_points(tmp_path):
    from gentrain.data.toy import Grid25
    from gentrain.families.gan.models import GanMLP

    torch.manual_seed(0)
    model = GanMLP(shape=(2,), z_dim=4, g_widths=(8,), d_widths=(8,))
    ev = Evaluator(["modes500"], Ring8(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))
    (result,) = ev(model)
    assert set(result.values) >= {"modes500_fair", "modes500_pacgan", "modes500_hq"} and result.n_generated == 500 and result.extractor == "points"
    assert set(result.values) <= {"modes500_fair", "modes500_pacgan", "modes500_hq", "modes500_rkl"}
    assert 0 <= result.values["modes500_fair"] <= result.values["modes500_pacgan"] <= 8 and "high-quality" in result.notes[0]
    assert not (tmp_path / "reference").exists()  # no reference set, no Inception

    class Perfect(GanMLP):
        """Samples the mixture itself: every mode covered, about 98.9% within 3 std (2-D Rayleigh)."""

        def sample_with_labels(self, n, generator=None):
            return Grid25(n_train=n, n_test=2).load("train").x, None

    (perfect,) = Evaluator(["modes2500"], Grid25(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))(Perfect(shape=(2,)))
    assert perfect.values["modes2500_fair"] == perfect.values["modes2500_pacgan"] == 25 and 0.97 < perfect.values["modes2500_hq"] < 1.0
    assert 0 <= perfect.values["modes2500_rkl"] < 0.1  # draws from the mixture: near uniform over the modes (log 25 = 3.2 at collapse)


def test_metrics_that_do_not_fit_the_data_name_the_ones_that_do(tmp_path):
    with pytest.raises(GentrainError, match="modes<count>"):
        Evaluator(["fid100"], Ring8(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))
    with pytest.raises(GentrainError, match="fid<count>"):
        Evaluator(["modes100"], Digits(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))
    from gentrain.data.toy import Moons

    with pytest.raises(GentrainError, match="ring8 or grid25"):
        Evaluator(["modes100"], Moons(), "test", TinyExtractor, ReferenceCache(tmp_path), torch.device("cpu"))


# ------------------------------------------------------------------ protocol names and their splits


def test_protocol_names_say_their_reference_split():
    fid = parse_protocol("fid10k")
    assert (fid.name, fid.split, fid.n) == ("fid10k", "test", 10000)  # the standard protocol: the first 10k test images
    assert fid.on("val").name == "fid10k_val" and fid.on("test").name == "fid10k"
    train = parse_protocol("fid50k_train")
    assert train.name == "fid50k_train" and train.on("val").name == "fid50k_train"  # a split in the name is fixed
    assert parse_protocol("is10k").on("val").name == "is10k" and parse_protocol("modes2500").split is None
    assert parse_protocol("nll1k").on("val").keys() == ["nll1k_val", "nll1k_val_bpd"]
    with pytest.raises(GentrainError, match="compares with no data split"):
        parse_protocol("is10k_val")
    for key, name in (("pr10k_val_f1", "pr10k_val"), ("kid5k_std", "kid5k"), ("fid10k_test", "fid10k")):
        assert headline_direction(key)[0].name == name


def test_one_evaluation_scores_the_same_samples_against_several_splits(tmp_path):
    ext = TinyExtractor()
    dataset = Digits(val_fraction=0.1)
    ev = Evaluator(["fid100", "is60", "fid50_train"], dataset, "test", lambda: ext, ReferenceCache(tmp_path), torch.device("cpu"), batch_size=50)
    results = {r.name: r for r in ev(tiny_model(), ["val", "test"])}
    assert list(results) == ["fid100_val", "fid100", "is60", "fid50_train"]
    assert results["fid100_val"].reference_split == "digits/val" and results["fid100"].reference_split == "digits/test"
    assert results["fid50_train"].reference_split == "digits/train" and results["is60"].reference_split is None
    assert ext.batch_sizes.count(50) == 2 + 2 + 2 + 1  # references: val (100 -> 2 batches), test (2), train (1); samples once (2)


def test_an_image_folder_without_test_images_says_its_reference_is_the_training_images(tmp_path):
    from PIL import Image

    from gentrain.data.images import ImageFolder

    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    folder = ImageFolder(path=str(tmp_path), size=8, shape=(3, 8, 8))
    (result,) = Evaluator(["fid10"], folder, "test", TinyExtractor, ReferenceCache(tmp_path / "cache"), torch.device("cpu"))(DCGAN(shape=(3, 8, 8), g_width=4, d_width=4, z_dim=4))
    assert any("reference is the training images" in n for n in result.notes)


def test_a_fid_a_hair_below_zero_is_zero(monkeypatch):
    import gentrain.metrics.fidelity as fidelity

    monkeypatch.setattr(fidelity, "frechet_distance", lambda a, b: -4.5e-5)  # sqrtm rounding of a set against itself
    f = Features(torch.randn(50, 4))
    assert compute(parse_protocol("fid50"), f, f, {}).values == {"fid50": 0.0}


def test_precision_recall_of_too_few_samples_is_reported_unavailable_not_raised():
    f = Features(torch.randn(3, 4))
    result = compute(parse_protocol("pr10"), Features(torch.randn(10, 4)), f, {})
    assert not result.available and result.values == {} and "more than 3 samples" in result.notes[-1]
