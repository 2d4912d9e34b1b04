"""Known answers: the exact expected KL of a maximum-likelihood linear-Gaussian head, and its null law.

Setting: x = B z + b + e, e ~ N(0, Sigma) in d = d_x dimensions, regressors z ~ N(mu, Sigma_z) in p
dimensions (the oracle's h*(c) with p = d_h, or the condition c itself with p = d_c), n rows, and the
maximum-likelihood fit (least squares for B and b, Sigma_hat = RSS / n). With m = n - p - 1 residual degrees
of freedom, n Sigma_hat ~ Wishart_d(m, Sigma) independent of (B_hat, b_hat), and for a fresh z the
prediction error (B_hat - B) z + (b_hat - b) ~ N(0, q Sigma) given the design, with
E q = 1/n + (1 + 1/n) p / (n - p - 2). Taking expectations of the Gaussian KL term by term,

    E KL(p || p_hat) = 1/2 [ d n (1 + E q) / (m - d - 1) - d + sum_{i=1..d} psi((m - i + 1) / 2) + d log(2 / n) ]

(E Sigma_hat^-1 = n Sigma^-1 / (m - d - 1); E log det(Sigma_hat Sigma^-1) = sum psi((m - i + 1)/2) + d log 2
- d log n). It needs n > p + d + 2 and tends to k / (2n), k = d (p + 1) + d (d + 1) / 2, for large n.
The law of the fitted KL does not depend on B, b, Sigma, mu or Sigma_z (the fit is affine-equivariant),
so :func:`simulate_ratio_null` simulates it with B = 0, Sigma = I, z ~ N(0, I).

Example:
    >>> round(expected_kl_gaussian_regression(n=1000, d_x=2, p=2), 5)
    0.00459
    >>> 9 / 2000
    0.0045
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import digamma

from shared_embed.errors import DataError


def free_parameters(d_x: int, p: int) -> int:
    """k = d_x (p + 1) + d_x (d_x + 1) / 2: mean coefficients with intercept, plus the covariance."""
    return d_x * (p + 1) + d_x * (d_x + 1) // 2


def min_rows(d_x: int, p: int) -> int:
    """The fewest rows with a finite expected KL: n > p + d_x + 2."""
    return p + d_x + 3


def expected_kl_gaussian_regression(n: int, d_x: int, p: int) -> float:
    """Exact E KL(p || p_hat) of the maximum-likelihood linear-Gaussian fit on n rows (see module docstring)."""
    if n < min_rows(d_x, p):
        raise DataError(f"the expected KL is finite only for n > p + d_x + 2 = {p + d_x + 2}, got n={n}")
    d, m = d_x, n - p - 1
    eq = 1.0 / n + (1.0 + 1.0 / n) * p / (n - p - 2)
    trace = d * n * (1.0 + eq) / (m - d - 1)
    logdet = float(sum(digamma((m - i + 1) / 2.0) for i in range(1, d + 1))) + d * math.log(2.0 / n)
    return 0.5 * (trace - d + logdet)


def _fitted_kls(z: np.ndarray, x: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Exact E_z KL of the fit on each prefix of rows, truth B = 0, Sigma = I, z ~ N(0, I): (reps, levels)."""
    reps, _, p = z.shape
    d = x.shape[2]
    out = np.empty((reps, len(levels)))
    for j, n in enumerate(levels):
        design = np.concatenate([z[:, :n], np.ones((reps, n, 1))], axis=2)  # (reps, n, p + 1)
        gram = design.transpose(0, 2, 1) @ design
        coef = np.linalg.solve(gram, design.transpose(0, 2, 1) @ x[:, :n])  # (reps, p + 1, d)
        resid = x[:, :n] - design @ coef
        cov = resid.transpose(0, 2, 1) @ resid / n
        prec = np.linalg.inv(cov)
        # E_z over a fresh z ~ N(0, I) of the mean error (coef^T (z, 1)): E[(z,1)(z,1)^T] = I_{p+1}
        mean_term = np.einsum("rij,rjk,rik->r", coef, prec, coef)  # tr(coef Prec coef^T) summed over z dims
        _, logdet = np.linalg.slogdet(cov)
        out[:, j] = 0.5 * (np.trace(prec, axis1=1, axis2=2) + mean_term - d + logdet)
    return out


def simulate_fitted_kls(
    levels: Sequence[int], d_x: int, p: int, reps: int = 2000, seed: int = 0, chunk: int = 250
) -> np.ndarray:
    """Exact KLs of the maximum-likelihood fit on NESTED prefixes of one data set per replicate.

    The sweep's target data are nested (the n_t rows of a seed are the first n_t of one stream), so the
    KLs at the levels of one seed are correlated; this simulates them the same way. Returns (reps, levels).
    Deterministic in its arguments and cached (a report asks for the same law once per record distortion).
    """
    return _fitted_kls_cached(tuple(sorted(int(n) for n in levels)), d_x, p, reps, seed, chunk).copy()


@functools.lru_cache(maxsize=64)
def _fitted_kls_cached(levels_t: tuple[int, ...], d_x: int, p: int, reps: int, seed: int, chunk: int) -> np.ndarray:
    levels = list(levels_t)
    if levels[0] < min_rows(d_x, p):
        raise DataError(f"every level needs n > p + d_x + 2 = {p + d_x + 2}, got {levels[0]}")
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        z = rng.standard_normal((r, levels[-1], p))
        x = rng.standard_normal((r, levels[-1], d_x))
        parts.append(_fitted_kls(z, x, levels))
    return np.concatenate(parts)


def simulate_ratio_null(
    levels: Sequence[int], d_x: int, p: int, seeds: int, *, reps: int = 2000, draws: int = 20000, seed: int = 0
) -> np.ndarray:
    """Draws of the statistic R = mean over seeds and levels of KL / E KL under a correct pipeline.

    One simulated seed is one nested data set (:func:`simulate_fitted_kls`); R averages ``seeds`` of them.
    Monte Carlo error of the KL estimates is not included here (the check adds it from the records).
    Deterministic in its arguments and cached (a report asks for the same law once per distortion).
    """
    if seeds < 1:
        raise DataError(f"seeds must be >= 1, got {seeds}")
    return _ratio_null(tuple(sorted(int(n) for n in levels)), d_x, p, seeds, reps, draws, seed).copy()


@functools.lru_cache(maxsize=64)
def _ratio_null(levels: tuple[int, ...], d_x: int, p: int, seeds: int, reps: int, draws: int, seed: int) -> np.ndarray:
    expected = np.array([expected_kl_gaussian_regression(n, d_x, p) for n in levels])
    per_seed = (simulate_fitted_kls(levels, d_x, p, reps, seed) / expected).mean(axis=1)  # (reps,)
    rng = np.random.default_rng(seed + 1)
    return per_seed[rng.integers(0, reps, size=(draws, seeds))].mean(axis=1)
