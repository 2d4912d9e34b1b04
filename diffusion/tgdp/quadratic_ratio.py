"""A quadratic log density ratio fitted by cross-validated logistic regression: a domain classifier for tiny n_t.

A neural classifier on 10 target rows against 10,000 source rows has nothing to stop it from carving the
ratio around each target row (its log-w error on the TGDP simulation at n_t = 10:
docs/notes/2026-12-02-kernel-guidance-bandwidth-cap.md). Here the
classifier is logistic regression on the degree-2 polynomial features of x (and, with labels, per-label
deviations from a shared quadratic), its L2 strength chosen by stratified K-fold cross-validation of the
log-loss on the pooled rows (scikit-learn's ``LogisticRegressionCV``). The log ratio is then

    log w(x[, y]) = x^T A_y x + b_y^T x + c_y + log(n_s / n_t),

the last term the explicit class-prior factor (plain pooled log-loss, target = class 1:
decision = log (n_t q) / (n_s p)). A quadratic log w is exact for two Gaussians, a good local model of the
two-mode simulations, and it is what :class:`~diffusion.tgdp.kernel_guidance.KernelGuidance` integrates in
closed form against the forward kernel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import ShapeError
from shared_embed.validation import check_context, check_matrix, check_positive_int

__all__ = ["QuadraticLogRatio", "fit_quadratic_log_ratio", "quadratic_features"]


def quadratic_features(x: np.ndarray) -> np.ndarray:
    """[x_j] + [x_j x_k for j <= k], (n, d + d (d + 1) / 2)."""
    d = x.shape[1]
    quad = [x[:, j] * x[:, k] for j in range(d) for k in range(j, d)]
    return np.concatenate([x, np.stack(quad, axis=1)], axis=1)


def _to_quadratic(coef: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of :func:`quadratic_features` -> (A (d, d) symmetric, b (d,))."""
    b, a, pos = coef[:d].copy(), np.zeros((d, d)), d
    for j in range(d):
        for k in range(j, d):
            if j == k:
                a[j, j] = coef[pos]
            else:
                a[j, k] = a[k, j] = coef[pos] / 2.0
            pos += 1
    return a, b


class QuadraticLogRatio:
    """log w(x[, y]) = x^T A_y x + b_y^T x + c_y + log(prior_factor): a density ratio with a quadratic log.

    Args:
        quad (K, d, d) symmetric, linear (K, d), const (K,): one quadratic per label (K = 1 without labels).
        prior_factor: n_s / n_t (pi_s / pi_t of the classifier's loss), kept apart from ``const``.
        labels (K,): the label values (contexts (n, 1)) the rows of the parameters belong to, or None.

    Example:
        >>> ratio = fit_quadratic_log_ratio(source_x, target_x)
        >>> ratio.log_ratio(x).shape    # (n,)
    """

    #: the inverse L2 strength C that cross-validation chose (set by :func:`fit_quadratic_log_ratio` only)
    strength: float
    #: the number of basis columns cross-validation chose (None: no basis; set by :func:`fit_quadratic_log_ratio`)
    components: int | None = None

    def __init__(
        self, quad: Tensor, linear: Tensor, const: Tensor, prior_factor: float, labels: Tensor | None = None
    ) -> None:
        if quad.dim() != 3 or quad.shape[1] != quad.shape[2]:
            raise ShapeError(f"quad must be (K, d, d), got {tuple(quad.shape)}")
        k, d = quad.shape[:2]
        if linear.shape != (k, d) or const.shape != (k,):
            raise ShapeError(
                f"linear must be ({k}, {d}) and const ({k},), got {tuple(linear.shape)}, {tuple(const.shape)}"
            )
        if labels is not None and labels.shape != (k,):
            raise ShapeError(f"labels must be ({k},), got {tuple(labels.shape)}")
        if labels is None and k != 1:
            raise ShapeError(f"without labels there is one quadratic, got K = {k}")
        if not (math.isfinite(prior_factor) and prior_factor > 0):
            raise ShapeError(f"prior_factor must be a finite number > 0, got {prior_factor!r}")
        self.quad, self.linear, self.const = quad.double(), linear.double(), const.double()
        self.prior_factor = float(prior_factor)
        self.labels = None if labels is None else labels.double()
        self.features = d

    def label_index(self, context: Tensor | None, rows: int) -> Tensor:
        """Row -> parameter index (rows,); all 0 without labels."""
        if self.labels is None:
            if context is not None:
                raise ShapeError("this ratio was fitted without labels: context must be None")
            return torch.zeros(rows, dtype=torch.long)
        check_context("context", context, 1, rows=rows)
        if context is None:
            raise ShapeError("this ratio was fitted with labels: give context (n, 1)")
        match = context.double()[:, 0:1] == self.labels[None]
        if not bool(match.any(-1).all()):
            raise ShapeError(f"context must hold labels from {self.labels.tolist()}")
        return match.to(torch.int8).argmax(-1)

    def log_ratio(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        """log w (n,) at t = 0 (``t`` must be None: this is the ratio of the clean densities)."""
        if t is not None:
            raise ShapeError("t must be None: a QuadraticLogRatio is the ratio at t = 0")
        check_matrix("x", x, self.features)
        idx = self.label_index(context, x.shape[0])
        xd = x.double()
        value = torch.einsum("ni,nij,nj->n", xd, self.quad[idx], xd) + (self.linear[idx] * xd).sum(-1)
        return (value + self.const[idx] + math.log(self.prior_factor)).to(x.dtype)

    def ratio(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        """w = exp(log w), (n,)."""
        return self.log_ratio(x, t, context).exp()


def fit_quadratic_log_ratio(
    source_x: Tensor,
    target_x: Tensor,
    *,
    source_context: Tensor | None = None,
    target_context: Tensor | None = None,
    strengths: Sequence[float] = tuple(np.logspace(-3, 3, 13)),
    folds: int = 5,
    seed: int = 0,
    degree: int = 2,
    basis: Tensor | None = None,
    components: Sequence[int] | None = None,
) -> QuadraticLogRatio:
    """Logistic regression on quadratic features, its inverse L2 strength C chosen by ``folds``-fold CV.

    ``degree`` = 1 fits a linear log ratio (A = 0) on the features x alone: d + 1 parameters per label instead of
    about d^2 / 2, for high d with few target rows (e.g. 64 pixels, 50 target images).

    Features are standardised before the fit (so one C penalises every coefficient alike) and mapped back
    to A, b, c. With contexts (labels, (n, 1)) the design is the shared quadratic plus, for every label k, the
    centred indicator 1{y = k} - 1/K times [1, quadratic features]: each label gets its own quadratic,
    shrunk towards the shared one (symmetrically: no label is the reference). The intercept is not penalised; no
    class weights, so the prior factor is n_s / n_t.

    ``basis`` (d, m), with ``degree = 1`` only: the log ratio is linear in the projection x @ basis[:, :k] (k + 1
    parameters per label instead of d + 1; b = basis[:, :k] theta), k chosen among ``components`` (default: m
    alone) by the same cross-validated log-loss as C, so a low-dimensional ratio is only used where it predicts
    the held-out rows better. The chosen k is kept as ``ratio.components``.
    """
    source_x = check_matrix("source_x", source_x)
    target_x = check_matrix("target_x", target_x, source_x.shape[1])
    if (source_context is None) != (target_context is None):
        raise ShapeError("give source_context and target_context together (both or neither)")
    check_context("source_context", source_context, None if source_context is None else 1, rows=source_x.shape[0])
    check_context("target_context", target_context, None if target_context is None else 1, rows=target_x.shape[0])
    n_s, n_t, d = source_x.shape[0], target_x.shape[0], source_x.shape[1]
    folds = min(check_positive_int("folds", folds), n_t)
    if folds < 2:
        raise ShapeError(f"cross-validation needs n_t >= 2 target rows, got {n_t}")
    if degree not in (1, 2):
        raise ShapeError(f"degree must be 1 (linear log ratio) or 2 (quadratic), got {degree!r}")
    if basis is not None:
        if degree != 1:
            raise ShapeError("basis needs degree = 1 (a log ratio linear in the projection)")
        check_matrix("basis", basis)
        if basis.shape[0] != d:
            raise ShapeError(f"basis must be ({d}, m), got {tuple(basis.shape)}")
    m = d if basis is None else basis.shape[1]
    ks = [m] if components is None else sorted({int(k) for k in components})
    if not ks or ks[0] < 1 or ks[-1] > m or (basis is None and ks != [d]):
        raise ShapeError(f"components must lie in 1..{m} (and need a basis), got {components!r}")
    x = torch.cat([source_x, target_x]).double().numpy()
    y = np.concatenate([np.zeros(n_s), np.ones(n_t)])
    ctx = None
    if source_context is not None and target_context is not None:  # both or neither (checked above)
        ctx = torch.cat([source_context, target_context]).double().numpy()[:, 0]
    best: tuple[float, int, np.ndarray, float, float, np.ndarray | None] | None = None
    for k in ks:
        proj = x if basis is None else x @ basis[:, :k].double().numpy()
        score, coef, intercept, strength, labels = _fit_logistic(proj, y, ctx, degree, strengths, folds, seed)
        if best is None or score > best[0]:
            best = (score, k, coef, intercept, strength, labels)
    assert best is not None
    _, k, coef, intercept, strength, labels = best
    p = k if basis is not None else (d if degree == 1 else d + d * (d + 1) // 2)
    lift = None if basis is None else basis[:, :k].double().numpy()
    quads, lins, consts = [], [], []
    n_labels = 0 if labels is None else len(labels)
    for j_label in range(max(n_labels, 1)):
        c_k, extra = coef[:p].copy(), 0.0
        for j in range(n_labels):
            block = coef[p + j * (p + 1) : p + (j + 1) * (p + 1)] * ((j == j_label) - 1.0 / n_labels)
            extra, c_k = extra + block[0], c_k + block[1:]
        if lift is not None:
            c_k = lift @ c_k
        a, b = _to_quadratic(c_k, d) if degree == 2 else (np.zeros((d, d)), c_k)
        quads.append(a)
        lins.append(b)
        consts.append(intercept + extra)
    ratio = QuadraticLogRatio(
        torch.tensor(np.stack(quads)),
        torch.tensor(np.stack(lins)),
        torch.tensor(consts),
        prior_factor=n_s / n_t,
        labels=None if labels is None else torch.tensor(labels),
    )
    ratio.strength = strength
    ratio.components = k if basis is not None else None
    return ratio


def _fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    ctx: np.ndarray | None,
    degree: int,
    strengths: Sequence[float],
    folds: int,
    seed: int,
) -> tuple[float, np.ndarray, float, float, np.ndarray | None]:
    """(best mean CV score, coefficients on the unstandardised design, intercept, C, labels) of the CV logistic
    regression on the features of x (degree 1 or 2) with per-label deviations when ``ctx`` is given."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    base = quadratic_features(x) if degree == 2 else x
    labels = None
    blocks = [base]
    if ctx is not None:
        labels = np.unique(ctx)
        for lab in labels:
            contrast = ((ctx == lab) - 1.0 / len(labels))[:, None]
            blocks.append(contrast * np.concatenate([np.ones((len(x), 1)), base], axis=1))
    design = np.concatenate(blocks, axis=1)
    mean, scale = design.mean(0), design.std(0)
    scale[scale == 0] = 1.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(Cs=list(strengths), cv=cv, scoring="neg_log_loss", max_iter=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.fit((design - mean) / scale, y)
    coef = model.coef_[0] / scale
    intercept = float(model.intercept_[0] - (coef * mean).sum())
    score = float(np.asarray(next(iter(model.scores_.values()))).mean(0).max())
    return score, coef, intercept, float(model.C_[0]), labels
