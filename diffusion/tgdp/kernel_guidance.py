"""The guidance h_t = E[w(x_0) | x_t] computed from the source rows with the forward kernel: no network.

For the same forward kernel in both domains, h_t(x) = q_t(x) / p_t(x) = E_p[w(x_0) | x_t = x]. Under a
source law p_hat built from the rows x_i this conditional expectation is a finite sum, and so is its log and
(by autograd through the closed form) its gradient: nothing is trained, so nothing has to converge, and the
estimate is as good at every t as p_hat and w are.

**Plain** (``bandwidth = 0``, any ratio): p_hat = the empirical source sample, kernel k_i = N(x; a_t x_i, s_t^2 I),

    h_t(x) = sum_i w(x_i) k_i(x) / sum_i k_i(x).

Where the target lives in the source's tails this is poor at small t: few rows are near x / a_t, the
posterior weights collapse onto the nearest row, and h_t is piecewise constant with no gradient (at t -> 0,
h_0(x) = w(nearest row)).

**Smoothed** (``bandwidth = b > 0``, a :class:`~diffusion.tgdp.quadratic_ratio.QuadraticLogRatio`): p_hat is the
kernel density estimate (1/n) sum_i N(x_i, b^2 I), and w(x_0) = exp(x_0^T A x_0 + beta^T x_0 + c) is integrated
against each row's kernel in closed form. With v = a^2 b^2 + s^2, V = b^2 s^2 / v, mu_i = (s^2 x_i + a b^2 x) / v
(the mean of x_0 given x_t = x and row i) and R = (I - 2 V A)^{-1}:

    h_t(x) = sum_i N(x; a x_i, v I) G_i(x) / sum_i N(x; a x_i, v I),
    log G_i = c - 1/2 log det(I - 2 V A) + mu_i^T A R mu_i + beta^T R mu_i + V/2 beta^T R beta,

finite when I - 2 V A is positive definite (b^2 < 1 / (2 lambda_max(A))). At t -> 0, mu_i -> x and V -> 0, so
h_0 = w exactly: the correction where rows are sparse is that every row carries the whole quadratic w, not one
value of it. With the exact quadratic w of two Gaussians and many rows, h_t is the exact guidance up to the
KDE's extra variance b^2 (tested).

The bandwidth is capped at 2 b^2 lambda_max(A) <= ``max_curvature`` (0.1): along a direction where log w
curves upwards, smoothing by b multiplies the quadratic's curvature by up to 1 / (1 - 2 b^2 lambda), and near
the cap that inflates h_t far from the truth. The cap's value, and how the plain estimate fails where rows are
sparse, were measured on the TGDP simulation: docs/notes/2026-12-02-kernel-guidance-bandwidth-cap.md.

Example:
    >>> ratio = fit_quadratic_log_ratio(source_x, target_x)
    >>> guidance = KernelGuidance(source_x, ratio, VPSchedule(), bandwidth="scott")
    >>> score = GuidedScore(source_head.score, guidance)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from shared_embed.errors import ConfigError, ShapeError
from shared_embed.validation import check_context, check_positive_int, check_tensor

from ..schedule import VPSchedule
from .inputs import check_points
from .quadratic_ratio import QuadraticLogRatio

__all__ = ["KernelGuidance", "LogRatioFn", "scott_bandwidth"]

#: ``log_ratio(x (n, d), t=None, context=None) -> (n,)``: a clean-data log density ratio
LogRatioFn = Callable[..., Tensor]


def scott_bandwidth(x: Tensor) -> float:
    """Scott's rule for a Gaussian KDE of x (n, d): mean per-axis std * n^(-1 / (d + 4))."""
    n, d = x.shape
    width: float = float(x.double().std(0).mean()) * n ** (-1.0 / (d + 4))
    return width


class KernelGuidance:
    """log h_t(x[, y]) = log E_{p_hat}[w(x_0) | x_t = x[, y]] in closed form (module docstring); a Guidance.

    Args:
        source_x (n_s, d): the source rows; source_context (n_s, 1) labels or None (the conditional version
            averages over the rows of the query's label only).
        ratio: a :class:`QuadraticLogRatio` (any bandwidth) or any ``log_ratio(x, None, context)`` (bandwidth 0).
        schedule: the forward process.
        bandwidth: b >= 0, or ``"scott"`` (Scott's rule on the source rows); capped at
            sqrt(max_curvature / (2 lambda_max(A))) so that the integral exists.
        max_curvature: the cap's margin in (0, 1): 2 b^2 lambda_max(A) <= max_curvature.
        dtype: the precision of the sums (float64 by default: at small t the kernel logits are large;
            float32 is enough with a bandwidth, which keeps the kernel variance >= a_t^2 b^2).
        max_rows: use a seeded random subset of at most this many source rows (each call costs
            O(n * rows)); None: all rows.

    Raises:
        ConfigError: a ratio that is neither a QuadraticLogRatio nor callable, a negative or non-finite
            bandwidth, a bandwidth > 0 without a QuadraticLogRatio, ``max_curvature`` outside (0, 1).
        ShapeError: source_x not (n_s, d), source_context not (n_s, 1); at call time a context given to a
            guidance built without one (or the reverse), or a label absent from source_context.
    """

    def __init__(
        self,
        source_x: Tensor,
        ratio: QuadraticLogRatio | LogRatioFn,
        schedule: VPSchedule,
        bandwidth: float | str = "scott",
        source_context: Tensor | None = None,
        max_curvature: float = 0.1,
        dtype: torch.dtype = torch.float64,
        max_rows: int | None = None,
        seed: int = 0,
    ) -> None:
        check_tensor("source_x", source_x, ndim=2, min_rows=1)
        if max_rows is not None and check_positive_int("max_rows", max_rows) < source_x.shape[0]:
            keep = torch.randperm(source_x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]
            source_x = source_x[keep]
            source_context = None if source_context is None else source_context[keep]
        self.x = source_x.detach().to(dtype)
        self.features = self.x.shape[1]
        self.context = (
            None
            if source_context is None
            else check_context("source_context", source_context, 1, rows=self.x.shape[0]).detach()
        )
        self.schedule, self.dtype = schedule, dtype
        quadratic = isinstance(ratio, QuadraticLogRatio)
        if not quadratic and not callable(getattr(ratio, "log_ratio", ratio)):
            raise ConfigError(f"ratio must be a QuadraticLogRatio or callable log_ratio, got {type(ratio).__name__}")
        b = scott_bandwidth(self.x) if bandwidth == "scott" else float(bandwidth)
        if not (math.isfinite(b) and b >= 0):
            raise ConfigError(f"bandwidth must be 'scott' or a number >= 0, got {bandwidth!r}")
        if b > 0 and not quadratic:
            raise ConfigError("bandwidth > 0 needs a QuadraticLogRatio (the closed-form integral of w)")
        if not 0 < max_curvature < 1:
            raise ConfigError(f"max_curvature must be in (0, 1), got {max_curvature!r}")
        self.quadratic = ratio if isinstance(ratio, QuadraticLogRatio) else None
        if self.quadratic is not None and b > 0:
            lam = float(torch.linalg.eigvalsh(self.quadratic.quad).max())
            if lam > 0:
                b = min(b, math.sqrt(max_curvature / (2.0 * lam)))
        self.bandwidth = b
        with torch.no_grad():
            log_w = cast(LogRatioFn, getattr(ratio, "log_ratio", ratio))(source_x, None, source_context)
        self.log_w = check_tensor("log_ratio(source_x)", log_w, ndim=1, rows=self.x.shape[0]).detach().to(dtype)
        self.groups = self._groups()

    def _groups(self) -> list[tuple[Tensor | None, Tensor, int]]:
        """(label value or None, row indices, quadratic index) per label."""
        if self.context is None:
            return [(None, torch.arange(self.x.shape[0]), 0)]
        out = []
        for lab in self.context[:, 0].unique():
            rows = (self.context[:, 0] == lab).nonzero().squeeze(-1)
            k = 0 if self.quadratic is None else int(self.quadratic.label_index(lab.reshape(1, 1), 1)[0])
            out.append((lab, rows, k))
        return out

    def log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log h_t(x[, y]), (n,), differentiable in x."""
        return self._per_label(self._log_h, x, t, context)

    def effective_rows(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """(sum_i k_i)^2 / sum_i k_i^2 of the posterior weights k_i(x) of the source rows (of the query's label),
        (n,): about how many rows the estimate at (x, t) averages over, from 1 (one row, the source's tails) to
        the number of rows (t -> 1). Differentiable in x."""

        def n_eff(xq: Tensor, tq: Tensor, rows: Tensor, _k: int) -> Tensor:
            log_k = self._log_kernel(xq, tq, rows)
            return (2 * torch.logsumexp(log_k, -1) - torch.logsumexp(2 * log_k, -1)).exp()

        return self._per_label(n_eff, x, t, context)

    def _per_label(
        self, fn: Callable[[Tensor, Tensor, Tensor, int], Tensor], x: Tensor, t: Tensor | float, context: Tensor | None
    ) -> Tensor:
        """``fn(x, t, rows, quadratic index)`` (n,) on each label's rows (all rows without labels)."""
        x, t = check_points(x, self.features, t, required=True)
        if (context is None) != (self.context is None):
            raise ShapeError("context must be given exactly when the guidance was built with source_context")
        check_context("context", context, None if context is None else 1, rows=x.shape[0])
        if context is None:
            return fn(x.to(self.dtype), t.to(self.dtype), *self.groups[0][1:]).to(x.dtype)
        out = torch.zeros(x.shape[0], dtype=self.dtype, device=x.device)
        seen = torch.zeros(x.shape[0], dtype=torch.bool)
        for lab, rows, k in self.groups:
            q = context[:, 0].to(self.dtype) == cast(Tensor, lab)  # with source_context, every group has a label
            seen |= q
            if bool(q.any()):
                out = out.index_put((q.nonzero().squeeze(-1),), fn(x[q].to(self.dtype), t[q].to(self.dtype), rows, k))
        if not bool(seen.all()):
            raise ShapeError(f"context holds labels absent from source_context: {context[~seen].unique().tolist()}")
        return out.to(x.dtype)

    def h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        return self.log_h(x, t, context).exp()

    def _log_kernel(self, x: Tensor, t: Tensor, rows: Tensor) -> Tensor:
        """log N(x; a x_i, v I) (n, rows) up to a term constant in i."""
        xs, a = self.x[rows], self.schedule.alpha(t).to(x)
        v = a.square() * self.bandwidth**2 + self.schedule.sigma(t).to(x).square()
        return (a / v)[:, None] * (x @ xs.T) - (a.square() / (2 * v))[:, None] * xs.square().sum(-1)[None]

    def _log_h(self, x: Tensor, t: Tensor, rows: Tensor, k: int) -> Tensor:
        xs, a = self.x[rows], self.schedule.alpha(t).to(x)
        s2 = self.schedule.sigma(t).to(x).square()
        b2 = self.bandwidth**2
        v = a.square() * b2 + s2
        log_k = self._log_kernel(x, t, rows)
        if self.quadratic is None or b2 == 0:
            log_g = self.log_w[rows][None]
        else:
            log_g = self._log_g(self.quadratic, x, xs, a, s2, v, b2, k)
        return torch.logsumexp(log_k + log_g, -1) - torch.logsumexp(log_k, -1)

    @staticmethod
    def _log_g(
        quad: QuadraticLogRatio, x: Tensor, xs: Tensor, a: Tensor, s2: Tensor, v: Tensor, b2: float, k: int
    ) -> Tensor:
        """log G_i(x) (n, rows): the closed-form integral of w against row i's posterior kernel."""
        big_a, beta = quad.quad[k].to(x), quad.linear[k].to(x)
        const = float(quad.const[k]) + math.log(quad.prior_factor)
        d = x.shape[1]
        alpha, gamma, var = s2 / v, a * b2 / v, b2 * s2 / v  # mu_i = alpha x_i + gamma x
        if not bool(big_a.any()):  # a linear log w (A = 0): R = I, log det = 0, log G_i = c + b^T mu_i + V/2 |b|^2
            per_query = gamma * (x @ beta) + 0.5 * var * beta.square().sum() + const
            return alpha[:, None] * (xs @ beta)[None] + per_query[:, None]
        eye = torch.eye(d, dtype=x.dtype)
        m = eye - 2 * var[:, None, None] * big_a  # (n, d, d)
        r = torch.linalg.inv(m)
        q = big_a @ r  # A R, symmetric
        rb = r @ beta  # (n, d)
        outer = (xs[:, :, None] * xs[:, None, :]).reshape(xs.shape[0], d * d)  # (rows, d^2)
        row_quad = alpha.square()[:, None] * (q.reshape(-1, d * d) @ outer.T)
        qx = (q @ x[:, :, None]).squeeze(-1)
        cross = (2 * (alpha * gamma)[:, None] * qx + alpha[:, None] * rb) @ xs.T
        per_query = (
            gamma.square() * (x * qx).sum(-1)
            + gamma * (rb * x).sum(-1)
            - 0.5 * torch.linalg.slogdet(m)[1]
            + 0.5 * var * (rb * beta).sum(-1)
            + const
        )
        log_g: Tensor = row_quad + cross + per_query[:, None]
        return log_g
