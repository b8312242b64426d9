"""``task=eval``: score a checkpoint's samples (``ckpt=PATH``) or given images (``samples=<folder | .npz>``) with the chosen metrics.

``ckpt=PATH``: model and dataset come from the checkpoint; samples are drawn with ``eval.seed``.
``samples=PATH``: images read by :mod:`gentrain.data.samples` (the first N for a protocol asking N;
fewer: all of them, and the result says so, as for a reference split that is too small).
``reference=``: a dataset option (``digits``, ``fashion_mnist``, ...: built as ``dataset=<name>``
builds it, compared on ``eval.split``), or a folder / .npz of images (no splits). Default: the
checkpoint's dataset; with ``samples=`` it is required unless every metric is reference-free (is).

The report goes to ``<stem>.eval.json`` and ``.eval.md`` beside the checkpoint, the folder or the
.npz (``out=DIR``: into DIR), and the table to the terminal.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gentrain.engine.console import cli_console
from gentrain.build import build, choice, sampler_choice
from gentrain.config import CONFIG_DIR, EvalSettings, typed
from gentrain.data.base import Dataset
from gentrain.data.samples import ImageFiles, open_images
from gentrain.errors import GentrainError
from gentrain.metrics.evaluate import Evaluator, ImageReference, ImageSamples
from gentrain.metrics.fidelity import Protocol, flat_values, parse_protocol
from gentrain.metrics.report import evaluation_markdown, evaluation_table, versions, write_json, write_text
from gentrain.engine.device import device_name
from gentrain.engine.progress import shown
from gentrain.sampling import sampling_state
from gentrain.tasks.common import model_options, load_trained, make_evaluator, required, setup_device

CKPT_EXAMPLE = "gentrain task=eval ckpt=outputs/<date>/<time>/checkpoints/last.pt, or samples=<folder of images | .npz> reference=<dataset | folder | .npz>"


def evaluate(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or cli_console()
    ckpt, samples = _option(cfg, "ckpt"), _option(cfg, "samples")
    if ckpt is not None and samples is not None:
        raise GentrainError(f"task=eval takes ckpt= (a model's samples) or samples= (given images), not both; got ckpt={ckpt} and samples={samples}")
    if samples is None:
        required(cfg, "ckpt", CKPT_EXAMPLE)
    es = typed(cfg.eval, EvalSettings, "eval")
    if not es.metrics:
        raise GentrainError("task=eval needs metrics; e.g. eval=standard or eval.metrics=[fid10k]")
    protocols = [parse_protocol(m) for m in es.metrics]
    if samples is not None:
        return _evaluate_samples(cfg, es, protocols, samples, console)
    return _evaluate_checkpoint(cfg, es, protocols, str(ckpt), console)


def _evaluate_checkpoint(cfg: DictConfig, es: EvalSettings, protocols: list[Protocol], spec: str, console: Console) -> dict[str, Any]:
    device, _ = setup_device(cfg)
    path, ckpt, model, average, dataset = load_trained(spec, device, use_ema=es.use_ema, sampler=sampler_choice(cfg), model_options=model_options(cfg))
    reference, reference_files = _reference(cfg, protocols, needed=False)
    if isinstance(reference, Dataset) and tuple(reference.shape) != tuple(dataset.shape):
        for p in protocols:
            if p.family.space == "likelihood":
                raise GentrainError(f"{p.name} needs examples of the model's shape {list(dataset.shape)}; reference={reference.name} has {list(reference.shape)}: leave reference out")
    evaluator = make_evaluator(es, reference if reference is not None else dataset, device)
    evaluator.check_model(model)
    t0 = time.perf_counter()
    with sampling_state(model, average), shown(console, _progress(cfg)):
        results = evaluator(model, [es.split])
    elapsed = time.perf_counter() - t0
    report = {
        "checkpoint": str(path),
        "step": ckpt["step"],
        "weights": "ema" if average is not None else "trained",
        "choices": ckpt.get("choices", {}),
        **({"reference": _reference_record(evaluator, reference_files, es.split)} if reference is not None else {}),
        **_results(evaluator, results, elapsed, device),
    }
    return _write(cfg, report, path.parent, path.stem, elapsed, console)


def _evaluate_samples(cfg: DictConfig, es: EvalSettings, protocols: list[Protocol], spec: Any, console: Console) -> dict[str, Any]:
    for p in protocols:
        if p.family.space == "likelihood":
            raise GentrainError(f"{p.name} needs a model (log-likelihoods of test data) and samples= gives images only; evaluate the checkpoint with ckpt=")
    reference, reference_files = _reference(cfg, protocols, needed=True)
    images = open_images(spec, "samples")
    device, _ = setup_device(cfg)
    evaluator = make_evaluator(es, reference if reference is not None else ImageReference.none(images.shape), device)
    source = ImageSamples(images, device, images.name)
    evaluator.check_source(source)
    t0 = time.perf_counter()
    with shown(console, _progress(cfg)):
        results = evaluator(source, [es.split])
    elapsed = time.perf_counter() - t0
    report = {
        "samples": str(images.path),
        "samples_kind": images.kind,
        "samples_count": len(images),
        "samples_shape": list(images.shape),
        "reference": _reference_record(evaluator, reference_files, es.split) if reference is not None else None,
        **_results(evaluator, results, elapsed, device),
    }
    stem = images.path.name if images.kind == "folder" else images.path.stem
    return _write(cfg, report, images.path.parent, stem, elapsed, console)


def _results(evaluator: Any, results: list[Any], elapsed: float, device: Any) -> dict[str, Any]:
    """The part of an evaluation report that both paths share: the numbers, their records, time, cache use, device, versions."""
    return {
        "metrics": flat_values(results),
        "evaluation": [r.as_dict() for r in results],
        "eval_time_s": round(elapsed, 3),
        "reference_from_cache": evaluator.reference_from_cache,
        "device": {"type": device.type, "name": device_name(device)},
        "versions": versions(),
    }


def _write(cfg: DictConfig, report: dict[str, Any], beside: Path, stem: str, elapsed: float, console: Console) -> dict[str, Any]:
    out = _option(cfg, "out")
    folder = Path(str(out)).expanduser() if out is not None else beside
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{stem}.eval.json", folder / f"{stem}.eval.md"
    write_json(json_path, report)
    write_text(md_path, render(report))
    console.print(evaluation_table(report["evaluation"]))
    console.print(f"report: {json_path} and {md_path.name} ({elapsed:.1f} s)", highlight=False)
    return report


def _progress(cfg: DictConfig) -> bool:
    """Whether sampling and feature extraction may show a live line on a terminal (``logger.progress``; else plain lines)."""
    return bool(OmegaConf.select(cfg, "logger.progress", default=True))


def _option(cfg: DictConfig, key: str) -> Any:
    """A top-level option of the task, None when absent, null or ``???``."""
    if key not in cfg or OmegaConf.is_missing(cfg, key):
        return None
    value = OmegaConf.select(cfg, key, default=None)
    return None if value is None or str(value) == "" else value


_OPTION_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def dataset_options() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


def _reference(cfg: DictConfig, protocols: list[Protocol], needed: bool) -> tuple[Dataset | ImageReference | None, ImageFiles | None]:
    """The reference side that ``reference=`` names (None when not given; ``needed``: given images require one
    unless every metric is reference-free), and the files it was read from (None for a dataset)."""
    spec = _option(cfg, "reference")
    uses = [p.name for p in protocols if p.family.needs_reference]
    if spec is None:
        if needed and uses:
            raise GentrainError(
                f"reference is required with samples= for {', '.join(uses)} (they compare with reference images); "
                "e.g. reference=fashion_mnist (a dataset option, its eval.split), reference=<folder of images> or reference=<file.npz>; is<count> needs none"
            )
        return None, None
    text = str(spec)
    if _OPTION_NAME.match(text) and (CONFIG_DIR / "dataset" / f"{text}.yaml").is_file():
        return _reference_dataset(cfg, text), None
    if not Path(text).expanduser().exists() and _OPTION_NAME.match(text):
        raise GentrainError(f"reference={text!r} is neither a dataset option ({', '.join(dataset_options())}) nor an existing folder or .npz file")
    files = open_images(text, "reference")
    return ImageReference(files.name, files), files


def _reference_dataset(cfg: DictConfig, name: str) -> Dataset:
    """The dataset ``dataset=<name>`` builds: the composed ``dataset`` group when it is that option (with its
    ``dataset.*`` overrides), else ``configs/dataset/<name>.yaml`` as it is."""
    node = cfg.dataset if "dataset" in cfg and choice(cfg, "dataset") == name else OmegaConf.load(CONFIG_DIR / "dataset" / f"{name}.yaml")
    missing = [k for k in node if OmegaConf.is_missing(node, k)]
    if missing:
        raise GentrainError(f"reference={name} needs dataset.{missing[0]}: pass dataset={name} dataset.{missing[0]}=... as well, or the folder itself as reference=<folder>")
    return build(node, "dataset")


def _reference_record(evaluator: Evaluator, files: ImageFiles | None, split: str) -> dict[str, Any]:
    if files is None:
        return {"kind": "dataset", "name": evaluator.reference_name(split)}
    return {"kind": files.kind, "name": files.name, "path": str(files.path), "count": len(files), "shape": list(files.shape)}


def render(report: dict[str, Any]) -> str:
    """The report as markdown: what was evaluated, against what, and the evaluation table."""
    if "samples" in report:
        c, h, w = report["samples_shape"]
        reference = report["reference"]
        against = f"against `{reference['path'] if 'path' in reference else reference['name']}`" if reference else "(no reference set)"
        title = f"samples {Path(report['samples']).name}"
        what = f"Samples `{report['samples']}` ({report['samples_count']} images of {c}x{h}x{w}) {against}"
    else:
        choices = report["choices"]
        title = f"{choices.get('model', '?')} on {choices.get('dataset', '?')}" if choices else Path(report["checkpoint"]).name
        what = f"Checkpoint `{report['checkpoint']}` at step {report['step']}"
        if report.get("reference"):
            what += f", against `{report['reference'].get('path', report['reference']['name'])}`"
    lines = [
        f"# gentrain evaluation: {title}",
        "",
        f"{what}; {report['device']['type']} ({report['device']['name']}); {report['eval_time_s']} s.",
        "",
        *evaluation_markdown(report["evaluation"]),
        "",
    ]
    return "\n".join(lines)
