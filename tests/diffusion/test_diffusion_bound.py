"""The Girsanov bound: known answers of its Monte Carlo integral, a check of the inequality itself on a
linear-Gaussian case where the reverse-SDE model's law is exact, and a trained head's bound next to its
measured (probability-flow) KL."""

from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from diffusion import DiffusionHead, VPSchedule, girsanov_bound, mixture_prior_kl_bound
from shared_embed import ConfigError, DataError, TrainConfig, fit
from theory.truth.kl import gaussian_kl
from theory.truth.tasks import TwoGaussianTask

SCH = VPSchedule()
T_EPS = 1e-5


def gaussian_score(mean: float, var: float):
    """The exact noised score of 1-D data N(mean, var) under SCH."""

    def score(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        a, s = SCH.alpha(t).to(x)[:, None], SCH.sigma(t).to(x)[:, None]
        return -(x - a * mean) / (a * a * var + s * s)

    return score


def draws(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_exact_score_gives_the_prior_term_alone() -> None:
    score = lambda x, t, c: -x  # noqa: E731
    b = girsanov_bound(score, score, draws(100), SCH, prior_kl=0.25)
    assert b.score_term == 0.0 and b.score_se == 0.0 and b.value == 0.25 and b.se == 0.0


def test_constant_score_error_integrates_beta() -> None:
    """s_hat = s + c: the score term is 1/2 |c|^2 int beta = |c|^2 (log a_{t_eps} - log a_1)."""
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    true = lambda x, t, ctx: -x  # noqa: E731
    learned = lambda x, t, ctx: -x + c  # noqa: E731
    b = girsanov_bound(
        learned, true, draws(2000), SCH, prior_kl=0.0, t_eps=T_EPS, generator=torch.Generator().manual_seed(1)
    )
    want = float(c.square().sum() * (SCH.log_alpha(T_EPS) - SCH.log_alpha(1.0)))
    assert abs(b.score_term - want) < 4 * b.score_se and b.score_se < 0.01 * want


def test_epsilon_like_error_integrates_the_log_snr() -> None:
    """s_hat = s + c / s_t (a constant epsilon error): int beta / (2 s_t^2) dt = log(s/a) |_{t_eps}^1, which
    grows like log(1/t_eps) -- the case the log-spaced strata are for."""
    c = torch.tensor([0.1, 0.2], dtype=torch.float64)
    learned = lambda x, t, ctx: -x + c / SCH.sigma(t).to(x)[:, None]  # noqa: E731
    b = girsanov_bound(
        learned,
        lambda x, t, ctx: -x,
        draws(2000),
        SCH,
        prior_kl=0.0,
        t_eps=T_EPS,
        generator=torch.Generator().manual_seed(2),
    )
    lam = lambda t: float(SCH.sigma(t).log() - SCH.log_alpha(t))  # noqa: E731
    want = float(c.square().sum()) * (lam(1.0) - lam(T_EPS))
    assert abs(b.score_term - want) < 4 * b.score_se and b.score_se < 0.01 * want


def test_prior_term_closed_form_and_monte_carlo_agree() -> None:
    mean, var = torch.tensor([2.0], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)
    closed = float(SCH.prior_kl(mean, var))
    x0 = mean + var.sqrt() * torch.randn(4000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a1, s1 = SCH.alpha(1.0).double(), SCH.sigma(1.0).double()
    p1 = torch.distributions.Normal(a1 * mean, (a1**2 * var[0] + s1**2).sqrt())
    score = gaussian_score(2.0, 0.5)
    b = girsanov_bound(
        score,
        score,
        x0,
        SCH,
        log_prob_1=lambda x1, c: p1.log_prob(x1).sum(-1),
        generator=torch.Generator().manual_seed(4),
    )
    assert abs(b.prior_term - closed) < 4 * b.prior_se + 1e-12
    # the mixture closed form is a convexity upper bound, exact for one component
    one = mixture_prior_kl_bound(torch.ones(1).double(), mean[None], var[None], SCH)
    assert math.isclose(one, closed, rel_tol=1e-9)
    mu = torch.tensor([0.5, 0.5], dtype=torch.float64)
    two = mixture_prior_kl_bound(
        torch.tensor([0.5, 0.5]).double(),
        torch.stack([mu, -mu]),
        0.1 * torch.eye(2, dtype=torch.float64).expand(2, 2, 2),
        SCH,
    )
    assert two >= 0


def reverse_sde_gaussian(mean_hat: float, var_hat: float, shift: float = 0.0) -> tuple[float, float]:
    """Exact mean and variance at t_eps of the reverse SDE started at N(0, 1), driven by the score
    s_hat = (noised score of N(mean_hat, var_hat)) + shift: the drift is linear, so the law stays Gaussian
    and its two moments solve two ODEs (in tau = 1 - t)."""

    def rhs(tau: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        t = 1.0 - tau
        a, s, beta = SCH.alpha(t), SCH.sigma(t), SCH.beta(t)
        k = 1.0 / (a * a * var_hat + s * s)
        m, v = state
        slope = 0.5 * beta - beta * k
        return torch.stack([slope * m + beta * (k * a * mean_hat + shift), 2 * slope * v + beta])

    taus = torch.tensor([0.0, 1.0 - T_EPS], dtype=torch.float64)
    out = odeint(
        rhs, torch.tensor([0.0, 1.0], dtype=torch.float64), taus, rtol=1e-10, atol=1e-10, options={"step_t": taus[1:]}
    )[-1]  # land on t_eps: the schedule is undefined below t = 0
    return float(out[0]), float(out[1])


M, V = 1.0, 0.05  # 1-D data N(1, 0.05)


def sde_model_kl(mean_hat: float, var_hat: float, shift: float = 0.0) -> float:
    """Exact KL(p_{t_eps} || p_hat_SDE) for the data N(M, V) and the model of :func:`reverse_sde_gaussian`."""
    mean_sde, var_sde = reverse_sde_gaussian(mean_hat, var_hat, shift)
    a, s = float(SCH.alpha(T_EPS)), float(SCH.sigma(T_EPS))
    return float(
        gaussian_kl(
            torch.tensor([a * M]).double(),
            torch.tensor([[a * a * V + s * s]]).double(),
            torch.tensor([mean_sde]).double(),
            torch.tensor([[var_sde]]).double(),
        )
    )


def bound_for(learned, seed: int):
    x0 = M + math.sqrt(V) * torch.randn(4000, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    prior = float(SCH.prior_kl(torch.tensor([M], dtype=torch.float64), torch.tensor([[V]], dtype=torch.float64)))
    return girsanov_bound(
        learned,
        gaussian_score(M, V),
        x0,
        SCH,
        prior_kl=prior,
        t_eps=T_EPS,
        generator=torch.Generator().manual_seed(seed + 1),
    )


def test_the_bound_is_tight_for_the_exact_score_of_another_law() -> None:
    """Model score: the noised score of q = N(1.2, 0.08). Its reverse SDE is the time reversal of q's forward
    process (up to the N(0, I) start), and both forward processes share their kernels, so the path KL -- the
    bound -- equals KL(p || q) at t_eps: the bound is tight. Measured: KL 0.2975, bound 0.2885 +- 0.0068
    (a quadrature of the same integral gives 0.29752)."""
    kl = sde_model_kl(1.2, 0.08)
    b = bound_for(gaussian_score(1.2, 0.08), seed=5)
    print(f"tight case: exact KL(p || p_SDE) = {kl:.4f}, bound {b.value:.4f} +- {b.se:.4f}")
    assert abs(b.value - kl) < 4 * b.se and b.se < 0.05 * kl


def test_the_bound_holds_with_slack_for_a_shifted_score() -> None:
    """Model score: the exact score + 0.3. The SDE model's law is still an exact Gaussian; its KL (0.045) lies
    far below the bound 0.3^2 (log a_{t_eps} - log a_1) = 0.452: the path KL counts drift error that the
    end marginal forgets."""
    kl = sde_model_kl(M, V, shift=0.3)
    b = bound_for(lambda x, t, c: gaussian_score(M, V)(x, t, c) + 0.3, seed=7)
    print(f"shifted score: exact KL(p || p_SDE) = {kl:.4f} <= bound {b.value:.4f} +- {b.se:.4f}")
    assert (
        kl < b.value - 4 * b.se
        and abs(b.score_term - 0.09 * float(SCH.log_alpha(T_EPS) - SCH.log_alpha(1.0))) < 4 * b.score_se
    )


def test_trained_head_bound_and_measured_kl() -> None:
    """A small head on the TGDP source mixture (raw coordinates, 1000 steps): its Girsanov bound and its
    probability-flow KL on 2000 fresh draws, reported together. The bound covers the SDE model; the measured
    ODE model's KL sits below it here (the theorem does not promise that, so the check allows 3 SE).
    Measured: KL 0.049 +- 0.008, bound 0.092 +- 0.004 (score term; prior term 1.1e-5)."""
    task = TwoGaussianTask()
    gen = torch.Generator().manual_seed(0)
    x = task.sample(4000, "source", gen).x
    torch.manual_seed(0)
    head = DiffusionHead(2, width=32, blocks=2)
    fit(head, lambda batch: head.loss(batch[0]), (x,), config=TrainConfig(steps=1000, batch_size=256, lr=2e-3))
    x_eval = task.sample(2000, "source", gen).x
    with torch.no_grad():
        diff = task.log_prob(x_eval.double(), "source") - head.log_prob(x_eval).double()
    kl, kl_se = float(diff.mean()), float(diff.std()) / math.sqrt(diff.shape[0])
    mu = task.mu["source"]
    prior = mixture_prior_kl_bound(
        torch.tensor([0.5, 0.5]).double(),
        torch.stack([mu, -mu]),
        task.variance * torch.eye(2, dtype=torch.float64).expand(2, 2, 2),
        SCH,
    )
    b = girsanov_bound(
        head.score,
        task.score_fn("source", SCH),
        task.sample(4000, "source", gen).x,
        SCH,
        prior_kl=prior,
        t_eps=head.t_eps,
        generator=gen,
    )
    print(
        f"trained head: probability-flow KL {kl:.4f} +- {kl_se:.4f}; Girsanov bound {b.value:.4f} +- {b.se:.4f} "
        f"(score term {b.score_term:.4f}, prior term {b.prior_term:.1e})"
    )
    assert 0 < kl < 0.5 and kl <= b.value + 3 * math.hypot(kl_se, b.se)


def test_bad_inputs_are_refused() -> None:
    score = lambda x, t, c: -x  # noqa: E731
    with pytest.raises(ConfigError, match="exactly one"):
        girsanov_bound(score, score, draws(10), SCH)
    with pytest.raises(ConfigError, match="exactly one"):
        girsanov_bound(score, score, draws(10), SCH, prior_kl=0.0, log_prob_1=lambda x, c: x.sum(-1))
    with pytest.raises(DataError, match="at least 4 rows"):
        girsanov_bound(score, score, draws(3), SCH, prior_kl=0.0)
    with pytest.raises(DataError, match="strata"):
        girsanov_bound(score, score, draws(10), SCH, prior_kl=0.0, strata=6)
    with pytest.raises(DataError, match="not finite"):
        girsanov_bound(lambda x, t, c: x * math.nan, score, draws(10), SCH, prior_kl=0.0)
