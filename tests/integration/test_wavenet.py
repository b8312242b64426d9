"""WaveNet and 1-D data: causality and the receptive field by autograd, the cached generator against the naive one, exact
normalisation, samplers that draw from the model's own conditionals, sample WAV files and audio logs; and exact resume of
every autoregressive model added with it (NADE, PixelRNN's two cells, WaveNet unconditional and conditional)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import make_config, tiny_overrides
from gentrain.build import build_model
from gentrain.data.audio import read_wav
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.families.autoregressive.wavenet import WaveNet, dequantize_levels, quantize


def wavenet(shape=(1, 12), data_levels=None, levels=5, dilations=(1, 2, 4), stacks=1, num_classes=None, mu_law=True, seed=0) -> WaveNet:
    torch.manual_seed(seed)
    m = WaveNet(shape, data_levels=data_levels, levels=levels, mu_law=mu_law, dilations=list(dilations), stacks=stacks,
                residual_channels=6, dilation_channels=5, skip_channels=7, num_classes=num_classes).double()
    with torch.no_grad():  # a start vector off zero, so the first position's logits depend on it as the others do
        m.net.start.normal_()
    return m


def all_levels(length: int, k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(k), repeat=length)))


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("dilations,stacks", [((1, 2, 4), 1), ((1, 3), 2)])
def test_logits_at_t_see_exactly_the_receptive_field_before_t(dilations, stacks):
    """d logits[t] / d input[s] (input s holds the value at s - 1) is nonzero exactly for t - R + 1 <= s <= t, R the
    receptive field sum(dilations) + 1: no future value leaks, and every value within the field is seen."""
    m = wavenet((1, 16), dilations=dilations, stacks=stacks)
    net, length = m.net, 16
    u = torch.randint(0, 5, (1, length), generator=torch.Generator().manual_seed(0))
    h0 = net.inputs(u).detach()
    r = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def logits(h):
        skips = 0
        for layer in net.layers:
            h, s = layer(h, None)
            skips = skips + s
        return torch.einsum("bkl,k->bl", net.head(skips), r)[0]

    jac = torch.autograd.functional.jacobian(logits, h0)[:, 0].abs().sum(1)  # [t, s]
    field = m.receptive_field
    assert field == sum(dilations) * stacks + 1
    t, s = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    inside = (s <= t) & (s > t - field)
    assert torch.all(jac[~inside] == 0)
    assert torch.all(jac[inside] > 0)


def test_changing_a_value_changes_no_logits_at_or_before_it():
    m = wavenet((1, 10), levels=7)
    g = torch.Generator().manual_seed(0)
    x = m.from_sequence(torch.randint(0, 7, (3, 10), generator=g))
    base = m(x)
    for j in range(10):
        u = m.to_sequence(x)
        u[:, j] = (u[:, j] + 3) % 7
        changed = m(m.from_sequence(u))
        assert torch.equal(changed[..., : j + 1], base[..., : j + 1]), j
        assert not torch.equal(changed[..., j + 1 :], base[..., j + 1 :]) or j == 9


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize("mu_law", [True, False])
def test_levels_round_trip_and_mu_law_spends_levels_near_zero(mu_law):
    u = torch.arange(256)
    x = dequantize_levels(u, 256, mu_law)
    assert torch.equal(quantize(x, 256, mu_law), u) and x.min() == -1 and x.max() == 1
    assert torch.all(x[1:] > x[:-1])
    small = int(((x.abs() < 0.1)).sum())
    assert small > 100 if mu_law else small < 30  # mu-law: fine steps near 0, coarse near +-1


def test_images_are_read_in_raster_order_with_the_channels_inside_a_pixel():
    m = wavenet((3, 2, 2), data_levels=4)
    u = torch.arange(12)[None] % 4
    x = m.from_sequence(u)
    assert x.shape == (1, 3, 2, 2)
    assert torch.equal(m.to_sequence(x), u)
    # value 1 of the sequence is channel 1 of pixel (0, 0); value 3 is channel 0 of pixel (0, 1)
    levels = torch.round((x + 1) * 1.5).long()
    assert levels[0, 1, 0, 0] == u[0, 1] and levels[0, 0, 0, 1] == u[0, 3]


# ----------------------------------------------------------------------------- likelihood and sampling


@pytest.mark.parametrize("num_classes", [None, 2])
def test_log_prob_is_normalised_over_every_sequence(num_classes):
    """Sum over all K^L sequences of exp(log_prob) = 1 (K = 3 levels, L = 5); for a conditional model the marginal
    under the uniform class prior normalises, and so does each class's conditional."""
    m = wavenet((1, 5), levels=3, dilations=(1, 2), num_classes=num_classes)
    x = m.from_sequence(all_levels(5, 3))
    assert math.isclose(float(torch.logsumexp(m.log_prob(x), 0).exp()), 1.0, abs_tol=1e-10)
    if num_classes is not None:
        for k in range(num_classes):
            y = torch.full((x.shape[0],), k)
            assert math.isclose(float(torch.logsumexp(m.conditional_log_prob(x, y), 0).exp()), 1.0, abs_tol=1e-10)


@pytest.mark.parametrize("shape,data_levels,num_classes", [((1, 30), None, None), ((1, 3, 3), 17, None), ((2, 8), None, 3)])
def test_the_cached_generator_draws_what_the_naive_one_draws_for_the_same_noise(shape, data_levels, num_classes):
    m = wavenet(shape, data_levels=data_levels, levels=64, dilations=(1, 2, 4, 8), stacks=2, num_classes=num_classes)
    a = m.sample(6, generator=torch.Generator().manual_seed(3))
    m.fast_generation = False
    b = m.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, *shape) and torch.equal(a, b)
    assert len(m.to_sequence(a).unique()) > 5  # not a degenerate draw


def test_sample_frequencies_match_the_models_probabilities():
    """20k sequences of L = 2 with K = 3 levels: the 9 empirical frequencies against exp(log_prob), within 5 standard errors."""
    m = wavenet((1, 2), levels=3, dilations=(1,))
    with torch.no_grad():
        m.net.head[-1].weight.mul_(20)  # sharpen the conditionals so they are far from uniform
    n = 20_000
    u = m.to_sequence(m.sample(n, generator=torch.Generator().manual_seed(0)))
    counts = torch.bincount(u[:, 0] * 3 + u[:, 1], minlength=9).double() / n
    p = m.log_prob(m.from_sequence(all_levels(2, 3))).exp()
    se = (p * (1 - p) / n).sqrt()
    assert torch.all((counts - p).abs() < 5 * se + 1e-12), (counts, p)
    assert p.max() > 0.2


def test_conditional_samples_follow_their_labels():
    """One value, K = 3, two classes: the frequencies of 20k draws of each class against exp(log p(x | y))."""
    m = wavenet((1, 1), levels=3, dilations=(1,), num_classes=2)
    with torch.no_grad():
        m.net.layers[0].label.weight.mul_(8)
        m.net.layers[0].skip.weight.mul_(4)
        m.net.head[-1].weight.mul_(8)
    x = m.from_sequence(all_levels(1, 3))
    n = 20_000
    for k in range(2):
        p = m.conditional_log_prob(x, torch.full((3,), k)).exp()
        u = m.to_sequence(m.sample_of_labels(torch.full((n,), k), generator=torch.Generator().manual_seed(k)))[:, 0]
        freq = torch.bincount(u, minlength=3).double() / n
        assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt() + 1e-12), (k, freq, p)
    p0, p1 = (m.conditional_log_prob(x, torch.full((3,), k)).exp() for k in range(2))
    assert (p0 - p1).abs().max() > 0.05  # the label matters (20k draws resolve about 0.02)


# ----------------------------------------------------------------------------- runs


def test_a_run_on_waveforms_writes_wav_samples_audio_logs_and_bits_per_sample(train_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, report = train_run(tiny_overrides("wavenet", "waveforms", "ar_nll", steps=2, extra=[
        "logger=tensorboard", "logger.samples_every=2", "logger.n_samples=4", "eval.metrics=[nll32]", "eval.batch_size=32"]))
    clip, rate = read_wav(run_dir / "samples" / "step_000002.wav")
    assert rate == 16000 and clip.shape[0] == 1 and clip.shape[1] == 4 * 256 + 3 * 1600  # 4 samples, 0.1 s between
    assert (run_dir / "samples" / "step_000002.png").is_file()
    acc = EventAccumulator(str(run_dir), size_guidance={"audio": 0})
    acc.Reload()
    assert acc.Audio("samples")[-1].sample_rate == 16000
    assert "Listen: [step_000002.wav](samples/step_000002.wav)" in (run_dir / "report.md").read_text()
    (nll,) = report["evaluation"]
    assert set(nll["values"]) == {"nll32", "nll32_bpd"} and nll["reference_split"] == "waveforms/test"
    assert any("bits per sample" in note for note in nll["notes"]), nll["notes"]  # the report says what one dimension is
    assert 7 < report["final"]["train/main/bits_per_dim"] < 8.1  # about log2(256): an untrained softmax over 256 levels


def test_wavenet_on_the_digits_models_the_64_pixels_as_a_sequence(train_run):
    run_dir, report = train_run(tiny_overrides("wavenet", "digits", "ar_nll", steps=2))
    assert 3.5 < report["final"]["train/main/bits_per_dim"] < 5  # about log2(17)
    assert not list((run_dir / "samples").glob("*.wav"))  # images: pictures, no sound


@pytest.mark.parametrize(
    "model,dataset,extra",
    [
        ("nade", "digits", []),
        ("pixelrnn", "digits", ["model.cell=row_lstm"]),
        ("pixelrnn", "digits", ["model.cell=diagonal_bilstm"]),
        ("wavenet", "waveforms", []),
        ("wavenet", "waveforms", ["model.num_classes=${dataset.num_classes}"]),
    ],
    ids=["nade", "row_lstm", "diagonal_bilstm", "wavenet", "wavenet-conditional"],
)
def test_resume_reproduces_an_uninterrupted_run_exactly(train_run, model, dataset, extra):
    base = tiny_overrides(model, dataset, "ar_nll", steps=4, extra=[*extra, "trainer.ckpt_every=2", "logger.samples_every=0"])
    full_dir, _ = train_run(base, "full")
    half_dir, _ = train_run([*base, "trainer.max_steps=2"], "half")
    resumed_dir, report = train_run([*base, f"trainer.resume={half_dir}"], "resumed")
    assert report["run"]["start_step"] == 2 and report["run"]["steps"] == 4
    full, resumed = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (full_dir, resumed_dir))
    assert full["model"].keys() == resumed["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for pid, state in full["optimizers"]["main"]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(resumed["optimizers"]["main"]["state"][pid][k])), (pid, k)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["model=wavenet", "dataset=ring8", "objective=ar_nll"], "use model=made for vectors"),
        (["model=pixelrnn", "dataset=ring8", "objective=ar_nll"], "model=made"),
        (["model=nade", "dataset=ring8", "objective=ar_nll"], "model=made"),
        (["model=wavenet", "dataset=waveforms", "objective=ar_nll", "model.dilations=[]"], "model.dilations"),
        (["model=wavenet", "dataset=waveforms", "objective=ar_nll", "model.levels=1"], "model.levels"),
    ],
)
def test_bad_settings_are_one_line_errors(overrides, fragment):
    with pytest.raises(GentrainError, match=fragment) as err:
        build_model(make_config(overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("objective", ["non_saturating", "flow_nll", "elbo"])
def test_wavenet_with_an_objective_that_is_not_ar_nll_is_refused_at_start_up(train_run, objective):
    with pytest.raises(GentrainError, match="ar_nll") as err:
        train_run(tiny_overrides("wavenet", "waveforms", objective, steps=1))
    assert "\n" not in str(err.value)
