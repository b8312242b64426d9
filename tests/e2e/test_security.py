"""Data files that would run code when read are refused before any of it runs (issue 20, security)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gentrain.data import CIFAR10
from gentrain.errors import GentrainError
from test_data import assert_one_line_error, write_cifar


class _Payload:
    """Unpickling this calls os.system: it creates ``marker`` if the reader runs what the file asks."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _craft(root: Path, marker: Path, batch: str = "data_batch_1") -> None:
    write_cifar(root, seed=0)
    crafted = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(marker)}
    (root / "cifar-10-batches-py" / batch).write_bytes(pickle.dumps(crafted, protocol=2))


def test_a_crafted_cifar_batch_is_refused_before_any_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _craft(tmp_path, marker)
    with pytest.raises(GentrainError) as e:
        CIFAR10(root=str(tmp_path)).load("train")
    assert_one_line_error(e, "data_batch_1 is not a CIFAR-10 python batch", "posix.system", "nothing was run")
    assert not marker.exists()


def test_a_crafted_cifar_batch_through_the_cli_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _craft(tmp_path / "data", marker)
    out = subprocess.run(
        [sys.executable, "-m", "gentrain", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "trainer.max_steps=2", "trainer.batch_size=2",
         "device=cpu", "model.g_width=8", "model.d_width=8", "logger.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "refused, nothing was run" in out.stderr
    assert not marker.exists()


@pytest.mark.parametrize("payload", [["a", "list"], {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}])
def test_a_cifar_batch_of_the_wrong_structure_is_one_line(tmp_path: Path, payload: object) -> None:
    write_cifar(tmp_path, seed=0)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(GentrainError) as e:
        CIFAR10(root=str(tmp_path)).load("train")
    assert_one_line_error(e, "data_batch_2 is not a CIFAR-10 python batch")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_format_batches_still_load_under_every_protocol(tmp_path: Path, protocol: int) -> None:
    written = write_cifar(tmp_path, seed=1)
    data, labels = written["test_batch"]
    batch = {b"batch_label": b"test", b"data": data, b"labels": labels, b"filenames": [b"x.png"] * len(labels)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    test = CIFAR10(root=str(tmp_path)).load("test")
    assert test.x.reshape(len(labels), -1).numpy().tolist() == data.tolist() and test.y.tolist() == labels


def test_no_reader_in_the_package_unpickles_freely() -> None:
    """Every load in gentrain/ refuses pickled objects: np.load with allow_pickle=False or mmap of .npy, torch.load
    with weights_only=True, pickle only through the restricted CIFAR unpickler."""
    root = Path(__file__).resolve().parents[2] / "gentrain"
    offenders = []
    for path in root.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}")
            if "np.load(" in code and "allow_pickle=False" not in code:
                offenders.append(f"{path.name}:{number}")
            if "pickle.load(" in code or "pickle.loads(" in code:
                offenders.append(f"{path.name}:{number}")
    assert not offenders, offenders
