"""Exact TGDP guidance for a linear log ratio, through the source model's own score: no network, no kernel sum.

For an exponential tilt w(x_0) = exp(beta^T x_0 + c) of the source p (the target q = w p / E_p[w]) and the VP
forward kernel N(x; a_t x_0, s_t^2 I), completing the square in x_0 gives, for ANY source law p,

    e^{beta^T x_0} N(x; a x_0, s^2 I) = N(x + (s^2 / a) beta; a x_0, s^2 I) exp(beta^T x / a + s^2 |beta|^2 / (2 a^2)),

so q_t(x) is proportional to p_t(x + delta_t) exp(beta^T x / a_t) with delta_t = (s_t^2 / a_t) beta, and

    grad log h_t(x) = grad log q_t(x) - grad log p_t(x) = s_p(x + delta_t, t) - s_p(x, t) + beta / a_t,
    log h_t(x)      = c + log p_t(x + delta_t) - log p_t(x) + beta^T x / a_t + s_t^2 |beta|^2 / (2 a_t^2).

With the source model's score in place of s_p this is the guidance of the tilt of the source MODEL (not of a
kernel density estimate of its rows, which is what :class:`~diffusion.tgdp.kernel_guidance.KernelGuidance`
tilts): the composed score is then the score of p_model w / E[w] at t -> 0, whatever the bandwidth question.

The shift delta_t grows like 1 / a_t as t -> 1, far outside the region where the source network was trained.
Where |delta_t| exceeds ``max_shift`` the Gaussian form is used instead: for a source p = N(m, Sigma) (a
label's mean and covariance of the source rows) the same identity gives the x-independent

    grad log h_t = a_t Sigma (a_t^2 Sigma + s_t^2 I)^{-1} beta,

which tends to beta at t -> 0 and to 0 at t -> 1 (the noised target and source agree there). ``max_shift = 0``
uses the Gaussian form at every t.

``log_h`` (reports, :meth:`h`) integrates log p_t(x + delta) - log p_t(x) along the segment with Gauss-Legendre
quadrature of the score (``quadrature`` nodes); the composed score uses the exact :meth:`grad_log_h`
(:func:`~diffusion.tgdp.compose.guidance_grad` prefers it when a guidance has one).

Example:
    >>> ratio = fit_quadratic_log_ratio(source_x, target_x, degree=1)
    >>> guidance = TiltGuidance(source_head.score, ratio, VPSchedule(), source_x)
    >>> score = GuidedScore(source_head.score, guidance)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import ConfigError, ShapeError
from shared_embed.validation import check_context, check_tensor

from ..sampling import ScoreFn
from ..schedule import VPSchedule
from .inputs import check_points
from .quadratic_ratio import QuadraticLogRatio

__all__ = ["TiltGuidance"]


class TiltGuidance:
    """The exact guidance of a linear log ratio through a source score (module docstring); a Guidance.

    Args:
        source_score: ``s_p(x, t, score_context) -> (n, d)``, the frozen source score.
        ratio: a :class:`QuadraticLogRatio` with A = 0 (a linear log ratio, e.g. ``degree = 1``).
        schedule: the forward process.
        source_x (n_s, d): the source rows, for the Gaussian form's covariance (per label with labels).
        source_labels (n_s, 1): the rows' labels when ``ratio`` was fitted with labels, else None.
        label_width: with labels, the context's last ``label_width`` (= 1) column is the label and the columns
            before it are the source score's context; 0 without labels (the whole context goes to the score).
        max_shift: the largest |delta_t| evaluated through the source score; beyond it the Gaussian form.
        quadrature: Gauss-Legendre nodes of :meth:`log_h`.

    Raises:
        ConfigError: a ratio with a quadratic term, a negative ``max_shift``, fewer than 2 rows of a label.
        ShapeError: mismatched shapes; at call time a context that does not match the labels.
    """

    def __init__(
        self,
        source_score: ScoreFn,
        ratio: QuadraticLogRatio,
        schedule: VPSchedule,
        source_x: Tensor,
        source_labels: Tensor | None = None,
        max_shift: float = 1.0,
        quadrature: int = 4,
    ) -> None:
        if not isinstance(ratio, QuadraticLogRatio) or bool(ratio.quad.any()):
            raise ConfigError("TiltGuidance needs a linear log ratio: a QuadraticLogRatio with A = 0 (degree = 1)")
        check_tensor("source_x", source_x, ndim=2, last_dim=ratio.features, min_rows=2)
        if (source_labels is None) != (ratio.labels is None):
            raise ShapeError("give source_labels exactly when the ratio was fitted with labels")
        if not (math.isfinite(max_shift) and max_shift >= 0):
            raise ConfigError(f"max_shift must be a number >= 0, got {max_shift!r}")
        self.score, self.ratio, self.schedule = source_score, ratio, schedule
        self.max_shift, self.features = float(max_shift), ratio.features
        self.label_width = 0 if ratio.labels is None else 1
        nodes, weights = np.polynomial.legendre.leggauss(int(quadrature))
        self.nodes, self.weights = (nodes + 1) / 2, weights / 2  # on [0, 1]
        xs = source_x.detach().double()
        idx = ratio.label_index(
            None if source_labels is None else check_context("source_labels", source_labels, 1, rows=len(xs)),
            len(xs),
        )
        eig_vals, eig_vecs = [], []
        for k in range(ratio.linear.shape[0]):
            rows = xs[idx == k]
            if rows.shape[0] < 2:
                raise ConfigError(f"label index {k} has {rows.shape[0]} source rows: the covariance needs >= 2")
            lam, vec = torch.linalg.eigh(torch.cov(rows.T).reshape(self.features, self.features))
            eig_vals.append(lam.clamp_min(0.0))
            eig_vecs.append(vec)
        self.eig_vals, self.eig_vecs = torch.stack(eig_vals), torch.stack(eig_vecs)
        # beta in each label's eigenbasis, for the Gaussian form
        self.beta_eig = torch.einsum("kij,ki->kj", self.eig_vecs, ratio.linear)

    def _split(
        self, x: Tensor, t: Tensor | float, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(x, t (n,), the score's context, label index (n,))."""
        x, t = check_points(x, self.features, t, required=True)
        if self.label_width:
            check_context("context", context, None if context is None else context.shape[1], rows=x.shape[0])
            if context is None:
                raise ShapeError("this guidance was built with labels: its context ends with the label column")
            score_ctx = context[:, :-1] if context.shape[1] > 1 else None
            return x, t, score_ctx, self.ratio.label_index(context[:, -1:], x.shape[0])
        return x, t, context, torch.zeros(x.shape[0], dtype=torch.long)

    def _parts(self, t: Tensor, idx: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a (n, 1), s^2 (n, 1), beta (n, d), exact rows (n,) bool): the rows to evaluate through the score, those
        with 0 < |delta_t| <= max_shift (at beta = 0 the Gaussian form is exact too, and needs no score call)."""
        a = self.schedule.alpha(t).to(x)[:, None]
        s2 = self.schedule.sigma(t).to(x).square()[:, None]
        beta = self.ratio.linear[idx].to(x)
        shift = (s2 / a)[:, 0] * beta.norm(dim=-1)
        exact = (shift <= self.max_shift) & beta.ne(0).any(-1)
        return a, s2, beta, exact

    def grad_log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """grad_x log h_t (n, d): exact through the score where |delta_t| <= max_shift, Gaussian beyond."""
        x, t, ctx, idx = self._split(x, t, context)
        a, s2, beta, exact = self._parts(t, idx, x)
        lam, vec = self.eig_vals[idx].to(x), self.eig_vecs[idx].to(x)
        gain = a * lam / (a.square() * lam + s2)  # (n, d) in the eigenbasis
        out = torch.einsum("nij,nj->ni", vec, gain * self.beta_eig[idx].to(x))
        if bool(exact.any()):
            rows = exact.nonzero().squeeze(-1)
            xe, te, ce = x[rows], t[rows], None if ctx is None else ctx[rows]
            delta = (s2[rows] / a[rows]) * beta[rows]
            g = self.score(xe + delta, te, ce) - self.score(xe, te, ce) + beta[rows] / a[rows]
            out = out.index_put((rows,), g)
        return out

    def log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log h_t (n,) up to the ratio's constant: the segment integral of the score by quadrature where
        |delta_t| <= max_shift, the Gaussian form's closed form beyond (module docstring)."""
        x, t, ctx, idx = self._split(x, t, context)
        a, s2, beta, exact = self._parts(t, idx, x)
        const = self.ratio.const[idx].to(x) + math.log(self.ratio.prior_factor)
        # Gaussian form: log E[exp(beta^T x_0) | x_t = x] for x_0 ~ N(m, Sigma); the mean m enters only through
        # an x-independent term, dropped with the constant's other x-independent parts
        lam, vec = self.eig_vals[idx].to(x), self.eig_vecs[idx].to(x)
        xe = torch.einsum("nij,ni->nj", vec, x)  # x in the eigenbasis
        be = self.beta_eig[idx].to(x)
        gain = a * lam / (a.square() * lam + s2)
        post_var = lam * s2 / (a.square() * lam + s2)
        out = (gain * be * xe).sum(-1) + 0.5 * (post_var * be.square()).sum(-1) + const
        if bool(exact.any()):
            rows = exact.nonzero().squeeze(-1)
            xr, tr, cr = x[rows], t[rows], None if ctx is None else ctx[rows]
            ar, s2r, br = a[rows], s2[rows], beta[rows]
            delta = (s2r / ar) * br
            seg = torch.zeros(len(rows), dtype=x.dtype, device=x.device)
            for u, wq in zip(self.nodes, self.weights, strict=True):
                seg = seg + float(wq) * (self.score(xr + float(u) * delta, tr, cr) * delta).sum(-1)
            val = seg + (br * xr).sum(-1) / ar[:, 0] + s2r[:, 0] * br.square().sum(-1) / (2 * ar[:, 0].square())
            out = out.index_put((rows,), val + const[rows])
        return out

    def h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        return self.log_h(x, t, context).exp()
