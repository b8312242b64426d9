"""Where a run's numbers go: the chosen logging backends and ``metrics.jsonl`` (the terminal: :mod:`gentrain.engine.console`).

``logger=tensorboard`` (the default), ``csv``, ``mlflow``, ``wandb``, or several: ``logger=[tensorboard,mlflow]``.
A backend is one class and one YAML: ``configs/logger/<name>.yaml`` adds ``<name>: {_target_: package.Class, ...options}``
under ``logger``, and the class (a :class:`Backend`) is built with ``(run_dir, start_step, **options)``; a user's own
works the same way from their package and ``--config-dir``. Every backend receives the same records:

- scalars ``train/<phase>/<name>``, ``train/lr/<phase>``, ``train/steps_per_s``, ``train/epoch`` every
  ``logger.every`` steps and ``eval/<key>`` at evaluations, each with its step;
- the run's parameters (the group choices and the flattened model, objective, trainer and dataset settings);
- the sample pictures (the PNG files of ``samples/``) with their step, and the config as text.

:class:`Loggers` fans out to the chosen backends (rank 0 only); a backend that fails during the run
is reported in one line and turned off, the run goes on. Every backend is flushed before each checkpoint write.

A resume (after a stop or a SIGKILL) leaves each backend with every step once: TensorBoard and CSV drop what the
stopped session wrote past the checkpoint; MLflow and W&B cannot delete points, so on resume they read which step of
each key their store already has, skip those, and are fed the run's own record (``metrics.jsonl`` and the PNGs of
``samples/``) up to the checkpoint for what the stopped session had not written (W&B's offline file keeps only what
its service flushed, every 15 s, before the kill). MLflow and W&B are imported only when chosen;
:func:`check_backends` refuses a missing one before the run writes anything. ``metrics.jsonl`` is the
run's own record, written whatever the backends.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import importlib
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

import numpy as np

from gentrain.config import LoggerSettings
from gentrain.errors import GentrainError, check_choice

#: ``logger.wandb.mode`` values (wandb.init's modes).
WANDB_MODES = ("offline", "online", "disabled")
#: Run statuses ``finish`` takes (MLflow's names).
STATUSES = ("FINISHED", "FAILED", "KILLED")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Logger(Protocol):
    """What :class:`Loggers` calls on a backend. Every method may be called many times; ``finish`` last, once."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        """``image_hwc``: uint8 H x W x 3; ``path``: the PNG file of it in the run directory, when saved."""

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None:
        """``clip``: float32 [T] mono in [-1, 1] at ``rate`` samples per second (samples of 1-D data); ``path``: its WAV file."""

    def params(self, params: dict[str, Any]) -> None: ...

    def text(self, tag: str, text: str) -> None: ...

    def flush(self) -> None:
        """Write what is buffered (called before every checkpoint write, so a kill loses nothing the checkpoint has)."""

    #: What it writes, for the run's last line.
    where: str

    def finish(self, status: str) -> None:
        """``status``: FINISHED, FAILED (training raised) or KILLED (stopped by a signal; a resume may continue it)."""

    #: True: the store keeps points it cannot delete; on resume the backend skips the (key, step) points it already
    #: has and is fed the run's record up to the checkpoint (:meth:`Loggers.catch_up`) for the ones it lacks.
    catches_up: bool


class Backend:
    """Base of a logging backend: built as ``Class(run_dir, start_step, **options)`` (``start_step`` > 0: a resume; the
    options are the keys of its ``logger.<name>`` node). Override the records it takes; they do nothing here."""

    #: (module, what it is, the install command) of a package the backend needs, checked before the run writes anything.
    requires: tuple[str, str, str] | None = None
    #: True: the store keeps points it cannot delete (see :class:`Logger`).
    catches_up = False
    #: What it writes, for the run's last line.
    where = ""

    @classmethod
    def check(cls, name: str, options: dict[str, Any]) -> None:
        """Refuse, in one line, bad options (before the run writes anything); nothing by default."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None: ...

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None: ...

    def params(self, params: dict[str, Any]) -> None: ...

    def text(self, tag: str, text: str) -> None: ...

    def flush(self) -> None: ...

    def finish(self, status: str) -> None: ...


def chosen(ls: LoggerSettings) -> list[str]:
    """The backends ``ls`` turns on, in the order the logger options were chosen."""
    return list(ls.backends)


def backend_class(name: str, spec: dict[str, Any]) -> type[Backend]:
    """The class ``logger.<name>._target_`` names; one line where it does not import or is no :class:`Backend`."""
    from gentrain.build import target_class

    target = str(spec.get("_target_", ""))
    cls = target_class(target)
    if cls is None or not issubclass(cls, Backend):
        what = "does not import" if cls is None else "is not a gentrain.engine.loggers.Backend"
        raise GentrainError(f"logger.{name}._target_={target} {what}; a logger YAML names its backend class there (or leave logger={name} out)")
    return cls


def check_backends(ls: LoggerSettings) -> None:
    """Refuse, in one line, a chosen backend whose package is missing or a bad backend setting (writes nothing)."""
    for name, spec in ls.backends.items():
        cls = backend_class(name, spec)
        if cls.requires is not None:
            module, what, fix = cls.requires
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise GentrainError(
                    f"logger={name} needs {what}, which is not installed ({e}); {fix} (or pip install gentrain[loggers]), "
                    f"or choose other loggers, e.g. logger=tensorboard"
                ) from None
        cls.check(name, {k: v for k, v in spec.items() if k != "_target_"})


def open_loggers(ls: LoggerSettings, run_dir: Path, start_step: int = 0, say: Callable[[str], None] | None = None) -> Loggers:
    """Start the chosen backends for the run in ``run_dir`` (``start_step`` > 0: a resume of it)."""
    opened: dict[str, Logger] = {}
    for name, spec in ls.backends.items():
        try:
            cls = backend_class(name, spec)
            opened[name] = cls(run_dir, start_step, **{k: v for k, v in spec.items() if k != "_target_"})  # type: ignore[call-arg]
        except GentrainError:
            Loggers(opened, say).finish("FAILED")
            raise
        except Exception as e:
            Loggers(opened, say).finish("FAILED")
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GentrainError(f"logger={name} could not start: {first}; fix its settings (logger.{name}.*) or leave it out of logger=[...]") from None
    loggers = Loggers(opened, say)
    if loggers:  # a process that ends before the run finishes them (a failed report write) ends them FAILED
        atexit.register(loggers.finish, "FAILED")
    if start_step:
        loggers.catch_up(run_dir, start_step)
    return loggers


class Loggers:
    """The chosen backends as one: each call goes to every backend; a failing backend is reported once and turned off."""

    def __init__(self, backends: dict[str, Logger] | None = None, say: Callable[[str], None] | None = None) -> None:
        self.backends: dict[str, Logger] = dict(backends or {})
        self.names = list(self.backends)
        self.where = [str(b.where or n) for n, b in self.backends.items()]  # what each writes, for the run's last line
        self.say = say

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, method: str, *args: Any, catching_up: bool = False) -> None:
        for name, backend in list(self.backends.items()):
            if catching_up and not backend.catches_up:
                continue
            try:
                getattr(backend, method)(*args)
            except Exception as e:
                self.backends.pop(name, None)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if self.say is not None:
                    self.say(f"logger {name} failed ({type(e).__name__}: {first}); it is off for the rest of this run")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._each("scalars", values, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        self._each("image", tag, image_hwc, step, path)

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None:
        self._each("audio", tag, clip, rate, step, path)

    def params(self, params: dict[str, Any]) -> None:
        self._each("params", params)

    def text(self, tag: str, text: str) -> None:
        self._each("text", tag, text)

    def flush(self) -> None:
        self._each("flush")

    def catch_up(self, run_dir: Path, step: int) -> None:
        """On resume at ``step``: the run's record up to it (``metrics.jsonl``, ``samples/*.png``) to the backends that
        keep what they have (:attr:`Logger.catches_up`); each logs only the points it lacks."""
        if not any(b.catches_up for b in self.backends.values()):
            return
        events: list[tuple[int, int, Any]] = []  # (step, order, what): the record in step order, pictures after the scalars
        jsonl = run_dir / "metrics.jsonl"
        for line in jsonl.read_text().splitlines() if jsonl.is_file() else []:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step and (values := record_scalars(record)):
                events.append((record["step"], 0, values))
        for suffix, kind in (("png", 1), ("wav", 2)):
            for path in sorted((run_dir / "samples").glob(f"*step_[0-9][0-9][0-9][0-9][0-9][0-9].{suffix}")):
                name, _, at = path.stem.rpartition("step_")
                if int(at) <= step:
                    events.append((int(at), kind, ("samples" if not name else f"pictures/{name.rstrip('_')}", path)))
        for at, kind, what in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == 0:
                self._each("scalars", what, at, catching_up=True)
            elif kind == 2:
                from gentrain.data.audio import read_wav

                clip, rate = read_wav(what[1])
                self._each("audio", what[0], clip.mean(0), rate, at, what[1], catching_up=True)
            else:
                from PIL import Image

                with Image.open(what[1]) as im:
                    picture = np.asarray(im.convert("RGB"))
                self._each("image", what[0], picture, at, what[1], catching_up=True)

    def finish(self, status: str = "FINISHED") -> None:
        """End every backend's run with ``status``; later calls do nothing."""
        self._each("finish", check_choice(status, STATUSES, "status", "FINISHED"))
        self.backends.clear()
        atexit.unregister(self.finish)

    def describe(self) -> list[str]:
        """What each chosen backend writes (``tensorboard --logdir``, ``metrics.csv`` ...), for the run's last line."""
        return list(self.where)


class TensorBoardLogger(Backend):
    """Event files directly in the run directory, so ``tensorboard --logdir outputs`` names each run by its directory.

    Scalars and images as logged; the config as text; at a finished run's end the HPARAMS tab's record: the
    parameters, with the run's own scalar series (``eval/*``, ``train/<phase>/*``) as its metrics, so no extra cards.
    """

    catches_up = False  # purge_step drops on resume what a stopped session wrote past the checkpoint

    def __init__(self, log_dir: Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge_step = start_step + 1 if start_step else None
        # purge_step: on resume, TensorBoard drops events a crashed run wrote past the checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.where = "TensorBoard events (tensorboard --logdir <run or its parent>)"
        self.tags: dict[str, None] = {}  # the scalar series written, in order
        self.hparams: dict[str, Any] = {}

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)
            self.tags[tag] = None

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None:
        import torch

        self.writer.add_audio(tag, torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))[None], step, sample_rate=rate)

    def params(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, status: str) -> None:
        if status == "FINISHED" and self.hparams:
            self._write_hparams()
        self.writer.close()

    def _write_hparams(self) -> None:
        """Into this run's own event file (not a sub-run), so the HPARAMS tab pairs them with the run's scalars."""
        from torch.utils.tensorboard.summary import hparams

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
        skip = ("train/lr/", "train/steps_per_s", "train/epoch")
        metrics = {tag: 0.0 for tag in self.tags if tag.startswith(("train/", "eval/")) and not tag.startswith(skip)}
        fw = self.writer._get_file_writer()
        for summary in hparams(clean, metrics):
            fw.add_summary(summary)


class CsvLogger(Backend):
    """``metrics.csv`` in long format (``step,key,value``: one row per scalar, appended and flushed at once, so keys may
    come and go) and ``params.csv`` (``key,value``). Pictures are the PNG files of ``samples/`` already.

    Read it wide with pandas: ``pd.read_csv("metrics.csv").pivot_table(index="step", columns="key", values="value")``.
    """

    HEADER = ("step", "key", "value")
    catches_up = False  # rows are flushed as written; on resume the rows past the checkpoint are dropped

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        self.path = run_dir / "metrics.csv"
        self.params_path = run_dir / "params.csv"
        if start_step and self.path.is_file():
            self._trim(start_step)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        self.where = "metrics.csv, params.csv"
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(self.HEADER)
            self.file.flush()

    def _trim(self, step: int) -> None:
        """On resume: drop the rows a crashed session wrote after the checkpoint's step."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if len(r) == 3 and _int(r[0]) is not None and _int(r[0]) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([list(self.HEADER), *kept])
        os.replace(tmp, self.path)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.writer.writerows((step, k, float(v)) for k, v in values.items())
        self.file.flush()

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        pass  # the picture is samples/<name>.png

    def params(self, params: dict[str, Any]) -> None:
        tmp = self.params_path.with_name(self.params_path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("key", "value"))
            w.writerows((k, _text(v)) for k, v in params.items())
        os.replace(tmp, self.params_path)

    def text(self, tag: str, text: str) -> None:
        pass  # the config is .hydra/config.yaml and params.csv

    def flush(self) -> None:
        self.file.flush()

    def finish(self, status: str) -> None:
        self.file.close()


class MlflowLogger(Backend):
    """An MLflow run named after the run directory: params (batched, truncated to MLflow's limits), metrics with
    their steps, the PNGs as artifacts under ``samples/``; its id in ``<run>/mlflow_run_id`` so a resume continues it.

    ``tracking_uri`` null: a file store in the run directory (``file:<run>/mlruns``; MLflow 3 wants
    ``MLFLOW_ALLOW_FILE_STORE=true`` for file stores, which this sets unless it is set); a plain path is a file store there.
    """

    ID_FILE = "mlflow_run_id"
    catches_up = True  # MLflow cannot delete metric points
    requires = ("mlflow", "MLflow", "pip install mlflow-skinny")

    def __init__(self, run_dir: Path, start_step: int = 0, tracking_uri: str | None = None, experiment: str = "gentrain") -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.max_key = getattr(validation, "MAX_ENTITY_KEY_LENGTH", 250)
        self.max_value = getattr(validation, "MAX_PARAM_VAL_LENGTH", 6000)
        self.max_params = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100)
        self.max_metrics = getattr(validation, "MAX_METRICS_PER_BATCH", 1000)
        uri = tracking_uri or (run_dir / "mlruns").absolute().as_uri()
        if not urlparse(uri).scheme:
            uri = Path(uri).expanduser().absolute().as_uri()
        if urlparse(uri).scheme == "file":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.where = "mlruns/ (MLflow)" if tracking_uri is None else f"MLflow {uri}"
        self.client = client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = client.create_experiment(experiment)
            except MlflowException:  # another run created it meanwhile
                experiment_id = client.get_experiment_by_name(experiment).experiment_id
        else:
            experiment_id = found.experiment_id
        id_file = run_dir / self.ID_FILE
        self.seen: dict[str, int] = {}  # key -> the last step the stored run has (a resumed run)
        self.stored: set[str] = set()  # the pictures the stored run has (samples/<file>), not uploaded again on resume
        self.run_id = self._resume(id_file.read_text().strip()) if id_file.is_file() else None
        if self.run_id is None:
            run = client.create_run(experiment_id, run_name=run_dir.name, tags={"gentrain.run_dir": str(run_dir.absolute())})
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    def _resume(self, run_id: str) -> str | None:
        """Continue the stored run when this tracking store has it; note the last step it has of each key."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None
        self.seen = {k: max((m.step for m in self.client.get_metric_history(run_id, k)), default=-1) for k in run.data.metrics}
        self.stored = {a.path for a in self.client.list_artifacts(run_id, "samples")}
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _key(self, key: str) -> str:
        key = re.sub(r"[^/\w.\- ]", "_", str(key))
        # MLflow may store a key as a file path: no empty, "." or ".." parts
        key = "/".join(part if part not in ("", ".", "..") else "_" for part in key.split("/"))
        if len(key) > self.max_key:  # keep it unique: a digest of the whole key
            key = key[: self.max_key - 9] + "~" + hashlib.sha1(key.encode()).hexdigest()[:8]
        return key

    def scalars(self, values: dict[str, float], step: int) -> None:
        ms = int(time.time() * 1000)
        keys = {self._key(k): v for k, v in values.items()}
        # a resumed run: points the stopped session already stored stay as they are (no duplicate steps)
        metrics = [self._Metric(k, float(v), ms, int(step)) for k, v in keys.items() if step > self.seen.get(k, -1)]
        for i in range(0, len(metrics), self.max_metrics):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.max_metrics], synchronous=True)

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        if path is not None:
            if f"samples/{path.name}" not in self.stored:
                self.client.log_artifact(self.run_id, str(path), artifact_path="samples")
        else:
            self.client.log_image(self.run_id, image_hwc, artifact_file=f"{self._key(tag)}/step_{step:06d}.png")

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None:
        """The WAV file as an artifact beside the pictures (MLflow has no audio type)."""
        if path is not None and f"samples/{path.name}" not in self.stored:
            self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def params(self, params: dict[str, Any]) -> None:
        """New keys as params; on resume, a value that changed (MLflow params are immutable) as the tag ``resumed.<key>``."""
        values = {self._key(k): _text(v)[: self.max_value] for k, v in params.items()}
        logged = self.client.get_run(self.run_id).data.params
        new = [self._Param(k, v) for k, v in values.items() if k not in logged]
        changed = [self._RunTag(self._key(f"resumed.{k}"), v) for k, v in values.items() if k in logged and logged[k] != v]
        for i in range(0, len(new), self.max_params):
            self.client.log_batch(self.run_id, params=new[i : i + self.max_params], synchronous=True)
        for i in range(0, len(changed), self.max_params):
            self.client.log_batch(self.run_id, tags=changed[i : i + self.max_params], synchronous=True)

    def text(self, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{self._key(tag)}.md")

    def flush(self) -> None:
        pass  # every call is stored when it returns (log_batch synchronous)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbLogger(Backend):
    """A W&B run in ``<run>/wandb/`` named after the run directory; offline by default (no network, no login: upload
    later with ``wandb sync <run>/wandb/offline-run-*``); its id in ``<run>/wandb_run_id`` so a resume continues it.
    """

    ID_FILE = "wandb_run_id"
    catches_up = True  # each session appends its own offline file; nothing can be taken back
    requires = ("wandb", "Weights & Biases", "pip install wandb")

    @classmethod
    def check(cls, name: str, options: dict[str, Any]) -> None:
        check_choice(options.get("mode", "offline"), WANDB_MODES, f"logger.{name}.mode", "offline")

    def __init__(self, run_dir: Path, start_step: int = 0, mode: str = "offline", project: str = "gentrain", entity: str | None = None) -> None:
        import wandb

        self.wandb = wandb
        self.where = f"wandb/ ({mode}{'; upload with: wandb sync ' + str(run_dir / 'wandb') if mode == 'offline' else ''})"
        id_file = run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        # key -> the last step the earlier sessions' offline files hold (online, W&B's resume drops steps below the run's)
        self.seen = offline_steps(run_dir / "wandb", run_id) if run_id and mode == "offline" else {}
        quiet = {
            "silent": True,  # gentrain prints its own lines
            "console": "off",  # no capture of the terminal (gentrain.log has the run's log)
            "disable_git": True,
            "save_code": False,
            "x_save_requirements": False,
            "disable_job_creation": True,
        }
        known = getattr(wandb.Settings, "model_fields", None)  # the settings this wandb version has
        settings = wandb.Settings(**{k: v for k, v in quiet.items() if known is None or k in known})
        self.run = wandb.init(
            mode=mode, dir=str(run_dir), project=project, entity=entity, name=run_dir.name, id=run_id,
            resume="allow" if run_id else None, notes=f"gentrain run directory: {run_dir.absolute()}", settings=settings,
        )
        if run_id is None and mode != "disabled" and getattr(self.run, "id", None):
            id_file.write_text(self.run.id + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        row = {k: float(v) for k, v in values.items() if step > self.seen.get(k, -1)}
        if row:
            self.run.log(row, step=step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int, path: Path | None = None) -> None:
        if step > self.seen.get(tag, -1):
            self.run.log({tag: self.wandb.Image(image_hwc)}, step=step)

    def audio(self, tag: str, clip: np.ndarray, rate: int, step: int, path: Path | None = None) -> None:
        key = f"{tag}/audio"
        if step > self.seen.get(key, -1):
            # from the WAV file when there is one (an array needs the soundfile package to be written)
            audio = self.wandb.Audio(str(path)) if path is not None else self.wandb.Audio(np.asarray(clip, dtype=np.float32), sample_rate=rate)
            self.run.log({key: audio}, step=step)

    def params(self, params: dict[str, Any]) -> None:
        self.run.config.update({k: (v if isinstance(v, (int, float, str, bool)) else _text(v)) for k, v in params.items()}, allow_val_change=True)

    def text(self, tag: str, text: str) -> None:
        pass  # the config is the run's W&B config (params)

    def flush(self) -> None:
        # wandb has no flush: its service writes the offline file every 15 s and at finish; what a kill loses there
        # is logged again from the run's record on resume (catches_up)
        pass

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


#: The keys of a ``metrics.jsonl`` evaluation line that are not metric values.
_EVAL_META = ("kind", "step", "splits", "eval_time_s", "results")


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars the backends got for one ``metrics.jsonl`` line (written by the log and evaluation hooks)."""
    if record.get("kind") == "train":
        return {k: v for k, v in record.items() if k.startswith("train/") and isinstance(v, (int, float))}
    if record.get("kind") == "eval":
        return {f"eval/{k}": v for k, v in record.items() if k not in _EVAL_META and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


#: W&B's transaction log (``run-<id>.wandb``): a 7-byte header, then LevelDB-log chunks in 32 KiB blocks.
_WANDB_HEADER, _WANDB_BLOCK, _WANDB_CHUNK = 7, 32768, 7


def offline_steps(wandb_dir: Path, run_id: str) -> dict[str, int]:
    """Key -> the last step of it in the offline files of W&B run ``run_id`` under ``wandb_dir`` (a killed session's
    file ends at its service's last flush; a torn last record is ignored).

    A file belongs to the run by the id in its own run record, not by its folder's name (W&B appends ``-1`` ... to
    ``offline-run-<time>-<id>`` when two sessions start in the same second)."""
    from wandb.proto import wandb_internal_pb2

    seen: dict[str, int] = {}
    for path in wandb_dir.glob("offline-run-*/*.wandb"):
        ours = False
        for payload in _wandb_records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(payload)
            except Exception:
                break
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ours = record.run.run_id == run_id
            if kind != "history" or not ours:
                continue
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or ".".join(item.nested_key[:1])  # an image is stored as <tag>.<field> items
                if key and not key.startswith("_"):
                    seen[key] = max(seen.get(key, -1), step)
    return seen


def _wandb_records(data: bytes) -> list[bytes]:
    """The complete records of a LevelDB-log file (types 1 full, 2 first, 3 middle, 4 last), stopping at a torn one."""
    out, parts, pos = [], b"", _WANDB_HEADER
    if data[:4] != b":W&B":
        return out
    while pos + _WANDB_CHUNK <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_CHUNK:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _WANDB_CHUNK])
        pos += _WANDB_CHUNK
        if kind not in (1, 2, 3, 4) or pos + length > len(data):
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        else:
            out.append(parts + chunk)
            parts = b""
    return out


def _text(value: Any) -> str:
    """A parameter value as text: strings as they are, everything else as JSON (true, null, [1, 2])."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class JsonlWriter:
    """One JSON object per line, appended and flushed at once (a crash keeps every finished line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
