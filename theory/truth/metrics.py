"""Held-out and sample-based metrics for models without a known true density (docs/theory.md, 'Metrics').

- :func:`nll_summary`: test negative log-likelihood in nats per example and bits per dimension, with SEs.
- :func:`mmd2`: squared maximum mean discrepancy, unbiased U-statistic, Gaussian kernel
  k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2)), bandwidth by the median heuristic (the median Euclidean
  distance between distinct points of the pooled sample) unless given.
- :func:`wasserstein`: the exact Wasserstein-p distance between two empirical measures with uniform
  weights and Euclidean ground cost, by POT's network simplex (``ot.emd2``).
- :func:`copying`: how near generated points sit to the training points, against held-out real points: the
  share of draws nearer their nearest training point than the median held-out point is to its own (1/2 in
  expectation for a generator that draws fresh points of the data's law, 1 for one that replays its training
  points), the check that a sample metric's win is not bought by copying (docs/theory.md, "Metrics").
- :class:`FidelityClassifier`: a multinomial logistic regression (scikit-learn ``LogisticRegression``) on
  real labelled data; its accuracy on generated samples of each class is the conditional fidelity.

KL to a known density lives in :mod:`theory.truth.kl`.

Example:
    >>> value, bw = mmd2(torch.randn(200, 5), torch.randn(200, 5) + 1.0)
    >>> w1 = wasserstein(torch.randn(100, 5), torch.randn(100, 5))
"""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import DataError, ShapeError
from shared_embed.validation import check_positive_float, check_positive_int, check_tensor


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """A negative log-likelihood in nats per example, over ``dim`` dimensions, in bits per dimension."""
    check_positive_int("dim", dim)
    return float(nll_nats) / (dim * math.log(2.0))


def nll_summary(log_prob: Tensor, dim: int) -> dict[str, float]:
    """Mean test NLL (nats per example) and bits/dim of per-example log-densities (n,), with standard errors."""
    check_tensor("log_prob", log_prob, ndim=1, min_rows=2)
    nll = -log_prob.double()
    mean, se = float(nll.mean()), float(nll.std(unbiased=True)) / math.sqrt(nll.shape[0])
    return {
        "nll": mean,
        "nll_se": se,
        "bpd": bits_per_dim(mean, dim),
        "bpd_se": bits_per_dim(se, dim),
        "n": int(nll.shape[0]),
    }


def _pair(x: Tensor, y: Tensor, min_rows: int) -> tuple[Tensor, Tensor]:
    check_tensor("x", x, ndim=2, min_rows=min_rows)
    check_tensor("y", y, ndim=2, min_rows=min_rows, last_dim=x.shape[1])
    return x.double(), y.to(x.device).double()


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """The median heuristic: the median Euclidean distance between distinct points of the pooled sample."""
    x, y = _pair(x, y, 1)
    z = torch.cat([x, y]).detach()  # a statistic of the points, never part of a graph
    dist = torch.cdist(z, z)
    off = dist[~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)]
    bw = float(off.median()) if off.numel() else 0.0
    if not bw > 0:
        raise DataError("the median heuristic gave bandwidth 0 (over half the pooled points coincide); pass bandwidth")
    return bw


def mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None) -> tuple[float, float]:
    """Unbiased MMD^2 between samples x (n, d) and y (m, d) (n, m >= 2); returns (MMD^2, bandwidth used).

    Gaussian kernel exp(-|a - b|^2 / (2 bandwidth^2)); ``bandwidth=None`` uses :func:`median_bandwidth`.
    The estimator can be slightly negative when the distributions are equal.
    """
    x, y = _pair(x, y, 2)
    bw = median_bandwidth(x, y) if bandwidth is None else check_positive_float("bandwidth", bandwidth)
    gamma = 1.0 / (2.0 * bw * bw)
    kxx = torch.exp(-gamma * torch.cdist(x, x).square())
    kyy = torch.exp(-gamma * torch.cdist(y, y).square())
    kxy = torch.exp(-gamma * torch.cdist(x, y).square())
    n, m = x.shape[0], y.shape[0]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean()), bw


def wasserstein(x: Tensor, y: Tensor, p: int = 1) -> float:
    """Exact W_p between the empirical measures of x (n, d) and y (m, d): uniform weights, Euclidean cost.

    Solved by POT's exact network-simplex solver ``ot.emd2`` on the cost matrix |x_i - y_j|^p.
    """
    import ot

    check_positive_int("p", p)
    x, y = _pair(x, y, 1)
    cost = torch.cdist(x, y).pow(p).cpu().numpy()
    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    value = float(ot.emd2(a, b, cost, numItermax=1_000_000))
    return max(value, 0.0) ** (1.0 / p)


def copying(samples: Tensor, train: Tensor, held_out: Tensor) -> dict[str, float]:
    """How near draws (n, d) sit to a model's training points (m, d), measured against held-out real points (r, d).

    d(z) = min_j |z - train_j| (Euclidean). Returns ``closer_fraction``: the share of draws with d below the median
    of d over the held-out points; ``distance_ratio``: the median d of the draws over that median; ``null_sd``:
    the sd of ``closer_fraction`` for fresh draws (below), to judge a share by the sample sizes that gave it.

    A held-out point is a fresh draw of the data's law, independent of the training points, so a generator that
    draws fresh points of that law gives ``closer_fraction`` 1/2 in expectation (exactly, for an odd number of
    held-out points: U = F(median) is Beta((r + 1) / 2, (r + 1) / 2)); one that replays its training points gives 1;
    one blurrier than the data gives less than 1/2. Given U the n fresh draws fall below the median independently
    with probability U, so the null variance is E[U (1 - U)] / n + Var(U) = (r + 1) / (4 n (r + 2)) + 1 / (4 (r + 2)).
    MMD and W1 against a few held-out points cannot tell a replay of the training points from fresh draws (both are
    draws of the data's law), this can.

    Raises:
        DTypeError: not a floating-point tensor. ShapeError: not 2-D, or mismatched widths. DataError: no rows,
            or NaN or inf.
    """
    check_tensor("samples", samples, ndim=2, min_rows=1)
    check_tensor("train", train, ndim=2, min_rows=1, last_dim=samples.shape[1])
    check_tensor("held_out", held_out, ndim=2, min_rows=1, last_dim=samples.shape[1])
    train = train.detach().double()
    near = torch.cdist(samples.detach().double(), train).min(1).values
    ref = torch.cdist(held_out.detach().double(), train).min(1).values.median()
    n, r = samples.shape[0], held_out.shape[0]
    return {
        "closer_fraction": float((near < ref).double().mean()),
        "distance_ratio": float(near.median() / ref) if ref > 0 else math.inf,
        "null_sd": math.sqrt((r + 1) / (4 * n * (r + 2)) + 1 / (4 * (r + 2))),
    }


class FidelityClassifier:
    """Multinomial logistic regression (scikit-learn, L2 penalty ``C``, lbfgs) on features (n, d) -> labels.

    Conditional fidelity of a generator = the accuracy of this classifier, trained on real labelled data,
    on generated samples whose requested class is the label (:meth:`per_class_accuracy` for each class).

    Example:
        >>> clf = FidelityClassifier().fit(real_x, real_labels)
        >>> clf.accuracy(generated_x, requested_labels)
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000) -> None:
        from sklearn.linear_model import LogisticRegression

        self.C = check_positive_float("C", C)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.fitted = False

    @overload
    @staticmethod
    def _arrays(x: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    @staticmethod
    def _arrays(x: Tensor, labels: None) -> tuple[np.ndarray, None]: ...
    @staticmethod
    def _arrays(x: Tensor, labels: Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
            raise ShapeError(f"x must be a 2-D tensor (n, d) with n >= 1, got {getattr(x, 'shape', type(x))}")
        xa = x.detach().double().cpu().numpy()
        if not np.isfinite(xa).all():
            raise DataError("x contains NaN or inf values")
        if labels is None:
            return xa, None
        if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise ShapeError(
                f"labels must be an integer tensor ({x.shape[0]},), got {getattr(labels, 'shape', labels)}"
            )
        return xa, labels.cpu().numpy()

    def fit(self, x: Tensor, labels: Tensor) -> FidelityClassifier:
        """Fit on real features x (n, d) and integer labels (n,); returns self."""
        xa, la = self._arrays(x, labels)
        if len(np.unique(la)) < 2:
            raise DataError("labels must hold at least two classes to fit a classifier")
        self.model.fit(xa, la)
        self.fitted = True
        return self

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels (n,) int64 of features x (n, d)."""
        if not self.fitted:
            raise DataError("the classifier is not fitted: call fit(x, labels) first")
        xa, _ = self._arrays(x, None)
        return torch.from_numpy(self.model.predict(xa).astype(np.int64))

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """Fraction of rows of x (n, d) classified as their label (n,)."""
        _, la = self._arrays(x, labels)
        return float((self.predict(x).numpy() == la).mean())

    def per_class_accuracy(self, x: Tensor, labels: Tensor) -> dict[int, float]:
        """Accuracy on the rows of each label present: {label: accuracy}."""
        _, la = self._arrays(x, labels)
        hit = self.predict(x).numpy() == la
        return {int(k): float(hit[la == k].mean()) for k in np.unique(la)}

    @property
    def config(self) -> dict[str, Any]:
        return {"model": "sklearn.linear_model.LogisticRegression", "C": self.C, "max_iter": self.max_iter}
