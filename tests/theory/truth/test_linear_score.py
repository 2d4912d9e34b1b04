"""The closed-form linear-error case: moment ODEs against hand formulas and against the project's samplers."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.sampling import sample_ode, sample_sde
from shared_embed.errors import ShapeError
from theory.truth.kl import gaussian_kl
from theory.truth.linear_score import LinearErrorCase


def _int_beta(case: LinearErrorCase) -> float:
    """int_{t_eps}^1 beta(t) dt for the linear schedule."""
    s, e = case.schedule, case.t_eps
    return s.beta_min * (1 - e) + 0.5 * (s.beta_max - s.beta_min) * (1 - e**2)


def _skewed(a: torch.Tensor, b: torch.Tensor) -> LinearErrorCase:
    return LinearErrorCase(torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]]), a, b)


def test_isotropic_case_matches_the_hand_solution() -> None:
    """N(0, I) data, A = a I, b = 0: Sigma_t = I, so the ODE covariance is exp(a int beta) I, the SDE covariance
    relaxes to 1 / (1 - 2a) as C = C* + (1 - C*) exp((2a - 1) int beta), and the bound is a^2 d int beta / 2."""
    a, d = 0.1, 3
    case = LinearErrorCase.isotropic(d, a)
    u = _int_beta(case)
    sde_mean, sde_cov, score_term = case.sde_law()
    ode_mean, ode_cov = case.ode_law()
    c_star = 1 / (1 - 2 * a)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.allclose(sde_cov, (c_star + (1 - c_star) * math.exp((2 * a - 1) * u)) * eye, atol=1e-8)
    assert torch.allclose(ode_cov, math.exp(a * u) * eye, rtol=1e-8)
    assert sde_mean.abs().max() < 1e-12 and ode_mean.abs().max() < 1e-12
    assert score_term == pytest.approx(0.5 * a**2 * d * u, rel=1e-8)
    kls = case.kls()
    r = math.exp(a * u)
    assert kls.kl_ode == pytest.approx(0.5 * d * (1 / r - 1 + math.log(r)), rel=1e-6)
    assert kls.prior_term == pytest.approx(0.0, abs=1e-12)


def test_zero_error_leaves_only_the_prior_term() -> None:
    """Exact score: the ODE is a bijection carrying p_1 to p_{t_eps}, so KL(p_{t_eps} || ODE law) equals
    KL(p_1 || N(0, I)) exactly; the SDE is a Markov kernel doing the same, so its KL is at most that (data
    processing), and the bound is the prior term alone."""
    case = _skewed(torch.zeros(2, 2), torch.zeros(2))
    kls = case.kls()
    assert kls.score_term == pytest.approx(0.0, abs=1e-15)
    assert kls.bound == kls.prior_term
    assert 0 < kls.prior_term < 1e-4
    assert kls.kl_ode == pytest.approx(kls.prior_term, abs=1e-8)
    assert 0 <= kls.kl_sde <= kls.prior_term + 1e-8
    # against p_0 instead of p_{t_eps}: the t_eps term, here s_{t_eps}^2 = 1e-4 of added variance
    assert abs(kls.kl_sde_p0 - kls.kl_sde) < 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_the_bound_holds_for_the_sde_law(seed: int) -> None:
    """Random constant errors A, b on skewed Gaussian data: exact SDE-law KL <= the Girsanov bound."""
    g = torch.Generator().manual_seed(seed)
    a = 0.3 * torch.randn(2, 2, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(2, generator=g, dtype=torch.float64)
    kls = _skewed(a, b).kls()
    assert 0 < kls.kl_sde <= kls.bound


@pytest.mark.parametrize(("a", "b"), [(0.1, 0.0), (-0.1, 0.0), (0.0, 0.1)])
def test_the_ode_law_can_exceed_the_bound(a: float, b: float) -> None:
    """Documentation that "ODE KL <= Girsanov bound" is no theorem: on N(0, I) data a small linear score error
    gives an ODE-law KL two to seven times the bound, while the SDE law stays below it."""
    kls = LinearErrorCase.isotropic(2, a, b).kls()
    assert kls.kl_sde < kls.bound < kls.kl_ode / 2


def _moment_z(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """Largest |z| of the sample mean and of the sample covariance entries against (mean, cov)."""
    n = x.shape[0]
    z_mean = (x.mean(0) - mean) / (cov.diagonal() / n).sqrt()
    var_cov = (cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.square()) / n
    z_cov = (torch.cov(x.T) - cov) / var_cov.sqrt()
    return float(z_mean.abs().max()), float(z_cov.abs().max())


def test_moment_odes_agree_with_the_project_samplers() -> None:
    """sample_sde (Heun, 200 steps) and sample_ode (dopri5) run with the analytic learned score: sample
    moments within 4 SE of the moment-ODE laws (n = 20000), and the laws differ from each other."""
    case = _skewed(torch.tensor([[0.3, 0.1], [0.0, -0.2]]), torch.tensor([0.2, 0.0]))
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    sde_mean, sde_cov, _ = case.sde_law()
    ode_mean, ode_cov = case.ode_law()
    xs = sample_sde(case.learned_score, x1, case.schedule, steps=200, method="heun", t_eps=case.t_eps, generator=g)
    xo = sample_ode(case.learned_score, x1, case.schedule, t_eps=case.t_eps, rtol=1e-7, atol=1e-7)
    assert max(_moment_z(xs, sde_mean, sde_cov)) < 4
    assert max(_moment_z(xo, ode_mean, ode_cov)) < 4
    assert float(gaussian_kl(sde_mean, sde_cov, ode_mean, ode_cov)) > 1.0


def test_scores_are_the_truth_plus_the_stated_error() -> None:
    case = _skewed(torch.tensor([[0.3, 0.1], [0.0, -0.2]]), torch.tensor([0.2, 0.0]))
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    mu, sigma = case.marginal(0.3)
    assert torch.allclose(case.true_score(x, t), -(x - mu) @ torch.linalg.inv(sigma), atol=1e-12)
    err = case.learned_score(x, t) - case.true_score(x, t)
    assert torch.allclose(err, x @ case.error_matrix.T + case.error_shift, atol=1e-12)


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ShapeError, match="cov"):
        LinearErrorCase(torch.zeros(2), -torch.eye(2), torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ShapeError, match="error_matrix"):
        LinearErrorCase(torch.zeros(2), torch.eye(2), torch.zeros(3, 3), torch.zeros(2))
