"""Tests of gentrain.data.audio: WAV reading and writing, mu-law, AudioFolder and Waveforms.

Offline and small: every WAV file is written here, with the stdlib ``wave`` module (PCM) or scipy (float);
the speech test runs only where espeak-ng is installed.
"""

from __future__ import annotations

import inspect
import logging
import math
import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import gentrain.data as data
from gentrain.data import AudioFolder, Waveforms, mu_law_decode, mu_law_encode, read_wav, write_wav
from gentrain.data.audio import per_sample_note
from gentrain.data.base import Dataset
from gentrain.errors import GentrainError
from test_data import assert_one_line_error

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dataset"
LOGGER = "gentrain.data.audio"


def write_pcm(path: Path, frames: np.ndarray, sampwidth: int, rate: int = 16000) -> Path:
    """Write integer ``frames`` ``[T]`` or ``[T, C]`` as PCM with the stdlib: 1 byte unsigned, 2/3/4 bytes signed."""
    frames = frames[:, None] if frames.ndim == 1 else frames
    if sampwidth == 1:
        raw = frames.astype(np.uint8).tobytes()
    elif sampwidth == 3:  # 3-byte little-endian: the low three bytes of each little-endian int32
        raw = frames.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    else:
        raw = frames.astype(f"<i{sampwidth}").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(sampwidth)
        out.setframerate(rate)
        out.writeframes(raw)
    return path


def write_sine(path: Path, seconds: float, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """A 16-bit sine file; returns the exact amplitudes it stores, ``[channels, T]``."""
    t = np.arange(round(seconds * rate)) / rate
    ints = np.round(amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    frames = np.stack([ints] * channels, axis=1) if channels > 1 else ints
    write_pcm(path, frames, 2, rate)
    return np.stack([ints] * channels).astype(np.float32) / 32768


def write_constant(path: Path, value: int, frames: int, rate: int = 16000) -> Path:
    """A 16-bit mono file whose every sample is ``value``: its chunks say which file they came from."""
    return write_pcm(path, np.full(frames, value, dtype=np.int16), 2, rate)


# ------------------------------------------------------------------------------------ read_wav


def test_read_wav_16_bit_sine(tmp_path: Path) -> None:
    expected = write_sine(tmp_path / "a.wav", 0.25, rate=8000)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and x.dtype == np.float32 and x.shape == (1, 2000)
    np.testing.assert_array_equal(x, expected)
    t = np.arange(2000) / 8000
    assert np.abs(x[0] - 0.5 * np.sin(2 * np.pi * 440 * t)).max() <= 1.5 / 32768  # within quantisation


@pytest.mark.parametrize(
    "sampwidth, ints, expected",
    [
        (1, [0, 64, 128, 192, 255], [-1.0, -0.5, 0.0, 0.5, 127 / 128]),  # unsigned, offset 128
        (2, [-32768, -16384, 0, 16384, 32767], [-1.0, -0.5, 0.0, 0.5, 32767 / 32768]),
        (3, [-(2**23), -(2**22), 0, 2**22, 2**23 - 1], [-1.0, -0.5, 0.0, 0.5, (2**23 - 1) / 2**23]),
        (4, [-(2**31), -(2**30), 0, 2**30, 2**31 - 1], [-1.0, -0.5, 0.0, 0.5, (2**31 - 1) / 2**31]),
    ],
    ids=["8-bit", "16-bit", "24-bit", "32-bit"],
)
def test_read_wav_integer_scaling(tmp_path: Path, sampwidth: int, ints: list[int], expected: list[float]) -> None:
    path = write_pcm(tmp_path / "a.wav", np.array(ints, dtype=np.int64), sampwidth, rate=11025)
    x, rate = read_wav(path)
    assert rate == 11025 and x.shape == (1, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_wav_float(tmp_path: Path, dtype: type) -> None:
    from scipy.io import wavfile

    values = np.array([-1.0, -0.25, 0.0, 0.5, 1.0, 1.5, -3.0], dtype=dtype)
    wavfile.write(tmp_path / "a.wav", 22050, values)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], [-1.0, -0.25, 0.0, 0.5, 1.0, 1.0, -1.0])  # clipped to [-1, 1]
    wavfile.write(tmp_path / "nan.wav", 22050, np.array([0.0, np.nan], dtype=dtype))
    with pytest.raises(GentrainError) as e:
        read_wav(tmp_path / "nan.wav")
    assert_one_line_error(e, "nan.wav", "NaN")


def test_read_wav_stereo_keeps_channels(tmp_path: Path) -> None:
    frames = np.array([[100, -100], [200, -200], [300, -300]], dtype=np.int16)
    x, _ = read_wav(write_pcm(tmp_path / "s.wav", frames, 2))
    assert x.shape == (2, 3)
    np.testing.assert_array_equal(x * 32768, frames.T)


def test_read_wav_bad_files(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("this is not audio\n")
    (tmp_path / "empty.wav").write_bytes(b"")
    write_sine(tmp_path / "whole.wav", 0.1)
    whole = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "header.wav").write_bytes(whole[:30])
    cases = {"text.wav": "not a WAV", "empty.wav": "empty", "cut.wav": "truncated", "header.wav": "", "missing.wav": ""}
    for name, what in cases.items():
        with pytest.raises(GentrainError) as e:
            read_wav(tmp_path / name)
        assert_one_line_error(e, str(tmp_path / name), what, "fix or replace the file")


# ----------------------------------------------------------------------------------- write_wav


def test_write_wav_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, (2, 997)), [[-1.0, 1.0, 0.0], [1.0, -1.0, 0.5]]], axis=1).astype(np.float32)
    target = tmp_path / "out" / "sample.wav"  # the folder is made
    write_wav(target, torch.from_numpy(x).to(torch.bfloat16), 24000)  # any float tensor
    assert np.abs(read_wav(target)[0] - x).max() <= 1 / 128  # bfloat16's own rounding
    write_wav(target, torch.from_numpy(x), np.int64(24000))
    back, rate = read_wav(target)
    assert rate == 24000 and back.shape == x.shape
    assert np.abs(back - x).max() <= 1 / 32768
    with wave.open(str(target)) as w:
        assert (w.getsampwidth(), w.getnchannels(), w.getframerate()) == (2, 2, 24000)
    assert [p.name for p in target.parent.iterdir()] == ["sample.wav"]  # no temporary file left
    # Clipped, NaN as silence, a 1-D array is mono; overwriting replaces the file.
    write_wav(target, np.array([2.0, -5.0, np.nan, 0.25]), 8000)
    back, rate = read_wav(target)
    assert rate == 8000
    np.testing.assert_allclose(back, [[32767 / 32768, -1.0, 0.0, 0.25]], atol=0)


def test_write_wav_bad_input(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as e:
        write_wav(tmp_path / "a.wav", np.zeros((2, 3, 4)), 16000)
    assert_one_line_error(e, "[C, T]")
    with pytest.raises(GentrainError) as e:
        write_wav(tmp_path / "a.wav", np.zeros((1, 4)), 0)
    assert_one_line_error(e, "rate")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GentrainError) as e:
        write_wav(tmp_path / "file" / "a.wav", np.zeros((1, 4)), 16000)  # the parent is a file
    assert_one_line_error(e, "cannot write", "writable folder")


# -------------------------------------------------------------------------------------- mu-law


def test_mu_law_known_values_and_inverse() -> None:
    x = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    y = mu_law_encode(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    for dtype in (torch.float32, torch.float64):  # the ends and the middle exactly, whatever mu
        for mu in (1, 4, 255, 65535):
            ends = torch.tensor([-1.0, 0.0, 1.0], dtype=dtype)
            assert mu_law_encode(ends, mu).tolist() == [-1.0, 0.0, 1.0]
            assert mu_law_decode(ends, mu).tolist() == [-1.0, 0.0, 1.0]
    assert float(mu_law_encode(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(math.log(128.5) / math.log(256))
    assert float(mu_law_encode(torch.tensor(0.5), mu=1.0)) == pytest.approx(math.log(1.5) / math.log(2))
    assert (y.diff() > 0).all()  # increasing
    torch.testing.assert_close(mu_law_encode(-x), -y)  # odd
    torch.testing.assert_close(mu_law_decode(y), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(mu_law_encode(mu_law_decode(x)), x, rtol=0, atol=1e-12)
    assert mu_law_encode(torch.tensor([3.0, -3.0])).tolist() == pytest.approx([1.0, -1.0])  # clamped first
    # Small amplitudes get most of the levels: 8-bit mu-law keeps quiet signals that 8-bit linear rounds away.
    quiet = torch.tensor([0.001, 0.002], dtype=torch.float64)
    assert torch.round(mu_law_encode(quiet) * 127.5).unique().numel() == 2
    with pytest.raises(GentrainError):
        mu_law_encode(x, mu=0)


# ------------------------------------------------------------------------------- AudioFolder


def test_resampling_keeps_the_frequency(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 1 kHz sine at 22050 Hz, resampled to 16000: the right length, and its FFT still peaks at 1 kHz."""
    write_sine(tmp_path / "a.wav", 1.0, rate=22050, freq=1000.0, amplitude=0.8)
    ds = AudioFolder(path=str(tmp_path), shape=[1, 4000], length=4000, rate=16000)
    assert ds.rate == 16000
    with caplog.at_level(logging.INFO, logger=LOGGER):
        x = ds.load("train").x
    assert x.shape == (4, 1, 4000) and x.dtype == torch.float32  # 22050 samples -> 16000 -> 4 chunks of 4000
    assert len(ds._decoded()[0][1]) == 16000
    for chunk in x[:, 0].numpy():
        spectrum = np.abs(np.fft.rfft(chunk))
        assert np.fft.rfftfreq(4000, 1 / 16000)[spectrum.argmax()] == 1000.0
    assert x.abs().max() <= 1 and 0.75 < float(x.abs().max()) < 0.85
    assert [r.message for r in caplog.records if r.name == LOGGER] == [
        f"resampled 1 of the 1 WAV files under {tmp_path} to 16000 Hz"
    ]


def test_chunking_with_hop(tmp_path: Path) -> None:
    ramp = (np.arange(1000) * 30 - 15000).astype(np.int16)
    write_pcm(tmp_path / "a.wav", ramp, 2)
    expected = ramp.astype(np.float32) / 32768
    x = AudioFolder(path=str(tmp_path), shape=[1, 100], length=100, hop=50).load("train").x
    assert x.shape == (19, 1, 100)  # starts 0, 50, ..., 900; the tail after 1000 is dropped
    for k in range(19):
        np.testing.assert_array_equal(x[k, 0].numpy(), expected[50 * k : 50 * k + 100])
    x = AudioFolder(path=str(tmp_path), shape=[1, 300], length=300).load("train").x  # hop = length
    assert x.shape == (3, 1, 300)
    np.testing.assert_array_equal(x[2, 0].numpy(), expected[600:900])


def split_values(ds: AudioFolder, split: str) -> set[int]:
    """Which constant-valued files the chunks of ``split`` came from (every chunk is one file's value)."""
    x = ds.load(split).x
    values = torch.round(x * 32768).to(torch.int64)
    assert (values == values[:, :, :1]).all()  # a chunk never mixes two files
    return set(values[:, 0, 0].tolist())


@pytest.fixture
def ten_files(tmp_path: Path) -> Path:
    """Ten 16-bit files of 150..600 samples, file i holding the value 100 (i + 1), in nested folders."""
    for i in range(10):
        folder = tmp_path / f"speaker{i % 3}"
        folder.mkdir(exist_ok=True)
        write_constant(folder / f"take{i}.wav", 100 * (i + 1), 150 + 50 * i)
    return tmp_path


def test_split_is_by_file_and_fixed(ten_files: Path) -> None:
    ds = AudioFolder(path=str(ten_files), shape=[1, 100], length=100, val_fraction=0.2, test_fraction=0.2)
    assert len(ds.files) == 10 and ds.files == sorted(ds.files)
    parts = {split: split_values(ds, split) for split in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert parts["train"] | parts["val"] | parts["test"] == {100 * (i + 1) for i in range(10)}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
    # Every chunk of a file lands in its split: file i (value 100 (i + 1)) has (150 + 50 i) // 100 chunks.
    train = ds.load("train")
    assert len(train) == sum((150 + 50 * (v // 100 - 1)) // 100 for v in parts["train"])
    assert train.y is None and ds.split_note("test") == per_sample_note(16000)  # no caveat beyond what a dimension is
    # The same split for another object, whatever the global RNG; the raw train split is train + val.
    torch.manual_seed(1)
    np.random.seed(1)
    again = AudioFolder(path=str(ten_files), shape=[1, 100], length=100, val_fraction=0.2, test_fraction=0.2)
    assert {s: split_values(again, s) for s in parts} == parts
    raw = torch.round(again._load("train").x * 32768)[:, 0, 0].to(torch.int64)
    assert set(raw.tolist()) == parts["train"] | parts["val"]
    assert torch.equal(again.load("train").x, train.x)
    train.x.zero_()  # every load is a new tensor
    assert split_values(ds, "train") == parts["train"]


def test_without_test_files_test_is_every_file(ten_files: Path) -> None:
    ds = AudioFolder(path=str(ten_files), shape=[1, 100], length=100, val_fraction=0.1)
    assert split_values(ds, "test") == {100 * (i + 1) for i in range(10)}
    assert len(split_values(ds, "val")) == 1 and len(split_values(ds, "train")) == 9
    note = ds.split_note("test")
    assert note is not None and "dataset.test_fraction=0.1" in note
    plain = AudioFolder(path=str(ten_files), shape=[1, 100], length=100)
    assert not plain.has_split("val") and plain.has_split("test")
    with pytest.raises(GentrainError) as e:
        plain.load("val")
    assert_one_line_error(e, "dataset.val_fraction=0.1")
    with pytest.raises(GentrainError) as e:
        plain.load("valid")
    assert_one_line_error(e, "unknown split")


def test_max_chunks_spreads_over_the_files(ten_files: Path) -> None:
    ds = AudioFolder(path=str(ten_files), shape=[1, 50], length=50, max_chunks=10)
    x = ds.load("train").x
    assert x.shape == (10, 1, 50)
    assert len(split_values(ds, "train")) >= 8  # evenly spaced picks reach (nearly) every file


def test_too_few_files_for_the_splits(tmp_path: Path) -> None:
    for i in range(2):
        write_constant(tmp_path / f"{i}.wav", 100, 200)
    ds = AudioFolder(path=str(tmp_path), shape=[1, 100], length=100, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(GentrainError) as e:
        ds.load("train")
    assert_one_line_error(e, "2 usable WAV files", "at least 3", "add WAV files")
    ds = AudioFolder(path=str(tmp_path), shape=[1, 100], length=100, test_fraction=0.1)
    assert len(ds.load("train")) == 2 and len(ds.load("test")) == 2  # one file each


def test_stereo_is_downmixed_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        write_pcm(tmp_path / f"s{i}.wav", np.tile(np.array([[1000, 3000]], dtype=np.int16), (200, 1)), 2)
    write_constant(tmp_path / "m.wav", 500, 200)
    ds = AudioFolder(path=str(tmp_path), shape=[1, 100], length=100)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        x = ds.load("train").x
    assert x.shape == (8, 1, 100)
    assert set(torch.round(x * 32768).flatten().tolist()) == {2000.0, 500.0}  # channel average
    assert [r.message for r in caplog.records if r.name == LOGGER] == [
        f"downmixed 3 of the 4 WAV files under {tmp_path} to mono (channel average)"
    ]


def test_short_files_are_skipped_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_constant(tmp_path / "a.wav", 100, 500)
    write_constant(tmp_path / "b.wav", 200, 50)
    write_constant(tmp_path / "c.wav", 300, 99)
    ds = AudioFolder(path=str(tmp_path), shape=[1, 100], length=100)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert split_values(ds, "train") == {100}
        ds.load("test")  # decoded once: no second line
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].message == f"skipped 2 of the 3 WAV files under {tmp_path}: shorter than dataset.length=100 samples at 16000 Hz"


def test_bad_folders_are_one_line(tmp_path: Path) -> None:
    def error(path: Path, **kw: object) -> pytest.ExceptionInfo:
        ds = AudioFolder(path=str(path), **{"shape": [1, 100], "length": 100, **kw})  # constructing reads nothing
        with pytest.raises(GentrainError) as e:
            ds.load("train")
        return e

    assert_one_line_error(error(tmp_path / "nope"), "does not exist", "dataset.path=<folder of .wav files>")
    (tmp_path / "file.wav").write_bytes(b"")
    assert_one_line_error(error(tmp_path / "file.wav"), "is not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    (empty / ".hidden.wav").write_text("skipped: a dot file")
    assert_one_line_error(error(empty), "no .wav files found", "put WAV files there")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_constant(bad / "a.wav", 100, 500)
    (bad / "b.WAV").write_text("RIFF but not really")
    assert_one_line_error(error(bad), str(bad / "b.WAV"), "not a WAV file", "move it out of dataset.path")
    short = tmp_path / "short"
    short.mkdir()
    write_constant(short / "a.wav", 100, 40)
    write_constant(short / "b.wav", 100, 60)
    assert_one_line_error(error(short), "every WAV file", "shorter than dataset.length=100", "lower dataset.length", "dataset.length=60")


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    cases = [
        (dict(shape=[1, 50], length=100), "dataset.shape=[1, ${dataset.length}]"),
        (dict(shape=[2, 100], length=100), "mono"),
        (dict(length=0), "dataset.length"),
        (dict(hop=0), "dataset.hop"),
        (dict(rate=0), "dataset.rate"),
        (dict(test_fraction=1.0), "dataset.test_fraction"),
        (dict(val_fraction=-0.1), "dataset.val_fraction"),
        (dict(max_chunks=0), "dataset.max_chunks"),
        (dict(num_classes=3), "dataset.num_classes=null"),
    ]
    for overrides, needle in cases:
        kw = {"path": str(tmp_path), "shape": [1, 100], "length": 100, **overrides}
        with pytest.raises(GentrainError) as e:
            AudioFolder(**kw)
        assert_one_line_error(e, needle)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_speech_from_espeak(tmp_path: Path) -> None:
    """Real speech: espeak-ng's WAV files (22050 Hz, 16-bit) resampled to 16 kHz are loud, voiced chunks."""
    phrases = ["the quick brown fox jumps over the lazy dog", "generative models of audio", "one two three four five six"]
    for i, phrase in enumerate(phrases):
        subprocess.run(["espeak-ng", "-w", str(tmp_path / f"{i}.wav"), phrase], check=True, timeout=60, capture_output=True)
    ds = AudioFolder(path=str(tmp_path), shape=[1, 4000], length=4000, rate=16000, test_fraction=0.3)
    assert len(ds.files) == 3
    train, test = ds.load("train"), ds.load("test")
    assert len(train) >= 4 and len(test) >= 1 and train.x.shape[1:] == (1, 4000)
    chunks = torch.cat([train.x, test.x])
    assert chunks.abs().max() <= 1
    rms = chunks.pow(2).mean(dim=(1, 2)).sqrt()
    assert (rms > 0.01).float().mean() >= 0.75  # most quarter-second chunks are speech, not silence
    # Voiced speech: most energy below 4 kHz.
    spectrum = torch.fft.rfft(chunks[:, 0]).abs().pow(2).sum(dim=0)
    assert float(spectrum[: 4000 * 4000 // 16000].sum() / spectrum.sum()) > 0.8


# --------------------------------------------------------------------------------- Waveforms


def test_waveforms_shapes_labels_range() -> None:
    ds = Waveforms(n_train=3000, n_test=600, length=128, shape=[1, 128], seed=3)
    assert ds.rate == 16000 and ds.levels is None and ds.num_classes == 3
    train, test = ds.load("train"), ds.load("test")
    assert train.x.shape == (3000, 1, 128) and test.x.shape == (600, 1, 128)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert set(train.y.tolist()) == {0, 1, 2} and 800 < int((train.y == 1).sum()) < 1200
    assert train.x.abs().max() <= 1 and float(train.x.abs().max()) > 0.8
    assert not torch.equal(train.x[:600], test.x)


def test_waveforms_kinds_without_noise() -> None:
    x, y = Waveforms(n_train=600, noise=0.0)._load("train").x[:, 0], Waveforms(n_train=600, noise=0.0)._load("train").y
    peak = x.abs().amax(dim=1)
    assert (peak <= 0.9 + 1e-6).all() and (peak > 0).all()
    squares = x[y == 2]
    assert torch.equal(squares.abs(), peak[y == 2, None].expand_as(squares))  # ±A only
    assert ((squares > 0).float().mean(dim=1) - 0.5).abs().max() < 0.35  # duty 0.2 .. 0.8
    for kind in (0, 1):
        wave_ = x[y == kind]
        assert (wave_.abs() < peak[y == kind, None] - 1e-3).float().mean() > 0.5  # smooth: mostly below the peak
    # At least two cycles per window, below 1/8 cycle per sample: sign changes count the cycles.
    crossings = (x[y != 1].sign().diff(dim=1) != 0).sum(dim=1)
    assert crossings.min() >= 3 and crossings.max() <= 3 * 2 * 256 // 8 + 6


def test_waveforms_determinism_and_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Waveforms(n_train=500, n_test=100, seed=1)
    first = a.load("train")
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone
    again = Waveforms(n_train=500, n_test=100, seed=1).load("train")
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.equal(Waveforms(n_train=500, seed=2).load("train").x, first.x)
    held = Waveforms(n_train=500, n_test=100, seed=1, val_fraction=0.1)
    assert len(held.load("train")) == 450 and len(held.load("val")) == 50


def test_waveforms_are_fast() -> None:
    start = time.perf_counter()
    split = Waveforms().load("train")  # the defaults: 10,000 x 256
    assert split.x.shape == (10000, 1, 256)
    assert time.perf_counter() - start < 5.0


def test_waveforms_bad_config() -> None:
    cases = [
        (dict(num_classes=2), "dataset.num_classes=3"),
        (dict(shape=[1, 100]), "dataset.shape=[1, ${dataset.length}]"),
        (dict(n_train=0), "dataset.n_train"),
        (dict(noise=-1.0), "dataset.noise"),
        (dict(rate=0), "dataset.rate"),
        (dict(length=1, shape=[1, 1]), "dataset.length"),
    ]
    for kw, needle in cases:
        with pytest.raises(GentrainError) as e:
            Waveforms(**kw)
        assert_one_line_error(e, needle)


# ------------------------------------------------------------------------------- YAML configs


def compose(name: str, **overrides: object) -> OmegaConf:
    """The dataset YAML alone, its ``tiny:`` block taken out (``debug=tiny`` when ``tiny``)."""
    from gentrain.config import apply_debug

    tiny = bool(overrides.pop("tiny", False))
    cfg = OmegaConf.create({"dataset": OmegaConf.load(CONFIGS / f"{name}.yaml"), "debug": {"tiny": tiny}})
    cfg = apply_debug(cfg)
    for key, value in overrides.items():
        cfg.dataset[key] = value
    return cfg


@pytest.mark.parametrize("name", ["audio_folder", "waveforms"])
def test_config_matches_class(name: str, tmp_path: Path) -> None:
    cfg = compose(name, path=str(tmp_path)) if name == "audio_folder" else compose(name)
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, Dataset) and type(ds).__name__ in data.__all__
    assert ds.name == name and ds.rate == cfg.dataset.rate == 16000
    assert ds.shape == (1, cfg.dataset.length) and all(type(s) is int for s in ds.shape)
    params = inspect.signature(type(ds)).parameters
    assert set(params) == set(cfg.dataset) - {"_target_"}
    assert all(p.annotation is not inspect.Parameter.empty for p in params.values())


def test_audio_folder_config(ten_files: Path) -> None:
    assert OmegaConf.is_missing(OmegaConf.load(CONFIGS / "audio_folder.yaml"), "path")
    cfg = compose("audio_folder", path=str(ten_files), length=100, tiny=True)
    ds = instantiate(cfg.dataset)
    assert ds.shape == (1, 100) and ds.max_chunks == 256
    sizes = [len(ds.load(s)) for s in ("train", "val", "test")]
    assert all(n > 0 for n in sizes) and sum(sizes) == sum((150 + 50 * i) // 100 for i in range(10))


def test_waveforms_config() -> None:
    cfg = compose("waveforms", tiny=True)
    ds = instantiate(cfg.dataset)
    assert (ds.n_train, ds.n_test, ds.length, ds.noise) == (512, 128, 256, 0.02)
    assert ds.load("val").x.shape == (51, 1, 256)
    cfg = compose("waveforms", length=64)
    assert instantiate(cfg.dataset).load("test").x.shape == (2000, 1, 64)
