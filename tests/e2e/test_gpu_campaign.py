"""The one-call GPU campaign (benchmarks/gpu_campaign.sh) and the carry it needs (benchmarks/gpu_prepare.sh), on the CPU.

The campaign's ``--dry-run`` runs every stage at tiny sizes, so the single GPU call does not fail on a typo: the whole
dry-run takes about 3 minutes on 2 cores under torch 2.14 (its CPU fp16 convolutions run at ~0.2 images/s, so the
inception stage measures one image per variant); it runs in the default suite, with the scripts' syntax.
The size check of the carry runs on a folder the test writes (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ROOT / "benchmarks" / "gpu_campaign.sh"
PREPARE = ROOT / "benchmarks" / "gpu_prepare.sh"
STAGES = ["smoke", "throughput", "inception", "models", "streaming", "ddpm_sizing"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dry_run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp / "out"
    result = subprocess.run(["bash", str(CAMPAIGN), "--dry-run", "--out", str(out), *args], cwd=ROOT, env=_env(tmp),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    return result, out


def _statuses(summary: str) -> dict[str, str]:
    """The stage table of gpu_campaign.md (above the stages' own reports): stage -> status."""
    head = summary.split("\n---\n", 1)[0]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| (\w+) \| ([^|]+) \| \d* \| \d+ \|", head, flags=re.M)}


def _check_stage_files(out: Path, stages: list[str]) -> None:
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files  # the device tool brings back at most 8 files from $OUT
    summary = (out / "gpu_campaign.md").read_text()
    assert "DRY RUN" in summary
    assert _statuses(summary) == {s: "ok" for s in stages}, summary[:3000]
    (tar,) = out.glob("gpu_campaign_*.tar.gz")
    with tarfile.open(tar) as t:
        names = set(t.getnames())
        for s in stages:
            assert {f"gpu_{s}.md", f"gpu_{s}.jsonl", f"gpu_campaign_logs/{s}.log"} <= names, sorted(names)
            lines = [json.loads(x) for x in t.extractfile(f"gpu_{s}.jsonl").read().decode().splitlines() if x.strip()]  # type: ignore[union-attr]
            runs = [r for r in lines if r.get("kind") == "run"]
            assert runs or s == "inception", f"{s}: no run records"
            bad = [r for r in runs if not str(r.get("status", "ok")).startswith(("ok", "not available"))]
            assert not bad, f"{s}: {bad[:2]}"
            if s == "inception":
                (record,) = lines
                assert record["protocol_calls"][0]["reference_from_cache"] is False and record["protocol_calls"][1]["reference_from_cache"] is True
                assert all(v["status"] == "ok" for v in record["variants"]), record["variants"]


def test_unknown_stage_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(CAMPAIGN), "--dry-run", "--stages", "smoke nonsense"], cwd=ROOT, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: unknown stage nonsense; the stages: " + " ".join(STAGES)]


def test_dry_run_every_stage(tmp_path: Path) -> None:
    """Every stage on the CPU at tiny scale (about 3 minutes): the one GPU call must not fail on a typo, so CI runs this."""
    for script in (CAMPAIGN, PREPARE):
        subprocess.run(["bash", "-n", str(script)], check=True)
    result, out = _dry_run(tmp_path)
    _check_stage_files(out, STAGES)
    results_dir = Path(re.search(r"summary (\S+)/gpu_campaign\.md", result.stdout).group(1))  # type: ignore[union-attr]
    assert tmp_path in results_dir.parents  # a dry-run writes nothing into benchmarks/results


def test_prepare_size_check(tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    (carry / "whl").mkdir(parents=True)
    (carry / "whl" / "big.bin").write_bytes(b"\0" * 1_500_000)

    def check(limit_mb: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(PREPARE), "--check-size", str(carry)], cwd=ROOT, env=_env(tmp_path, GPU_CARRY_LIMIT_MB=str(limit_mb)),
                              capture_output=True, text=True, timeout=60)

    fits = check(2)
    assert fits.returncode == 0, fits.stderr
    assert f"{carry}: 1.5 MB in all (limit 2 MB)" in fits.stdout and "whl" in fits.stdout
    over = check(1)
    assert over.returncode == 1
    (line,) = over.stderr.strip().splitlines()
    assert line.startswith(f"error: {carry} holds 1.5 MB, over the 1 MB")
