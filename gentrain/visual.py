"""Pictures of samples: image grids, 2-D scatter plots and waveform plots of 1-D sequences, as uint8 HWC arrays and PNG
files; and the sound of sequence samples (:func:`sample_clip`, written as WAV files)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

REAL_RGB = (150, 150, 150)
FAKE_RGB = (220, 40, 40)


def image_grid(x: Tensor, nrow: int | None = None, min_side: int = 32) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [H', W', 3] grid, ``nrow`` images a row (default: square).

    Images smaller than ``min_side`` are enlarged by an integer factor (nearest neighbour: pixels stay pixels).
    """
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5)
    factor = max(1, min_side // x.shape[-1])
    if factor > 1:
        x = x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=255.0)
    return grid.round().to(torch.uint8).permute(1, 2, 0).numpy()


def make_grid(x: Tensor, nrow: int, padding: int = 2, pad_value: float = 0.0) -> Tensor:
    """[N, C, H, W] -> [C, H', W']: ``nrow`` images a row with ``padding`` pixels of ``pad_value`` around each, as
    ``torchvision.utils.make_grid`` lays them out (a single image is returned as it is); here so that drawing a
    picture does not import torchvision."""
    if x.shape[0] == 1:
        return x[0]
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = int(math.ceil(n / cols))
    grid = x.new_full((c, (h + padding) * rows + padding, (w + padding) * cols + padding), pad_value)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = r * (h + padding) + padding, q * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def scatter_image(real: Tensor, fake: Tensor, size: int = 512, margin: float = 0.1) -> np.ndarray:
    """2-D points -> uint8 [size, size, 3]: real in grey, generated in red, on the real data's bounding box (plus margin)."""
    real = real.detach().float().cpu().numpy()
    fake = fake.detach().float().cpu().numpy()
    lo, hi = real.min(0), real.max(0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for points, rgb in ((real, REAL_RGB), (fake, FAKE_RGB)):
        px = ((points - lo) / (hi - lo) * (size - 1)).round().astype(np.int64)
        inside = ((px >= 0) & (px < size)).all(1)
        px = px[inside]
        for dx in (0, 1):  # 2x2 dots, y axis pointing up
            for dy in (0, 1):
                cols = np.clip(px[:, 0] + dx, 0, size - 1)
                rows = np.clip(size - 1 - px[:, 1] - dy, 0, size - 1)
                canvas[rows, cols] = rgb
    return canvas


WAVE_RGB = (30, 90, 180)


def waveform_image(x: Tensor, nrow: int | None = None, width: int = 512, height: int = 96) -> np.ndarray:
    """Sequences [N, C, T] in [-1, 1] -> uint8 grid of waveform plots, one panel of ``width`` x ``height`` per
    sequence and channel (``nrow`` panels a row, default: 2 columns), amplitude 0 in the middle of each panel.

    Each column of a panel covers ``T / width`` time steps and the one before them, and is drawn from their minimum to
    their maximum, so a long recording keeps its envelope and a short one is joined point to point (no matplotlib).
    """
    v = x.detach().float().cpu().clamp(-1, 1).flatten(0, 1).numpy()  # [N C, T]
    n, t = v.shape
    cols = max(1, nrow or min(2, n))
    rows = int(math.ceil(n / cols))
    pad = 2
    canvas = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), 200, dtype=np.uint8)
    edges = np.linspace(0, t, width + 1)
    for k in range(n):
        r, q = divmod(k, cols)
        panel = np.full((height, width, 3), 255, dtype=np.uint8)
        panel[height // 2] = (220, 220, 220)
        for col in range(width):
            lo = min(int(edges[col]), t - 1)
            seg = v[k, max(0, lo - 1) : max(int(edges[col + 1]), lo + 1)]
            top = int(round((1 - seg.max()) / 2 * (height - 1)))
            bottom = int(round((1 - seg.min()) / 2 * (height - 1)))
            panel[top : bottom + 1, col] = WAVE_RGB
        top, left = r * (height + pad) + pad, q * (width + pad) + pad
        canvas[top : top + height, left : left + width] = panel
    return canvas


def sample_clip(x: Tensor, rate: int, count: int = 8) -> Tensor:
    """Sequences [N, C, T] -> one mono clip [T'] in [-1, 1]: the first ``count`` samples, channels averaged, one after the
    other with a tenth of a second (``rate`` / 10 samples) of silence between them."""
    gap = torch.zeros(max(1, rate // 10))
    parts = [p for s in x[:count].detach().float().mean(1).cpu() for p in (s, gap)][:-1]
    return torch.cat(parts).clamp(-1, 1)


def sample_picture(x: Tensor, reference: Tensor | None = None, nrow: int | None = None) -> np.ndarray | None:
    """The natural picture of a batch of samples: a grid for images (``nrow`` a row), a scatter against ``reference`` for 2-D points,
    waveform plots for sequences [N, C, T]."""
    if x.dim() == 4:
        return image_grid(x, nrow)
    if x.dim() == 3:
        return waveform_image(x[:8])
    if x.dim() == 2 and x.shape[1] == 2:
        return scatter_image(reference if reference is not None else x, x)
    return None


def save_png(image: np.ndarray, path: Path) -> None:
    """Write through a temporary file and a rename: a run stopped mid-write never leaves half a picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def heatmap(values: Tensor) -> Tensor:
    """[H, W] values -> [3, H, W] viridis colours in [-1, 1] (model space, so it joins the other pictures); row 0 is the top."""
    import matplotlib

    v = values.detach().float().cpu()
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)
    rgb = torch.from_numpy(matplotlib.colormaps["viridis"](v.numpy())[..., :3]).float()
    return rgb.permute(2, 0, 1) * 2 - 1


@torch.no_grad()
def density_image(log_prob, points: Tensor, size: int = 160, margin: float = 0.1, batch: int = 4096) -> Tensor:
    """The density ``exp(log_prob)`` of a 2-D model on the bounding box of ``points`` (plus margin): [3, size, size] in [-1, 1]."""
    lo, hi = points.min(0).values, points.max(0).values
    span = (hi - lo).clamp_min(1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    xs = torch.linspace(float(lo[0]), float(hi[0]), size, device=points.device)
    ys = torch.linspace(float(hi[1]), float(lo[1]), size, device=points.device)  # top row = largest y
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    log_p = torch.cat([log_prob(grid[i : i + batch]).float() for i in range(0, grid.shape[0], batch)])
    return heatmap(log_p.exp().view(size, size))
