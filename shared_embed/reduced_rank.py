"""Reduced-rank regression: the exact maximum-likelihood linear encoder of a linear-Gaussian source head.

Model: x = A W c + b + e, e ~ N(0, Sigma) with Sigma unknown, W of rank r (r x d_c). Maximising the Gaussian
likelihood over (A, W, b, Sigma) is reduced-rank regression (Anderson 1951; Reinsel and Velu, *Multivariate
Reduced-Rank Regression*, Springer 1998, section 2.3). Only the row space of W is identified (A absorbs any
invertible r x r map), and the maximum-likelihood row space is spanned by the r leading canonical directions of
c against x: with sample covariances S_cc, S_xx, S_cx (rows centred),

    K = S_cc^{-1/2} S_cx S_xx^{-1/2} = U D V^T,      W_hat = U_r^T S_cc^{-1/2}   (r x d_c).

Given W_hat, the likelihood in (A, b, Sigma) is an ordinary Gaussian regression of x on z = W_hat c, solved
exactly by :meth:`shared_embed.linear_gaussian.LinearGaussianHead.fit_closed_form`. The two steps together are
the joint maximum-likelihood fit of a linear encoder and a linear-Gaussian head.

Example:
    >>> c = torch.randn(500, 6)
    >>> x = c[:, :2] @ torch.randn(2, 3) + 0.1 * torch.randn(500, 3)
    >>> canonical_row_space(c, x, rank=2).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import DataError, ShapeError
from .validation import check_positive_int, check_tensor

__all__ = ["canonical_row_space", "inverse_sqrt"]


def inverse_sqrt(cov: Tensor) -> Tensor:
    """The symmetric inverse square root of a positive-definite matrix (d, d)."""
    values, vectors = torch.linalg.eigh(cov)
    if not bool((values > 0).all()):
        raise DataError(
            "a covariance in the reduced-rank fit is singular: a column of c or x is constant "
            "or the rows are linearly dependent"
        )
    root: Tensor = (vectors * values.rsqrt()) @ vectors.T
    return root


def canonical_row_space(c: Tensor, x: Tensor, rank: int) -> Tensor:
    """The maximum-likelihood row space of a rank-``rank`` regression of x (n, d_x) on c (n, d_c): (rank, d_c).

    Rows are the leading canonical directions of c, in float64; any invertible mix of them is equally good.
    Needs rank <= min(d_c, d_x) and n > d_c + d_x (so both sample covariances are nonsingular).

    Raises:
        ShapeError: c and x disagree in rows, or ``rank`` exceeds min(d_c, d_x).
        DataError: too few rows, non-finite values, or a singular covariance.
    """
    check_tensor("c", c, ndim=2)
    check_tensor("x", x, ndim=2, rows=c.shape[0])
    check_positive_int("rank", rank)
    n, d_c = c.shape
    d_x = x.shape[1]
    if rank > min(d_c, d_x):
        raise ShapeError(
            f"rank must be <= min(d_c, d_x) = {min(d_c, d_x)} (a linear-Gaussian source head "
            f"identifies at most d_x directions of c), got rank={rank}"
        )
    if n <= d_c + d_x:
        raise DataError(f"a reduced-rank fit needs more than d_c + d_x = {d_c + d_x} rows, got n={n}")
    cd, xd = c.to(torch.float64), x.to(torch.float64)
    if not (torch.isfinite(cd).all() and torch.isfinite(xd).all()):
        raise DataError("c and x must be finite for a reduced-rank fit")
    cd, xd = cd - cd.mean(0), xd - xd.mean(0)
    s_cc, s_xx, s_cx = cd.T @ cd / n, xd.T @ xd / n, cd.T @ xd / n
    root_c = inverse_sqrt(s_cc)
    u, _, _ = torch.linalg.svd(root_c @ s_cx @ inverse_sqrt(s_xx), full_matrices=False)
    rows: Tensor = u[:, :rank].T @ root_c
    return rows
