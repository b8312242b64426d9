"""Tests of gentrain.engine.streaming and the streaming side of ImageFolder (indexed splits, the decoded cache).

A folder of 40 tiny PNGs of random pixels (every image different, PNG is lossless), so a batch's images
say exactly which examples it holds.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gentrain.data.images as images
from gentrain.data import Digits, ImageFolder
from gentrain.engine.loader import BatchStream
from gentrain.engine.streaming import StreamingBatches, open_stream
from gentrain.errors import GentrainError

CPU = torch.device("cpu")
N_IMAGES = 40


def write_images(root: Path, labelled: bool = True, n: int = N_IMAGES) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog") if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")


def image_folder(path: Path, **settings: object) -> ImageFolder:
    return ImageFolder(path=str(path), size=8, shape=[3, 8, 8], **{"workers": 0, **settings})


def same_batches(a, b, steps: int) -> None:
    for step in range(steps):
        x, y = a.next(), b.next()
        assert torch.equal(x.x, y.x), f"batch {step}"
        assert (x.y is None and y.y is None) or torch.equal(x.y, y.y), f"batch {step}"
        assert a.epoch == b.epoch


@pytest.mark.parametrize("rank, world_size", [(0, 1), (0, 2), (1, 2)])
def test_same_batches_as_batch_stream(folder: Path, rank: int, world_size: int) -> None:
    ds = image_folder(folder, val_fraction=0.1)  # 36 training images: 9 (or 4 global) batches of 4 per epoch
    memory = BatchStream(ds.load("train"), 4, CPU, seed=7, rank=rank, world_size=world_size)
    streaming = StreamingBatches(ds.indexed("train"), 4, CPU, seed=7, workers=0, rank=rank, world_size=world_size)
    assert streaming.num_examples == memory.num_examples == 36
    same_batches(memory, streaming, steps=22 // world_size)  # into the third epoch
    assert streaming.epoch == 3
    ours, theirs = streaming.state_dict(), memory.state_dict()
    assert torch.equal(ours["generator"], theirs["generator"]) and torch.equal(ours["perm"], theirs["perm"])
    assert (ours["pos"], ours["epoch"]) == (theirs["pos"], theirs["epoch"])
    head, expected = streaming.head(5), memory.head(5)
    assert torch.equal(head.x, expected.x) and torch.equal(head.y, expected.y)


def test_ranks_split_each_global_batch(folder: Path) -> None:
    ds = image_folder(folder)
    ranks = [StreamingBatches(ds.indexed("train"), 4, CPU, seed=3, workers=0, rank=r, world_size=2) for r in (0, 1)]
    whole = StreamingBatches(ds.indexed("train"), 8, CPU, seed=3, workers=0)  # same permutation, same global batches
    for _ in range(12):  # 5 global batches per epoch of 40: into the third epoch
        shares = [r.next().x for r in ranks]
        assert torch.equal(torch.cat(shares), whole.next().x)
        assert not (shares[0][:, None] == shares[1][None]).flatten(2).all(2).any()  # no image on both ranks


def test_resume_is_exact_while_workers_prefetch(folder: Path) -> None:
    ds = image_folder(folder, workers=2)
    stream = StreamingBatches(ds.indexed("train"), 4, CPU, seed=1, workers=2)
    for _ in range(6):  # mid-epoch (10 batches per epoch); the workers are batches ahead by now
        stream.next()
    state = stream.state_dict()
    assert (state["pos"], state["epoch"]) == (24, 1)  # what was consumed, not what was prefetched
    after = [stream.next().x for _ in range(8)]  # across the epoch boundary
    resumed = StreamingBatches(ds.indexed("train"), 4, CPU, seed=99, workers=2)
    resumed.load_state_dict(state)
    stream.load_state_dict(state)  # the running loader restarts from the restored state too
    for expected in after:
        assert torch.equal(resumed.next().x, expected) and torch.equal(stream.next().x, expected)
    assert resumed.epoch == stream.epoch == 2
    (folder / "cat" / "zz.png").write_bytes(b"\x89PNG not really")
    broken = StreamingBatches(image_folder(folder).indexed("train"), 41, CPU, seed=0, workers=2)
    with pytest.raises(GentrainError) as e:  # decoded in a worker, still one line
        broken.next()
    assert str(e.value).startswith("cannot read image") and "zz.png" in str(e.value) and "\n" not in str(e.value)


def test_indexed_matches_load(folder: Path, tmp_path: Path) -> None:
    for cache in (None, str(tmp_path / "decoded.npy")):
        ds = image_folder(folder, test_fraction=0.2, val_fraction=0.25, cache=cache)
        sizes = []
        for split in ("train", "val", "test"):
            examples, expected = ds.indexed(split), ds.load(split)
            assert examples.labelled and len(examples) == len(expected)
            assert torch.equal(torch.stack([examples[i][0] for i in range(len(examples))]), expected.x)
            assert torch.equal(torch.stack([examples[i][1] for i in range(len(examples))]), expected.y)
            sizes.append(len(examples))
        assert sizes == [24, 8, 8]


def test_indexed_refuses_what_load_refuses(folder: Path) -> None:
    with pytest.raises(GentrainError, match="no validation split") as e:
        image_folder(folder).indexed("val")
    assert "\n" not in str(e.value)
    with pytest.raises(GentrainError, match="dataset.shape"):
        ImageFolder(path=str(folder), size=8, shape=[3, 16, 16]).indexed("train")
    assert not Digits().streams()
    with pytest.raises(NotImplementedError):
        Digits().indexed("train")


def test_unlabelled_folder_gives_no_labels(tmp_path: Path) -> None:
    examples = image_folder(write_images(tmp_path / "flat", labelled=False)).indexed("train")
    assert not examples.labelled and int(examples[0][1]) == -1
    stream = StreamingBatches(examples, 4, CPU, seed=0, workers=0)
    assert stream.next().y is None and stream.head(3).y is None


def test_cache_is_built_once_reused_and_rebuilt(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    decoded = []
    read_image = images._read_image
    monkeypatch.setattr(images, "_read_image", lambda file, *args: decoded.append(file) or read_image(file, *args))
    expected = image_folder(folder, test_fraction=0.2).load("train")
    decoded.clear()

    with caplog.at_level(logging.INFO, logger="gentrain.data.images"):
        ds = image_folder(folder, test_fraction=0.2, cache="auto")
        assert torch.equal(ds.load("train").x, expected.x) and len(ds.load("test")) == 8
    assert len(decoded) == N_IMAGES  # the whole folder, once, for both splits
    assert f"{N_IMAGES}/{N_IMAGES} images decoded" in caplog.text
    (cache,) = (tmp_path / "cache" / "image_folder").glob("*.npy")
    assert np.load(cache).shape == (N_IMAGES, 3, 8, 8)
    built = cache.stat().st_mtime_ns

    examples = image_folder(folder, test_fraction=0.2, cache="auto").indexed("train")
    assert torch.equal(examples[0][0], expected.x[0]) and len(decoded) == N_IMAGES and cache.stat().st_mtime_ns == built
    assert pickle.loads(pickle.dumps(examples))._rows is None  # the map is per process, never pickled

    changed = folder / "cat" / "01.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(built + 10**9, built + 10**9))
    image_folder(folder, cache="auto").load("train")
    assert len(decoded) == 2 * N_IMAGES and len(list(cache.parent.glob("*.npy"))) == 2

    mine = tmp_path / "mine.npy"
    np.save(mine, np.zeros((3, 3, 8, 8), dtype=np.uint8))  # another folder's shape
    first = image_folder(folder, cache=str(mine)).load("test").x[0]  # cat/01.png, sorted first
    assert torch.equal(first, torch.tensor([1, 2, 3], dtype=torch.uint8)[:, None, None].expand(3, 8, 8))
    assert np.load(mine).shape == (N_IMAGES, 3, 8, 8) and not list(tmp_path.glob(".*.partial"))


def test_stream_auto_compares_the_decoded_size_with_memory(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    decoded = 36 * 3 * 8 * 8  # the raw train split (val included, test not), as load() holds it
    monkeypatch.setattr(images, "available_memory", lambda: 4 * decoded)
    assert not image_folder(folder, test_fraction=0.1, val_fraction=0.1).streams()
    monkeypatch.setattr(images, "available_memory", lambda: 4 * decoded - 1)
    ds = image_folder(folder, test_fraction=0.1, val_fraction=0.1)
    assert ds.streams()
    assert image_folder(folder, stream=False).streams() is False and image_folder(folder, stream=True).streams()
    with caplog.at_level(logging.INFO, logger="gentrain.engine.streaming"):
        assert isinstance(open_stream(ds, "train", 4, CPU, 0, "auto"), StreamingBatches)
        assert isinstance(open_stream(image_folder(folder, stream=False), "train", 4, CPU, 0, "auto"), BatchStream)
    assert "streamed by a DataLoader with 0 workers" in caplog.text and "held in memory" in caplog.text


@pytest.mark.parametrize("key, value, needle", [("stream", "yes", "auto, true, false"), ("workers", -1, ">= 0"),
                                                ("workers", 2.5, ">= 0"), ("cache", 3, "null, auto or a file path")])
def test_bad_settings_are_one_line(folder: Path, key: str, value: object, needle: str) -> None:
    with pytest.raises(GentrainError) as e:
        image_folder(folder, **{key: value})
    message = str(e.value)
    assert "\n" not in message and f"dataset.{key}" in message and needle in message


def test_batch_too_big_is_refused(folder: Path) -> None:
    with pytest.raises(GentrainError, match=r"trainer.batch_size=32 x 2 ranks .* trainer.batch_size<=20"):
        StreamingBatches(image_folder(folder).indexed("train"), 32, CPU, seed=0, workers=0, world_size=2)


def test_a_streamed_run_draws_what_the_in_memory_run_draws_and_resumes_exactly(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end, DataLoader workers > 0: the loader takes no number from the run's RNG (its workers' seeds come
    from a generator of its own), so a streamed VAE run (reparameterisation and dequantisation noise) equals the
    in-memory run bitwise, and a streamed run that crashed after its checkpoint resumes to the same state."""
    from conftest import make_config, quiet_console, tiny_overrides
    from gentrain.engine.checkpoint import load_checkpoint
    from gentrain.families.vae.objective import ELBO as ELBOObjective
    from gentrain.tasks import train
    from test_stop_resume import assert_same_state, records, without_timing

    base = tiny_overrides("vae", "image_folder", "elbo", steps=8, extra=[
        f"dataset.path={folder}", "dataset.size=8", "dataset.workers=2", "trainer.batch_size=4", "logger.every=1",
        "logger.samples_every=0", "trainer.ckpt_every=4", "eval.every=0"])

    def run(name: str, *extra: str) -> Path:
        train(make_config([*base, *extra]), run_dir=tmp_path / name, console=quiet_console())
        return tmp_path / name

    memory, streamed = run("memory", "dataset.stream=false"), run("streamed", "dataset.stream=true")
    original, calls = ELBOObjective.step, {"n": 0}

    def crash(self, phase, model, batch):  # think SIGKILL at step 7, after the checkpoint at step 4
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("crash")
        return original(self, phase, model, batch)

    monkeypatch.setattr(ELBOObjective, "step", crash)
    with pytest.raises(RuntimeError, match="crash"):
        run("resumed", "dataset.stream=true")
    monkeypatch.undo()
    resumed = run("resumed", "dataset.stream=true", "trainer.resume=true")
    final = [load_checkpoint(d / "checkpoints" / "last.pt") for d in (memory, streamed, resumed)]
    assert_same_state(final[0], final[1])
    assert_same_state(final[1], final[2])
    logged = [[without_timing(r) for r in records(d)] for d in (memory, streamed, resumed)]
    assert logged[0] == logged[1] == logged[2] and len(logged[0]) == 8


def test_a_sigkilled_streaming_run_leaves_no_worker_behind_to_print_a_traceback(folder: Path, tmp_path: Path) -> None:
    """SIGKILL the CLI while its DataLoader workers run: they die with it (PR_SET_PDEATHSIG). They used to live on
    for up to torch's 5 s watchdog interval, and one that was serving a batch's file descriptors printed a 19-line
    ``ConnectionResetError`` traceback. The workers are SIGSTOPped before the kill, so the check is certain: a
    stopped worker still dies of the SIGKILL its parent's death sends, while one that waits on its watchdog cannot."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from conftest import tiny_overrides

    gentrain = shutil.which("gentrain", path=str(Path(sys.executable).parent))
    if gentrain is None or not sys.platform.startswith("linux"):
        pytest.skip("needs the gentrain console script and Linux's /proc")
    run_dir = tmp_path / "run"
    args = tiny_overrides("vae", "image_folder", "elbo", steps=1_000_000, extra=[
        f"dataset.path={folder}", "dataset.size=8", "dataset.stream=true", "dataset.workers=2", "trainer.batch_size=4",
        "logger.samples_every=0", "trainer.ckpt_every=0", "eval.every=0", f"hydra.run.dir={run_dir}"])
    proc = subprocess.Popen([gentrain, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 or not (run_dir / "metrics.jsonl").is_file():  # training, its workers started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            workers = [int(p) for t in Path(f"/proc/{proc.pid}/task").iterdir() for p in (t / "children").read_text().split()]
            time.sleep(0.05)
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [w for w in workers if alive(w)]
    finally:
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate(timeout=60)
    assert not orphans, f"DataLoader workers {orphans} outlived the killed training process"
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
