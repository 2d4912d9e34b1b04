"""A PNG grid of 8x8 digits: one band per variant (generated) next to a band of real target images.

Each band is ``per_class`` rows by 10 columns (one column per digit class); pixels are levels 0..16 drawn
with the ``gray_r`` colour map (0 white, 16 black), matplotlib's Agg backend (no display needed).

Example:
    >>> save_digit_grid({"real target": real_levels, "transfer": gen_levels}, labels, "grid.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import DataError, ShapeError
from theory.studies.digits.task import LEVELS, N_CLASSES, SIDE, D


def _band(levels: Tensor, labels: Tensor, per_class: int) -> np.ndarray:
    """A (per_class * 9 + 1, 10 * 9 + 1) mosaic of the first ``per_class`` images of each class (NaN = gap)."""
    cell = SIDE + 1
    out = np.full((per_class * cell + 1, N_CLASSES * cell + 1), np.nan)
    for k in range(N_CLASSES):
        rows = torch.nonzero(labels == k).squeeze(1)[:per_class]
        for i, r in enumerate(rows.tolist()):
            img = levels[r].reshape(SIDE, SIDE).double().cpu().numpy()
            out[1 + i * cell : 1 + i * cell + SIDE, 1 + k * cell : 1 + k * cell + SIDE] = img
    return out


def save_digit_grid(
    bands: Mapping[str, Tensor],
    labels: Mapping[str, Tensor] | Tensor,
    path: str | os.PathLike[str],
    per_class: int = 4,
    title: str | None = None,
) -> Path:
    """Write a PNG with one band per entry of ``bands`` (name -> levels (n, 64) in 0..16).

    ``labels`` gives each band's class labels (n,), one tensor for every band or a mapping by band name.
    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not bands:
        raise DataError("bands must hold at least one named set of images")
    mosaics = []
    for name, lev in bands.items():
        lab = labels[name] if isinstance(labels, Mapping) else labels
        if lev.dim() != 2 or lev.shape[1] != D or lab.shape != (lev.shape[0],):
            raise ShapeError(
                f"band {name!r}: levels must be (n, {D}) with labels (n,), got "
                f"{tuple(lev.shape)} and {tuple(lab.shape)}"
            )
        mosaics.append((name, _band(lev, lab, per_class)))
    fig, axes = plt.subplots(len(mosaics), 1, figsize=(6.6, 0.62 * per_class * len(mosaics) + 0.6), squeeze=False)
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="#8fa8c8")
    for ax, (name, mosaic) in zip(axes[:, 0], mosaics):
        ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=LEVELS - 1, interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks(
            [(SIDE + 1) * k + SIDE / 2 + 0.5 for k in range(N_CLASSES)], [str(k) for k in range(N_CLASSES)], fontsize=7
        )
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(left=0.2)  # room for the horizontal band names
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps long band names and the title inside the image
    plt.close(fig)
    return path
