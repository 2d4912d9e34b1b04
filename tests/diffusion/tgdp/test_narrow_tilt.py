"""NarrowTiltGuidance against closed forms: a Gaussian source tilted by exp(beta^T x) times a Gaussian factor in
u^T x is Gaussian (the guidance is exact at every t), and a tilted Gaussian mixture (exact as t -> 0)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.schedule import VPSchedule
from diffusion.tgdp import GuidedScore, NarrowTiltGuidance, QuadraticLogRatio, TiltGuidance, fit_narrowing
from shared_embed.errors import ConfigError, DataError, ShapeError

SCHEDULE = VPSchedule()
D = 3
MU = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
L = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.2, 0.3, 0.6]], dtype=torch.float64)
SIGMA = L @ L.T
BETA = torch.tensor([0.6, -0.2, 0.3], dtype=torch.float64)
U = torch.tensor([0.8, 0.5, -0.3], dtype=torch.float64)
GAMMA, CENTRE = 2.5, 0.7


def gaussian_rows(mu, sigma, n=500, seed=0):
    """n rows whose sample mean and covariance (torch.cov) are exactly mu and sigma."""
    z = torch.randn(n, mu.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T))
    return mu + torch.linalg.solve_triangular(white, z.T, upper=False).T @ torch.linalg.cholesky(sigma).T


def factor_terms():
    """(A, b', const): the tilt times the factor as exp(b'^T x - x^T A x / 2 + const)."""
    return GAMMA * torch.outer(U, U), BETA + GAMMA * CENTRE * U, -GAMMA * CENTRE**2 / 2


def tilted_gaussian(mu, sigma):
    """(mean, covariance, log E_N(mu, sigma)[w]) of N(mu, sigma) times w = exp(b'^T x - x^T A x / 2 + const)."""
    a, b, c = factor_terms()
    prec = torch.linalg.inv(sigma) + a
    eta = torch.linalg.solve(sigma, mu) + b
    cov = torch.linalg.inv(prec)
    log_z = (
        -0.5 * torch.logdet(torch.eye(len(mu), dtype=torch.float64) + sigma @ a)
        - 0.5 * mu @ torch.linalg.solve(sigma, mu)
        + 0.5 * eta @ cov @ eta
        + c
    )
    return cov @ eta, cov, log_z


def mixture_log_density(x, t, mus, covs, log_weights):
    a, s = SCHEDULE.alpha(t).to(x), SCHEDULE.sigma(t).to(x)
    out = []
    for mu, cov, lw in zip(mus, covs, log_weights, strict=True):
        var = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * torch.eye(D, dtype=x.dtype)
        r = x - a[:, None] * mu
        quad = (r * torch.linalg.solve(var, r[..., None])[..., 0]).sum(-1)
        out.append(lw - 0.5 * quad - 0.5 * torch.logdet(var) - D / 2 * math.log(2 * math.pi))
    return torch.logsumexp(torch.stack(out, -1), -1)


def score_of(mus, covs, log_weights):
    def score(x, t, context=None):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]) if torch.as_tensor(t).dim() == 0 else t
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            lp = mixture_log_density(xg, t, mus, covs, log_weights)
            (g,) = torch.autograd.grad(lp.sum(), xg, create_graph=torch.is_grad_enabled())
        return g

    return score


def linear_ratio():
    return QuadraticLogRatio(torch.zeros(1, D, D), BETA[None], torch.zeros(1), prior_factor=1.0)


def narrow(score, rows, max_shift, gamma=GAMMA, quadrature=4, feature=None):
    """The guidance along U (or along ``feature`` when given) with the module's ratio, gamma and centre."""
    return NarrowTiltGuidance(
        score,
        linear_ratio(),
        SCHEDULE,
        rows,
        **({"direction": U} if feature is None else {"feature": feature}),
        gamma=torch.tensor([gamma], dtype=torch.float64),
        centre=torch.tensor([CENTRE], dtype=torch.float64),
        max_shift=max_shift,
        quadrature=quadrature,
    )


@pytest.mark.parametrize("max_shift", [1e6, 0.0])
@pytest.mark.parametrize("t", [0.01, 0.1, 0.4, 0.8])
def test_gaussian_source_gives_the_closed_form_guidance_at_every_t(t, max_shift):
    """p = N(mu, Sigma), w = exp(beta^T x - gamma (u^T x - m)^2 / 2): q is Gaussian and grad log h_t = s_q - s_p
    in closed form; both branches (through the score, and the Gaussian form) match it to float64 rounding."""
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    mu_q, cov_q, _ = tilted_gaussian(MU, SIGMA)
    q_score = score_of([mu_q], [cov_q], [torch.tensor(0.0, dtype=torch.float64)])
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tt = torch.full((40,), t, dtype=torch.float64)
    guidance = narrow(p_score, gaussian_rows(MU, SIGMA), max_shift)
    torch.testing.assert_close(guidance.grad_log_h(x, tt), q_score(x, tt) - p_score(x, tt), rtol=1e-7, atol=1e-9)
    composed = GuidedScore(p_score, guidance)(x, tt)
    torch.testing.assert_close(composed, q_score(x, tt), rtol=1e-7, atol=1e-9)


def test_log_h_differences_are_exact_for_a_gaussian_source():
    """log h_t up to a constant: its differences between points are those of log q_t - log p_t."""
    zero = torch.tensor(0.0, dtype=torch.float64)
    p_score = score_of([MU], [SIGMA], [zero])
    mu_q, cov_q, _ = tilted_gaussian(MU, SIGMA)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tt = torch.full((20,), 0.2, dtype=torch.float64)
    guidance = narrow(p_score, gaussian_rows(MU, SIGMA), 1e6, quadrature=12)
    truth = mixture_log_density(x, tt, [mu_q], [cov_q], [zero]) - mixture_log_density(x, tt, [MU], [SIGMA], [zero])
    got = guidance.log_h(x, tt)
    torch.testing.assert_close(got - got[0], truth - truth[0], rtol=1e-6, atol=1e-8)


def test_mixture_source_matches_the_tilted_mixture_as_t_goes_to_zero():
    """A two-component mixture tilted by the same w is a mixture of the tilted components (closed form); the
    Gaussian posterior of u^T x_0 is exact only as t -> 0, so the error is small at small t and shrinks with t."""
    mus = [torch.tensor([1.2, -0.5, 0.3], dtype=torch.float64), torch.tensor([-1.0, 0.8, -0.4], dtype=torch.float64)]
    covs = [0.3 * torch.eye(D, dtype=torch.float64), 0.5 * torch.eye(D, dtype=torch.float64)]
    logw = [torch.tensor(0.4, dtype=torch.float64).log(), torch.tensor(0.6, dtype=torch.float64).log()]
    tilted = [tilted_gaussian(m, c) for m, c in zip(mus, covs, strict=True)]
    q_score = score_of(
        [m for m, _, _ in tilted],
        [c for _, c, _ in tilted],
        [lw + z for lw, (_, _, z) in zip(logw, tilted, strict=True)],
    )
    p_score = score_of(mus, covs, logw)
    g = torch.Generator().manual_seed(3)
    k = torch.multinomial(torch.tensor([0.4, 0.6]), 4000, replacement=True, generator=g)
    rows = (
        torch.stack(mus)[k]
        + torch.randn(4000, D, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.5]).double()[k, None].sqrt()
    )
    guidance = narrow(p_score, rows, 1e6)
    x = torch.stack([m for m, _, _ in tilted])[torch.arange(40) % 2] + 0.3 * torch.randn(
        40, D, generator=g, dtype=torch.float64
    )
    errors = []
    for t in (1e-3, 1e-2):
        tt = torch.full((40,), t, dtype=torch.float64)
        with torch.no_grad():
            truth = q_score(x, tt) - p_score(x, tt)
            got = guidance.grad_log_h(x, tt)
        errors.append(float((got - truth).norm(dim=-1).max() / truth.norm(dim=-1).max()))
    assert errors[0] < 0.01 and errors[1] < 0.1 and errors[0] < errors[1]


def test_gamma_zero_is_the_tilt_guidance():
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    rows = gaussian_rows(MU, SIGMA)
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tt = torch.linspace(0.01, 1.0, 10, dtype=torch.float64)
    tilt = TiltGuidance(p_score, linear_ratio(), SCHEDULE, rows, max_shift=1.0)
    torch.testing.assert_close(narrow(p_score, rows, 1.0, gamma=0.0).grad_log_h(x, tt), tilt.grad_log_h(x, tt))


def test_fit_narrowing_recovers_a_gaussian_selection_and_splits_it():
    """Target rows N(2, 0.25) in z against a N(0, 1) source in every label: log w = 8 z - 1.5 z^2 in z units."""
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(3, dtype=torch.float64)
    ls = torch.arange(30000, dtype=torch.float64) % 3
    lt = torch.arange(3000, dtype=torch.float64) % 3
    mean, sd = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    fs = mean[ls.long()] + sd[ls.long()] * torch.randn(30000, generator=g, dtype=torch.float64)
    ft = mean[lt.long()] + sd[lt.long()] * (2.0 + 0.5 * torch.randn(3000, generator=g, dtype=torch.float64))
    for method in ("moments", "cv"):
        fit = fit_narrowing(fs, ft, ls, lt, labels, method=method)
        torch.testing.assert_close(fit.gamma, 3.0 / sd**2, rtol=0.1, atol=0.0)
        torch.testing.assert_close(fit.slope, 8.0 / sd + 3.0 * mean / sd**2, rtol=0.1, atol=0.2)
        # the fit's own constant normalises w over the source: E_p[w] = 1 per label (the ratio of two Gaussians)
        w = fit.log_ratio(fs, ls.long()).exp()
        for k in range(3):
            assert abs(float(w[ls == k].mean()) - 1.0) < 0.1, (method, k)
        log_w = fit.log_ratio(ft, lt.long())
        assert abs(float(log_w.mean()) - 2.318) < 0.1  # E_q[log w] = KL(N(2, 1/4) || N(0, 1)) = 2.318
    b1, gamma, centre = fit.split(1.0)
    f = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for k in range(3):
        split = b1[k] * f - gamma[k] / 2 * (f - centre[k]) ** 2
        whole = fit.slope[k] * f - fit.gamma[k] / 2 * f**2
        torch.testing.assert_close(split - split[0], whole - whole[0])


def test_bad_inputs_are_refused():
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    rows = gaussian_rows(MU, SIGMA)
    one = torch.ones(1, dtype=torch.float64)
    common = (p_score, linear_ratio(), SCHEDULE, rows)
    with pytest.raises(ConfigError, match="gamma"):
        NarrowTiltGuidance(*common, direction=U, gamma=-one, centre=one)
    with pytest.raises(DataError, match="centre"):
        NarrowTiltGuidance(*common, direction=U, gamma=one, centre=one * math.inf)
    with pytest.raises(ShapeError, match="gamma"):
        NarrowTiltGuidance(*common, direction=U, gamma=torch.ones(2, dtype=torch.float64), centre=one)
    with pytest.raises(ShapeError, match="direction"):
        NarrowTiltGuidance(*common, direction=U[:2], gamma=one, centre=one)
    with pytest.raises(ConfigError, match="direction"):
        NarrowTiltGuidance(*common, direction=U * 0, gamma=one, centre=one)
    with pytest.raises(ConfigError, match="exactly one"):
        NarrowTiltGuidance(*common, gamma=one, centre=one)
    with pytest.raises(ConfigError, match="exactly one"):
        NarrowTiltGuidance(*common, direction=U, feature=LinearFeature(), gamma=one, centre=one)
    with pytest.raises(ConfigError, match="Feature"):
        NarrowTiltGuidance(*common, feature=lambda x: x[:, 0], gamma=one, centre=one)

    class ForgottenTerm(BentFeature):  # the gradient of U^T x only: the tanh term's derivative forgotten
        def grad(self, x):
            return U.to(x).expand_as(x)

    with pytest.raises(ConfigError, match="not the gradient"):
        NarrowTiltGuidance(*common, feature=ForgottenTerm(), gamma=one, centre=one)
    with pytest.raises(ConfigError, match="method"):
        fit_narrowing(rows[:, 0], rows[:5, 0], torch.zeros(500), torch.zeros(5), torch.zeros(1), method="kde")
    with pytest.raises(ShapeError, match="target_labels"):
        fit_narrowing(rows[:, 0], rows[:5, 0], torch.zeros(500), torch.ones(5), torch.zeros(1))
    with pytest.raises(ShapeError, match="source_f"):
        fit_narrowing(rows, rows[:5, 0], torch.zeros(500), torch.zeros(5), torch.zeros(1))


class LinearFeature:
    """f(x) = U^T x as a Feature: the nonlinear path must reproduce the direction's closed form."""

    def __call__(self, x):
        return x @ U.to(x)

    def grad(self, x):
        return U.to(x).expand_as(x)


class BentFeature:
    """f(x) = U^T x + 0.3 sum(tanh(x)): smooth, monotone, and far enough from linear to tell the forms apart."""

    def __call__(self, x):
        return x @ U.to(x) + 0.3 * torch.tanh(x).sum(-1)

    def grad(self, x):
        return U.to(x) + 0.3 * (1 - torch.tanh(x).square())


def bent_log_w(x):
    return x @ BETA - GAMMA / 2 * (BentFeature()(x) - CENTRE) ** 2


@pytest.mark.parametrize("max_shift", [1e6, 0.0])
def test_a_linear_feature_is_the_direction(max_shift):
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    rows = gaussian_rows(MU, SIGMA)
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    tt = torch.linspace(0.01, 1.0, 12, dtype=torch.float64)
    by_u, by_f = narrow(p_score, rows, max_shift), narrow(p_score, rows, max_shift, feature=LinearFeature())
    torch.testing.assert_close(by_f.grad_log_h(x, tt), by_u.grad_log_h(x, tt))
    torch.testing.assert_close(by_f.log_h(x, tt), by_u.log_h(x, tt))


def test_a_nonlinear_feature_gives_log_w_as_t_goes_to_zero():
    """At t -> 0 the linearisation is exact: log h_t -> log w (up to a constant) and grad log h_t -> grad log w."""
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    guidance = narrow(p_score, gaussian_rows(MU, SIGMA), 1e6, feature=BentFeature())
    x = MU + torch.randn(20, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    tt = torch.full((20,), 1e-5, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (truth,) = torch.autograd.grad(bent_log_w(xg).sum(), xg)
    torch.testing.assert_close(guidance.grad_log_h(x, tt), truth, rtol=1e-3, atol=1e-3)
    got, want = guidance.log_h(x, tt), bent_log_w(x)
    torch.testing.assert_close(got - got[0], want - want[0], rtol=1e-3, atol=1e-3)


def test_a_nonlinear_feature_tracks_the_exact_guidance_of_a_gaussian_source():
    """p = N(mu, Sigma): x_0 | x_t is Gaussian in closed form, so h_t(x) = E[w(x_0) | x_t = x] by Monte Carlo
    is the truth; the linearised guidance's log h_t differences follow it closely at small t, less at larger t."""
    p_score = score_of([MU], [SIGMA], [torch.tensor(0.0, dtype=torch.float64)])
    rows = gaussian_rows(MU, SIGMA)
    guidance = narrow(p_score, rows, 1e6, feature=BentFeature())
    linear = narrow(p_score, rows, 1e6, feature=LinearFeature())
    g = torch.Generator().manual_seed(8)
    x = MU + 0.5 * torch.randn(8, D, generator=g, dtype=torch.float64)
    eps = torch.randn(200_000, D, generator=g, dtype=torch.float64)
    errors, misses = [], []
    for t in (0.02, 0.2):
        a, s = float(SCHEDULE.alpha(torch.tensor(t))), float(SCHEDULE.sigma(torch.tensor(t)))
        cov_post = torch.linalg.inv(torch.linalg.inv(SIGMA) + a**2 / s**2 * torch.eye(D, dtype=torch.float64))
        chol = torch.linalg.cholesky(cov_post)
        truth = []
        for xi in x:
            mean_post = cov_post @ (torch.linalg.solve(SIGMA, MU) + a / s**2 * xi)
            truth.append(torch.logsumexp(bent_log_w(mean_post + eps @ chol.T), 0))
        want = torch.stack(truth)
        for out, model in ((errors, guidance), (misses, linear)):
            with torch.no_grad():
                got = model.log_h(x, torch.full((8,), t, dtype=torch.float64))
            out.append(float(((got - got[0]) - (want - want[0])).abs().max() / (want - want[0]).abs().max()))
    # measured 0.001 and 0.006; the feature's linear part alone (tanh dropped) misses by far more
    assert errors[0] < 0.005 and errors[1] < 0.03 and errors[0] < errors[1], errors
    assert min(misses) > 10 * max(errors), misses
