"""Exact guidance + exact source score = exact target score on the two-Gaussian task; samplers and the probability-
flow likelihood fed that composed score reproduce the target law."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import probability_flow_log_prob, sample_ode, sample_sde
from diffusion.tgdp import (
    GuidedScore,
    guidance_grad,
)
from tests.diffusion.test_diffusion_sampling import mmd_permutation_test
from tests.diffusion.tgdp.two_gaussians import (
    EXACT,
    EXACT_COND,
    F64,
    SCH,
    SOURCE,
    SOURCE_COND,
    TARGET,
    TARGET_COND,
    TASK,
    grid,
    labels,
)


@pytest.mark.parametrize("t", [1e-4, 1e-2, 0.1, 0.3, 0.6, 1.0])
def test_exact_guidance_composes_to_the_exact_target_score(t: float) -> None:
    """s_p + grad log h_t = s_q on a 9x9 grid. Tolerance 1e-10: both sides are float64 closed forms (the left
    through autograd of log q_t - log p_t), measured <= 4e-14 on scores up to 20 in size."""
    x = grid()
    ts = torch.full((x.shape[0],), t, dtype=F64)
    composed = GuidedScore(SOURCE, EXACT)(x, t)
    assert composed.shape == x.shape and composed.dtype == F64
    torch.testing.assert_close(composed, TARGET(x, ts, None), rtol=0, atol=1e-10)
    # the gradient alone is the task's closed-form target-minus-source score
    torch.testing.assert_close(
        guidance_grad(EXACT, x, ts), TASK.guidance_grad(x, SCH.alpha(ts), SCH.sigma(ts)), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("t", [1e-4, 0.1, 1.0])
def test_exact_conditional_guidance_composes_to_the_exact_conditional_target_score(t: float) -> None:
    """grad_x log p_t(x | y) + grad_x log h_t(x, y) = grad_x log q_t(x | y) with labels y = +/-1 as context;
    tolerance as in the unconditional test. Also checks the context really is read: at t = 0.1 flipping the
    labels changes the composed score by O(1) (at t = 1 the labels barely matter: a_1 = 6.6e-3)."""
    x, y = grid(), labels(81)
    ts = torch.full((81,), t, dtype=F64)
    composed = GuidedScore(SOURCE_COND, EXACT_COND)(x, t, y)
    torch.testing.assert_close(composed, TARGET_COND(x, ts, y), rtol=0, atol=1e-10)
    with torch.no_grad():
        flipped = GuidedScore(SOURCE_COND, EXACT_COND)(x, 0.1, -y) - GuidedScore(SOURCE_COND, EXACT_COND)(x, 0.1, y)
    assert float(flipped.abs().max()) > 1.0


def test_guided_score_keeps_a_graph_when_grad_is_on_and_none_under_no_grad() -> None:
    """Documented in ``compose``: with grad on, the score is differentiable in x (needed by the likelihood's
    divergence) and its x-Jacobian matches the exact target score's one (float64, 1e-8); under no_grad the
    result carries no graph."""
    x = grid()[:10].clone().requires_grad_(True)
    s = GuidedScore(SOURCE, EXACT)(x, 0.2)
    assert s.requires_grad
    (g,) = torch.autograd.grad(s[:, 0].sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_true,) = torch.autograd.grad(TARGET(x2, torch.full((10,), 0.2, dtype=F64), None)[:, 0].sum(), x2)
    torch.testing.assert_close(g, g_true, rtol=0, atol=1e-8)
    with torch.no_grad():
        assert not GuidedScore(SOURCE, EXACT)(x.detach(), 0.2).requires_grad


@pytest.fixture(scope="module")
def target_draws() -> tuple[torch.Tensor, torch.Tensor]:
    """800 exact target draws and 800 N(0, I) starting points (the settings of test_diffusion_sampling)."""
    gen = torch.Generator().manual_seed(7)
    return TASK.sample(800, "target", gen).x.double(), torch.randn(800, 2, generator=gen, dtype=F64)


def test_samplers_with_the_composed_exact_score_reproduce_the_target(target_draws) -> None:
    """ODE (dopri5, 1e-5) and SDE (Heun, 100 steps) samples of GuidedScore(exact source, exact guidance)
    against 800 exact target draws: MMD^2 permutation test (median-bandwidth Gaussian kernel, 300 seeded
    permutations) must not reject at 1% (measured p = 0.98 and 0.28). Power: the same test rejects the ODE
    samples against exact SOURCE draws (p < 0.01), so passing is not vacuous."""
    exact, x1 = target_draws
    score = GuidedScore(SOURCE, EXACT)
    with torch.no_grad():
        ode = sample_ode(score, x1, SCH, rtol=1e-5, atol=1e-5)
        sde = sample_sde(score, x1, SCH, steps=100, method="heun", generator=torch.Generator().manual_seed(3))
    for name, x0 in (("ode", ode), ("sde", sde)):
        value, p = mmd_permutation_test(x0, exact)
        print(f"{name}: MMD^2 = {value:.2e}, p = {p:.3f}")
        assert p > 0.01, name
    source = TASK.sample(800, "source", torch.Generator().manual_seed(8)).x.double()
    assert mmd_permutation_test(ode, source)[1] < 0.01


def test_sample_ode_takes_the_guided_score_unchanged(target_draws) -> None:
    """The documented use ``sample_ode(GuidedScore(...), x1, schedule)`` without a wrapper (a few points
    suffice: the failure is at the first step)."""
    with torch.no_grad():
        x0 = sample_ode(GuidedScore(SOURCE, EXACT), target_draws[1][:20], SCH, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(x0).all()


def test_conditional_sde_samples_with_the_composed_exact_score_match_each_class() -> None:
    """Per label y = +/-1 (300 rows each), reverse-SDE (Heun, 100 steps) samples of the conditional composed
    exact score have the target class mean y mu_T (within 4 standard errors, sd sqrt(0.1) / sqrt(300) = 0.018
    per coordinate, plus 0.01 for the discretisation) and covariance 0.1 I (entries within 0.025, about 4 sd of
    a sample covariance entry at n = 300: sqrt(2) 0.1 / sqrt(300) = 0.008, plus discretisation)."""
    y = labels(600)
    x1 = torch.randn(600, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    with torch.no_grad():
        x0 = sample_sde(
            GuidedScore(SOURCE_COND, EXACT_COND),
            x1,
            SCH,
            context=y,
            steps=100,
            method="heun",
            generator=torch.Generator().manual_seed(12),
        )
    mu = TASK.mu["target"]
    for label in (1.0, -1.0):
        xs = x0[y[:, 0] == label]
        tol = 4 * math.sqrt(TASK.variance / xs.shape[0]) + 0.01
        assert float((xs.mean(0) - label * mu).abs().max()) < tol, label
        assert float((torch.cov(xs.T) - TASK.variance * torch.eye(2, dtype=F64)).abs().max()) < 0.025, label


def test_likelihood_of_the_composed_exact_score_is_the_target_log_density(target_draws) -> None:
    """probability_flow_log_prob(GuidedScore(exact)) on 150 target draws against log q: mean absolute error
    < 2e-4 nats, the bound test_diffusion_likelihood uses for the exact source score (solver 1e-5 plus the
    N(0, I) prior's mismatch, second order in a_1 = 6.6e-3 for the symmetric mixture); measured 2.4e-5.
    Conditional version against log q(x | y): the class mean a_1 y mu_T makes the N(0, I) mismatch first order
    (1.4e-2 measured), so the exact q_1(x | y) is the prior; the solver error of that narrow Gaussian at
    rtol = atol = 1e-5 is 2.1e-4 (6e-5 at 1e-7), bound 5e-4. In both cases the solve with the composed score
    is the solve with the exact target score up to round-off (1e-8: the scores agree to 1e-14)."""
    x = target_draws[0][:150]
    y = labels(150)
    a1, s1 = SCH.alpha(1.0).double(), SCH.sigma(1.0).double()
    prior = lambda x1, c: TASK.noised_log_prob(x1, "target", a1, s1, c)  # noqa: E731
    with torch.no_grad():
        lp = probability_flow_log_prob(GuidedScore(SOURCE, EXACT), x, SCH)
        lp_c = probability_flow_log_prob(GuidedScore(SOURCE_COND, EXACT_COND), x, SCH, context=y, prior=prior)
        ref = probability_flow_log_prob(TARGET, x, SCH)
        ref_c = probability_flow_log_prob(TARGET_COND, x, SCH, context=y, prior=prior)
    mae = float((lp - TASK.log_prob(x, "target")).abs().mean())
    mae_c = float((lp_c - TASK.log_prob(x, "target", y)).abs().mean())
    print(f"log-density MAE {mae:.2e} nats, conditional {mae_c:.2e}")
    assert mae < 2e-4 and mae_c < 5e-4
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(lp_c, ref_c, rtol=0, atol=1e-8)
