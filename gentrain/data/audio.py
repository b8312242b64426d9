"""1-D data (sequences): ``x`` float32 ``[N, C, T]``, amplitudes in [-1, 1], ``y`` int64 ``[N]`` or None.

* :func:`read_wav` / :func:`write_wav` - WAV files to and from float arrays ``[C, T]``; the engine
  writes sequence samples with :func:`write_wav`.
* :func:`mu_law_encode` / :func:`mu_law_decode` - ITU-T G.711 mu-law companding, for models that
  quantise the amplitude (WaveNet).
* :class:`AudioFolder` - every ``.wav`` file of a folder, resampled, downmixed to mono and cut into
  chunks of ``length`` samples; split into train / val / test by file.
* :class:`Waveforms` - generated sines, chirps and square waves (label = the kind), seeded.

Each dataset says its sampling rate in :attr:`~gentrain.data.base.Dataset.rate` (samples per second):
the target rate of an audio folder, the nominal rate of the generated waveforms.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import struct
import wave
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gentrain.data.base import VAL_SEED, DataSplit, Dataset
from gentrain.errors import GentrainError, check_int

log = logging.getLogger(__name__)

#: The RIFF containers a WAV file may use (little-endian RIFF, big-endian RIFX, 64-bit RF64).
_RIFF_IDS = (b"RIFF", b"RIFX", b"RF64")


class _WavProblem(Exception):
    """What is wrong with one WAV file (a phrase, no fix): the callers add the file and the fix."""


# ------------------------------------------------------------------------------------ WAV I/O


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a WAV file: ``(samples, rate)``, samples float32 ``[C, T]`` in [-1, 1], rate in samples/s.

    Encodings (scipy.io.wavfile, imported here only): integer PCM of 8 bits (unsigned, offset 128:
    ``(v - 128) / 128``), 16, 24 or 32 bits (signed, ``v / 2**(bits - 1)``; 24-bit files are read
    left-justified in 32 bits, so the same rule holds), and IEEE float of 32 or 64 bits (kept as they
    are, clipped to [-1, 1]). WAVE_FORMAT_EXTENSIBLE headers are read too. Anything else - not a
    RIFF/WAVE file, truncated, compressed or odd encodings, non-finite floats, unreadable - is one
    GentrainError line naming the file, what is wrong and the fix.
    """
    try:
        return _decode_wav(Path(path))
    except _WavProblem as problem:
        raise GentrainError(f"cannot read {os.fspath(path)}: {problem}; fix or replace the file") from problem


def write_wav(path: str | os.PathLike[str], x: torch.Tensor | np.ndarray, rate: int) -> None:
    """Write ``x`` (``[C, T]``, or ``[T]`` for mono; amplitudes in [-1, 1]) as a 16-bit PCM WAV file.

    Amplitudes are clipped to [-1, 1] (NaN written as 0) and stored as ``round(v * 32768)`` clipped to
    -32768..32767, so :func:`read_wav` gives them back within 1/32768. Written with the stdlib
    ``wave`` module under a temporary name in the target folder (created if missing) and renamed
    with ``os.replace``: a reader never sees half a file. A failure is one GentrainError line.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate < 1:
        raise GentrainError(f"write_wav needs a positive integer sampling rate, got {rate!r}; e.g. 16000 (the dataset's rate)")
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)  # double: bfloat16 has no numpy type
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] < 1:
        raise GentrainError(f"write_wav takes samples of shape [C, T] (or [T]), got {list(array.shape)}; reshape them to [C, T]")
    scaled = np.nan_to_num(np.clip(array.astype(np.float64), -1.0, 1.0), nan=0.0) * 32768.0
    frames = np.clip(np.round(scaled), -32768, 32767).astype("<i2").T  # [T, C]: frames interleave the channels
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(partial), "wb") as out:
            out.setnchannels(int(frames.shape[1]))
            out.setsampwidth(2)
            out.setframerate(int(rate))
            out.writeframes(np.ascontiguousarray(frames).tobytes())
        os.replace(partial, target)
    except OSError as e:
        _discard(partial)
        raise GentrainError(f"cannot write {target} ({_one_line(e)}); free disk space or choose a writable folder") from e
    except BaseException:
        _discard(partial)
        raise


def _discard(partial: Path) -> None:
    """Remove a half-written file, if there is one to remove (its folder may not even exist)."""
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)


def _decode_wav(path: Path) -> tuple[np.ndarray, int]:
    """:func:`read_wav` without the file's name: problems are :class:`_WavProblem` phrases."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise _WavProblem(_one_line(e)) from e
    if not head:
        raise _WavProblem("the file is empty, not a WAV file")
    if len(head) < 12 or head[:4] not in _RIFF_IDS or head[8:12] != b"WAVE":
        raise _WavProblem("not a WAV file (no RIFF/WAVE header)")

    from scipy.io import wavfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rate, data = wavfile.read(path, mmap=False)
        except (ValueError, EOFError, OSError, MemoryError, IndexError, struct.error) as e:  # scipy's ways of saying "bad file"
            message = _one_line(e)
            if isinstance(e, struct.error):  # a header field cut short
                raise _WavProblem("truncated (the file ends inside its header)") from e
            if "end of file" in message.lower():
                raise _WavProblem("truncated (the file ends inside a chunk)") from e
            raise _WavProblem(f"unsupported or corrupt WAV ({message})") from e
    if any(issubclass(w.category, wavfile.WavFileWarning) and "prematurely" in str(w.message) for w in caught):
        raise _WavProblem("truncated (the file is shorter than its header says)")
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        samples = (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    elif data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise _WavProblem("its float samples include NaN or infinity")
        samples = np.clip(data, -1.0, 1.0).astype(np.float32)
    else:
        raise _WavProblem(f"unsupported sample type {data.dtype} (use 8/16/24/32-bit PCM or 32/64-bit float)")
    if int(rate) < 1:
        raise _WavProblem(f"its header gives the sampling rate {rate}")
    samples = samples[None] if samples.ndim == 1 else samples.T
    return np.ascontiguousarray(samples), int(rate)


def _one_line(e: BaseException, limit: int = 120) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------- mu-law


def mu_law_encode(x: torch.Tensor, mu: float = 255.0) -> torch.Tensor:
    """ITU-T G.711 mu-law compression ``F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)``, elementwise.

    ``x`` is clamped to [-1, 1] first, so the result lies in [-1, 1]; F is odd and increasing, with
    F(0) = 0 and F(±1) = ±1 exactly. Same dtype and device as ``x`` (a floating tensor). A model quantises
    the result (e.g. to 256 levels for ``mu=255``); :func:`mu_law_decode` is its inverse.
    """
    mu = _check_mu(mu)
    x = x.clamp(-1.0, 1.0)
    # The denominator is the numerator at |x| = 1, computed alike (in x's dtype), so F(±1) is ±1 exactly.
    return torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(x.new_tensor(mu))


def mu_law_decode(y: torch.Tensor, mu: float = 255.0) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: ``F^-1(y) = sign(y) ((1 + mu)^|y| - 1) / mu``, ``y`` clamped to [-1, 1].

    ``mu_law_decode(mu_law_encode(x)) == x`` for x in [-1, 1], up to floating-point rounding; the result
    lies in [-1, 1], F^-1(0) = 0 and F^-1(±1) = ±1 exactly.
    """
    mu = _check_mu(mu)
    y = y.clamp(-1.0, 1.0)
    log_range = torch.log1p(y.new_tensor(mu))  # (1 + mu)^|y| - 1 = expm1(|y| ln(1 + mu)); over expm1(ln(1 + mu)) = mu,
    return torch.sign(y) * torch.expm1(y.abs() * log_range) / torch.expm1(log_range)  # so F^-1(±1) is ±1 exactly


def _check_mu(mu: float) -> float:
    if isinstance(mu, bool) or not float(mu) > 0:
        raise GentrainError(f"mu-law's mu must be a positive number, got {mu!r}; e.g. mu=255 (8-bit mu-law)")
    return float(mu)


# ------------------------------------------------------------------------------- audio folder


class AudioFolder(Dataset):
    """Every ``.wav`` file under ``path`` (recursively), as mono chunks of ``length`` samples at ``rate``.

    Files ending in ``.wav`` (any case) are used, sorted by relative path; names starting with "."
    are skipped. Each file is read by :func:`read_wav`, downmixed to mono by averaging its channels
    (one log line says how many files were), resampled to ``rate`` with
    ``scipy.signal.resample_poly`` (up / down = the two rates over their gcd; one log line says how
    many files were) and clipped to [-1, 1]. A file is then cut into chunks ``[start, start + length)``
    for ``start = 0, hop, 2 hop, ...`` while the chunk fits (the tail is dropped). Files shorter than
    ``length`` (at ``rate``) are skipped, with one warning line counting them; when every file is,
    that is an error. The decoded audio is held in memory after the first load.

    Splits are by file, so the chunks of one recording never straddle two splits: among the N usable
    files, a permutation seeded with :data:`~gentrain.data.base.VAL_SEED` puts the first
    ``round(N * test_fraction)`` (at least one when the fraction is > 0) in "test", the next
    ``round(N * val_fraction)`` (likewise) in "val" and the rest in "train". It depends on N and the
    fractions only, so every run (and every construction) gets the same split. Each split needs a
    file: with both fractions > 0 a folder needs at least 3 usable files, with one of them 2.
    With ``test_fraction=0`` there are no held-out files and **"test" returns every file's chunks**
    (train and val included); :meth:`split_note` then says so.

    Args:
        name, num_classes, val_fraction: see :class:`~gentrain.data.base.Dataset`; num_classes must
            be None (no labels: ``y`` is None).
        shape: ``[1, length]``.
        path: folder of WAV files.
        rate: target sampling rate in samples/s (:attr:`rate`).
        length: samples per chunk (T).
        hop: samples between the starts of consecutive chunks of a file; None = ``length``
            (non-overlapping chunks).
        test_fraction: fraction of the files held out for "test", in [0, 1).
        max_chunks: at most this many chunks per split (None: all), picked evenly spaced in file
            order (chunk ``floor(i * n / max_chunks)`` of the n) so they cover every file of the split.
    """

    def __init__(
        self,
        name: str = "audio_folder",
        shape: Sequence[int] = (1, 16000),
        num_classes: int | None = None,
        *,
        path: str,
        rate: int = 16000,
        length: int = 16000,
        hop: int | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        max_chunks: int | None = None,
    ) -> None:
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction)
        if self._num_classes is not None:
            raise GentrainError(f"dataset.num_classes={self._num_classes} but an audio folder has no labels; set dataset.num_classes=null")
        self.path = str(path)
        self.rate = check_int(rate, "dataset.rate", minimum=1, example=16000)
        self.length = check_int(length, "dataset.length", minimum=1, example=16000)
        self.hop = self.length if hop is None else check_int(hop, "dataset.hop", minimum=1, example=self.length)
        self.max_chunks = None if max_chunks is None else check_int(max_chunks, "dataset.max_chunks", minimum=1, example=1000)
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
            raise GentrainError(f"dataset.test_fraction must be in [0, 1), got {test_fraction!r}; e.g. dataset.test_fraction=0.1")
        self.test_fraction = float(test_fraction)
        if self.shape != (1, self.length):
            raise GentrainError(
                f"dataset.shape={list(self.shape)} but an audio folder gives mono chunks of dataset.length={self.length} "
                "samples; set dataset.shape=[1, ${dataset.length}]"
            )
        # The folder is read lazily (constructing must not touch the disk); see _decoded.
        self._audio: list[tuple[Path, np.ndarray]] | None = None

    def split_note(self, split: str) -> str | None:
        """What one dimension is (:func:`per_sample_note`) and, for "test" without held-out files (``test_fraction=0``),
        that the reference is the training audio, so a test metric measures fit to it, not generalisation."""
        if split != "test" or self.test_fraction > 0:
            return per_sample_note(self.rate)
        return (
            f"{per_sample_note(self.rate)}; dataset.path={self.path!r} has no held-out test files (dataset.test_fraction=0), so the "
            "reference is the training audio; hold some files out with dataset.test_fraction=0.1"
        )

    @property
    def files(self) -> list[Path]:
        """The usable WAV files (at least ``length`` samples at ``rate``), sorted; reads the folder."""
        return [file for file, _ in self._decoded()]

    def load(self, split: str) -> DataSplit:
        """``split`` as chunks: x float32 ``[N, 1, length]`` in [-1, 1], y None; "train", "val" and
        "test" come from disjoint sets of files (see the class), "test" from every file when
        ``test_fraction=0``. Each call returns new tensors."""
        self._check_split(split)
        data = self._chunks(self._split_files(split), split)
        self._check(data)
        return data

    def _load(self, split: str) -> DataSplit:
        """The raw train split (the "train" and "val" files) or "test", as :class:`Dataset` reads it."""
        files = self._split_files(split)
        if split == "train" and self.val_fraction > 0:
            files = np.sort(np.concatenate([files, self._split_files("val")]))
        return self._chunks(files, split)

    def _decoded(self) -> list[tuple[Path, np.ndarray]]:
        """Each usable file and its mono audio float32 ``[T]`` at ``rate``, in sorted order; read once."""
        if self._audio is not None:
            return self._audio
        root = Path(self.path).expanduser()
        if not root.is_dir():
            state = "is not a folder" if root.exists() else "does not exist"
            raise GentrainError(f"dataset.path={self.path!r} {state}; pass dataset.path=<folder of .wav files>")
        rel = sorted((p.relative_to(root) for p in root.rglob("*") if p.suffix.lower() == ".wav"), key=lambda r: r.as_posix())
        files = [root / r for r in rel if not any(part.startswith(".") for part in r.parts) and (root / r).is_file()]
        if not files:
            raise GentrainError(
                f"no .wav files found under dataset.path={self.path!r}; put WAV files there or point dataset.path at another folder"
            )
        audio, downmixed, resampled, longest = [], 0, 0, 0
        for file in files:
            try:
                samples, rate = _decode_wav(file)
            except _WavProblem as problem:
                raise GentrainError(
                    f"cannot read {file}: {problem}; fix or delete it, or move it out of dataset.path={self.path!r}"
                ) from problem
            if samples.shape[0] > 1:
                downmixed += 1
            mono = samples.mean(axis=0, dtype=np.float64).astype(np.float32)
            if rate != self.rate:
                resampled += 1
                mono = _resample(mono, rate, self.rate)
            longest = max(longest, len(mono))
            if len(mono) >= self.length:
                audio.append((file, mono))
        if downmixed:
            log.info("downmixed %d of the %d WAV files under %s to mono (channel average)", downmixed, len(files), self.path)
        if resampled:
            log.info("resampled %d of the %d WAV files under %s to %d Hz", resampled, len(files), self.path, self.rate)
        if not audio:
            raise GentrainError(
                f"every WAV file under dataset.path={self.path!r} is shorter than dataset.length={self.length} samples "
                f"at {self.rate} Hz (the longest has {longest}); lower dataset.length (e.g. dataset.length={longest})"
            )
        if len(audio) < len(files):
            log.warning(
                "skipped %d of the %d WAV files under %s: shorter than dataset.length=%d samples at %d Hz",
                len(files) - len(audio), len(files), self.path, self.length, self.rate,
            )
        self._audio = audio
        return audio

    def _split_files(self, split: str) -> np.ndarray:
        """Sorted indices into :meth:`_decoded` of the files of ``split``; "train" excludes the "val" files."""
        n = len(self._decoded())
        if split == "test" and self.test_fraction == 0:
            return np.arange(n)
        n_test = max(1, round(n * self.test_fraction)) if self.test_fraction > 0 else 0
        n_val = max(1, round(n * self.val_fraction)) if self.val_fraction > 0 else 0
        if n_test + n_val >= n:
            needed = 1 + (n_test > 0) + (n_val > 0)
            fractions = f"dataset.val_fraction={self.val_fraction} and dataset.test_fraction={self.test_fraction}"
            fix = "add WAV files" if n < needed else "lower dataset.val_fraction / dataset.test_fraction"
            raise GentrainError(
                f"{fractions} split dataset.path={self.path!r} by file and leave none of its {n} usable WAV files to train on "
                f"(at least {needed} are needed, one per split); {fix}, or set a fraction to 0"
            )
        permutation = np.random.RandomState(VAL_SEED).permutation(n)
        if split == "test":
            chosen = permutation[:n_test]
        elif split == "val":
            chosen = permutation[n_test : n_test + n_val]
        else:
            chosen = permutation[n_test + n_val :]
        return np.sort(chosen)

    def _chunks(self, files: np.ndarray, split: str) -> DataSplit:
        """The chunks of ``files`` (indices into :meth:`_decoded`), file by file, capped by ``max_chunks``."""
        audio = self._decoded()
        parts = [
            np.lib.stride_tricks.sliding_window_view(audio[i][1], self.length)[:: self.hop] for i in files.tolist()
        ]
        chunks = np.concatenate(parts) if parts else np.empty((0, self.length), dtype=np.float32)
        if self.max_chunks is not None and len(chunks) > self.max_chunks:
            chunks = chunks[(np.arange(self.max_chunks) * len(chunks)) // self.max_chunks]
        if len(chunks) == 0:
            raise GentrainError(
                f"split {split!r} of dataset.path={self.path!r} has no chunks of dataset.length={self.length} samples; "
                "lower dataset.length or add WAV files"
            )
        return DataSplit(x=torch.from_numpy(np.array(chunks[:, None], dtype=np.float32)), y=None)


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``x`` float32 ``[T]`` from ``rate_in`` to ``rate_out`` (polyphase, scipy's default Kaiser window),
    ``ceil(T * rate_out / rate_in)`` samples, clipped to [-1, 1] (the filter may ring past them)."""
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    y = resample_poly(x, rate_out // g, rate_in // g)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------- waveforms


def per_sample_note(rate: int | None) -> str:
    """The note every result on sequence data carries: one dimension is one audio sample, so bits/dim is bits per sample."""
    return f"one dimension is one audio sample ({rate} per second): nll<count>_bpd is bits per sample"


class Waveforms(Dataset):
    """Generated mono waveforms ``[N, 1, length]`` in [-1, 1]; the label is the kind of wave.

    Every wave has a peak amplitude ``A ~ U(0.3, 0.9)`` and frequencies drawn log-uniformly between
    ``min(2 / length, 1/16)`` and ``1/8`` cycles per sample (at 16 kHz: 125 Hz to 2 kHz for length 256),
    so each window holds at least two cycles and stays well below Nyquist. Labels are equally likely:

    * 0: a sum of 1, 2 or 3 sines (equally likely), each with its own frequency, phase ``U(0, 2 pi)``
      and weight ``U(0.2, 1)``; the weights are normalised to sum 1, so the peak is at most ``A``;
    * 1: a linear chirp ``A sin(phi + 2 pi (f0 t + (f1 - f0) t^2 / (2 (length - 1))))``, its frequency
      sweeping from ``f0`` to ``f1`` (both drawn as above) over the window;
    * 2: a square wave ``±A`` of frequency ``f``, duty cycle ``U(0.2, 0.8)`` and phase ``U(0, 1)`` cycles.

    Then Gaussian noise of std ``noise`` is added and the result clipped to [-1, 1]. The samples come from
    a local ``torch.Generator`` (float64 arithmetic), never the global RNG: "train" uses generator seed
    ``2 * seed``, "test" ``2 * seed + 1``, as the toy sets do. "val" is held out of the ``n_train``
    training waves (``val_fraction``, see :class:`~gentrain.data.base.Dataset`).

    Args:
        name, val_fraction: see :class:`~gentrain.data.base.Dataset`.
        shape: ``[1, length]``.
        num_classes: 3 (the three kinds).
        n_train: training waves, the "val" ones included.
        n_test: test waves.
        length: samples per wave (T).
        rate: nominal sampling rate in samples/s (:attr:`rate`), for WAV files and audio logs.
        noise: standard deviation of the added Gaussian noise (0: none).
        seed: seed of the generator.
    """

    KINDS: tuple[str, ...] = ("sines", "chirp", "square")

    def __init__(
        self,
        name: str = "waveforms",
        shape: Sequence[int] = (1, 256),
        num_classes: int = 3,
        n_train: int = 10000,
        n_test: int = 2000,
        length: int = 256,
        rate: int = 16000,
        noise: float = 0.02,
        seed: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        if num_classes != len(self.KINDS):
            raise GentrainError(
                f"dataset.num_classes={num_classes} but waveforms has {len(self.KINDS)} kinds ({', '.join(self.KINDS)}); "
                f"set dataset.num_classes={len(self.KINDS)}"
            )
        super().__init__(name=name, shape=shape, num_classes=num_classes, val_fraction=val_fraction)
        self.n_train = check_int(n_train, "dataset.n_train", minimum=1, example=10000)
        self.n_test = check_int(n_test, "dataset.n_test", minimum=1, example=2000)
        self.length = check_int(length, "dataset.length", minimum=2, example=256)
        self.rate = check_int(rate, "dataset.rate", minimum=1, example=16000)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise GentrainError(f"dataset.noise must be a number >= 0, got {noise!r}; e.g. dataset.noise=0.02")
        self.noise = float(noise)
        self.seed = int(seed)
        if self.shape != (1, self.length):
            raise GentrainError(
                f"dataset.shape={list(self.shape)} but waveforms are mono sequences of dataset.length={self.length} "
                "samples; set dataset.shape=[1, ${dataset.length}]"
            )

    def split_note(self, split: str) -> str | None:
        """What one dimension is (:func:`per_sample_note`)."""
        return per_sample_note(self.rate)

    def _load(self, split: str) -> DataSplit:
        n = self.n_train if split == "train" else self.n_test
        generator = torch.Generator().manual_seed(2 * self.seed + (split == "test"))
        x, y = self._sample(n, generator)
        return DataSplit(x=x[:, None].to(torch.float32), y=y)

    def _sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` waves float64 ``[n, length]`` in [-1, 1] and their kinds int64 ``[n]``, drawn from ``g``.

        Every kind is drawn for every row (a fixed use of ``g``) and the label picks one, so the draw
        is vectorised and the same for any mix of labels.
        """
        T = self.length
        t = torch.arange(T, dtype=torch.float64)
        lo, hi = math.log(min(2.0 / T, 1.0 / 16)), math.log(1.0 / 8)

        def uniform(*size: int, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
            return a + (b - a) * torch.rand(*size, generator=g, dtype=torch.float64)

        def frequency(*size: int) -> torch.Tensor:  # cycles per sample, log-uniform in [lo, hi]
            return uniform(*size, a=lo, b=hi).exp()

        y = torch.randint(len(self.KINDS), (n,), generator=g)
        amplitude = uniform(n, 1, a=0.3, b=0.9)
        # 0: sums of 1-3 sines
        count = torch.randint(1, 4, (n, 1), generator=g)
        weight = uniform(n, 3, a=0.2, b=1.0) * (torch.arange(3) < count)
        weight = weight / weight.sum(dim=1, keepdim=True)
        f, phase = frequency(n, 3), uniform(n, 3, b=2 * math.pi)
        sines = (weight[:, :, None] * torch.sin(2 * math.pi * f[:, :, None] * t + phase[:, :, None])).sum(dim=1)
        # 1: linear chirps from f0 to f1
        f0, f1, phase = frequency(n, 1), frequency(n, 1), uniform(n, 1, b=2 * math.pi)
        chirps = torch.sin(phase + 2 * math.pi * (f0 * t + (f1 - f0) * t * t / (2 * (T - 1))))
        # 2: square waves
        f, duty, offset = frequency(n, 1), uniform(n, 1, a=0.2, b=0.8), uniform(n, 1)
        squares = torch.where(torch.remainder(f * t + offset, 1.0) < duty, 1.0, -1.0).to(torch.float64)
        label = y[:, None]
        x = amplitude * torch.where(label == 0, sines, torch.where(label == 1, chirps, squares))
        if self.noise > 0:
            x = x + self.noise * torch.randn(n, T, generator=g, dtype=torch.float64)
        return x.clamp(-1.0, 1.0), y
