"""The installable wheel: built from the sources, installed into a fresh target, run from an unrelated directory.

A non-editable install must carry everything a run reads (the YAML configs, the embedded digits), so every
task works without the source tree: train, sample, eval and summarize, and a sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the install target, an environment whose ``gentrain`` is the wheel's): the wheel is built from a copy of the
    sources (nothing is written into the checkout) with ``python -m build --wheel --no-isolation``."""
    pytest.importorskip("build", reason="the wheel builder is not installed (pip install build, or make install)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "gentrain", src / "gentrain", ignore=ignore, symlinks=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist")], src, dict(os.environ))
    (wheel,) = (tmp / "dist").glob("gentrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gentrain/configs/config.yaml" in names and "gentrain/configs/hydra/launcher/joblib.yaml" in names
    assert not any(n.startswith("configs/") for n in names)
    assert "gentrain/py.typed" in names and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # typed API, MIT text
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), str(wheel)], tmp, dict(os.environ))
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "200", "GENTRAIN_DATA": str(tmp / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    return target, env


def test_the_wheel_runs_every_task_from_another_directory(installed, tmp_path):
    target, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([sys.executable, "-c", "import gentrain.config as c; print(c.__file__); print(c.CONFIG_DIR)"], work, env).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where  # the wheel's package, not the checkout's
    gentrain = [sys.executable, "-m", "gentrain"]
    tiny = ["model=gan_mlp", "dataset=ring8", "dataset.n_train=512", "dataset.n_test=128", "model.g_widths=[16]", "model.d_widths=[16]",
            "trainer.batch_size=16", "logger.every=1", "logger.samples_every=2", "logger.progress=false", "device=cpu"]
    _run([*gentrain, "-m", *tiny, "trainer.max_steps=2", "eval.metrics=[modes200]", "seed=0,1", "hydra.sweep.dir=sweep"], work, env)
    report = json.loads((work / "sweep" / "0" / "report.json").read_text())
    assert report["run"]["steps"] == 2 and "modes200_fair" in report["metrics"]
    ckpt = work / "sweep" / "0" / "checkpoints" / "last.pt"
    _run([*gentrain, "task=sample", f"ckpt={ckpt}", "n=8", f"out={work / 'samples'}"], work, env)
    assert list((work / "samples").glob("*.npz"))
    _run([*gentrain, "task=eval", f"ckpt={ckpt}", "eval.metrics=[modes200]"], work, env)
    assert (ckpt.parent / "last.eval.json").is_file()
    _run([*gentrain, "task=summarize", "dir=sweep"], work, env)
    assert (work / "sweep" / "summary.csv").read_text().count("\n") == 3  # the header and two runs
    assert not (work / "outputs").exists() or not any((work / "outputs").iterdir())
