"""A closed-form diffusion case: Gaussian data, a learned score with a linear error, every law Gaussian.

Data x_0 ~ N(m, S) in d dimensions under the VP process have Gaussian marginals p_t = N(mu_t, Sigma_t),
mu_t = a_t m, Sigma_t = a_t^2 S + s_t^2 I, and the true score -Sigma_t^{-1} (x - mu_t). The "learned" score
adds a linear error with a CONSTANT matrix A (d, d) and a CONSTANT vector b (d,):

    s_theta(x, t) = grad log p_t(x) + A x + b  =  -P_t x + c_t,   P_t = Sigma_t^{-1} - A,  c_t = Sigma_t^{-1} mu_t + b.

Both samplers are then linear in x, so the law of each stays Gaussian and its mean mu and covariance C solve
linear moment ODEs in t (integrated here from t = 1, where both start at N(0, I), down to t_eps):

- reverse SDE  dx = [-1/2 beta x - beta s_theta] dt + sqrt(beta) dw_bar:
  dmu/dt = -(M_t mu + beta c_t),  dC/dt = -(M_t C + C M_t^T + beta I),  M_t = beta (I/2 - P_t);
- probability-flow ODE  dx/dt = -1/2 beta [x + s_theta]:
  dmu/dt = -(N_t mu + beta c_t / 2),  dC/dt = -(N_t C + C N_t^T),  N_t = beta (I - P_t) / 2.

The Girsanov bound (Song, Durkan, Murray, Ermon 2021, Thm 1) on KL(p_{t_eps} || SDE law) is

    KL(p_1 || N(0, I))  +  1/2 int_{t_eps}^1 beta(t) [ |A mu_t + b|^2 + tr(A Sigma_t A^T) ] dt,

the bracket being E_{p_t} |A x + b|^2 in closed form. The integral rides along the SDE's moment ODE, so one
adaptive solve (torchdiffeq dopri5, float64, rtol = atol = 1e-10 by default) gives the SDE law and the bound,
a second gives the ODE law. Nothing bounds the ODE law's KL by the same number: with S = I and A = a I the ODE's
log-variance drifts by a int beta = 10.05 a, a KL of about 25 a^2 per dimension, five times the bound's 5 a^2
(:func:`LinearErrorCase.kls`; ``tests/theory/truth/test_linear_score.py``).

Example:
    >>> case = LinearErrorCase.isotropic(d=2, error_scale=0.1)
    >>> kls = case.kls()
    >>> kls.kl_sde <= kls.bound < kls.kl_ode
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from diffusion.schedule import VPSchedule
from shared_embed.errors import ShapeError
from shared_embed.validation import check_fraction, check_positive_float, check_tensor
from theory.truth.kl import gaussian_kl

#: Tolerances of the moment ODE solves (float64 dopri5); moments and KLs are then exact to ~1e-7 relative (tested).
MOMENT_RTOL = 1e-10
MOMENT_ATOL = 1e-10


@dataclass(frozen=True)
class LinearErrorKLs:
    """Exact KLs (nats) of the closed-form case: the bound, its two terms, and p_{t_eps} / p_0 against each law."""

    bound: float
    prior_term: float
    score_term: float
    kl_sde: float
    kl_ode: float
    kl_sde_p0: float
    kl_ode_p0: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinearErrorCase:
    """x_0 ~ N(mean, cov) under a VP schedule; learned score = true score + error_matrix @ x + error_shift.

    Args:
        mean (d,), cov (d, d) positive definite: the data law.
        error_matrix (d, d) and error_shift (d,): the constant A and b of the score error (zeros: exact score).
        schedule: the forward process (the project's linear VP, beta in [0.1, 20], by default).
        t_eps: where the samplers stop; the bound and ``kl_sde``/``kl_ode`` are about p_{t_eps}.
    """

    mean: Tensor
    cov: Tensor
    error_matrix: Tensor
    error_shift: Tensor
    schedule: VPSchedule = field(default_factory=VPSchedule)
    t_eps: float = 1e-3

    def __post_init__(self) -> None:
        check_tensor("mean", self.mean, ndim=1, min_rows=1)
        d = self.mean.shape[0]
        for name, value in (("cov", self.cov), ("error_matrix", self.error_matrix)):
            check_tensor(name, value, ndim=2, rows=d, last_dim=d)
        check_tensor("error_shift", self.error_shift, ndim=1, rows=d)
        if not bool(torch.allclose(self.cov, self.cov.T)) or bool(torch.linalg.eigvalsh(self.cov.double()).min() <= 0):
            raise ShapeError("cov must be symmetric positive definite")
        check_fraction("t_eps", self.t_eps)
        for name in ("mean", "cov", "error_matrix", "error_shift"):
            object.__setattr__(self, name, getattr(self, name).double())

    @classmethod
    def isotropic(
        cls, d: int = 2, error_scale: float = 0.0, error_shift: float = 0.0, **kwargs: Any
    ) -> LinearErrorCase:
        """N(0, I_d) data with A = error_scale * I and b = error_shift * (1, ..., 1)."""
        eye = torch.eye(d, dtype=torch.float64)
        return cls(
            torch.zeros(d, dtype=torch.float64),
            eye,
            error_scale * eye,
            torch.full((d,), float(error_shift), dtype=torch.float64),
            **kwargs,
        )

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    # -- the noised law and the two scores ---------------------------------------------------------------
    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(mu_t (d,), Sigma_t (d, d)) of p_t at a scalar t."""
        a, s = self.schedule.alpha(t).double(), self.schedule.sigma(t).double()
        return a * self.mean, a**2 * self.cov + s**2 * torch.eye(self.dim, dtype=torch.float64)

    def _marginals(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.schedule.alpha(t).double(), self.schedule.sigma(t).double()
        eye = torch.eye(self.dim, dtype=torch.float64)
        return a[:, None] * self.mean, a[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2 * eye

    def true_score(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """grad log p_t(x) = -Sigma_t^{-1} (x - mu_t) for x (n, d), t (n,); a ScoreFn."""
        mu, sigma = self._marginals(t.reshape(-1).expand(x.shape[0]))
        return -torch.linalg.solve(sigma, (x.double() - mu).unsqueeze(-1)).squeeze(-1).to(x)

    def learned_score(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """grad log p_t(x) + A x + b for x (n, d), t (n,); a ScoreFn for ``sample_sde`` / ``sample_ode``."""
        return self.true_score(x, t) + (x.double() @ self.error_matrix.T + self.error_shift).to(x)

    def _linear(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """beta, P_t, c_t, mu_t, Sigma_t at a scalar t (s_theta = -P_t x + c_t).

        t is clamped to [t_eps, 1] for torchdiffeq's first-step probe, which may look outside the interval
        (as in ``diffusion.sampling.sample_ode``); every accepted step lies inside it.
        """
        t = t.clamp(self.t_eps, 1.0)
        mu, sigma = self.marginal(t)
        prec = torch.linalg.inv(sigma)
        return (self.schedule.beta(t).double(), prec - self.error_matrix, prec @ mu + self.error_shift, mu, sigma)

    # -- the laws of the two samplers and the bound --------------------------------------------------------
    def _solve(self, rhs: Callable[[Tensor, Tensor], Tensor], extra: int, rtol: float, atol: float) -> Tensor:
        d = self.dim
        start = torch.cat([torch.zeros(d), torch.eye(d).reshape(-1), torch.zeros(extra)]).double()
        ts = torch.tensor([1.0, self.t_eps], dtype=torch.float64)
        return odeint(
            rhs,
            start,
            ts,
            rtol=check_positive_float("rtol", rtol),
            atol=check_positive_float("atol", atol),
            method="dopri5",
        )[-1]

    def _unpack(self, y: Tensor) -> tuple[Tensor, Tensor]:
        d = self.dim
        return y[:d], y[d : d + d * d].reshape(d, d)

    def sde_law(self, rtol: float = MOMENT_RTOL, atol: float = MOMENT_ATOL) -> tuple[Tensor, Tensor, float]:
        """(mean (d,), cov (d, d)) of the reverse-SDE sampler's output at t_eps, and the bound's score term."""
        eye = torch.eye(self.dim, dtype=torch.float64)

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            mu, cov = self._unpack(y)
            beta, p, c, mu_t, sigma_t = self._linear(t)
            m = beta * (0.5 * eye - p)
            dcov = m @ cov + cov @ m.T + beta * eye
            err = (self.error_matrix @ mu_t + self.error_shift).square().sum() + torch.trace(
                self.error_matrix @ sigma_t @ self.error_matrix.T
            )
            return -torch.cat([m @ mu + beta * c, (0.5 * (dcov + dcov.T)).reshape(-1), (0.5 * beta * err)[None]])

        y = self._solve(rhs, 1, rtol, atol)
        mu, cov = self._unpack(y)
        return mu, 0.5 * (cov + cov.T), float(y[-1])

    def ode_law(self, rtol: float = MOMENT_RTOL, atol: float = MOMENT_ATOL) -> tuple[Tensor, Tensor]:
        """(mean (d,), cov (d, d)) of the probability-flow ODE sampler's output at t_eps."""
        eye = torch.eye(self.dim, dtype=torch.float64)

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            mu, cov = self._unpack(y)
            beta, p, c, _, _ = self._linear(t)
            n = 0.5 * beta * (eye - p)
            dcov = n @ cov + cov @ n.T
            return -torch.cat([n @ mu + 0.5 * beta * c, (0.5 * (dcov + dcov.T)).reshape(-1)])

        mu, cov = self._unpack(self._solve(rhs, 0, rtol, atol))
        return mu, 0.5 * (cov + cov.T)

    def prior_kl(self) -> float:
        """KL(p_1 || N(0, I)) in closed form."""
        return float(self.schedule.prior_kl(self.mean, self.cov))

    def kls(self, rtol: float = MOMENT_RTOL, atol: float = MOMENT_ATOL) -> LinearErrorKLs:
        """The bound and the exact KLs of p_{t_eps} (and of p_0) against the SDE law and the ODE law."""
        sde_mean, sde_cov, score_term = self.sde_law(rtol, atol)
        ode_mean, ode_cov = self.ode_law(rtol, atol)
        mu_eps, sigma_eps = self.marginal(self.t_eps)
        prior = self.prior_kl()

        def kl(m0: Tensor, s0: Tensor, m1: Tensor, s1: Tensor) -> float:
            return float(gaussian_kl(m0, s0, m1, s1))

        return LinearErrorKLs(
            bound=prior + score_term,
            prior_term=prior,
            score_term=score_term,
            kl_sde=kl(mu_eps, sigma_eps, sde_mean, sde_cov),
            kl_ode=kl(mu_eps, sigma_eps, ode_mean, ode_cov),
            kl_sde_p0=kl(self.mean, self.cov, sde_mean, sde_cov),
            kl_ode_p0=kl(self.mean, self.cov, ode_mean, ode_cov),
        )
