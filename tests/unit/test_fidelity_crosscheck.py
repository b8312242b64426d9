"""The docs' offline torch-fidelity cross-check: its snippet runs without network on gentrain's weights and agrees with task=eval.

The snippet is the python block between ``<!-- fidelity-crosscheck -->`` markers in docs/evaluation.md, executed as written (only
``kid_subset_size`` shrinks to the tiny folders). The real Inception runs on 2 x 5 digits, one CPU thread: ~12 s.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_config, quiet_console
from gentrain.data.images import Digits
from gentrain.metrics.inception import resolve_weights

pytest.importorskip("torch_fidelity")
ROOT = Path(__file__).resolve().parents[2]
N = 5  # images per side: > 3 for the k = 3 precision/recall manifolds, few for the CPU Inception


def readme_snippet() -> str:
    text = (ROOT / "docs" / "evaluation.md").read_text()
    block = re.search(r"<!-- fidelity-crosscheck -->\s*```python\n(.*?)```\s*<!-- /fidelity-crosscheck -->", text, flags=re.S)
    assert block, "docs/evaluation.md has no ```python block between <!-- fidelity-crosscheck --> markers"
    return block.group(1)


def write_pngs(x: np.ndarray, folder: Path) -> None:
    folder.mkdir()
    for i, image in enumerate(x):
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")


def test_readme_torch_fidelity_snippet_runs_offline_and_matches_gentrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = resolve_weights("auto")
    if weights is None:
        pytest.skip("no offline Inception weights (python -m gentrain.metrics.inception builds them)")
    monkeypatch.setenv("GENTRAIN_INCEPTION_WEIGHTS", str(weights))  # the snippet and gentrain read the same file

    connect = socket.socket.connect

    def offline(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # the DataLoader's workers still talk over AF_UNIX
            raise OSError(f"network access to {address} in an offline test")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", offline)  # a download attempt (torch.hub, VGG16) fails loudly
    digits = Digits()
    write_pngs(digits.load("train").x[:N].numpy(), tmp_path / "gen")
    write_pngs(digits.load("test").x[:N].numpy(), tmp_path / "real")
    code = readme_snippet()
    assert "kid_subset_size=1000" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code.replace("kid_subset_size=1000", f"kid_subset_size={N}"), "docs/evaluation.md", "exec"), namespace)
    theirs = namespace["metrics"]

    from gentrain.tasks import evaluate

    ours = evaluate(make_config([
        "task=eval", f"samples={tmp_path / 'gen'}", f"reference={tmp_path / 'real'}", f"eval.metrics=[fid{N},kid{N},pr{N}]",
        f"eval.inception_weights={weights}", f"eval.cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'report'}", "device=cpu",
    ]), quiet_console())["metrics"]
    assert ours[f"fid{N}"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)  # same features, same maths
    assert ours[f"fid{N}"] > 1  # two different sets of digits, not a degenerate 0 = 0
    assert ours[f"kid{N}"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5, abs=1e-9)
    assert (ours[f"pr{N}_precision"], ours[f"pr{N}_recall"]) == pytest.approx((theirs["precision"], theirs["recall"]))
