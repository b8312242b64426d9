"""Mode coverage on Gaussian-mixture toy data (VEEGAN / PacGAN measures): exact results on constructed point sets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from gentrain.data.toy import Grid25, Moons, Ring8
from gentrain.errors import GentrainError
from gentrain.metrics.modes import MIN_FRACTION, ModeStats, coverage_threshold, dataset_modes, mode_stats, reverse_kl

RING = Ring8()
GRID = Grid25()


def at_modes(modes: Tensor, per_mode: list[int]) -> Tensor:
    """``per_mode[k]`` points exactly at centre ``k`` -> [sum, 2]."""
    return torch.cat([modes[k].expand(c, -1) for k, c in enumerate(per_mode)])


def far_away(n: int) -> Tensor:
    """Points far from every ring and grid centre (used as filler: they count in N but are never HQ)."""
    return torch.full((n, 2), 100.0)


def on_circle(centre: Tensor, radius: float, n: int = 16) -> Tensor:
    """``n`` points at distance ``radius`` from ``centre``, in every direction -> [n, 2]."""
    angle = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return (centre.double() + radius * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


@pytest.mark.parametrize("dataset", [RING, GRID], ids=["ring8", "grid25"])
def test_samples_at_the_centres_cover_every_mode(dataset) -> None:
    modes, std = dataset_modes(dataset)
    k = len(modes)
    stats = mode_stats(at_modes(modes, [100] * k), modes, std)
    assert stats.modes_fair == k == stats.num_modes
    assert stats.high_quality == 1.0
    assert stats.n_samples == 100 * k
    assert stats.counts.tolist() == [100] * k


def test_high_quality_boundary_is_n_sigma_from_the_nearest_centre() -> None:
    modes, std = dataset_modes(RING)
    centre = modes[1]  # off both axes: float error in x and y alike
    inside, outside = on_circle(centre, 2.9 * std), on_circle(centre, 3.1 * std)
    assert mode_stats(inside, modes, std, min_count=1).high_quality == 1.0
    assert mode_stats(outside, modes, std, min_count=1).high_quality == 0.0
    both = mode_stats(torch.cat([inside, outside]), modes, std, min_count=1)
    assert both.high_quality == 0.5
    assert both.counts.tolist() == [0, 16, 0, 0, 0, 0, 0, 0]
    # n_sigma moves the boundary: 3.1 sigma is inside a 3.2 sigma radius, 2.9 sigma outside 2.8
    assert mode_stats(outside, modes, std, n_sigma=3.2).high_quality == 1.0
    assert mode_stats(inside, modes, std, n_sigma=2.8).high_quality == 0.0


def test_only_three_of_eight_modes_are_covered() -> None:
    modes, std = dataset_modes(RING)
    stats = mode_stats(at_modes(modes, [50, 0, 0, 50, 0, 0, 50, 0]), modes, std)
    assert stats.modes_fair == 3
    assert stats.num_modes == 8
    assert stats.high_quality == 1.0  # collapsed but sharp: HQ alone does not see mode collapse
    assert stats.counts.tolist() == [50, 0, 0, 50, 0, 0, 50, 0]


def test_pacgan_rule_counts_a_mode_with_one_high_quality_sample() -> None:
    # PacGAN's released MetricLogger: mode coverage = number of modes with a nonzero HQ count
    modes, std = dataset_modes(GRID)
    per_mode = [0] * 25
    per_mode[3], per_mode[7], per_mode[24] = 1, 19, 20
    samples = torch.cat([at_modes(modes, per_mode), far_away(2500 - 40)])
    stats = mode_stats(samples, modes, std)
    assert stats.modes_pacgan == 3  # 1, 19 and 20 samples: each at least one
    assert stats.modes_fair == 1  # only the mode with 20 = 20% of 2,500 / 25
    # a sample beyond 3 sigma is not HQ and covers nothing under either rule
    stats = mode_stats(torch.cat([on_circle(modes[0], 3.01 * std, n=1), far_away(9)]), modes, std)
    assert (stats.modes_pacgan, stats.modes_fair, stats.high_quality) == (0, 0, 0.0)


def test_reverse_kl_is_exact_on_constructed_histograms() -> None:
    modes, std = dataset_modes(RING)
    # perfect balance: q = u, KL = 0
    assert mode_stats(at_modes(modes, [30] * 8), modes, std).reverse_kl == pytest.approx(0.0, abs=1e-12)
    # everything in one mode: KL(delta || u) = log K
    assert mode_stats(at_modes(modes, [100, 0, 0, 0, 0, 0, 0, 0]), modes, std).reverse_kl == pytest.approx(math.log(8))
    # a general histogram against the definition sum q_k log(q_k / (1/K)), empty modes adding 0;
    # low-quality samples do not enter the histogram
    counts = [10, 30, 0, 60, 0, 0, 0, 0]
    q = [c / 100 for c in counts]
    expected = sum(p * math.log(p * 8) for p in q if p > 0)
    stats = mode_stats(torch.cat([at_modes(modes, counts), far_away(50)]), modes, std)
    assert stats.reverse_kl == pytest.approx(expected, rel=1e-12)
    # against scipy's entropy(q, u), the KL divergence
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.reverse_kl == pytest.approx(float(scipy_stats.entropy(q, [1 / 8] * 8)), rel=1e-12)
    # grid: 25 modes, log 25 at full collapse
    gmodes, gstd = dataset_modes(GRID)
    assert mode_stats(at_modes(gmodes, [5] + [0] * 24), gmodes, gstd).reverse_kl == pytest.approx(math.log(25))
    # no HQ sample: no histogram
    assert math.isnan(reverse_kl(torch.zeros(8, dtype=torch.long)))
    assert math.isnan(mode_stats(far_away(10), modes, std).reverse_kl)


def test_coverage_threshold_scales_with_the_expected_count_per_mode() -> None:
    assert MIN_FRACTION == 0.2
    assert coverage_threshold(2500, 25) == 20  # PacGAN's 2-D grid: lost if fewer than 20 of 2,500
    assert coverage_threshold(2500, 8) == 63  # 0.2 * 312.5 = 62.5: at least 20% needs 63
    assert coverage_threshold(10000, 8) == 250
    assert coverage_threshold(10, 25) == 1  # never below one sample
    assert coverage_threshold(2500, 25, min_fraction=0.0) == 1
    assert coverage_threshold(2500, 25, min_fraction=0.5) == 50


@pytest.mark.parametrize("dataset, min_count", [(GRID, 20), (RING, 63)], ids=["grid25", "ring8"])
def test_a_mode_needs_min_count_high_quality_samples(dataset, min_count: int) -> None:
    modes, std = dataset_modes(dataset)
    k = len(modes)
    per_mode = [min_count] * k
    per_mode[0] = min_count - 1  # one short of the threshold
    hq = at_modes(modes, per_mode)
    samples = torch.cat([hq, far_away(2500 - len(hq))])  # N = 2,500 as in PacGAN
    stats = mode_stats(samples, modes, std)
    assert stats.min_count == min_count
    assert stats.modes_fair == k - 1
    assert stats.counts[0] == min_count - 1
    assert stats.high_quality == len(hq) / 2500
    # samples near a mode but outside 3 sigma do not count towards it
    low_quality = on_circle(modes[0], 3.5 * std, n=1)
    assert mode_stats(torch.cat([samples[:-1], low_quality]), modes, std).modes_fair == k - 1
    # one more HQ sample (replacing a far one, so N stays 2,500) covers it
    stats = mode_stats(torch.cat([hq, modes[:1], far_away(2500 - len(hq) - 1)]), modes, std)
    assert stats.min_count == min_count
    assert stats.modes_fair == k


def test_explicit_min_count_overrides_min_fraction() -> None:
    modes, std = dataset_modes(RING)
    samples = at_modes(modes, [1, 2, 3, 4, 5, 6, 7, 8])
    assert mode_stats(samples, modes, std, min_count=1).modes_fair == 8
    assert mode_stats(samples, modes, std, min_count=5).modes_fair == 4
    stats = mode_stats(samples, modes, std, min_count=9)
    assert (stats.modes_fair, stats.min_count) == (0, 9)
    assert mode_stats(samples, modes, std, min_fraction=1.0).min_count == math.ceil(36 / 8)


def test_far_away_samples_are_neither_high_quality_nor_cover_anything() -> None:
    modes, std = dataset_modes(GRID)
    stats = mode_stats(far_away(500), modes, std)
    assert stats.high_quality == 0.0
    assert stats.modes_fair == 0
    assert stats.counts.sum() == 0
    # between the grid centres (1 unit = 20 std from each) is just as empty
    between = torch.tensor([[1.0, 1.0], [-1.0, 3.0], [0.0, 1.0]]).repeat(10, 1)
    assert mode_stats(between, modes, std, min_count=1).high_quality == 0.0


def test_non_finite_samples_count_in_n_but_are_never_high_quality() -> None:
    modes, std = dataset_modes(RING)
    samples = torch.cat([at_modes(modes, [1] * 8), torch.tensor([[float("nan"), 0.0], [float("inf"), 0.0]])])
    stats = mode_stats(samples, modes, std, min_count=1)
    assert stats.n_samples == 10
    assert stats.high_quality == 0.8
    assert stats.modes_fair == 8


def test_each_sample_is_assigned_to_its_nearest_mode() -> None:
    # overlapping 3-sigma discs: centres 1 apart, 3 sigma = 0.6
    modes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    std = 0.2
    samples = torch.tensor([[0.45, 0.0], [0.55, 0.1], [0.6, 0.0], [0.3, -0.1], [-0.5, 0.0], [1.59, 0.0]])
    stats = mode_stats(samples, modes, std, min_count=1)
    assert stats.counts.tolist() == [3, 3]  # 0.45, 0.3, -0.5 -> mode 0; 0.55, 0.6, 1.59 -> mode 1
    assert stats.high_quality == 1.0
    # within 3 sigma of mode 0 but nearer mode 1 counts for mode 1 only
    assert mode_stats(torch.tensor([[0.55, 0.0]]), modes, std, min_count=1).counts.tolist() == [0, 1]
    # an exact tie goes to the lower mode index
    assert mode_stats(torch.tensor([[0.5, 0.0]]), modes, std, min_count=1).counts.tolist() == [1, 0]


@pytest.mark.parametrize(
    "samples, modes, kwargs",
    [
        (torch.zeros(10), torch.zeros(8, 2), {}),  # samples not [N, D]
        (torch.zeros(10, 2, 1), torch.zeros(8, 2), {}),
        (torch.zeros(10, 3), torch.zeros(8, 2), {}),  # dimensions differ
        (torch.zeros(10, 2), torch.zeros(2), {}),  # modes not [K, D]
        (torch.zeros(0, 2), torch.zeros(8, 2), {}),  # no samples
        (torch.zeros(10, 2), torch.zeros(0, 2), {}),  # no modes
        (torch.zeros(10, 2), torch.zeros(8, 2), {"std": 0.0}),
        (torch.zeros(10, 2), torch.zeros(8, 2), {"std": float("nan")}),
        (torch.zeros(10, 2), torch.zeros(8, 2), {"n_sigma": -1.0}),
        (torch.zeros(10, 2), torch.zeros(8, 2), {"min_count": 0}),
        (torch.zeros(10, 2), torch.zeros(8, 2), {"min_fraction": -0.1}),
        ([[0.0, 0.0]], torch.zeros(8, 2), {}),  # not a tensor
    ],
)
def test_shapes_and_parameters_are_validated(samples, modes, kwargs) -> None:
    kwargs = {"std": 0.02, **kwargs}
    with pytest.raises(ValueError):
        mode_stats(samples, modes, **kwargs)


def test_coverage_threshold_validates_its_arguments() -> None:
    for args in [(0, 8), (2500, 0), (2500, 8, float("inf"))]:
        with pytest.raises(ValueError):
            coverage_threshold(*args)


@pytest.mark.parametrize("dataset", [RING, GRID], ids=["ring8", "grid25"])
def test_the_datasets_own_samples_cover_every_mode(dataset) -> None:
    modes, std = dataset_modes(dataset)
    x = dataset.load("test").x  # 10,000 samples of the true mixture
    stats = mode_stats(x, modes, std)
    assert stats.modes_fair == stats.num_modes == len(modes)
    # a 2-D Gaussian puts 1 - exp(-9/2) = 98.89% of its mass within 3 sigma (Rayleigh radius);
    # the binomial std at N = 10,000 is 0.001
    assert abs(stats.high_quality - (1 - math.exp(-4.5))) < 0.005
    assert stats.counts.sum() == round(stats.high_quality * stats.n_samples)
    # every point is assigned to the mode that generated it (the centres are >= 40 std apart)
    y = dataset.load("test").y
    d = torch.cdist(x.double(), modes.double())
    assert torch.equal(d.argmin(1), y)


def test_float64_samples_and_cpu_modes_mix() -> None:
    modes, std = dataset_modes(RING)
    stats = mode_stats(at_modes(modes.double(), [10] * 8), modes, std)
    assert stats.modes_fair == 8
    assert stats.high_quality == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_samples_match_cpu() -> None:
    modes, std = dataset_modes(GRID)
    x = GRID.load("test").x
    cpu = mode_stats(x, modes, std)
    gpu = mode_stats(x.cuda(), modes, std)  # modes stay on the CPU: moved inside
    assert gpu.as_dict() == cpu.as_dict()
    assert gpu.counts.device.type == "cpu"


def test_as_dict_is_plain() -> None:
    modes, std = dataset_modes(RING)
    stats = mode_stats(torch.cat([at_modes(modes, [70, 70, 0, 0, 0, 0, 0, 0]), far_away(2360)]), modes, std)
    assert isinstance(stats, ModeStats)
    assert stats.as_dict() == {
        "modes_pacgan": 2,
        "modes_fair": 2,
        "num_modes": 8,
        "high_quality": 140 / 2500,
        "reverse_kl": math.log(4),  # q = (1/2, 1/2, 0, ...): sum q log(8 q) = log 4
        "counts": [70, 70, 0, 0, 0, 0, 0, 0],
        "n_samples": 2500,
        "min_count": 63,
    }


def test_dataset_modes_reads_ring_and_grid() -> None:
    modes, std = dataset_modes(RING)
    assert modes.shape == (8, 2) and modes.dtype == torch.float32
    assert std == 0.02
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 2.0))
    modes, std = dataset_modes(GRID)
    assert modes.shape == (25, 2) and std == 0.05


def test_dataset_modes_refuses_a_set_without_modes_in_one_line() -> None:
    with pytest.raises(GentrainError) as e:
        dataset_modes(Moons())
    message = str(e.value)
    assert "\n" not in message
    assert "dataset=ring8 or grid25" in message
    assert "moons" in message
