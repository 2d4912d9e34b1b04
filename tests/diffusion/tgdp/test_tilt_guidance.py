"""TiltGuidance against closed forms: the exact guidance of an exponential tilt of a Gaussian mixture.

For p = sum_k pi_k N(mu_k, sig_k^2 I) and w = exp(beta^T x), q = w p / E_p[w] is the mixture of N(mu_k + sig_k^2 beta,
sig_k^2 I) with weights proportional to pi_k exp(beta^T mu_k + sig_k^2 |beta|^2 / 2), so grad log h_t = grad log q_t -
grad log p_t is known at every t; TiltGuidance gets it from p's score alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.schedule import VPSchedule
from diffusion.tgdp import GuidedScore, QuadraticLogRatio, TiltGuidance, guidance_grad
from shared_embed.errors import ConfigError, ShapeError

SCHEDULE = VPSchedule()
MU = torch.tensor([[1.0, -0.5], [-1.0, 0.8]], dtype=torch.float64)
SIG2 = torch.tensor([0.3, 0.6], dtype=torch.float64)
PI = torch.tensor([0.4, 0.6], dtype=torch.float64)
BETA = torch.tensor([0.7, -0.4], dtype=torch.float64)


def mixture_log_density(x, t, mu, sig2, pi):
    a, s2 = SCHEDULE.alpha(t).to(x)[:, None], SCHEDULE.sigma(t).to(x).square()[:, None]
    var = a.square() * sig2[None] + s2  # (n, K)
    sq = ((x[:, None, :] - a[:, :, None] * mu[None]) ** 2).sum(-1)
    return torch.logsumexp(pi.log()[None] - sq / (2 * var) - x.shape[1] / 2 * torch.log(2 * math.pi * var), -1)


def score_of(mu, sig2, pi):
    def score(x, t, context=None):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]) if torch.as_tensor(t).dim() == 0 else t
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(
                mixture_log_density(xg, t, mu, sig2, pi).sum(), xg, create_graph=torch.is_grad_enabled()
            )
        return g

    return score


def tilted():
    mu_q = MU + SIG2[:, None] * BETA[None]
    logits = PI.log() + MU @ BETA + SIG2 * BETA.square().sum() / 2
    return mu_q, SIG2, torch.softmax(logits, 0)


def linear_ratio(beta=BETA):
    return QuadraticLogRatio(torch.zeros(1, 2, 2), beta[None], torch.zeros(1), prior_factor=1.0)


def source_rows(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(PI, n, replacement=True, generator=g)
    return MU[k] + SIG2[k, None].sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("t", [0.01, 0.1, 0.3, 0.6])
def test_exact_branch_is_the_closed_form_guidance_of_a_tilted_mixture(t):
    """Through the mixture's own score (max_shift large enough that every row takes the exact branch) the
    guidance equals grad log q_t - grad log p_t of the closed-form tilted mixture, to float64 rounding."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tt = torch.full((50,), t, dtype=torch.float64)
    guidance = TiltGuidance(score_of(MU, SIG2, PI), linear_ratio(), SCHEDULE, source_rows(), max_shift=1e6)
    truth = score_of(*tilted())(x, tt) - score_of(MU, SIG2, PI)(x, tt)
    torch.testing.assert_close(guidance.grad_log_h(x, tt), truth, rtol=1e-7, atol=1e-9)
    composed = GuidedScore(score_of(MU, SIG2, PI), guidance)(x, tt)
    torch.testing.assert_close(composed, score_of(*tilted())(x, tt), rtol=1e-7, atol=1e-9)


def test_log_h_by_quadrature_has_the_exact_gradient_and_the_exact_differences():
    """log h_t from the score's segment integral: its autograd gradient is grad_log_h, and its differences between
    points are those of log q_t - log p_t (log h_t is known up to a constant)."""
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tt = torch.full((20,), 0.2, dtype=torch.float64)
    guidance = TiltGuidance(
        score_of(MU, SIG2, PI), linear_ratio(), SCHEDULE, source_rows(), max_shift=1e6, quadrature=12
    )
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(guidance.log_h(xg, tt).sum(), xg)
    torch.testing.assert_close(auto, guidance.grad_log_h(x, tt), rtol=1e-6, atol=1e-8)
    truth = mixture_log_density(x, tt, *tilted()) - mixture_log_density(x, tt, MU, SIG2, PI)
    got = guidance.log_h(x, tt)
    torch.testing.assert_close(got - got[0], truth - truth[0], rtol=1e-6, atol=1e-8)


def test_gaussian_branch_is_exact_for_a_gaussian_source_and_tends_to_beta_and_zero():
    """max_shift = 0: a Sigma (a^2 Sigma + s^2 I)^{-1} beta from the rows' covariance; for one Gaussian component
    it matches the closed form up to the covariance's sampling error; it is beta at t -> 0 and 0 at t = 1."""
    one_mu, one_sig2, one_pi = MU[:1], SIG2[:1], torch.ones(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    rows = one_mu + one_sig2.sqrt() * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    guidance = TiltGuidance(score_of(one_mu, one_sig2, one_pi), linear_ratio(), SCHEDULE, rows, max_shift=0.0)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64)
    for t in (0.05, 0.3, 0.7):
        tt = torch.full((10,), t, dtype=torch.float64)
        q = score_of(one_mu + one_sig2[:, None] * BETA, one_sig2, one_pi)(x, tt)
        torch.testing.assert_close(
            guidance.grad_log_h(x, tt), q - score_of(one_mu, one_sig2, one_pi)(x, tt), rtol=0.03, atol=0.01
        )
    near0 = guidance.grad_log_h(x, torch.full((10,), 1e-5, dtype=torch.float64))
    torch.testing.assert_close(near0, BETA.expand(10, 2), rtol=1e-3, atol=1e-3)
    assert float(guidance.grad_log_h(x, torch.ones(10, dtype=torch.float64)).abs().max()) < 0.02


def test_guidance_grad_prefers_grad_log_h_and_labels_pick_their_beta():
    """With labels the context's last column picks the label's beta; guidance_grad returns grad_log_h."""
    labels = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ratio = QuadraticLogRatio(torch.zeros(2, 2, 2), torch.stack([BETA, -BETA]), torch.zeros(2), 1.0, labels=labels)
    rows = source_rows()
    lab = (torch.arange(len(rows)) % 2).double()[:, None]
    guidance = TiltGuidance(score_of(MU, SIG2, PI), ratio, SCHEDULE, rows, lab, max_shift=1e6)
    x = torch.zeros(2, 2, dtype=torch.float64)
    tt = torch.full((2,), 1e-6, dtype=torch.float64)
    got = guidance_grad(guidance, x, tt, torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(got, torch.stack([BETA, -BETA]), rtol=1e-3, atol=1e-3)


def test_bad_inputs_are_refused():
    quadratic = QuadraticLogRatio(torch.eye(2)[None], BETA[None], torch.zeros(1), 1.0)
    with pytest.raises(ConfigError, match="linear log ratio"):
        TiltGuidance(score_of(MU, SIG2, PI), quadratic, SCHEDULE, source_rows())
    with pytest.raises(ConfigError, match="max_shift"):
        TiltGuidance(score_of(MU, SIG2, PI), linear_ratio(), SCHEDULE, source_rows(), max_shift=-1.0)
    with pytest.raises(ShapeError, match="source_labels"):
        TiltGuidance(score_of(MU, SIG2, PI), linear_ratio(), SCHEDULE, source_rows(), torch.zeros(4000, 1))
