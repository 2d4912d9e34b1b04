"""The completion task on scikit-learn's 8x8 digits: predict the bottom half of a digit from its top half.

Data: ``sklearn.datasets.load_digits`` (1,797 images, 8x8, levels 0..16, bundled, no download). Each image is
cut into its top four rows (32 pixels) and its bottom four rows (32 pixels):

- condition c (n, 32): the observed top half, levels / 16 (float, no noise: c is observed exactly);
- outcome x (n, 32): the bottom half, dequantised, y = v + u with u ~ U[margin, 1 - margin) (pixel space
  [0, 17)^32), then logit-transformed as in the flow literature (RealNVP): x = logit(alpha + (1 - 2 alpha) y / 17),
  alpha = 0.05. Models are fitted on x; NLLs are reported in the dequantised pixel space y, adding the exact
  log-Jacobian (:func:`log_abs_det`), nats per image (bits/dim = nats / (32 ln 2)); a model uniform on
  [0, 17)^32 scores 32 ln 17 = 90.66 nats.

The digit label is never an input; it only balances the splits and labels the fidelity check.

Domains: the source holds digits in their original style; the target holds *other* digits redrawn in
``style`` (``thicken``: grey dilation by a 2x2 square, bolder strokes, applied to the whole image before it
is cut, so c and x are both restyled). Splits per class from one seeded permutation: ``test``
(``test_per_class``, never seen by a model; rows rank-major like the pool, so any prefix is balanced), ``pool``
(``pool_per_class``; :meth:`CompletionTask.target_train` takes the first k of each class, nested in k), ``source``
(the rest, original style).

Example:
    >>> task = CompletionTask(seed=0)
    >>> data = task.paired(task.target_train(2), torch.Generator().manual_seed(0))
    >>> data.c.shape, data.x.shape
    (torch.Size([20, 32]), torch.Size([20, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from shared_embed.data import PairedData
from shared_embed.errors import DataError, ShapeError
from shared_embed.validation import check_choice, check_positive_int
from theory.engine.seeding import derived_seed

N_CLASSES = 10
SIDE = 8
D = SIDE * SIDE
HALF = D // 2
LEVELS = 17
ALPHA = 0.05
STYLES = ("thicken", "original")
#: dequantisation noise keeps this margin from the bin edges, so :func:`redequantize` recovers the levels exactly
MARGIN = 1e-4


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def apply_style(levels: Tensor, style: str) -> Tensor:
    """Images (n, 64) of levels 0..16 redrawn in ``style`` (``STYLES``); int64 levels (n, 64).

    ``thicken``: each pixel takes the max over itself and its right, lower and lower-right neighbours.
    """
    check_choice("style", style, STYLES)
    if levels.dim() != 2 or levels.shape[1] != D:
        raise ShapeError(f"levels must be (n, {D}), got shape {tuple(levels.shape)}")
    img = levels.to(torch.int64).reshape(-1, SIDE, SIDE)
    if style == "original":
        return img.reshape(-1, D)
    pad = torch.nn.functional.pad(img, (0, 1, 0, 1))
    out = torch.maximum(
        torch.maximum(pad[:, :-1, :-1], pad[:, :-1, 1:]), torch.maximum(pad[:, 1:, :-1], pad[:, 1:, 1:])
    )
    return out.reshape(-1, D)


def dequantize(v: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """y = v + u (shape of ``v``), u ~ U[MARGIN, 1 - MARGIN) i.i.d.; ``v`` integer levels in 0..16."""
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= LEVELS):
        raise DataError(f"v must hold levels 0..{LEVELS - 1}, got range [{int(v.min())}, {int(v.max())}]")
    u = MARGIN + (1.0 - 2.0 * MARGIN) * torch.rand(v.shape, generator=generator, dtype=dtype)
    return v.to(dtype) + u


def _p(y: Tensor) -> Tensor:
    return ALPHA + (1.0 - 2.0 * ALPHA) * y / LEVELS


def to_logit(y: Tensor) -> Tensor:
    """x = logit(alpha + (1 - 2 alpha) y / 17) of pixel values y in [0, 17] (any shape)."""
    p = _p(y)
    return torch.log(p) - torch.log1p(-p)


def from_logit(x: Tensor) -> Tensor:
    """The inverse of :func:`to_logit`: pixel values y (shape of ``x``)."""
    return (torch.sigmoid(x) - ALPHA) / (1.0 - 2.0 * ALPHA) * LEVELS


def log_abs_det(y: Tensor) -> Tensor:
    """sum_i log|dx_i / dy_i| (n,) at pixel values y (n, d): log p_y(y) = log p_x(x) + this."""
    p = _p(y)
    return (math.log(1.0 - 2.0 * ALPHA) - math.log(LEVELS) - torch.log(p) - torch.log1p(-p)).sum(-1)


def redequantize(x: Tensor) -> Tensor:
    """Fresh dequantisation noise for a training batch of logits x (n, 32) (global RNG); the ``augment``."""
    y = torch.floor(from_logit(x)).clamp(0, LEVELS - 1) + torch.rand_like(x)
    return to_logit(y)


def quantize(x: Tensor) -> Tensor:
    """Generated logits (n, 32) -> integer levels (n, 32): floor of the pixel value, clamped to 0..16; NaN -> 0."""
    return torch.floor(from_logit(torch.nan_to_num(x, nan=0.0))).clamp(0, LEVELS - 1).to(torch.int64)


@dataclass(frozen=True)
class Images:
    """Whole images ``levels`` (n, 64) int64 in 0..16 and their digit ``labels`` (n,) (never a model input)."""

    levels: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.levels.shape[0]

    @property
    def top(self) -> Tensor:
        """The top four rows (n, 32)."""
        return self.levels[:, :HALF]

    @property
    def bottom(self) -> Tensor:
        """The bottom four rows (n, 32)."""
        return self.levels[:, HALF:]

    def subset(self, index: Tensor) -> Images:
        """The images at rows ``index``."""
        return Images(self.levels[index], self.labels[index])


def condition(top: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """c (n, 32) of top halves (n, 32) of levels: levels / 16."""
    return top.to(dtype) / (LEVELS - 1)


class CompletionTask:
    """Splits, style and the data contract of the completion task (module docstring)."""

    d_c = HALF
    d_x = HALF

    def __init__(
        self, style: str = "thicken", test_per_class: int = 30, pool_per_class: int = 20, seed: int = 0
    ) -> None:
        self.style = check_choice("style", style, STYLES)
        self.test_per_class = check_positive_int("test_per_class", test_per_class)
        self.pool_per_class = check_positive_int("pool_per_class", pool_per_class)
        self.seed = int(seed)
        levels, labels = (torch.from_numpy(a.copy()) for a in _load())
        gen = torch.Generator().manual_seed(derived_seed("completion", self.seed, "split"))
        need = self.test_per_class + self.pool_per_class
        test, pool, source = [], [], []
        for k in range(N_CLASSES):
            idx = torch.nonzero(labels == k).squeeze(1)
            if len(idx) <= need:
                raise DataError(
                    f"class {k} has {len(idx)} images: test_per_class + pool_per_class = {need} "
                    "leaves no source images; lower them"
                )
            idx = idx[torch.randperm(len(idx), generator=gen)]
            test.append(idx[: self.test_per_class])
            pool.append(idx[self.test_per_class : need])
            source.append(idx[need:])
        pool_rows = torch.stack(pool, 1).reshape(-1)  # rank-major: the first 10 k rows hold k of every class
        source_rows = torch.cat(source)[torch.randperm(sum(len(s) for s in source), generator=gen)]
        restyle = lambda i: Images(apply_style(levels[i], self.style), labels[i])  # noqa: E731
        self.source = Images(levels[source_rows], labels[source_rows])
        self.pool = restyle(pool_rows)
        self.test = restyle(torch.stack(test, 1).reshape(-1))  # rank-major too: any prefix is class-balanced
        self.classifier = restyle(source_rows)  # source digits in the target style: the fidelity classifier's data

    def target_train(self, per_class: int) -> Images:
        """The first ``per_class`` pool images of every class (nested in ``per_class``): 10 * per_class rows."""
        check_positive_int("per_class", per_class)
        if per_class > self.pool_per_class:
            raise DataError(f"per_class must be <= pool_per_class ({self.pool_per_class}), got {per_class}")
        return self.pool.subset(torch.arange(N_CLASSES * per_class))

    def paired(
        self, images: Images, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> PairedData:
        """c = top halves / 16 (n, 32), x = logits of the dequantised bottom halves (n, 32)."""
        return PairedData(condition(images.top, dtype), to_logit(dequantize(images.bottom, generator, dtype)))
