"""The variance-preserving (VP) forward process x_t = a_t x_0 + s_t e, e ~ N(0, I), t in [0, 1].

Linear: beta(t) = beta_min + t (beta_max - beta_min), a_t = exp(-1/2 int_0^t beta), s_t^2 = 1 - a_t^2.
Cosine (Nichol & Dhariwal 2021): a_t = cos(pi/2 (t + c)/(1 + c)) / cos(pi/2 c/(1 + c)), t clipped to t_max so
that beta stays finite.

References:
    A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021,
    https://arxiv.org/abs/2102.09672.
    D. P. Kingma, T. Salimans, B. Poole, J. Ho, "Variational Diffusion Models", NeurIPS 2021,
    https://arxiv.org/abs/2107.00630 (the stratified times of :func:`stratified_times`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shared_embed.validation import check_choice, check_fraction, check_positive_float

__all__ = ["SCHEDULES", "VPSchedule", "stratified_times"]

SCHEDULES = ("linear", "cosine")


class VPSchedule:
    """a_t, s_t, beta(t) and the SDE coefficients of the VP process; t is a float or a tensor.

    Example:
        >>> sch = VPSchedule()
        >>> float(sch.alpha(torch.tensor(0.0))), round(float(sch.sigma(torch.tensor(1.0))), 4)
        (1.0, 1.0)
    """

    def __init__(
        self,
        kind: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cosine_offset: float = 0.008,
        t_max: float = 0.9946,
    ) -> None:
        self.kind = check_choice("kind", kind, SCHEDULES)
        self.beta_min = check_positive_float("beta_min", beta_min, allow_zero=True)
        self.beta_max = check_positive_float("beta_max", beta_max)
        if self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max must exceed beta_min, got {beta_max} <= {beta_min}")
        self.cosine_offset = check_positive_float("cosine_offset", cosine_offset)
        self.t_max = check_positive_float("t_max", t_max)

    @property
    def config(self) -> dict[str, float | str]:
        return {
            "kind": self.kind,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "cosine_offset": self.cosine_offset,
            "t_max": self.t_max,
        }

    def _t(self, t: Tensor | float) -> Tensor:
        return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.get_default_dtype())

    def _cos_arg(self, t: Tensor) -> Tensor:
        c = self.cosine_offset
        return 0.5 * math.pi * (t.clamp(0.0, self.t_max) + c) / (1.0 + c)

    def log_alpha(self, t: Tensor | float) -> Tensor:
        """log a_t = -1/2 int_0^t beta(u) du."""
        t = self._t(t)
        if self.kind == "linear":
            return -0.5 * (self.beta_min * t + 0.5 * t.square() * (self.beta_max - self.beta_min))
        c0 = 0.5 * math.pi * self.cosine_offset / (1.0 + self.cosine_offset)
        return torch.log(torch.cos(self._cos_arg(t))) - math.log(math.cos(c0))

    def alpha(self, t: Tensor | float) -> Tensor:
        """a_t, the signal scale."""
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor | float) -> Tensor:
        """s_t = sqrt(1 - a_t^2), the noise scale (computed stably for small t)."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_scales(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(log a_t, log s_t), log s_t = 1/2 log(1 - a_t^2) computed stably for small t."""
        log_a = self.log_alpha(t)
        return log_a, 0.5 * torch.log(-torch.expm1(2.0 * log_a))

    def noise_level(self, t: Tensor | float) -> Tensor:
        """log(s_t / a_t), what every time-dependent network here reads instead of raw t (``diffusion.network``)."""
        log_a, log_s = self.log_scales(t)
        return log_s - log_a

    def beta(self, t: Tensor | float) -> Tensor:
        """beta(t) = -2 d log a_t / dt."""
        t = self._t(t)
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        inside = (t >= 0) & (t <= self.t_max)
        slope = math.pi / (1.0 + self.cosine_offset)
        return torch.where(inside, slope * torch.tan(self._cos_arg(t)), torch.zeros_like(t))

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Forward SDE drift f(x, t) = -1/2 beta(t) x."""
        return -0.5 * _col(self.beta(t), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """Forward SDE diffusion coefficient g(t) = sqrt(beta(t))."""
        return self.beta(t).sqrt()

    def marginal(self, x0: Tensor, t: Tensor | float, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Draw x_t given x_0 (n, d); returns ``(x_t, noise)``."""
        noise = torch.randn_like(x0) if noise is None else noise
        return _col(self.alpha(t), x0) * x0 + _col(self.sigma(t), x0) * noise, noise

    def prior_kl(self, mean: Tensor, cov: Tensor) -> Tensor:
        """KL( N(a_1 mean, a_1^2 cov + s_1^2 I) || N(0, I) ) for a Gaussian data law (mean (d,), cov (d, d))."""
        a, s = self.alpha(1.0).to(mean), self.sigma(1.0).to(mean)
        m = a * mean
        c = a**2 * cov + s**2 * torch.eye(mean.shape[-1], dtype=mean.dtype)
        return 0.5 * (torch.trace(c) + m @ m - mean.shape[-1] - torch.logdet(c))


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-row (n,) tensor against (n, d)."""
    v = v.to(like)
    return v.unsqueeze(-1) if v.dim() == 1 else v


def stratified_times(n: int, t_eps: float, like: Tensor) -> Tensor:
    """(n,) times U(t_eps, 1), one per stratum of length 1/n in random order (the low-discrepancy
    sampler of Kingma et al. 2021, module docstring): each t is still U(t_eps, 1), and batch means vary less."""
    check_fraction("t_eps", t_eps)
    u = torch.randperm(n, device=like.device).to(like.dtype)
    # in place, in the order of t_eps + (1 - t_eps) * (perm + U) / n: the same values, no temporaries
    return u.add_(torch.rand(n, dtype=like.dtype, device=like.device)).div_(n).mul_(1.0 - t_eps).add_(t_eps)
