"""A PNG of completions beside the truth: one column per test image, one row per band.

The first band is the real test image; every other band is a variant's completion: the true top half (rows
0..3) above the generated bottom half (rows 4..7), ``draws`` completions per variant. A thin line marks the cut.
Levels 0..16 drawn with ``gray_r`` (0 white, 16 black), matplotlib's Agg backend.

Example:
    >>> save_completion_grid(real, {"transfer": [bottoms]}, "grid.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import DataError, ShapeError
from theory.studies.completion.task import HALF, LEVELS, SIDE, D


def _row(images: Tensor) -> np.ndarray:
    """(9, n * 9 + 1) strip of n images (n, 64) separated by NaN gaps."""
    cell = SIDE + 1
    out = np.full((SIDE + 1, images.shape[0] * cell + 1), np.nan)
    for i, img in enumerate(images):
        out[:SIDE, 1 + i * cell : 1 + i * cell + SIDE] = img.reshape(SIDE, SIDE).double().numpy()
    return out


def save_completion_grid(
    real: Tensor, completions: Mapping[str, Sequence[Tensor]], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write the PNG; ``real`` (n, 64) levels; ``completions``: band name -> list of generated bottoms (n, 32).

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if real.dim() != 2 or real.shape[1] != D:
        raise ShapeError(f"real must be (n, {D}) levels, got shape {tuple(real.shape)}")
    if not completions:
        raise DataError("completions must name at least one variant")
    bands = [("real target", [real])]
    for name, draws in completions.items():
        for b in draws:
            if tuple(b.shape) != (real.shape[0], HALF):
                raise ShapeError(
                    f"completions[{name!r}] must hold ({real.shape[0]}, {HALF}) bottoms, got {tuple(b.shape)}"
                )
        bands.append((name, [torch.cat([real[:, :HALF], b.to(real.dtype)], 1) for b in draws]))
    rows = sum(len(d) for _, d in bands)
    fig, axes = plt.subplots(
        len(bands),
        1,
        figsize=(0.42 * real.shape[0] + 1.6, 0.5 * rows + 0.8),
        squeeze=False,
        gridspec_kw={"height_ratios": [len(d) for _, d in bands]},
    )
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="#8fa8c8")
    for ax, (name, draws) in zip(axes[:, 0], bands):
        mosaic = np.vstack([_row(d) for d in draws])
        ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=LEVELS - 1, interpolation="nearest")
        for j in range(len(draws)):
            ax.axhline(j * (SIDE + 1) + SIDE / 2 - 0.5, color="#d04040", lw=0.6)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
