"""A known answer for transfer itself: a linear encoder and linear-Gaussian heads on the linear Gaussian task.

Task (:class:`theory.truth.tasks.ConditionalGaussianTask` with a linear embedding): c ~ N(0, I_{d_c}),
h*(c) = W c (W: d_h x d_c, orthonormal rows), x | c ~ N(A_k W c + b_k, Sigma_k) in domain k. Pipeline: a LINEAR
encoder of rank r learned jointly with a linear-Gaussian source head by maximum likelihood on n_s source pairs
(reduced-rank regression, :mod:`shared_embed.reduced_rank`), frozen; a linear-Gaussian target head fitted by
maximum likelihood on z = W_hat c from n_t target pairs.

**Embedding floor.** Given W_hat, (c, x) is jointly Gaussian in the target, so x | z is exactly linear-Gaussian
with covariance Sigma_floor = Sigma_T + A_T W Cov(c | z) W^T A_T^T, Cov(c | z) = I - P (P the orthogonal
projection on the row space of W_hat), and

    floor(W_hat) = E_c KL(p_T(x | c) || p_T(x | z)) = 1/2 log det(Sigma_floor Sigma_T^{-1}).

To first order in the row-space error (whose rows outside the true row space have covariance
Omega = (A_S^T Sigma_S^{-1} A_S)^{-1}, the inverse source Fisher information of the subspace, times
E (C^T C)^{-1} = I / (n_s - d_c - 2) for centred Gaussian c), for r = d_h:

    E floor(n_s) ~ (d_c - d_h) / (2 (n_s - d_c - 2)) * tr(Sigma_T^{-1} A_T Omega A_T^T)       (+ O(n_s^-2)).

**Head term.** Given W_hat the target fit is a well-specified Gaussian regression on p = r regressors, so its KL
above the floor has exactly the known law of :mod:`theory.truth.known_answers` (expected value
``expected_kl_gaussian_regression(n_t, d_x, r)``), whatever W_hat is, and

    E KL_transfer(n_s, n_t) = E floor(n_s) + E KL_ML(n_t; p = r, d = d_x).

:func:`simulate_transfer` draws the exact joint law of every record field of that pipeline (nested source and
target samples as the sweep draws them, the floor model on its own fresh sample, exact KLs), which the checks use
as their null law; :func:`first_order_floor` is the derivation, checked against it in the tests.

Example:
    >>> truth = LinearTransferTruth.from_task(ConditionalGaussianTask(d_c=8, seed=0))
    >>> sim = simulate_transfer(truth, n_s=[400], n_t=[50], floor_n=2000, rank=2, reps=200)
    >>> sim.kl.shape, sim.floor.shape
    ((200, 1, 1), (200, 1))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared_embed.errors import ConfigError, DataError

__all__ = ["LinearTransferTruth", "TransferDraws", "floor_of_row_space", "first_order_floor", "simulate_transfer"]


@dataclass(frozen=True)
class LinearTransferTruth:
    """The parameters of a linear conditional Gaussian task that the transfer known answer depends on."""

    w: np.ndarray  #: (d_h, d_c) true embedding, orthonormal rows
    a_s: np.ndarray  #: (d_x, d_h) source head
    sigma_s: np.ndarray  #: (d_x, d_x) source noise covariance
    a_t: np.ndarray  #: (d_x, d_h) target head
    b_t: np.ndarray  #: (d_x,) target intercept
    sigma_t: np.ndarray  #: (d_x, d_x) target noise covariance

    @classmethod
    def from_task(cls, task: object) -> LinearTransferTruth:
        """Read a ``ConditionalGaussianTask`` with a linear embedding (anything else: ConfigError)."""
        params = getattr(task, "params", None)
        if (
            getattr(task, "name", "") != "conditional_gaussian"
            or getattr(task, "embedding_kind", "") != "linear"
            or not isinstance(params, dict)
        ):
            raise ConfigError(
                "the transfer known answer needs the conditional_gaussian task with a linear "
                f"embedding, got {getattr(task, 'name', type(task).__name__)!r}"
            )
        a_s, _, sigma_s = (t.double().numpy() for t in params["source"])
        a_t, b_t, sigma_t = (t.double().numpy() for t in params["target"])
        w = task.embedding.weight.double().numpy()  # type: ignore[attr-defined]
        return cls(w, a_s, sigma_s, a_t, b_t, sigma_t)

    @property
    def d_c(self) -> int:
        return int(self.w.shape[1])

    @property
    def d_h(self) -> int:
        return int(self.w.shape[0])

    @property
    def d_x(self) -> int:
        return int(self.a_t.shape[0])

    def key(self) -> tuple[bytes, ...]:
        """A hashable identity (for caching simulated laws)."""
        return tuple(
            np.ascontiguousarray(a).tobytes()
            for a in (self.w, self.a_s, self.sigma_s, self.a_t, self.b_t, self.sigma_t)
        )


def _logdet(m: np.ndarray) -> np.ndarray:
    sign, value = np.linalg.slogdet(m)
    if np.any(sign <= 0):
        raise DataError("a covariance of the transfer known answer is not positive definite")
    return value


def floor_of_row_space(truth: LinearTransferTruth, w_hat: np.ndarray) -> np.ndarray:
    """Exact embedding floor 1/2 log det(Sigma_floor Sigma_T^-1) of encoders with rows ``w_hat`` (..., r, d_c)."""
    w_hat = np.asarray(w_hat, dtype=float)
    gram = w_hat @ np.swapaxes(w_hat, -1, -2)
    proj = np.swapaxes(w_hat, -1, -2) @ np.linalg.solve(gram, w_hat)  # (..., d_c, d_c)
    m = truth.w @ (np.eye(truth.d_c) - proj) @ truth.w.T  # W Cov(c | z) W^T
    cov = truth.sigma_t + truth.a_t @ m @ truth.a_t.T
    return 0.5 * (_logdet(cov) - _logdet(truth.sigma_t))


def first_order_floor(truth: LinearTransferTruth, n_s: float) -> float:
    """The derivation: E floor(n_s) to first order, for an encoder of rank d_h (see the module docstring)."""
    if n_s <= truth.d_c + 2:
        raise DataError(f"the first-order floor needs n_s > d_c + 2 = {truth.d_c + 2}, got {n_s}")
    omega = np.linalg.inv(truth.a_s.T @ np.linalg.solve(truth.sigma_s, truth.a_s))
    sens = float(np.trace(np.linalg.solve(truth.sigma_t, truth.a_t @ omega @ truth.a_t.T)))
    return (truth.d_c - truth.d_h) / (2.0 * (n_s - truth.d_c - 2)) * sens


# -- the exact law, by simulation of the estimator -------------------------------------------------------
def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors / np.sqrt(values)[..., None, :]) @ np.swapaxes(vectors, -1, -2)


def _canonical_rows(s_cc: np.ndarray, s_xx: np.ndarray, s_cx: np.ndarray, rank: int) -> np.ndarray:
    """Batched :func:`shared_embed.reduced_rank.canonical_row_space` from centred covariances: (..., r, d_c)."""
    root_c = _inv_sqrt(s_cc)
    u, _, _ = np.linalg.svd(root_c @ s_cx @ _inv_sqrt(s_xx), full_matrices=False)
    return np.swapaxes(u[..., :rank], -1, -2) @ root_c


def _centred(moments: np.ndarray, n: int, d_c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S_cc, S_xx, S_cx) from the raw moment matrix of [c, x, 1] over n rows: (..., d, d) each."""
    mean = moments[..., -1, :-1] / n
    cov = moments[..., :-1, :-1] / n - mean[..., :, None] * mean[..., None, :]
    return cov[..., :d_c, :d_c], cov[..., d_c:, d_c:], cov[..., :d_c, d_c:]


def _head_kls(
    truth: LinearTransferTruth, w_hat: np.ndarray, c: np.ndarray, x: np.ndarray, levels: Sequence[int]
) -> np.ndarray:
    """Exact KL of the ML linear-Gaussian head on z = W_hat c fitted on each prefix of rows: (reps, levels).

    w_hat (reps, r, d_c); c (reps, n, d_c); x (reps, n, d_x). KL = E_c of the Gaussian KL from the truth, c ~ N(0, I).
    """
    reps, _, _ = c.shape
    r, d = w_hat.shape[1], truth.d_x
    z = c @ np.swapaxes(w_hat, -1, -2)  # (reps, n, r)
    design = np.concatenate([z, np.ones(z.shape[:-1] + (1,))], axis=-1)
    mean_map = truth.a_t @ truth.w  # (d_x, d_c)
    out = np.empty((reps, len(levels)))
    for j, n in enumerate(levels):
        dz, xx = design[:, :n], x[:, :n]
        coef = np.linalg.solve(np.swapaxes(dz, -1, -2) @ dz, np.swapaxes(dz, -1, -2) @ xx)  # (reps, r+1, d)
        resid = xx - dz @ coef
        cov = np.swapaxes(resid, -1, -2) @ resid / n
        prec = np.linalg.inv(cov)
        gap = mean_map - np.swapaxes(coef[:, :r], -1, -2) @ w_hat  # (reps, d, d_c): A_T W - B_hat W_hat
        shift = truth.b_t - coef[:, r]  # (reps, d)
        mean_term = np.einsum("rij,rik,rkj->r", gap, prec, gap) + np.einsum("ri,rik,rk->r", shift, prec, shift)
        trace = np.einsum("rij,ji->r", prec, truth.sigma_t)
        out[:, j] = 0.5 * (trace + mean_term - d + _logdet(cov) - _logdet(truth.sigma_t))
    return out


@dataclass(frozen=True)
class TransferDraws:
    """Exact draws of every record field of the transfer pipeline (``reps`` replications of one seed).

    floor: (reps, n_s levels) the floor MODEL's KL (the floor plus its head error at floor_n);
    true_floor: (reps, n_s) floor(W_hat) itself; kl: (reps, n_s, n_t) the transfer KL;
    head_term: (reps, n_s, n_t) = kl - floor.
    """

    n_s: tuple[int, ...]
    n_t: tuple[int, ...]
    floor_n: int
    true_floor: np.ndarray
    floor: np.ndarray
    kl: np.ndarray

    @property
    def head_term(self) -> np.ndarray:
        return self.kl - self.floor[:, :, None]


def _simulate_chunk(
    truth: LinearTransferTruth,
    n_s: Sequence[int],
    n_t: Sequence[int],
    floor_n: int,
    rank: int,
    reps: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d_c, d_x = truth.d_c, truth.d_x
    chol_s, chol_t = np.linalg.cholesky(truth.sigma_s), np.linalg.cholesky(truth.sigma_t)
    moments = np.zeros((reps, d_c + d_x + 1, d_c + d_x + 1))
    w_hats, start = [], 0
    for n in n_s:  # nested source prefixes: add the next block of rows to the running moments
        c = rng.standard_normal((reps, n - start, d_c))
        x = c @ (truth.a_s @ truth.w).T + rng.standard_normal((reps, n - start, d_x)) @ chol_s.T
        rows = np.concatenate([c, x, np.ones(c.shape[:-1] + (1,))], axis=-1)
        moments += np.swapaxes(rows, -1, -2) @ rows
        w_hats.append(_canonical_rows(*_centred(moments, n, d_c), rank))
        start = n
    c_t = rng.standard_normal((reps, max(n_t), d_c))
    x_t = c_t @ (truth.a_t @ truth.w).T + truth.b_t + rng.standard_normal((reps, max(n_t), d_x)) @ chol_t.T
    true_floor = np.stack([floor_of_row_space(truth, w) for w in w_hats], axis=1)
    kl = np.stack([_head_kls(truth, w, c_t, x_t, n_t) for w in w_hats], axis=1)
    floor = np.empty((reps, len(n_s)))
    for i, w in enumerate(w_hats):  # the floor model: its own fresh floor_n target pairs per source model
        c_f = rng.standard_normal((reps, floor_n, d_c))
        x_f = c_f @ (truth.a_t @ truth.w).T + truth.b_t + rng.standard_normal((reps, floor_n, d_x)) @ chol_t.T
        floor[:, i] = _head_kls(truth, w, c_f, x_f, [floor_n])[:, 0]
    return true_floor, floor, kl


def simulate_transfer(
    truth: LinearTransferTruth,
    n_s: Sequence[int],
    n_t: Sequence[int],
    floor_n: int,
    rank: int,
    *,
    reps: int = 1000,
    seed: int = 0,
    chunk: int = 50,
) -> TransferDraws:
    """``reps`` exact replications of the pipeline at the nested sizes ``n_s`` and ``n_t`` (one seed's cells).

    Deterministic in its arguments and cached (a report asks for the same law once per record distortion).
    """
    n_s_t, n_t_t = tuple(sorted(int(n) for n in n_s)), tuple(sorted(int(n) for n in n_t))
    if not n_s_t or not n_t_t:
        raise DataError("simulate_transfer needs at least one n_s and one n_t")
    if rank > min(truth.d_c, truth.d_x):
        raise ConfigError(
            f"an encoder of rank {rank} is not identified by a linear-Gaussian source head in "
            f"d_x = {truth.d_x} dimensions (needs rank <= min(d_c, d_x))"
        )
    low = truth.d_c + truth.d_x + 1
    if n_s_t[0] <= low or min(n_t_t[0], floor_n) <= rank + truth.d_x + 2:
        raise DataError(
            f"sizes too small for an exact fit: n_s must exceed {low}, n_t and floor_n {rank + truth.d_x + 2}"
        )
    key = (truth.key(), n_s_t, n_t_t, int(floor_n), int(rank), int(reps), int(seed))
    if key not in _CACHE:
        if len(_CACHE) >= 32:
            _CACHE.pop(next(iter(_CACHE)))
        rng = np.random.default_rng(seed)
        parts = [
            _simulate_chunk(truth, n_s_t, n_t_t, int(floor_n), rank, min(chunk, reps - i), rng)
            for i in range(0, reps, chunk)
        ]
        true_floor, floor, kl = (np.concatenate(p) for p in zip(*parts))
        _CACHE[key] = TransferDraws(n_s_t, n_t_t, int(floor_n), true_floor, floor, kl)
    return _CACHE[key]


#: Simulated laws by (truth, sizes, rank, reps, seed): a report asks for the same law once per distortion.
_CACHE: dict[tuple[object, ...], TransferDraws] = {}
