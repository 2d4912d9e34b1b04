"""TGDP's guided score only where the source rows are dense; another score where they are not.

The guidance grad log h_t(x) = grad log E_p[w(x_0) | x_t = x] rests on a density ratio w fitted where the
source has rows. Where the target lives in the source's tails, the kernel posterior of x_0 given x_t = x puts
its weight on a handful of rows (at small t), and the fitted log w is an extrapolation there. With
n_eff(x, t) = (sum_i k_i)^2 / sum_i k_i^2 the effective number of source rows the kernel estimate averages over
(:meth:`~diffusion.tgdp.kernel_guidance.KernelGuidance.effective_rows`), the gated score is

    s(x, t) = lambda s_guided(x, t) + (1 - lambda) s_low(x, t),   lambda = n_eff / (n_eff + rows),

so ``rows`` is the number of effective rows at which the two scores count equally. It is a pointwise blend of two
score fields (not in general the score of one density); the probability-flow ODE and its likelihood take it
like any ScoreFn (lambda stays differentiable in x, so the likelihood's divergence is exact). At large t, n_eff is the number of rows and the guided score rules; inside the source's
support it rules at every t.

Example:
    >>> gated = GatedScore(GuidedScore(src.score, kernel), target_head.score, kernel, rows=10)
"""

from __future__ import annotations

from torch import Tensor

from shared_embed.errors import ConfigError
from shared_embed.validation import check_positive_float

from ..sampling import ScoreFn, check_times
from .kernel_guidance import KernelGuidance


class GatedScore:
    """lambda(x, t) ``guided`` + (1 - lambda) ``low``, lambda = n_eff / (n_eff + ``rows``) (module docstring); a
    ScoreFn on (n, d)."""

    def __init__(self, guided: ScoreFn, low: ScoreFn, kernel: KernelGuidance, rows: float = 10.0) -> None:
        if not (callable(guided) and callable(low)):
            raise ConfigError("guided and low must be score functions score(x, t, context)")
        if not callable(getattr(kernel, "effective_rows", None)):
            raise ConfigError(f"kernel must be a KernelGuidance (with effective_rows), got {type(kernel).__name__}")
        self.guided, self.low, self.kernel = guided, low, kernel
        self.rows = check_positive_float("rows", rows)

    def weight(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """lambda(x, t) in (0, 1), (n,), differentiable in x (the likelihood's divergence needs its gradient)."""
        n_eff = self.kernel.effective_rows(x, check_times("t", t, x), context).to(x.dtype)
        return n_eff / (n_eff + self.rows)

    def __call__(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        t = check_times("t", t, x)
        lam = self.weight(x, t, context)[:, None]
        return lam * self.guided(x, t, context) + (1 - lam) * self.low(x, t, context)
