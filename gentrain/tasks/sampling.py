"""``task=sample ckpt=PATH n=64``: a PNG grid (a scatter plot, waveform plots), an ``.npz`` of the samples and, for 1-D
sequences, a WAV file of the first ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gentrain.engine.console import cli_console
from gentrain.build import sampler_choice
from gentrain.engine.progress import shown
from gentrain.errors import GentrainError
from gentrain.metrics.evaluate import to_uint8
from gentrain.config import EvalSettings, typed
from gentrain.sampling import draw_samples, sampling_state
from gentrain.tasks.common import model_options, load_trained, required, setup_device
from gentrain.visual import sample_clip, sample_picture, save_png


def sample(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """``n`` samples with ``seed``, drawn as evaluation draws them (batches of ``eval.batch_size``, the same weights and mode):
    ``task=eval`` with ``eval.seed`` equal to this ``seed`` scores exactly these samples."""
    console = console or cli_console()
    spec = required(cfg, "ckpt", "gentrain task=sample ckpt=outputs/<date>/<time>/checkpoints/last.pt n=64")
    n = OmegaConf.select(cfg, "n", default=64)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GentrainError(f"n must be a positive integer, got {n!r}; e.g. n=64")
    es = typed(cfg.eval, EvalSettings, "eval")
    device, _ = setup_device(cfg)
    path, ckpt, model, average, dataset = load_trained(str(spec), device, use_ema=es.use_ema, sampler=sampler_choice(cfg), model_options=model_options(cfg))
    out_dir = Path(OmegaConf.select(cfg, "out", default=None) or path.parent).expanduser()
    seed = int(OmegaConf.select(cfg, "seed", default=0))
    with sampling_state(model, average), shown(console, bool(OmegaConf.select(cfg, "logger.progress", default=True))):
        drawn = draw_samples(model, n, seed, es.batch_size)
    x = torch.cat([b[0] for b in drawn])
    y = None if drawn[0][1] is None else torch.cat([b[1] for b in drawn])  # type: ignore[misc]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{path.stem}_step{ckpt['step']}_n{n}_seed{seed}"
    arrays = {"x": to_uint8(x).cpu().numpy() if x.dim() == 4 else x.float().cpu().numpy()}
    if y is not None:
        arrays["y"] = y.cpu().numpy()
    np.savez_compressed(stem.with_suffix(".npz"), **arrays, step=np.int64(ckpt["step"]), seed=np.int64(seed))
    reference = dataset.load("train").x[:n].float() if x.dim() == 2 else None
    picture = sample_picture(x.float(), reference)
    files = {"npz": str(stem.with_suffix(".npz"))}
    if picture is not None:
        save_png(picture, stem.with_suffix(".png"))
        files["png"] = str(stem.with_suffix(".png"))
    if x.dim() == 3 and dataset.rate:  # sequences: the first samples as sound
        from gentrain.data.audio import write_wav

        write_wav(stem.with_suffix(".wav"), sample_clip(x, dataset.rate)[None], dataset.rate)
        files["wav"] = str(stem.with_suffix(".wav"))
    console.print(f"{n} samples of {path} (step {ckpt['step']}, seed {seed}): {', '.join(files.values())}", highlight=False)
    return files
