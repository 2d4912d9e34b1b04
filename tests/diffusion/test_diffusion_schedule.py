"""Known answers for every VP schedule quantity: a_t, s_t, beta, the SDE coefficients, the marginal, the prior KL."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import VPSchedule
from shared_embed import ConfigError, DataError

KINDS = ("linear", "cosine")


def grid(kind: str) -> torch.Tensor:
    top = VPSchedule(kind).t_max if kind == "cosine" else 1.0
    return torch.linspace(1e-4, top - 1e-4, 41, dtype=torch.float64)


def test_linear_closed_forms() -> None:
    sch = VPSchedule("linear", beta_min=0.1, beta_max=20.0)
    t = grid("linear")
    integral = 0.1 * t + 0.5 * t.square() * (20.0 - 0.1)
    assert torch.allclose(sch.alpha(t), torch.exp(-0.5 * integral), rtol=1e-12)
    assert torch.allclose(sch.sigma(t), torch.sqrt(1 - torch.exp(-integral)), rtol=1e-12)
    assert torch.allclose(sch.beta(t), 0.1 + t * 19.9, rtol=1e-12)
    assert float(sch.alpha(0.0)) == 1.0 and float(sch.sigma(0.0)) == 0.0
    assert math.isclose(float(sch.alpha(1.0)), math.exp(-0.25 * 20.1), rel_tol=1e-6)


def test_cosine_closed_forms() -> None:
    sch = VPSchedule("cosine")
    t, c = grid("cosine"), sch.cosine_offset
    f = lambda u: torch.cos(0.5 * math.pi * (u + c) / (1 + c))  # noqa: E731
    assert torch.allclose(sch.alpha(t), f(t) / f(torch.zeros(()).double()), rtol=1e-12)
    assert torch.allclose(sch.beta(t), math.pi / (1 + c) * torch.tan(0.5 * math.pi * (t + c) / (1 + c)), rtol=1e-10)
    assert math.isclose(float(sch.alpha(torch.tensor(0.0, dtype=torch.float64))), 1.0, abs_tol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_beta_is_minus_twice_the_log_alpha_derivative(kind: str) -> None:
    sch = VPSchedule(kind)
    t = grid(kind).requires_grad_(True)
    (grad,) = torch.autograd.grad(sch.log_alpha(t).sum(), t)
    assert torch.allclose(sch.beta(t.detach()), -2.0 * grad, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_variance_is_preserved_and_small_t_is_stable(kind: str) -> None:
    sch = VPSchedule(kind)
    t = grid(kind)
    assert torch.allclose(sch.sigma(t).square() + sch.alpha(t).square(), torch.ones_like(t), atol=1e-14)
    # s_t^2 ~ beta(0) t for small t: sqrt(1 - a^2) computed naively would round to 0 at t = 1e-12 (linear).
    # The cosine form's log a_t = log cos(.) - log cos(c0) carries an absolute rounding error ~1e-16, so its
    # check starts at t = 1e-8.
    tiny = torch.tensor([1e-12, 1e-9] if kind == "linear" else [1e-8, 1e-6], dtype=torch.float64)
    assert torch.allclose(sch.sigma(tiny).square() / tiny, sch.beta(torch.zeros(2, dtype=torch.float64)), rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_sde_coefficients_and_marginal(kind: str) -> None:
    sch = VPSchedule(kind)
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    assert torch.allclose(sch.drift(x, t), -0.5 * sch.beta(t)[:, None] * x)
    assert torch.allclose(sch.diffusion(t).square(), sch.beta(t))
    noise = torch.randn_like(x)
    x_t, e = sch.marginal(x, t, noise)
    assert e is noise and torch.allclose(x_t, sch.alpha(t)[:, None] * x + sch.sigma(t)[:, None] * noise)


@pytest.mark.parametrize("kind", KINDS)
def test_log_scales_and_noise_level_match_alpha_and_sigma(kind: str) -> None:
    """(log a_t, log s_t) and the networks' noise level log(s_t / a_t) against a_t and s_t, float64, and finite
    at t = 1e-5, where s_t ~ 3e-3 and a naive log(sqrt(1 - a_t^2)) loses digits."""
    sch = VPSchedule(kind)
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 0.9], dtype=torch.float64)
    log_a, log_s = sch.log_scales(t)
    assert torch.allclose(log_a.exp(), sch.alpha(t), rtol=1e-12)
    assert torch.allclose(log_s.exp(), sch.sigma(t), rtol=1e-12)
    assert torch.allclose(sch.noise_level(t), torch.log(sch.sigma(t) / sch.alpha(t)), rtol=1e-12)
    assert bool(torch.isfinite(sch.noise_level(t)).all()) and bool((sch.noise_level(t).diff() > 0).all())


def test_marginal_moments_by_monte_carlo() -> None:
    sch = VPSchedule()
    n, t = 200_000, 0.3
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    x_t, _ = sch.marginal(x0, t)
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    assert abs(float(x_t.mean()) - 2 * a) < 5 * s / math.sqrt(n)
    assert abs(float(x_t.var()) / s**2 - 1) < 5 * math.sqrt(2 / n)


def test_prior_kl_matches_the_gaussian_closed_form() -> None:
    sch = VPSchedule()
    mean, cov = (
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64),
    )
    a, s = sch.alpha(1.0).double(), sch.sigma(1.0).double()
    p1 = torch.distributions.MultivariateNormal(a * mean, a**2 * cov + s**2 * torch.eye(2, dtype=torch.float64))
    std = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    assert math.isclose(
        float(sch.prior_kl(mean, cov)), float(torch.distributions.kl_divergence(p1, std)), rel_tol=1e-6, abs_tol=1e-12
    )


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="kind"):
        VPSchedule("quadratic")
    with pytest.raises(DataError, match="beta_max"):
        VPSchedule(beta_max=-1.0)
    with pytest.raises(ValueError, match="beta_max must exceed"):
        VPSchedule(beta_min=5.0, beta_max=1.0)
