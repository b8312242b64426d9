"""Data-parallel training under torchrun on the CPU (gloo): one run directory, disjoint batches, equal weights, exact resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_config, quiet_console, tiny_overrides
from gentrain.engine import distributed
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.distributed import World
from gentrain.engine.loader import BatchStream
from gentrain.data.base import DataSplit
from gentrain.data.images import Digits
from gentrain.tasks import evaluate, train

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_take_disjoint_shares_of_each_global_batch():
    data = DataSplit(torch.arange(40)[:, None].float(), None)
    ranks = [BatchStream(data, 4, torch.device("cpu"), seed=3, rank=r, world_size=2) for r in range(2)]
    single = BatchStream(data, 8, torch.device("cpu"), seed=3)
    for _ in range(12):  # three epochs of five global batches (the incomplete sixth is dropped)
        a, b, both = (s.next().x[:, 0].long() for s in (*ranks, single))
        assert not set(a.tolist()) & set(b.tolist())
        assert torch.equal(torch.cat([a, b]), both)  # together the ranks see the one-process batch of the global size
    assert ranks[0].state_dict()["pos"] == ranks[1].state_dict()["pos"] == single.state_dict()["pos"]


def _host_reads_per_run(run) -> list[int]:  # noqa: ANN001
    """Host reads (item/tolist/float/bool/int) made by gentrain's own code in runs of 4 and of 16 steps, logged once each."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            if sys._getframe(1).f_globals.get("__name__", "").startswith("gentrain"):
                counts["n"] += 1
            return _original(self, *a, **k)

        setattr(torch.Tensor, name, counted)
    out = []
    for steps in (4, 16):
        counts["n"] = 0
        run(steps)
        out.append(counts["n"])
    return out


def _worker(rank: int, ports: tuple[int, int, int], run_dir: str, out: str) -> None:
    """The two-process work of three tests in one spawn (each spawn costs two interpreters' start-up): the training runs,
    then, each in a process group of its own, :func:`_weights_worker` and the features of given images."""
    from test_eval_samples import _samples_worker

    _runs_worker(rank, ports[0], run_dir, out)
    _weights_worker(rank, ports[1], out)
    _samples_worker(rank, ports[2], str(Path(out) / "images"), str(Path(out) / "features"))


def _runs_worker(rank: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    seen = []
    original = BatchStream.next

    def recording(self, labels_only=False):  # noqa: ANN001, ANN202
        batch = original(self, labels_only)
        if batch.x is not None:  # the generator's phase reads only labels (and these points have none): nothing gathered
            seen.append(batch.x.clone())
        return batch

    BatchStream.next = recording
    from gentrain.engine.trainer import Trainer
    from gentrain.tasks import train

    weights = []
    fit = Trainer.fit

    def keeping(self):  # noqa: ANN001, ANN202
        result = fit(self)
        weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return result

    Trainer.fit = keeping
    overrides = tiny_overrides("gan_mlp", "ring8", steps=6, extra=["logger.every=3", "trainer.ckpt_every=3", "objective.d_steps=2"])
    report = train(make_config(overrides), run_dir=Path(run_dir), console=quiet_console())
    BatchStream.next = original
    # the objectives awkward under DDP: a double backward (the penalty), weight clipping after the step
    # evaluation splits over ranks: sampled (mode coverage on points) and exact likelihoods (MADE)
    evals = {}
    for objective in ("wasserstein_gp", "wasserstein"):
        out_report = train(
            make_config(tiny_overrides("gan_mlp", "ring8", objective, steps=3, extra=["eval.metrics=[modes101]"])),
            run_dir=Path(f"{run_dir}_{objective}"), console=quiet_console(),
        )
        evals[objective] = out_report["metrics"]
    made = train(make_config(tiny_overrides("made", "digits", "ar_nll", steps=2, extra=["eval.metrics=[nll101]"])), run_dir=Path(f"{run_dir}_made"), console=quiet_console())
    evals["made"] = made["metrics"]
    from gentrain.engine.distributed import current

    syncs = _host_reads_per_run(lambda steps: train(
        make_config(tiny_overrides("gan_mlp", "ring8", steps=steps, extra=[f"logger.every={steps}", f"logger.samples_every={steps}", "trainer.ckpt_every=0"])),
        run_dir=Path(f"{run_dir}_{steps}"), console=quiet_console(),
    ))
    torch.save({"batches": seen, "report": report["run"], "world": current().size, "syncs": syncs, "weights": weights, "evals": evals}, Path(out) / f"rank{rank}.pt")
    distributed.shutdown()
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(key)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder both tests' two-process work wrote (``out/rank<r>.pt``, ``out/weights<r>.pt``, the runs beside)."""
    from test_eval_samples import write_pngs

    tmp_path = tmp_path_factory.mktemp("ranks")
    (tmp_path / "out" / "features").mkdir(parents=True)
    write_pngs(Digits().load("test").x[:11].numpy(), tmp_path / "out" / "images")
    ports: list[int] = []
    while len(ports) < 3:
        if (port := free_port()) not in ports:
            ports.append(port)
    mp.start_processes(_worker, args=(tuple(ports), str(tmp_path / "run"), str(tmp_path / "out")), nprocs=2, start_method="spawn")
    return tmp_path


def test_two_processes_train_one_run_on_disjoint_batches_to_equal_weights(two_ranks):
    tmp_path, out = two_ranks, two_ranks / "out"
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["batches"]) == len(r1["batches"]) == 6 * 2  # 6 steps of 2 D batches (the G phase gathers no points)
    for a, b in zip(r0["batches"], r1["batches"]):
        rows_a, rows_b = {tuple(r) for r in a.tolist()}, {tuple(r) for r in b.tolist()}
        assert not rows_a & rows_b  # no example on both ranks in the same global batch
    assert r0["report"]["world_size"] == 2 and r0["report"]["global_batch_size"] == 32
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # each rank its own noise
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [3, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run", "run_16", "run_4", "run_made", "run_wasserstein", "run_wasserstein_gp"]
    assert len(r0["weights"]) == 6  # non-saturating, WGAN-GP, WGAN, MADE and the two sync-count runs
    # every rank computed the metrics on the gathered features, so they agree; 101 split 51 + 50
    assert r0["evals"] == r1["evals"] and r0["evals"]["wasserstein"]["modes101_fair"] >= 0
    # exact likelihoods of the gathered examples: the one-process evaluation of the same weights gives the same number
    single = evaluate(make_config(["task=eval", f"ckpt={tmp_path / 'run_made'}", "device=cpu", "eval.metrics=[nll101]"]), quiet_console())
    assert single["metrics"]["nll101"] == pytest.approx(r0["evals"]["made"]["nll101"], rel=1e-6)
    for a, b in zip(r0["weights"], r1["weights"]):  # every rank ends with the same weights and buffers
        for key, value in a.items():
            assert torch.equal(value, b[key]), key
    # one process continues the two-process run: it may, with a warning that the batch order changes
    console = quiet_console()
    overrides = tiny_overrides("gan_mlp", "ring8", steps=8, extra=["logger.every=3", "trainer.ckpt_every=3", "objective.d_steps=2"])
    report = train(make_config([*overrides, f"trainer.resume={tmp_path / 'run'}"]), run_dir=tmp_path / "run", console=console)
    assert report["run"]["steps"] == 8 and report["run"]["world_size"] == 1
    assert "written by 2 process(es) and this run has 1" in " ".join(console.file.getvalue().split())
    for r in (r0, r1):  # host reads per logging interval, not per step, on every rank
        assert r["syncs"][0] == r["syncs"][1] > 0, r["syncs"]


def _weights_worker(rank: int, port: int, out: str) -> None:
    """Averaged gradients keep the replicas equal even when each rank's loss differs, and buffers follow rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank, 2, rank)
    torch.manual_seed(rank)  # different weights on purpose: the broadcast must make them equal
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1), torch.nn.Linear(1, 1))
    distributed.broadcast_state(net, world)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 3)  # rank-specific data
    loss = net[:3](x).square().mean()  # net[3] unused: its gradient counts as zero on every rank
    loss.backward()
    distributed.average_gradients(list(net.parameters()), world)
    opt.step()
    distributed.broadcast_state(net, world, buffers_only=True)
    gathered = distributed.gather_rows(torch.full((rank + 1, 2), float(rank)), world)
    torch.save({"state": net.state_dict(), "x": x, "gathered": gathered}, Path(out) / f"weights{rank}.pt")
    dist.destroy_process_group()


def test_gradient_average_equals_the_full_batch_gradient(two_ranks):
    r0, r1 = (torch.load(two_ranks / "out" / f"weights{r}.pt", weights_only=False) for r in range(2))
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    assert torch.equal(r0["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    # one process on both ranks' data: the same SGD step (batch norm in train mode normalises per rank, so compare the linear head only)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1), torch.nn.Linear(1, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = sum(net[:3](r["x"]).square().mean() for r in (r0, r1)) / 2
    loss.backward()
    opt.step()
    for key in ("0.weight", "2.weight", "3.weight"):
        torch.testing.assert_close(net.state_dict()[key], r0["state"][key], rtol=1e-6, atol=1e-7)


def test_given_images_split_over_ranks_gather_the_one_process_features(two_ranks):
    from test_metrics import TinyExtractor

    from gentrain.data.samples import open_images
    from gentrain.metrics.evaluate import ImageSamples

    single = ImageSamples(open_images(two_ranks / "out" / "images"), torch.device("cpu"))
    for rank in range(2):
        got = torch.load(two_ranks / "out" / "features" / f"rank{rank}.pt")
        for n in (11, 1):  # uneven shares; fewer images than ranks
            expected = single.features(n, TinyExtractor(), batch_size=4)
            # the same rows in the same order (equal up to float rounding: the ranks' batches are cut elsewhere)
            torch.testing.assert_close(got[n][0], expected.pool, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(got[n][1], expected.logits, rtol=1e-6, atol=1e-6)


def torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    """``torchrun --nproc_per_node=2 -m gentrain <args>`` on the CPU, in its own process group (so it can be signalled whole)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gentrain", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_torchrun_job_is_one_run_and_a_killed_run_resumes_exactly(tmp_path):
    """The user's path: ``torchrun --nproc_per_node=2 -m gentrain ...`` on the CPU (gloo), stopped by SIGTERM, resumed.

    The SIGTERM goes to the whole process group (torchrun and both ranks, as a terminal or a scheduler sends it), and
    torchrun forwards it too: rank 0 alone prints the stop line, once."""
    steps = 200
    base = [a for a in tiny_overrides("gan_mlp", "ring8", steps=steps) if not a.startswith("logger.every")]
    base += ["logger.every=10", "trainer.ckpt_every=50", "logger.samples_every=1000"]
    full = torchrun([*base, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    killed = torchrun([*base, f"hydra.run.dir={tmp_path / 'killed'}"], tmp_path)
    try:
        _kill_and_resume(tmp_path, full, killed, steps)
    finally:  # a failed check leaves no process behind
        for process in (full, killed):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def _kill_and_resume(tmp_path: Path, full: subprocess.Popen, killed: subprocess.Popen, steps: int) -> None:
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= 50 for line in metrics.read_text().splitlines() if line.strip()):
            os.killpg(killed.pid, signal.SIGTERM)
            break
        time.sleep(0.05)
    out_killed, _ = killed.communicate(timeout=240)
    out_full, _ = full.communicate(timeout=240)
    assert full.returncode == 0, out_full[-3000:]
    stopped = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert 50 <= stopped["step"] < steps, out_killed[-3000:]
    assert out_killed.count("SIGTERM: stopping at the end of this step") == 1, out_killed[-3000:]
    assert out_killed.count("error: stopped by SIGTERM") == 1, out_killed[-3000:]
    assert out_killed.count("held in memory as one tensor") <= 1  # information lines: rank 0's only
    resumed = torchrun([f"trainer.resume={tmp_path / 'killed'}"], tmp_path)
    out_resumed, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out_resumed[-3000:]
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("full", "killed"))
    assert a["step"] == b["step"] == steps
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for run in ("full", "killed"):
        logged = [json.loads(line)["step"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(10, steps + 1, 10)), (run, logged)  # one line per interval: no rank wrote twice
        assert len(list((tmp_path / run).glob("events.out.tfevents.*"))) == (1 if run == "full" else 2)  # one per session
        assert json.loads((tmp_path / run / "report.json").read_text())["run"]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "killed"]  # no directory of a second rank


def test_a_slurm_job_of_several_tasks_is_a_world(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # recorded first, so the teardown removes what from_env sets (a stray WORLD_SIZE would make later runs wait for ranks)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.from_env() == World()  # one task: one process
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_JOB_ID": "123456"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.from_env() == World(rank=5, size=8, local_rank=1)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], os.environ["WORLD_SIZE"]) == ("10.0.0.7", "29956", "8")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's variables win
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.from_env() == World(1, 2, 1)


def test_no_world_is_left_in_the_environment():
    """The test above leaves no torchrun variables behind (they would make every later run wait for its ranks)."""
    assert not {"WORLD_SIZE", "RANK", "MASTER_PORT"} & set(os.environ)


def _long_torchrun(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    """A torchrun job of 2 CPU ranks that trains until stopped, in its own process group."""
    args = [a for a in tiny_overrides("gan_mlp", "ring8", steps=1_000_000) if not a.startswith(("logger.every", "logger.samples_every"))]
    args += ["logger.every=10", "logger.samples_every=0", "trainer.ckpt_every=0", f"hydra.run.dir={run_dir}"]
    proc = torchrun(args, tmp_path)
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(proc.communicate()[0][-3000:])
        time.sleep(0.05)
    return proc


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads torchrun's workers from /proc (Linux)")
def test_a_rank_that_dies_is_named_in_rank_0s_log(tmp_path):
    run_dir = tmp_path / "run"
    proc = _long_torchrun(tmp_path, run_dir)
    try:
        ranks = {}
        for child in Path("/proc").iterdir():  # torchrun's workers: its children, each with its RANK
            try:
                if child.name.isdigit() and int((child / "stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid:
                    env = (child / "environ").read_bytes().split(b"\0")
                    ranks.update({int(e.split(b"=")[1]): int(child.name) for e in env if e.startswith(b"RANK=")})
            except OSError:
                continue
        os.kill(ranks[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (run_dir / "gentrain.log").read_text()
    assert "rank 1 of 2 failed or was stopped" in log, log[-2000:]
    assert "error: rank 1 of 2 failed" in out
