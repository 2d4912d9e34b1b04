"""Known answers for the samplers: with the EXACT noised score of a Gaussian mixture plugged in, SDE and ODE
samples follow the mixture.

Two-sample statistic: the unbiased MMD^2 with a Gaussian kernel at the median-heuristic bandwidth
(``theory.truth.metrics.mmd2``), n = 800 draws against 800 exact draws. Its null distribution is taken by a
permutation run on the pooled sample (300 permutations, seeded): a sampler passes when its p-value is
above 0.01. The same test rejects source-vs-target draws of the TGDP task (p < 0.01, a power check), so the
threshold is neither vacuous nor arbitrary.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import CountedScore, VPSchedule, sample_ode, sample_sde
from shared_embed import ConfigError, DataError, DTypeError, ShapeError
from theory.truth.metrics import mmd2
from theory.truth.tasks import TwoGaussianTask

N = 800
SCH = VPSchedule()


def mmd_permutation_test(x: torch.Tensor, y: torch.Tensor, perms: int = 300, seed: int = 0) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of x against y; the statistic is the one of ``theory.truth.metrics.mmd2``."""
    value, bw = mmd2(x, y)
    z = torch.cat([x, y]).double()
    k = torch.exp(-torch.cdist(z, z).square() / (2 * bw * bw))
    k.fill_diagonal_(0.0)
    n, m = x.shape[0], y.shape[0]

    def stat(u: torch.Tensor) -> torch.Tensor:  # u (P, n + m): 1 on the rows labelled x, 0 on those labelled y
        v = 1.0 - u
        ku = u @ k
        return (ku * u).sum(-1) / (n * (n - 1)) + ((v @ k) * v).sum(-1) / (m * (m - 1)) - 2 * (ku * v).sum(-1) / (n * m)

    labels = torch.cat([torch.ones(n), torch.zeros(m)]).double()
    assert math.isclose(float(stat(labels[None])[0]), value, rel_tol=1e-6, abs_tol=1e-9)
    gen = torch.Generator().manual_seed(seed)
    null = stat(torch.stack([labels[torch.randperm(n + m, generator=gen)] for _ in range(perms)]))
    return value, float(((null >= value).sum() + 1) / (perms + 1))


@pytest.fixture(scope="module")
def mixture() -> tuple[TwoGaussianTask, torch.Tensor, torch.Tensor]:
    task = TwoGaussianTask()
    gen = torch.Generator().manual_seed(7)
    exact = task.sample(N, "source", gen).x.double()
    x1 = torch.randn(N, 2, generator=gen, dtype=torch.float64)
    return task, exact, x1


def test_the_two_sample_test_has_power(mixture) -> None:
    task, exact, _ = mixture
    other = task.sample(N, "target", torch.Generator().manual_seed(8)).x.double()
    same = task.sample(N, "source", torch.Generator().manual_seed(9)).x.double()
    assert mmd_permutation_test(exact, other)[1] < 0.01
    assert mmd_permutation_test(exact, same)[1] > 0.01
    # and it sees a sampler error: Euler-Maruyama with 5 steps (beta h = 4 at t = 1) is rejected
    task_score, x1 = task.score_fn("source", SCH), mixture[2]
    coarse = sample_sde(task_score, x1, SCH, steps=5, generator=torch.Generator().manual_seed(3))
    assert mmd_permutation_test(coarse, exact)[1] < 0.01


@pytest.mark.parametrize("sampler", ["ode", "euler_maruyama", "heun"])
def test_samples_with_the_exact_score_match_the_mixture(mixture, sampler: str) -> None:
    task, exact, x1 = mixture
    score = task.score_fn("source", SCH)
    if sampler == "ode":
        x0 = sample_ode(score, x1, SCH, rtol=1e-5, atol=1e-5)
    else:
        x0 = sample_sde(score, x1, SCH, steps=200, method=sampler, generator=torch.Generator().manual_seed(3))
    value, p = mmd_permutation_test(x0, exact)
    print(f"{sampler}: MMD^2 = {value:.2e}, permutation p = {p:.3f}")
    assert p > 0.01


def test_heun_is_more_accurate_than_euler_maruyama_at_equal_steps() -> None:
    """1-D Gaussian data N(1, 0.05), exact score; 50 steps, 50,000 paired draws (same x1, same noise)."""
    m, v, n = 1.0, 0.05, 50_000

    def score(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        a, s = SCH.alpha(t)[:, None], SCH.sigma(t)[:, None]
        return -(x - a * m) / (a * a * v + s * s)

    x1 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = {}
    for method in ("euler_maruyama", "heun"):
        x = sample_sde(score, x1, SCH, steps=50, method=method, generator=torch.Generator().manual_seed(1))
        err[method] = (abs(float(x.mean()) - m), abs(float(x.var()) / v - 1))
    # MC standard errors: mean 1e-3, relative variance 6e-3. Measured: EM (7.4e-3, 0.13), Heun (8e-4, 0.036).
    assert err["heun"][0] < 3e-3 < err["euler_maruyama"][0]
    assert err["heun"][1] < 0.06 and err["heun"][1] < 0.5 * err["euler_maruyama"][1]


def test_conditional_sampling_reads_the_context() -> None:
    """x | y ~ N(y mu, 0.1 I) for labels y = +-1: per-label means and variances of ODE and Heun draws."""
    task = TwoGaussianTask()
    score = task.score_fn("source", SCH, conditional=True)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat_interleave(500)[:, None]
    x1 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for x in (
        sample_ode(score, x1, SCH, context=y),
        sample_sde(score, x1, SCH, context=y, steps=200, method="heun", generator=torch.Generator().manual_seed(1)),
    ):
        for label in (1.0, -1.0):
            rows = x[y[:, 0] == label]
            assert torch.allclose(rows.mean(0), label * task.mu["source"], atol=4 * math.sqrt(0.1 / 500))
            assert torch.allclose(rows.var(0), torch.full((2,), 0.1, dtype=torch.float64), rtol=0.2)


def test_nfe_counts() -> None:
    score = CountedScore(lambda x, t, c: -x)
    x1 = torch.randn(5, 2, dtype=torch.float64)
    sample_sde(score, x1, SCH, steps=7)
    assert score.calls == 7
    score.calls = 0
    sample_sde(score, x1, SCH, steps=7, method="heun")
    assert score.calls == 14
    score.calls = 0
    out = sample_ode(score, x1, SCH)
    assert torch.allclose(out, x1, atol=1e-12)  # s = -x: the standard normal is stationary, the flow is still
    assert score.calls > 0


def test_bad_inputs_are_refused() -> None:
    score = lambda x, t, c: -x  # noqa: E731
    x1 = torch.randn(4, 2)
    with pytest.raises(DTypeError, match="score must be callable"):
        sample_sde(None, x1, SCH)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="x1"):
        sample_ode(score, torch.randn(4), SCH)
    with pytest.raises(DataError, match="x1"):
        sample_ode(score, torch.full((4, 2), math.nan), SCH)
    with pytest.raises(ShapeError, match="context"):
        sample_sde(score, x1, SCH, context=torch.randn(3, 1))
    with pytest.raises(ConfigError, match="method"):
        sample_sde(score, x1, SCH, method="rk4")
    with pytest.raises(ConfigError, match="method"):
        sample_ode(score, x1, SCH, method="euler")
    with pytest.raises(DataError, match="t_eps"):
        sample_ode(score, x1, SCH, t_eps=0.0)
    with pytest.raises(DataError, match="steps"):
        sample_sde(score, x1, SCH, steps=0)
    with pytest.raises(DataError, match="rtol"):
        sample_ode(score, x1, SCH, rtol=-1.0)
    with pytest.raises(ShapeError, match="score must return"):
        sample_sde(lambda x, t, c: x[:, :1], x1, SCH, steps=2)
