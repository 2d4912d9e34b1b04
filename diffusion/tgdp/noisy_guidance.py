"""A time-dependent domain classifier used as the guidance itself, and a switch to another score at small t.

With the same forward kernel in both domains, a classifier c'(x_t, t) = P(source | x_t, t) trained by BCE on
noised source and noised target rows at the same t has the Bayes optimum c' = pi_s p_t / (pi_s p_t + pi_t q_t),
so

    log h_t(x) = log q_t(x) / p_t(x) = -logit c'(x, t) + log(pi_s / pi_t)

is the guidance directly, no regression onto w in between (:class:`ClassifierGuidance`; the prior factor
pi_s / pi_t, n_s / n_t for pooled BCE, stays explicit in the ``DensityRatio``). Every training step draws
fresh t and noise for every row (``fit_domain_classifier(time_dependent=True)``): unlimited noise
augmentation, which is what a target sample of 10 rows needs.

:class:`SwitchedScore`: above a switch time the guided score, below it another ScoreFn (the target-only or
fine-tuned head), for when the guidance is least reliable at small t.
"""

from __future__ import annotations

from torch import Tensor

from shared_embed.errors import ConfigError
from shared_embed.validation import check_fraction

from ..sampling import ScoreFn, check_times
from .classifier import DensityRatio

__all__ = ["ClassifierGuidance", "SwitchedScore"]


class ClassifierGuidance:
    """log h_t(x[, y]) = log ratio of a time-dependent :class:`DensityRatio`, (n,): a Guidance.

    Example:
        >>> ratio, _ = fit_domain_classifier(src_x, tgt_x, time_dependent=True)
        >>> score = GuidedScore(source_head.score, ClassifierGuidance(ratio))
    """

    def __init__(self, ratio: DensityRatio) -> None:
        if not getattr(ratio.classifier, "time_dependent", False):
            raise ConfigError("ClassifierGuidance needs a time-dependent classifier (time_dependent=True)")
        self.ratio = ratio

    def log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        return self.ratio.log_ratio(x, t, context)

    def h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        return self.log_h(x, t, context).exp()


class SwitchedScore:
    """``high(x, t, ctx)`` for t >= ``switch``, ``low(x, t, ctx)`` below it, row by row: a ScoreFn (n, d)."""

    def __init__(self, high: ScoreFn, low: ScoreFn, switch: float) -> None:
        if not (callable(high) and callable(low)):
            raise ConfigError("high and low must be score functions score(x, t, context)")
        self.high, self.low, self.switch = high, low, check_fraction("switch", switch)

    def __call__(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        t = check_times("t", t, x)
        below = (t < self.switch)[:, None]
        if bool(below.all()):
            return self.low(x, t, context)
        if not bool(below.any()):
            return self.high(x, t, context)
        return self.high(x, t, context).where(~below, self.low(x, t, context))
