"""Batched Gaussian mixtures with closed-form densities, scores and noised marginals.

Under the VP forward process a mixture stays a mixture: component k of x_t has mean a_t mu_k and
covariance a_t^2 Sigma_k + s_t^2 I. Everything here is exact, the ground truth for every check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    """A batch of mixtures: ``weights`` (B, K), ``means`` (B, K, d), ``covs`` (B, K, d, d).

    Row b of every method's input is scored under mixture b. A batch of size 1 broadcasts.
    """

    weights: Tensor
    means: Tensor
    covs: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def _chol(self) -> Tensor:
        return torch.linalg.cholesky(self.covs)

    def component_log_prob(self, x: Tensor) -> Tensor:
        """log N(x_b; mu_bk, Sigma_bk), shape (B, K)."""
        chol = self._chol()
        diff = (x.unsqueeze(-2) - self.means).unsqueeze(-1)  # (B, K, d, 1)
        z = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        half_logdet = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * z.square().sum(-1) - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x_b), shape (B,)."""
        return torch.logsumexp(self.weights.log() + self.component_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """P(component k | x_b), shape (B, K)."""
        return torch.softmax(self.weights.log() + self.component_log_prob(x), dim=-1)

    def score(self, x: Tensor) -> Tensor:
        """grad_x log p(x_b), shape (B, d), in closed form: sum_k r_k Sigma_k^{-1} (mu_k - x)."""
        r = self.responsibilities(x)
        diff = (self.means - x.unsqueeze(-2)).unsqueeze(-1)
        comp = torch.linalg.solve(self.covs, diff).squeeze(-1)  # (B, K, d)
        return (r.unsqueeze(-1) * comp).sum(-2)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One draw per batch row, shape (B, d)."""
        idx = torch.multinomial(self.weights, 1, generator=generator).squeeze(-1)  # (B,)
        rows = torch.arange(self.weights.shape[0])
        mean, chol = self.means[rows, idx], self._chol()[rows, idx]
        e = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + (chol @ e.unsqueeze(-1)).squeeze(-1)

    def noised(self, alpha: Tensor | float, sigma: Tensor | float) -> GaussianMixture:
        """The law of a x + s e, e ~ N(0, I); ``alpha``/``sigma`` are scalars or per-row (B,)."""
        a = torch.as_tensor(alpha, dtype=self.means.dtype)
        s = torch.as_tensor(sigma, dtype=self.means.dtype)
        a = a.reshape(-1, 1, 1) if a.dim() else a
        s = s.reshape(-1, 1, 1, 1) if s.dim() else s
        eye = torch.eye(self.dim, dtype=self.means.dtype)
        covs = (a.unsqueeze(-1) if a.dim() else a) ** 2 * self.covs + s**2 * eye
        return GaussianMixture(self.weights.expand(covs.shape[0], -1), a * self.means, covs)

    def mean(self) -> Tensor:
        """E[x], shape (B, d)."""
        return (self.weights.unsqueeze(-1) * self.means).sum(-2)

    def covariance(self) -> Tensor:
        """Cov[x], shape (B, d, d)."""
        m = self.mean()
        outer = (self.means - m.unsqueeze(-2)).unsqueeze(-1) @ (self.means - m.unsqueeze(-2)).unsqueeze(-2)
        return (self.weights[..., None, None] * (self.covs + outer)).sum(-3)
