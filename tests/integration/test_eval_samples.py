"""``task=eval samples=<folder | .npz> reference=<dataset | folder | .npz>``: given images scored as a checkpoint's samples are.

The Inception network is replaced by the small fixed feature map of tests/unit/test_metrics.py (TinyExtractor)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.data.images import Digits
from gentrain.data.samples import open_images
from gentrain.errors import GentrainError
from gentrain.tasks import evaluate, sample, train
from test_metrics import TinyExtractor

N = 64
EVAL = [f"eval.metrics=[fid{N},kid{N},pr{N},is{N}]", "eval.batch_size=32", "eval.kid_subset_size=16", "eval.kid_subsets=5", "device=cpu"]


@pytest.fixture(autouse=True)
def tiny_inception(monkeypatch, tmp_path):
    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny DCGAN on the 8x8 digits, two steps, no evaluation."""
    run_dir = tmp_path_factory.mktemp("run")
    train(make_config(tiny_overrides("dcgan", "digits", steps=2)), run_dir=run_dir, console=quiet_console())
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def drawn(ckpt, tmp_path_factory) -> Path:
    """``task=sample n=64 seed=0`` of the checkpoint: the .npz that task=eval with eval.seed=0 scores."""
    out = tmp_path_factory.mktemp("drawn")
    files = sample(make_config(["task=sample", f"ckpt={ckpt}", f"n={N}", "seed=0", "device=cpu", "eval.batch_size=32", f"out={out}"]), quiet_console())
    return Path(files["npz"])


def run_eval(*overrides: str) -> dict:
    return evaluate(make_config(["task=eval", *EVAL, *overrides]), quiet_console())


def write_pngs(x: np.ndarray, folder: Path) -> Path:
    """uint8 [N, C, H, W] as 000.png, 001.png, ... (grayscale or RGB)."""
    folder.mkdir(parents=True)
    for i, image in enumerate(x):
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    return folder


# ------------------------------------------------------------------------------------ agreement


def test_samples_score_exactly_as_the_checkpoint_does(ckpt, drawn, tmp_path):
    from_ckpt = run_eval(f"ckpt={ckpt}", "eval.seed=0", f"out={tmp_path / 'ckpt'}")
    from_npz = run_eval(f"samples={drawn}", "reference=digits")
    assert from_npz["metrics"] == from_ckpt["metrics"] and len(from_npz["metrics"]) == 8  # bit for bit: the same images, features and reference
    assert from_npz["reference_from_cache"] is True  # the reference features the checkpoint's evaluation cached
    assert from_npz["reference"] == {"kind": "dataset", "name": "digits/test"}
    fid = next(r for r in from_npz["evaluation"] if r["name"] == f"fid{N}")
    assert (fid["n_generated"], fid["n_reference"], fid["reference_split"], fid["extractor"]) == (N, N, "digits/test", "tiny:0")
    # beside the .npz: <stem>.eval.json and .eval.md
    saved = json.loads(drawn.with_name(f"{drawn.stem}.eval.json").read_text())
    assert saved["metrics"] == from_ckpt["metrics"] and saved["samples"] == str(drawn) and saved["samples_shape"] == [1, 8, 8]
    md = drawn.with_name(f"{drawn.stem}.eval.md").read_text()
    assert f"| fid{N} |" in md and f"{N} (digits/test)" in md and "64 images of 1x8x8" in md
    # the same images as a folder of PNGs
    folder = write_pngs(np.load(drawn)["x"], tmp_path / "pngs")
    from_folder = run_eval(f"samples={folder}", "reference=digits")
    assert from_folder["metrics"] == from_ckpt["metrics"]
    assert (tmp_path / "pngs.eval.json").is_file() and (tmp_path / "pngs.eval.md").is_file()


def test_array_layouts_and_value_ranges_read_as_the_same_images(tmp_path):
    x = Digits().load("test").x[:10].numpy()  # uint8 [10, 1, 8, 8]
    rgb = np.repeat(x, 3, axis=1)
    cases = {
        "nchw": {"x": x},
        "arr_0": {"arr_0": x},
        "nhw": {"x": x[:, 0]},
        "unit": {"x": x.astype(np.float32) / 255},
        "model_space": {"x": x.astype(np.float32) / 127.5 - 1},
        "int64": {"x": x.astype(np.int64)},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        images = open_images(tmp_path / f"{name}.npz")
        assert images.name == f"npz-{name}" and images.shape == (1, 8, 8) and len(images) == 10
        assert torch.equal(images.first(10), torch.from_numpy(x)), name
    np.savez(tmp_path / "nhwc.npz", x=rgb.transpose(0, 2, 3, 1))
    np.save(tmp_path / "plain.npy", rgb)
    for path in (tmp_path / "nhwc.npz", tmp_path / "plain.npy"):
        assert torch.equal(open_images(path).first(99), torch.from_numpy(rgb))
    folder = write_pngs(rgb, tmp_path / "rgb")
    (folder / "sub").mkdir()
    Image.fromarray(rgb[0].transpose(1, 2, 0)).save(folder / "sub" / "zz.jpg", quality=100)  # subfolders are read too, sorted by path
    (folder / ".DS_Store").write_bytes(b"\0junk")  # hidden names are skipped
    images = open_images(folder)
    assert images.name == "folder-rgb" and len(images) == 11 and [f.name for f in images.files][-2:] == ["009.png", "zz.jpg"]
    assert torch.equal(images.batch(0, 10), torch.from_numpy(rgb)) and images.batch(9, 5).shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------------------ references


def test_a_folder_or_npz_reference_is_cached_and_scores_like_the_dataset(ckpt, drawn, tmp_path):
    test_images = Digits().load("test").x[:N].numpy()
    folder = write_pngs(test_images, tmp_path / "refs")
    np.savez(tmp_path / "refs.npz", x=test_images)
    first = run_eval(f"samples={drawn}", f"reference={folder}", f"out={tmp_path / 'a'}")
    second = run_eval(f"samples={drawn}", f"reference={folder}", f"out={tmp_path / 'a'}")
    assert (first["reference_from_cache"], second["reference_from_cache"]) == (False, True)
    assert first["metrics"] == second["metrics"]
    assert [p.name[: len(f"folder-refs-all-{N}-")] for p in (tmp_path / "cache" / "reference").iterdir()] == [f"folder-refs-all-{N}-"]
    assert first["reference"] == {"kind": "folder", "name": "folder-refs", "path": str(folder), "count": N, "shape": [1, 8, 8]}
    fid = next(r for r in first["evaluation"] if r["name"] == f"fid{N}")
    assert fid["reference_split"] == "folder-refs" and fid["n_reference"] == N and not fid["notes"][1:]
    assert f"against `{folder}`" in (tmp_path / "a" / f"{drawn.stem}.eval.md").read_text()
    # the same images as the digits test split (the dataset reference), from an .npz, and for the checkpoint itself
    from_npz = run_eval(f"samples={drawn}", f"reference={tmp_path / 'refs.npz'}", f"out={tmp_path / 'b'}")
    from_dataset = run_eval(f"samples={drawn}", "reference=digits", f"out={tmp_path / 'b'}")
    from_ckpt = run_eval(f"ckpt={ckpt}", f"reference={folder}", f"out={tmp_path / 'c'}")
    assert from_npz["metrics"] == from_dataset["metrics"] == first["metrics"] == from_ckpt["metrics"]
    assert from_npz["reference"]["name"] == "npz-refs" and from_ckpt["reference"]["name"] == "folder-refs"


def test_caveats_fewer_samples_other_sizes_and_no_reference(drawn, tmp_path):
    x = np.load(drawn)["x"]
    np.savez(tmp_path / "few.npz", x=x[:40])
    few = run_eval(f"samples={tmp_path / 'few.npz'}", "reference=digits", "eval.metrics=[fid64]")
    (fid,) = few["evaluation"]
    assert fid["n_generated"] == 40 and fid["n_reference"] == N and any("only 40 generated images" in n for n in fid["notes"])
    np.savez(tmp_path / "big.npz", x=np.kron(x, np.ones((1, 3, 2, 2), dtype=np.uint8)))  # RGB 16x16
    big = run_eval(f"samples={tmp_path / 'big.npz'}", "reference=digits", "eval.metrics=[fid64]")
    assert any("generated images are 3x16x16 (CxHxW), reference images 1x8x8" in n for n in big["evaluation"][0]["notes"])
    alone = run_eval(f"samples={drawn}", "eval.metrics=[is64]", f"out={tmp_path}")
    assert alone["reference"] is None and alone["reference_from_cache"] is None and alone["metrics"]["is64"] >= 1.0


def _samples_worker(rank: int, port: int, folder: str, out: str) -> None:
    """Rank ``rank``'s features of the images in ``folder`` (run by tests/e2e/test_distributed.py's two-process spawn)."""
    import torch.distributed as dist

    from gentrain.metrics.evaluate import ImageSamples

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    source = ImageSamples(open_images(folder), torch.device("cpu"))
    features = {n: source.features(n, TinyExtractor(), batch_size=4) for n in (11, 1)}  # uneven shares; fewer images than ranks
    torch.save({n: (f.pool, f.logits) for n, f in features.items()}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------ bad input


def bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, a fragment of the one-line message); builds the files under ``root``."""
    x = Digits().load("test").x[:4].numpy()
    (root / "empty").mkdir()
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("not an image")
    write_pngs(x, root / "good")
    write_pngs(x, root / "stray")
    (root / "stray" / "notes.txt").write_text("hello")
    write_pngs(x, root / "sizes")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "sizes" / "004.png")
    write_pngs(x, root / "modes")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "modes" / "004.png")
    np.savez(root / "labels.npz", y=np.arange(4))
    np.savez(root / "points.npz", x=np.zeros((4, 2), np.float32))
    np.savez(root / "ambiguous.npz", x=np.zeros((4, 3, 8, 3), np.uint8))
    np.savez(root / "wide.npz", x=np.full((4, 1, 8, 8), 200.0, np.float32))
    Image.fromarray(x[0, 0]).save(root / "one.png")
    (root / "text.npz").write_text("not numpy\n")
    np.savez(root / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    return {
        "text-as-npz": ([f"samples={root / 'text.npz'}", "reference=digits"], "is not a NumPy .npz or .npy file"),
        "object-array": ([f"samples={root / 'objects.npz'}", "reference=digits"], "cannot read the array x"),
        "missing": ([f"samples={root / 'nope'}", "reference=digits"], "does not exist"),
        "empty-folder": ([f"samples={root / 'empty'}", "reference=digits"], "is empty"),
        "no-images": ([f"samples={root / 'texts'}", "reference=digits"], "holds no images"),
        "stray-file": ([f"samples={root / 'stray'}", "reference=digits"], "notes.txt is not an image"),
        "mixed-sizes": ([f"samples={root / 'sizes'}", "reference=digits"], "000.png is 8x8 and 004.png is 8x9"),
        "mixed-channels": ([f"samples={root / 'modes'}", "reference=digits"], "000.png is grayscale and 004.png is colour"),
        "no-image-array": ([f"samples={root / 'labels.npz'}", "reference=digits"], "holds no image array: expected the key x (or arr_0), found: y"),
        "points": ([f"samples={root / 'points.npz'}", "reference=digits"], "not images"),
        "ambiguous-layout": ([f"samples={root / 'ambiguous.npz'}", "reference=digits"], "ambiguous"),
        "float-range": ([f"samples={root / 'wide.npz'}", "reference=digits"], "floats must lie in [0, 1] or [-1, 1]"),
        "single-image": ([f"samples={root / 'one.png'}", "reference=digits"], "not an .npz"),
        "both": ([f"samples={root / 'stray'}", f"ckpt={root / 'x.pt'}"], "not both"),
        "no-reference": ([f"samples={root / 'nope'}"], "reference is required with samples= for fid64, kid64, pr64"),
        "likelihood": ([f"samples={root / 'nope'}", "reference=digits", "eval.metrics=[nll64]"], "nll64 needs a model"),
        "unknown-reference": ([f"samples={root / 'labels.npz'}", "reference=digitz"], "neither a dataset option"),
    }


def test_bad_input_is_one_line(tmp_path):
    cases = bad_inputs(tmp_path)
    for name, (overrides, fragment) in cases.items():
        with pytest.raises(GentrainError) as e:
            run_eval(*overrides)
        message = str(e.value)
        assert fragment in message and "\n" not in message and e.value.exit_code == 2, (name, message)
    # with good samples: a split named for a reference without splits, an empty reference folder
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 1, 8, 8), np.uint8))
    for overrides, fragment in [
        ([f"reference={tmp_path / 'good'}", "eval.metrics=[fid64_train]"], "fid64_train names the train split, but reference=folder-good"),
        ([f"reference={tmp_path / 'empty'}"], "reference folder"),
    ]:
        with pytest.raises(GentrainError, match=fragment.replace("[", r"\[")) as e:
            run_eval(f"samples={tmp_path / 'ok.npz'}", *overrides)
        assert "\n" not in str(e.value)


GENTRAIN = shutil.which("gentrain", path=str(Path(sys.executable).parent)) or shutil.which("gentrain")


@pytest.mark.skipif(GENTRAIN is None, reason="the gentrain console script is not installed (pip install -e .)")
def test_the_cli_says_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "GENTRAIN_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [GENTRAIN, "task=eval", f"samples={tmp_path / 'nope.npz'}", "reference=digits", "eval.metrics=[fid64]", "device=cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().startswith("error: samples=") and "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
