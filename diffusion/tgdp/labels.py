"""The target label marginal q(y) of conditional TGDP, estimated from the target labels.

Conditional TGDP models the joint: q_hat(x, y) = q_hat(y) q_hat(x | y), with q_hat(x | y) from the composed
conditional score and q_hat(y) the smoothed empirical frequencies of the n_t target labels over the label set
(the labels seen in either domain): (count_y + smoothing) / (n_t + smoothing * K). ``smoothing`` = 1 is
Laplace's rule; it keeps every label possible when a small target sample misses one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shared_embed.errors import DataError, ShapeError
from shared_embed.validation import check_positive_float, check_tensor

__all__ = ["LabelMarginal"]


class LabelMarginal:
    """q_hat(y) over a finite label set; labels are (n, 1) float tensors (the tasks' context c = y).

    Example:
        >>> q_y = LabelMarginal.fit(target.c, labels=torch.tensor([-1.0, 1.0]))
        >>> q_y.sample(5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 1])
    """

    def __init__(self, labels: Tensor, probs: Tensor) -> None:
        check_tensor("labels", labels, ndim=1, min_rows=1)
        check_tensor("probs", probs, ndim=1, rows=labels.shape[0])
        if bool((probs < 0).any()) or abs(float(probs.sum()) - 1.0) > 1e-6:
            raise DataError(f"probs must be non-negative and sum to 1, got {probs.tolist()}")
        if labels.unique().numel() != labels.numel():
            raise DataError(f"labels must be distinct, got {labels.tolist()}")
        self.labels = labels
        self.probs = probs

    @classmethod
    def fit(cls, y: Tensor, labels: Tensor | None = None, smoothing: float = 1.0) -> LabelMarginal:
        """Smoothed frequencies of y (n, 1) over ``labels`` (K,) (default: the distinct values of y)."""
        check_tensor("y", y, ndim=2, last_dim=1, min_rows=1)
        smoothing = check_positive_float("smoothing", smoothing, allow_zero=True)
        values = y[:, 0]
        labels = values.unique() if labels is None else check_tensor("labels", labels, ndim=1, min_rows=1)
        labels = labels.to(values)
        known = (values[:, None] == labels[None]).any(-1)
        if not bool(known.all()):
            raise DataError(f"y holds labels outside {labels.tolist()}: {values[~known].unique().tolist()}")
        counts = (values[:, None] == labels[None]).sum(0).to(values.dtype)
        return cls(labels, (counts + smoothing) / (counts.sum() + smoothing * labels.numel()))

    def log_prob(self, y: Tensor) -> Tensor:
        """log q_hat(y), (n,), for y (n, 1)."""
        check_tensor("y", y, ndim=2, last_dim=1)
        match = y[:, 0:1] == self.labels.to(y)[None]
        if not bool(match.any(-1).all()):
            raise ShapeError(f"y must hold labels from {self.labels.tolist()}")
        return self.probs.to(y).log()[match.to(torch.int8).argmax(-1)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n labels (n, 1) drawn from q_hat."""
        idx = torch.multinomial(self.probs.double(), n, replacement=True, generator=generator)
        return self.labels[idx].unsqueeze(-1)

    def kl_from(self, probs: Tensor) -> float:
        """KL(q || q_hat) for true label probabilities ``probs`` (K,) over the same labels."""
        check_tensor("probs", probs, ndim=1, rows=self.labels.shape[0])
        p = probs.double()
        mask = p > 0
        return float((p[mask] * (p[mask].log() - self.probs.double()[mask].log())).sum())
