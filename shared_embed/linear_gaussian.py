"""A linear-Gaussian head, x | z ~ N(B z + b, Sigma), with an exact maximum-likelihood fit.

It is the parametric reference head of the toolkit: on a task whose truth is linear-Gaussian in the
context it is well specified, its maximum-likelihood fit has a closed form, and the expected KL of that fit
is known exactly (Gaussian linear regression, Wishart moments), so a whole pipeline can be checked against a
known answer. Its number of free parameters is k = d_x (d_z + 1) + d_x (d_x + 1) / 2.

On a frozen context (transfer, oracle, direct) :func:`shared_embed.transfer.train_model` calls
:meth:`LinearGaussianHead.fit_closed_form` on ALL rows (no validation split: n is the number of rows fitted);
with a trainable encoder (no-transfer, fine-tune) the shared loop trains it by gradient like any head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from .errors import DataError
from .head import Head, register_head
from .rng import check_generator

__all__ = ["LOG_2PI", "LinearGaussianHead"]

LOG_2PI = math.log(2 * math.pi)


@register_head("linear_gaussian")
class LinearGaussianHead(Head):
    """x | z ~ N(B z + b, L L^T) with a full covariance (Cholesky factor L with positive diagonal).

    Example:
        >>> head = LinearGaussianHead(2, 3)
        >>> z, x = torch.randn(100, 3), torch.randn(100, 2)
        >>> head.fit_closed_form(x, z)
        >>> head.log_prob(x, z).shape
        torch.Size([100])
    """

    has_rsample = True
    #: With a linear encoder in front, the joint maximum-likelihood fit is reduced-rank regression (exact).
    exact_with_linear_encoder = True

    def __init__(self, features: int, context_features: int | None = None) -> None:
        super().__init__(features, context_features)
        d, p = features, context_features or 0
        self.weight = nn.Parameter(torch.zeros(d, p))
        self.bias = nn.Parameter(torch.zeros(d))
        self.tril = nn.Parameter(torch.zeros(d, d))  # strictly lower part of L
        self.log_diag = nn.Parameter(torch.zeros(d))  # log of L's diagonal

    @property
    def config(self) -> dict[str, Any]:
        return {"features": self.features, "context_features": self.context_features}

    @property
    def free_parameters(self) -> int:
        """k = d_x (d_z + 1) + d_x (d_x + 1) / 2."""
        d, p = self.features, self.context_features or 0
        return d * (p + 1) + d * (d + 1) // 2

    def scale_tril(self) -> Tensor:
        return torch.tril(self.tril, -1) + torch.diag(self.log_diag.exp())

    def _loc(self, n: int, context: Tensor | None) -> Tensor:
        return self.bias.expand(n, -1) if context is None else context @ self.weight.T + self.bias

    def law(self, context: Tensor | None, n: int = 1) -> MultivariateNormal:
        """The Gaussian of x for each context row (or ``n`` copies of the unconditional one)."""
        rows = n if context is None else context.shape[0]
        return MultivariateNormal(self._loc(rows, context), scale_tril=self.scale_tril())

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x, context = self.check_inputs(x, context)
        tril = self.scale_tril()
        resid = (x - self._loc(x.shape[0], context)).T  # (d, n)
        z = torch.linalg.solve_triangular(tril, resid, upper=False)
        log_p: Tensor = -0.5 * z.square().sum(0) - self.log_diag.sum() - 0.5 * self.features * LOG_2PI
        return log_p

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, context).mean()

    def rsample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, features) draws loc + L e that carry gradients; context None, (k,) shared or (n, k)."""
        context = self.sample_context(n, context)
        loc = self._loc(n, context)
        noise = torch.randn(loc.shape, generator=check_generator(generator), dtype=loc.dtype, device=loc.device)
        return loc + noise @ self.scale_tril().T

    def sample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, features) draws without gradients."""
        with torch.no_grad():
            return self.rsample(n, context, generator=generator)

    @torch.no_grad()
    def fit_closed_form(self, x: Tensor, context: Tensor | None = None) -> None:
        """Set the parameters to the exact maximum-likelihood estimate on x (n, d_x) given context (n, d_z).

        B, b by least squares (in float64), Sigma = residual sum of squares / n. Needs n > d_z + d_x so that
        Sigma is nonsingular; fewer rows raise :class:`DataError`.
        """
        x, context = self.check_inputs(x, context)
        n, d = x.shape
        p = 0 if context is None else context.shape[1]
        if n <= p + d:
            raise DataError(
                f"an exact linear-Gaussian fit needs more than d_z + d_x = {p + d} rows (else its covariance is "
                f"singular), got n={n}"
            )
        xd = x.to(torch.float64)
        design = torch.ones(n, p + 1, dtype=torch.float64, device=x.device)
        if context is not None:
            design[:, :p] = context.to(torch.float64)
        coef = torch.linalg.lstsq(design, xd).solution  # (p + 1, d)
        resid = xd - design @ coef
        cov = resid.T @ resid / n
        chol = torch.linalg.cholesky(cov)
        like = self.bias
        self.weight.copy_(coef[:p].T.to(like))
        self.bias.copy_(coef[p].to(like))
        self.tril.copy_(torch.tril(chol, -1).to(like))
        self.log_diag.copy_(torch.diagonal(chol).log().to(like))
        if not all(torch.isfinite(t).all() for t in (self.weight, self.bias, self.tril, self.log_diag)):
            raise DataError("the exact linear-Gaussian fit is not finite: check x and the context for NaN or inf")

    def nll(self, x: Tensor, context: Tensor | None = None) -> float:
        """Mean negative log-likelihood on (x, context), in nats per row."""
        return float(-self.log_prob(x, context).mean())
