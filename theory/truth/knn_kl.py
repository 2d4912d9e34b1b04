"""k-nearest-neighbour estimators of KL(p || q) from samples of q, for low dimension (d <= ~5).

- :func:`knn_kl`: the two-sample estimator of Wang, Kulkarni and Verdu (2009), from x ~ p (n, d) and
  y ~ q (m, d) alone:

      KL_hat = d/n sum_i log( nu_k(i) / rho_k(i) ) + log( m / (n - 1) ),

  rho_k(i) the distance from x_i to its k-th nearest neighbour among the other x's, nu_k(i) to its k-th
  nearest neighbour among the y's.
- :func:`knn_cross_kl`: the same with the exact log p(x_i) in place of the kNN entropy of p (when p is known, as
  for a ground-truth task): KL_hat = mean_i [ log p(x_i) - log q_hat(x_i) ], with the Kozachenko-Leonenko
  density log q_hat(x) = psi(k) - log m - log V_d - d log nu_k(x), V_d the volume of the unit d-ball. Only q is
  estimated, so the bias and variance are smaller than the two-sample estimator's.

Both are consistent for fixed k as n, m -> infinity but biased at finite size; measured on Gaussians in
``tests/theory/truth/test_knn_kl.py`` and stated in the project docs. The standard error comes from B disjoint batches
(each of n/B x-rows and m/B y-rows): SE = sd(batch estimates) / sqrt(B) estimates the spread of the full
estimate if its variance falls like 1/n, which holds for these estimators (checked by repetition in the tests).
Neighbour search: scipy's cKDTree.

Example:
    >>> est = knn_cross_kl(x, task_log_prob(x), y_model)
    >>> print(est)   # 0.031 +- 0.006 nats (n=2000)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln
from torch import Tensor

from shared_embed.errors import DataError
from shared_embed.validation import check_positive_int, check_tensor
from theory.truth.kl import KLEstimate


def _array(name: str, value: Tensor, dim: int | None = None) -> np.ndarray:
    check_tensor(name, value, ndim=2, min_rows=1, last_dim=dim)
    return value.detach().double().cpu().numpy()


def _kth_distance(tree: cKDTree, points: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    dist, _ = tree.query(points, k=k + int(skip_self))
    dist = dist.reshape(points.shape[0], -1)[:, -1]
    if not np.all(dist > 0):
        raise DataError("a k-th neighbour distance is 0 (repeated rows): the kNN KL needs continuous samples")
    return dist


def _wkv(x: np.ndarray, y: np.ndarray, k: int) -> float:
    n, d = x.shape
    rho = _kth_distance(cKDTree(x), x, k, skip_self=True)
    nu = _kth_distance(cKDTree(y), x, k, skip_self=False)
    return float(d * np.mean(np.log(nu / rho)) + math.log(y.shape[0] / (n - 1)))


def _cross(x: np.ndarray, log_p: np.ndarray, y: np.ndarray, k: int) -> float:
    m, d = y.shape
    nu = _kth_distance(cKDTree(y), x, k, skip_self=False)
    log_unit_ball = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)
    log_q = digamma(k) - math.log(m) - log_unit_ball - d * np.log(nu)
    return float(np.mean(log_p - log_q))


def _batched(estimate: Callable[..., float], arrays: tuple[np.ndarray, ...], k: int, batches: int) -> KLEstimate:
    """The estimate on all rows, with the SE of B disjoint batches (NaN for batches=1)."""
    value = estimate(*arrays, k)
    if batches == 1:
        return KLEstimate(value, math.nan, arrays[0].shape[0])
    parts = [estimate(*split, k) for split in zip(*(np.array_split(a, batches) for a in arrays))]
    return KLEstimate(value, float(np.std(parts, ddof=1)) / math.sqrt(batches), arrays[0].shape[0])


def _check_batches(batches: int, k: int, n: int, m: int, extra: int) -> None:
    check_positive_int("k", k)
    check_positive_int("batches", batches)
    if min(n, m) < batches * (k + extra):
        raise DataError(
            f"batches={batches} with k={k} needs at least {batches * (k + extra)} rows in x and in y, got {n} and {m}"
        )


def knn_kl(x: Tensor, y: Tensor, k: int = 3, batches: int = 10) -> KLEstimate:
    """Two-sample kNN estimate of KL(p || q) from x ~ p (n, d) and y ~ q (m, d), with a batch SE.

    Args:
        k: the neighbour rank (larger: less variance, more bias; 3 by default, the bias measured in the docs).
        batches: disjoint batches for the SE (the value itself uses all rows); 1: no SE (NaN).
    """
    xa, ya = _array("x", x), _array("y", y, dim=x.shape[-1])
    _check_batches(batches, k, xa.shape[0], ya.shape[0], 1)
    return _batched(_wkv, (xa, ya), k, batches)


def knn_cross_kl(x: Tensor, log_p: Tensor, y: Tensor, k: int = 3, batches: int = 10) -> KLEstimate:
    """kNN estimate of KL(p || q) from x ~ p (n, d) with its exact log p(x) (n,) and y ~ q (m, d); batch SE."""
    xa = _array("x", x)
    check_tensor("log_p", log_p, ndim=1, rows=xa.shape[0])
    lp = log_p.detach().double().cpu().numpy()
    ya = _array("y", y, dim=xa.shape[1])
    _check_batches(batches, k, xa.shape[0], ya.shape[0], 0)
    return _batched(_cross, (xa, lp, ya), k, batches)
