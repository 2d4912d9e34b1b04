"""TGDP guidance for a log ratio that is quadratic along one direction: an exponential tilt that also NARROWS.

A linear log ratio beta^T x_0 (:class:`~diffusion.tgdp.tilt_guidance.TiltGuidance`) can only shift the source
along beta. A target that selects the source on a feature f = u^T x_0 (e.g. the heaviest 20 % of each class) is
also narrower along f, which a Gaussian factor in f models. Here, per label y (index k of the ratio's labels),

    log w(x_0) = beta_k^T x_0 - (gamma_k / 2) (u^T x_0 - m_k)^2 + c_k,       gamma_k >= 0,

and h_t(x) = E_p[w(x_0) | x_t = x] factors exactly into the linear tilt's h (TiltGuidance: grad log h = s_p(x +
delta_t, t) - s_p(x, t) + beta / a_t, delta_t = (s_t^2 / a_t) beta) times the narrowing factor's expectation under
the TILTED source p~ = p e^{beta^T x_0} / E_p[e^{beta^T x_0}]:

    h~_t(x) = E_p~[exp(-(gamma / 2) (f - m)^2) | x_t = x],    f = u^T x_0.

The narrowing has no shift identity (no positive mixture of exponential tilts is narrower), so h~_t uses a
Gaussian posterior of f given x_t: f | x_t ~ N(mu_t(x), v_t), whence

    log h~_t = -(1/2) log(1 + gamma v_t) - gamma (mu_t - m)^2 / (2 (1 + gamma v_t)),
    grad log h~_t = -gamma (mu_t - m) / (1 + gamma v_t) * grad mu_t.

- mu_t = u^T E_p~[x_0 | x_t = x] by Tweedie through the source score: E_p~[x_0 | x] = E_p[x_0 | x + delta_t] =
  (x + delta_t + s_t^2 s_p(x + delta_t, t)) / a_t (exact for any p; no extra network call, s_p(x + delta_t) is
  the tilt's own). Where |delta_t| > ``max_shift`` (the tilt's Gaussian form) it is
  (x + s_t^2 s_p(x, t)) / a_t + Sigma_{0|t} beta.
- v_t = u^T Sigma_{0|t} u and grad mu_t = (a_t / s_t^2) Sigma_{0|t} u = a_t Sigma (a_t^2 Sigma + s_t^2 I)^{-1} u,
  with Sigma_{0|t} = s_t^2 Sigma (a_t^2 Sigma + s_t^2 I)^{-1} the posterior covariance of a Gaussian source with
  the rows' covariance Sigma (per label): the second-order Tweedie Jacobian without a Jacobian of the network, so
  the likelihood's exact divergence differentiates the network once, not twice.

A NONLINEAR feature f(x_0) (a :class:`Feature`: its value and gradient, e.g. the total pixel intensity of an image
modelled in logit space) takes the same form through its linearisation at the posterior mean,
f(x_0) ~ f(x0hat) + g^T (x_0 - x0hat) with g = grad f(x0hat), x0hat = E_p~[x_0 | x_t = x]:

    mu_t = f(x0hat),  v_t = g^T Sigma_{0|t} g,  grad mu_t = (a_t / s_t^2) Sigma_{0|t} g

(g held fixed in the Jacobian, as u is). At t -> 0 it is exact (x0hat -> x, v_t -> 0: log h -> log w(x)); where f is
linear it is the direction's form (the tests check both).

For a Gaussian source and a linear feature every step is exact (a Gaussian tilted by a Gaussian factor is Gaussian;
the tests check the closed form). For other sources the error is that of the Gaussian posterior of f, which
vanishes as t -> 0 (v_t -> 0: the guidance tends to grad log w) and matters little as t -> 1 (grad mu_t -> 0).
gamma = 0 is TiltGuidance.

Example:
    >>> guidance = NarrowTiltGuidance(head.score, linear_ratio, VPSchedule(), source_x, direction=u,
    ...                               gamma=torch.tensor([1.5]), centre=torch.tensor([0.3]))
    >>> score = GuidedScore(head.score, guidance)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from shared_embed.errors import ConfigError, ShapeError
from shared_embed.validation import check_choice, check_tensor

from ..sampling import ScoreFn
from ..schedule import VPSchedule
from .quadratic_ratio import QuadraticLogRatio
from .tilt_guidance import TiltGuidance

__all__ = ["NARROW_FITS", "Feature", "Narrowing", "NarrowTiltGuidance", "fit_narrowing"]

#: how :func:`fit_narrowing` fits the Gaussian factor
NARROW_FITS = ("cv", "moments")


@runtime_checkable
class Feature(Protocol):
    """A smooth scalar feature of the guidance's points: ``feature(x)`` (n,) and ``feature.grad(x)`` (n, d) for
    x (n, d), in the units the source score works in (e.g. source-standardised logits)."""

    def __call__(self, x: Tensor) -> Tensor: ...

    def grad(self, x: Tensor) -> Tensor: ...


class NarrowTiltGuidance(TiltGuidance):
    """The guidance of a linear tilt times a Gaussian factor along ``direction`` (module docstring); a Guidance.

    Args:
        source_score, ratio, schedule, source_x, source_labels, max_shift, quadrature: as
            :class:`TiltGuidance` (``ratio`` holds beta_k and c_k: a linear :class:`QuadraticLogRatio`).
        direction (d,): u, the feature f = u^T x_0 the Gaussian factor acts on (any nonzero length); or
        feature: a nonlinear :class:`Feature` f(x_0) instead (module docstring); give exactly one of the two.
        gamma (K,): gamma_k >= 0 per label index of ``ratio`` (0: no narrowing for that label).
        centre (K,): m_k, the factor's centre in units of f.

    Raises:
        ConfigError: TiltGuidance's errors; a negative gamma, a zero direction, both or neither of
            ``direction`` and ``feature``, a ``feature`` without ``grad`` or whose ``grad`` disagrees with central
            differences of its values at the first 16 source rows (more than 1 % of the gradient's norm).
        DataError: a non-finite gamma, centre or direction.
        ShapeError: ``direction`` not (d,), ``gamma`` or ``centre`` not (K,).
    """

    def __init__(
        self,
        source_score: ScoreFn,
        ratio: QuadraticLogRatio,
        schedule: VPSchedule,
        source_x: Tensor,
        source_labels: Tensor | None = None,
        *,
        direction: Tensor | None = None,
        feature: Feature | None = None,
        gamma: Tensor,
        centre: Tensor,
        max_shift: float = 1.0,
        quadrature: int = 4,
    ) -> None:
        super().__init__(source_score, ratio, schedule, source_x, source_labels, max_shift, quadrature)
        k = ratio.linear.shape[0]
        if (direction is None) == (feature is None):
            raise ConfigError("give exactly one of direction (a linear feature u^T x) and feature (a Feature)")
        for name, value in (("gamma", gamma), ("centre", centre)):
            check_tensor(name, value, ndim=1)
            if value.shape != (k,):
                raise ShapeError(f"{name} must be ({k},) (one per label index of the ratio), got {tuple(value.shape)}")
        if bool((gamma < 0).any()):
            raise ConfigError(f"gamma must be >= 0 (a narrowing factor), got {gamma.tolist()}")
        self.gamma, self.centre = gamma.detach().double(), centre.detach().double()
        #: u (d,) with u in each label's eigenbasis (K, d), or None with a nonlinear ``feature`` instead
        self.direction: Tensor | None = None
        self.u_eig: Tensor | None = None
        self.feature = feature
        if feature is not None:
            if not isinstance(feature, Feature):
                raise ConfigError(
                    f"feature must be callable with a grad method (a Feature), got {type(feature).__name__}"
                )
            _check_feature_gradient(feature, source_x.detach().double()[:16])
        elif direction is not None:
            check_tensor("direction", direction, ndim=1)
            if direction.shape != (self.features,):
                raise ShapeError(f"direction must be ({self.features},), got {tuple(direction.shape)}")
            u = direction.detach().double()
            if not (bool(torch.isfinite(u).all()) and float(u.norm()) > 0):
                raise ConfigError("direction must be a finite nonzero vector")
            self.direction, self.u_eig = u, torch.einsum("kij,i->kj", self.eig_vecs, u)

    def _narrow(self, x: Tensor, t: Tensor, ctx: Tensor | None, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(the tilt's grad log h (n, d), mu_t (n,), v_t (n,), grad mu_t (n, d))."""
        a, s2, beta, exact = self._parts(t, idx, x)
        lam, vec = self.eig_vals[idx].to(x), self.eig_vecs[idx].to(x)
        gain = a * lam / (a.square() * lam + s2)  # a Sigma (a^2 Sigma + s^2 I)^{-1} in the eigenbasis
        post = lam * s2 / (a.square() * lam + s2)  # Sigma_{0|t}
        be = self.beta_eig[idx].to(x)
        tilt = torch.einsum("nij,nj->ni", vec, gain * be)
        s0 = self.score(x, t, ctx)
        x0hat = (x + s2 * s0) / a + torch.einsum("nij,nj->ni", vec, post * be)
        if bool(exact.any()):
            rows = exact.nonzero().squeeze(-1)
            xe, te, ce = x[rows], t[rows], None if ctx is None else ctx[rows]
            delta = (s2[rows] / a[rows]) * beta[rows]
            s1 = self.score(xe + delta, te, ce)
            tilt = tilt.index_put((rows,), s1 - s0[rows] + beta[rows] / a[rows])
            x0hat = x0hat.index_put((rows,), (xe + delta + s2[rows] * s1) / a[rows])
        if self.feature is not None:  # linearised at x0hat: its gradient there takes u's place
            mu = self.feature(x0hat)
            ue = torch.einsum("nij,ni->nj", vec, self.feature.grad(x0hat))
        else:
            assert self.direction is not None and self.u_eig is not None  # one of the two, by construction
            mu, ue = x0hat @ self.direction.to(x), self.u_eig[idx].to(x)
        v = (post * ue.square()).sum(-1)
        grad_mu = torch.einsum("nij,nj->ni", vec, gain * ue)
        return tilt, mu, v, grad_mu

    def grad_log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """grad_x log h_t (n, d): the tilt's exact part plus the Gaussian factor's (module docstring)."""
        x, tt, ctx, idx = self._split(x, t, context)
        tilt, mu, v, grad_mu = self._narrow(x, tt, ctx, idx)
        gamma, m = self.gamma[idx].to(x), self.centre[idx].to(x)
        return tilt - (gamma * (mu - m) / (1 + gamma * v))[:, None] * grad_mu

    def log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log h_t (n,) up to the ratio's constant: the tilt's :meth:`TiltGuidance.log_h` plus the Gaussian
        factor's closed form (its autograd gradient differs from :meth:`grad_log_h`, which uses the Gaussian
        Jacobian of mu_t, by the non-Gaussian part of the network's Jacobian)."""
        x, tt, ctx, idx = self._split(x, t, context)
        _, mu, v, _ = self._narrow(x, tt, ctx, idx)
        gamma, m = self.gamma[idx].to(x), self.centre[idx].to(x)
        narrow = -0.5 * torch.log1p(gamma * v) - gamma * (mu - m).square() / (2 * (1 + gamma * v))
        return super().log_h(x, t, context) + narrow


def _check_feature_gradient(feature: Feature, x: Tensor, tolerance: float = 0.01) -> None:
    """ConfigError when ``feature.grad`` disagrees with central differences of ``feature`` along a random direction
    at the rows x (n, d) by more than ``tolerance`` of the gradient's scale: a wrong gradient would guide along
    the wrong feature while log h (from the values) still looked right."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    eps = 1e-5
    with torch.no_grad():
        numeric = (feature(x + eps * v) - feature(x - eps * v)) / (2 * eps)
        grad = feature.grad(x)
        analytic, scale = (grad * v).sum(-1), grad.norm(dim=-1).clamp_min(1e-12)
    worst = float(((numeric - analytic).abs() / scale).max())
    if not worst <= tolerance:
        raise ConfigError(
            f"feature.grad disagrees with the feature's own central differences (relative error {worst:.3g} > "
            f"{tolerance}): it is not the gradient of feature(x)"
        )


@dataclass(frozen=True)
class Narrowing:
    """A fitted log ratio along f, per label k: log w = slope_k f - (gamma_k / 2) f^2 + const_k.

    ``slope`` (K,), ``gamma`` (K,) >= 0; ``const`` (K,) the fit's own normalisation (moments: E[w] = 1 under
    the source's N(0, 1) in z; CV: the classifier's intercept and prior factor; a clamped fit (gamma = 0): E[w] = 1
    under N(0, 1) in z (moments) or over the source rows (CV)), so E_p[w] over the source rows checks the fit;
    ``strength`` the CV's inverse L2 strength (nan for moments); ``method`` the fit. :meth:`split` writes it as a
    linear part ``b1`` times a Gaussian factor."""

    slope: Tensor
    gamma: Tensor
    const: Tensor
    strength: float
    method: str

    def log_ratio(self, f: Tensor, index: Tensor) -> Tensor:
        """log w (n,) at features f (n,) of rows with label index ``index`` (n,) (positions in the fit's labels)."""
        f = f.double()
        return self.slope[index] * f - self.gamma[index] / 2 * f.square() + self.const[index]

    def split(self, linear_slope: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(beta slopes (K,), gamma (K,), centre (K,)) with log w = b1 f - (gamma / 2) (f - centre)^2 + const for
        the linear slope b1 (per label or one number); labels with gamma = 0 take their whole slope as b1."""
        b1 = torch.as_tensor(linear_slope, dtype=torch.float64).expand_as(self.slope).clone()
        flat = self.gamma <= 0
        b1[flat] = self.slope[flat]
        centre = torch.where(flat, torch.zeros_like(b1), (self.slope - b1) / self.gamma.clamp_min(1e-300))
        return b1, self.gamma.clone(), centre


def fit_narrowing(
    source_f: Tensor,
    target_f: Tensor,
    source_labels: Tensor,
    target_labels: Tensor,
    labels: Tensor,
    *,
    method: str = "cv",
    seed: int = 0,
    strengths: tuple[float, ...] = tuple(np.logspace(-3, 3, 13)),
    folds: int = 5,
) -> Narrowing:
    """A log ratio quadratic in the 1-D feature f, shared by the labels after standardising f within each label.

    z = (f - mean_k) / sd_k with the SOURCE rows' mean and sd of label k (1-D, well estimated from many rows), so
    the few target rows of every label pool into one fit of log w = alpha z - (g / 2) z^2:

    - ``"cv"``: logistic regression (target vs source) on [z, z^2], L2 strength by stratified ``folds``-fold CV of
      the log-loss (as :func:`~diffusion.tgdp.quadratic_ratio.fit_quadratic_log_ratio`);
    - ``"moments"``: the target's z as N(mean, var) of its rows against the source's N(0, 1): alpha = mean / var,
      g = 1 / var - 1.

    g < 0 (a target wider than the source) is set to 0 (no narrowing; alpha stays). In units of f:
    gamma_k = g / sd_k^2, slope_k = alpha / sd_k + g mean_k / sd_k^2.

    Args:
        source_f (n_s,), target_f (n_t,): the feature of the rows; source_labels (n_s,), target_labels (n_t,):
        their labels; labels (K,): the label values, in the order of the guidance's label index.

    Raises:
        ShapeError: mismatched lengths, a target label not in ``labels``.
        ConfigError: an unknown ``method``, a label with fewer than 2 source rows or zero spread, fewer than 2
            target rows.
    """
    check_choice("method", method, NARROW_FITS)
    for name, f, lab in (("source", source_f, source_labels), ("target", target_f, target_labels)):
        if f.dim() != 1 or lab.shape != f.shape:
            raise ShapeError(
                f"{name}_f and {name}_labels must be (n,) of one length, got {tuple(f.shape)}, {tuple(lab.shape)}"
            )
    if target_f.shape[0] < 2:
        raise ConfigError(f"fit_narrowing needs >= 2 target rows, got {target_f.shape[0]}")
    if labels.dim() != 1:
        raise ShapeError(f"labels must be (K,), got {tuple(labels.shape)}")
    fs, ft = source_f.detach().double(), target_f.detach().double()
    ls, lt, lv = source_labels.double(), target_labels.double(), labels.double()
    if not bool((lt[:, None] == lv[None]).any(-1).all()):
        raise ShapeError(f"target_labels must lie in labels {lv.tolist()}")
    mean, sd = torch.zeros(len(lv), dtype=torch.float64), torch.ones(len(lv), dtype=torch.float64)
    for k, value in enumerate(lv):
        rows = fs[ls == value]
        if rows.shape[0] < 2 or float(rows.std()) <= 0:
            raise ConfigError(f"label {float(value):g} has {rows.shape[0]} source rows without spread: need >= 2")
        mean[k], sd[k] = rows.mean(), rows.std()
    ks, kt = (ls[:, None] == lv[None]).to(torch.int8).argmax(-1), (lt[:, None] == lv[None]).to(torch.int8).argmax(-1)
    zs = ((fs - mean[ks]) / sd[ks]).numpy()
    zt = ((ft - mean[kt]) / sd[kt]).numpy()
    strength = math.nan
    if method == "moments":
        m_t, v_t = float(zt.mean()), float(zt.var())
        if v_t <= 0:
            raise ConfigError("the target rows' feature has no spread: the moments fit needs var > 0")
        alpha, g = m_t / v_t, 1.0 / v_t - 1.0
        # N(z; m_t, v_t) / N(z; 0, 1); clamped (g < 0 -> 0): exp(alpha z) / E_N(0,1)[exp(alpha z)]
        c0 = -0.5 * math.log(v_t) - m_t**2 / (2 * v_t) if g > 0 else -(alpha**2) / 2
    else:
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        design = np.r_[np.c_[zs, zs**2], np.c_[zt, zt**2]]
        y = np.r_[np.zeros(len(zs)), np.ones(len(zt))]
        centre, scale = design.mean(0), design.std(0)
        scale[scale == 0] = 1.0
        cv = StratifiedKFold(min(folds, len(zt)), shuffle=True, random_state=seed)
        model = LogisticRegressionCV(Cs=list(strengths), cv=cv, scoring="neg_log_loss", max_iter=5000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.fit((design - centre) / scale, y)
        coef = model.coef_[0] / scale
        alpha, g, strength = float(coef[0]), -2.0 * float(coef[1]), float(model.C_[0])
        # the log odds' intercept on the raw design, plus log(n_s / n_t): the odds are (n_t q) / (n_s p)
        c0 = float(model.intercept_[0]) - float((coef * centre).sum()) + math.log(len(zs) / len(zt))
        if g < 0:  # clamped: the linear part alone, normalised over the source rows
            c0 = -float(np.log(np.mean(np.exp(alpha * zs))))
    g = max(g, 0.0)
    gamma = g / sd.square()
    slope = alpha / sd + g * mean / sd.square()
    const = c0 - alpha * mean / sd - g * mean.square() / (2 * sd.square())
    return Narrowing(slope, gamma, const, strength, method)
