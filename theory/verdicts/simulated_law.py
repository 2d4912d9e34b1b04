"""Two-sided checks against an exactly simulated law: the band a statistic must fall in, at any level.

A known-answer check has, for every seed, draws of its cells' values under a CORRECT pipeline (simulated exactly,
e.g. :func:`theory.truth.known_answers.simulate_fitted_kls`). :func:`statistic_law` combines them into draws of
the check's statistic over all seeds (one independent draw per seed, plus each record's Monte Carlo error), and
:class:`Band` turns those draws into the acceptance band at whatever level the family's error control assigns to
the check, so the verdict and the band printed beside it always agree: FAIL iff the statistic is outside.

With the sorted null draws s_0 <= ... <= s_{N-1} and j = floor(level N / 2), the band is (s_j, s_{N-1-j}]; the
two-sided p-value is 2 min(F, 1 - F) with F the fraction of draws below the statistic, so p <= level exactly
when the statistic is outside the band.

Example:
    >>> band = Band(np.random.default_rng(0).normal(1.0, 0.1, 20000), observed=1.5)
    >>> band.p_value() < 0.001, band.at(0.05)[0] < 1.0 < band.at(0.05)[1]
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Band", "per_seed_slopes", "statistic_law"]

#: Fewest power a goodness-of-fit check needs against the alternatives it names, to pass.
POWER = 0.8


def statistic_law(
    per_seed: Sequence[np.ndarray],
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    mc_sd: np.ndarray | None = None,
    draws: int = 20000,
    seed: int = 1,
) -> np.ndarray:
    """Draws (draws,) of ``statistic`` under the simulated law.

    Args:
        per_seed: for each seed, simulated cell values (reps, cells) under a correct pipeline.
        statistic: maps values (..., seeds, cells) to the statistic (...).
        mc_sd: (seeds, cells) Monte Carlo SDs of the records' estimates, added as Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    values = np.stack([sims[rng.integers(0, sims.shape[0], size=draws)] for sims in per_seed], axis=1)
    if mc_sd is not None:
        values = values + rng.normal(size=values.shape) * mc_sd
    return np.asarray(statistic(values), dtype=float)


#: Values below this are clipped before a log (a KL estimate near 0 can fall below it by its Monte Carlo error);
#: observed and simulated values are treated alike, so the law stays exact, only wider.
LOG_FLOOR = 1e-6


def per_seed_slopes(values: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Minus the least-squares slope of log value on log n along the last axis (values clipped at LOG_FLOOR)."""
    x = np.log(np.asarray(levels, dtype=float))
    xc = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    return -(np.log(np.maximum(values, LOG_FLOOR)) * xc).sum(-1)


@dataclass
class Band:
    """The null draws of a statistic, its observed value, and alternatives to measure power against.

    ``alternatives``: name -> draws of the statistic under that alternative (e.g. every KL doubled).
    """

    null: np.ndarray
    observed: float
    alternatives: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        null = np.asarray(self.null, dtype=float)
        self.null = np.sort(null[np.isfinite(null)])
        if self.null.size < 100:
            raise ValueError(f"a band needs at least 100 finite null draws, got {self.null.size}")

    def p_value(self) -> float:
        """Two-sided p-value 2 min(F, 1 - F), F = fraction of null draws below the observed value."""
        if not math.isfinite(self.observed):
            return math.nan
        f = float(np.searchsorted(self.null, self.observed, side="left")) / self.null.size
        return min(1.0, 2.0 * min(f, 1.0 - f))

    def at(self, level: float) -> tuple[float, float]:
        """(low, high): the statistic FAILs at ``level`` iff it is <= low or > high."""
        n = self.null.size
        j = min(int(math.floor(level * n / 2.0)), n // 2 - 1)
        return float(self.null[j]), float(self.null[n - 1 - j])

    def power(self, level: float) -> dict[str, float]:
        """For each alternative: the probability that its statistic falls outside the band at ``level``."""
        lo, hi = self.at(level)
        return {name: float(np.mean((alt <= lo) | (alt > hi))) for name, alt in self.alternatives.items()}

    def outside(self, level: float) -> bool:
        lo, hi = self.at(level)
        return self.observed <= lo or self.observed > hi
