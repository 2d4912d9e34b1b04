"""Known answers for the network-free TGDP guidance estimators and the inside-the-support task.

Two Gaussians p = N(0, I), q = N(m, S) have a quadratic log w and an exact h_t = q_t / p_t (both stay Gaussian
under the VP process), so the kernel guidance and the cross-validated quadratic ratio are held against the
exact answer there; the two-mode simulation checks the plain kernel estimate with the exact w. Each check has
a negative control that must fail it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from diffusion.schedule import VPSchedule
from diffusion.tgdp import fit_domain_classifier
from diffusion.tgdp.kernel_guidance import KernelGuidance
from diffusion.tgdp.noisy_guidance import ClassifierGuidance, SwitchedScore
from diffusion.tgdp.quadratic_ratio import QuadraticLogRatio, fit_quadratic_log_ratio
from diffusion.tgdp.switch_time import select_switch
from shared_embed.errors import ConfigError, ShapeError
from shared_embed.train import TrainConfig
from theory.truth.tasks import TwoGaussianTask, inside_support_task

SCH = VPSchedule()
M = torch.tensor([0.8, -0.6], dtype=torch.float64)
S = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=torch.float64)


def gaussian_log_ratio(prior_factor: float = 1.0) -> QuadraticLogRatio:
    """The exact log N(x; M, S) - log N(x; 0, I) as a QuadraticLogRatio (its const absorbs the prior factor)."""
    si = torch.linalg.inv(S)
    quad = 0.5 * (torch.eye(2, dtype=torch.float64) - si)
    const = -0.5 * M @ si @ M - 0.5 * torch.logdet(S) - math.log(prior_factor)
    return QuadraticLogRatio(quad[None], (si @ M)[None], const.reshape(1), prior_factor)


def exact_gaussian_log_h(x: torch.Tensor, t: float) -> torch.Tensor:
    a, s = SCH.alpha(torch.tensor(t)).double(), SCH.sigma(torch.tensor(t)).double()
    eye = torch.eye(2, dtype=torch.float64)
    q_t = MultivariateNormal(a * M, a**2 * S + s**2 * eye)
    p_t = MultivariateNormal(torch.zeros(2, dtype=torch.float64), eye)
    return q_t.log_prob(x.double()) - p_t.log_prob(x.double())


def target_points(t: float, n: int, gen: torch.Generator) -> torch.Tensor:
    a, s = float(SCH.alpha(torch.tensor(t))), float(SCH.sigma(torch.tensor(t)))
    x0 = M + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    return (a * x0 + s * torch.randn(n, 2, generator=gen, dtype=torch.float64)).float()


@pytest.mark.parametrize("bandwidth", [0.0, "scott"])
def test_kernel_guidance_recovers_exact_h_where_the_target_lives(bandwidth):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6000, 2, generator=gen)
    guidance = KernelGuidance(rows, gaussian_log_ratio(), SCH, bandwidth=bandwidth)
    zero = KernelGuidance(rows, lambda x, t, c: torch.zeros(x.shape[0]), SCH, bandwidth=0.0)  # w = 1: control
    for t in (0.05, 0.3, 0.8):
        x = target_points(t, 400, gen)
        exact = exact_gaussian_log_h(x, t)
        spread = float(exact.var())
        err = float((guidance.log_h(x, torch.full((400,), t)).double() - exact).square().mean())
        ctrl = float((zero.log_h(x, torch.full((400,), t)).double() - exact).square().mean())
        assert err < 0.02 * max(spread, 1e-3) + 2e-3, (t, err, spread)
        if t < 0.5:  # at large t both h_t and the control are close to 1
            assert ctrl > 10 * err, (t, ctrl, err)


def test_smoothed_kernel_guidance_is_w_at_t0_and_plain_is_not():
    """h_0 = w exactly with the closed-form smoothing; the plain estimate is w at the nearest row only."""
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(500, 2, generator=gen)
    ratio = gaussian_log_ratio()
    x = target_points(1e-5, 300, gen)
    t = torch.full((300,), 1e-5)
    smooth = KernelGuidance(rows, ratio, SCH, bandwidth=0.2).log_h(x, t)
    plain = KernelGuidance(rows, ratio, SCH, bandwidth=0.0).log_h(x, t)
    exact = ratio.log_ratio(x)
    assert float((smooth - exact).abs().max()) < 1e-3
    assert float((plain - exact).abs().max()) > 0.1


def test_kernel_guidance_with_exact_w_matches_two_mode_guidance():
    """Unconditional: the paper's task, the plain estimate with the exact w at 10,000 source rows, on q_t points
    at moderate t (at large t the heavy-tailed w, Var_p(w) = 272, makes the plain sum noisy). Per label:
    log w(x, y) = y (mu_T - mu_S).x / v is exactly linear, so the smoothed closed form applies; on the paper's
    task Var_p(w | y) = e^10 - 1 and no feasible number of rows averages it, so the per-label check uses a
    milder shift mu_T = (0.5, 0.3) (Var = e^0.4 - 1)."""
    task, gen = TwoGaussianTask(), torch.Generator().manual_seed(2)
    src = task.sample(10_000, "source", gen)
    plain = KernelGuidance(src.x, lambda x, t, c: task.log_density_ratio(x, c), SCH, bandwidth=0.0)
    mild = TwoGaussianTask(mu_target=(0.5, 0.3))
    slope = (mild.mu["target"] - mild.mu["source"]) / mild.variance
    const = -(mild.mu["target"].square().sum() - mild.mu["source"].square().sum()) / (2 * mild.variance)
    per_label = QuadraticLogRatio(
        torch.zeros(2, 2, 2), torch.stack([-slope, slope]), const.repeat(2), 1.0, labels=torch.tensor([-1.0, 1.0])
    )
    src_mild = mild.sample(10_000, "source", gen)
    smooth = KernelGuidance(src_mild.x, per_label, SCH, bandwidth=0.05, source_context=src_mild.c)
    for tk, guidance, labels, times, tol in (
        (task, plain, False, (0.1, 0.3), 0.25),
        (mild, smooth, True, (0.05, 0.3, 0.6), 0.05),
    ):
        for t in times:
            ev = tk.sample(500, "target", gen)
            tt = torch.full((500,), t)
            x = SCH.alpha(tt)[:, None] * ev.x + SCH.sigma(tt)[:, None] * torch.randn(500, 2, generator=gen)
            y = ev.c if labels else None
            exact = tk.log_guidance(x, SCH.alpha(tt), SCH.sigma(tt), y).double()
            err = float((guidance.log_h(x, tt, y).double() - exact).square().mean())
            assert err < tol * float(exact.square().mean()) + 1e-3, (labels, t, err, float(exact.square().mean()))


def test_quadratic_ratio_recovers_exact_log_w_with_explicit_prior_factor():
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(6000, 2, generator=gen)
    tgt = (M + torch.randn(2000, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(S).T).float()
    ratio = fit_quadratic_log_ratio(src, tgt, seed=0)
    assert ratio.prior_factor == pytest.approx(3.0)
    x = target_points(1e-5, 1000, gen)
    exact = gaussian_log_ratio().log_ratio(x).double()
    err = float((ratio.log_ratio(x).double() - exact).square().mean())
    assert err < 0.02, err
    # negative control: the same classifier without its prior factor is off by log(n_s / n_t)
    dropped = ratio.log_ratio(x).double() - math.log(ratio.prior_factor)
    assert float((dropped - exact).square().mean()) > 0.5 * math.log(3.0) ** 2


def test_quadratic_ratio_per_label_is_exact_on_the_conditional_task():
    """Given y, the paper's log w(x, y) is linear in x: the labelled fit recovers it on both labels."""
    task, gen = TwoGaussianTask(), torch.Generator().manual_seed(4)
    src, tgt = task.sample(4000, "source", gen), task.sample(2000, "target", gen)
    ratio = fit_quadratic_log_ratio(src.x, tgt.x, source_context=src.c, target_context=tgt.c)
    ev = task.sample(1000, "target", gen)
    err = float((ratio.log_ratio(ev.x, None, ev.c) - task.log_density_ratio(ev.x, ev.c)).square().mean())
    assert err < 0.1, err
    with pytest.raises(ShapeError, match="context"):
        ratio.log_ratio(ev.x)


def test_noisy_classifier_log_odds_is_the_exact_log_guidance():
    """p = N(0, I), q = N(m, I): log q_t / p_t = a m.x - a^2 |m|^2 / 2 at every t; a short fit finds it."""
    gen = torch.Generator().manual_seed(5)
    m = torch.tensor([1.0, -0.5])
    src, tgt = torch.randn(3000, 2, generator=gen), m + torch.randn(1000, 2, generator=gen)
    ratio, _ = fit_domain_classifier(
        src,
        tgt,
        hidden=(32, 32),
        time_dependent=True,
        schedule=SCH,
        config=TrainConfig(steps=700, batch_size=256, lr=3e-3, seed=0),
    )
    guidance = ClassifierGuidance(ratio)
    assert ratio.prior_factor == pytest.approx(3.0)
    for t in (0.05, 0.4, 0.8):
        tt = torch.full((500,), t)
        a, s = SCH.alpha(tt)[:, None], SCH.sigma(tt)[:, None]
        x = a * (m + torch.randn(500, 2, generator=gen)) + s * torch.randn(500, 2, generator=gen)
        exact = (a * x * m).sum(-1) - a[:, 0] ** 2 * m.square().sum() / 2
        with torch.no_grad():
            err = float((guidance.log_h(x, tt) - exact).square().mean())
        assert err < 0.05 * float(exact.var()) + 0.01, (t, err)
        if t < 0.5:  # the trivial guess log h = 0 fails (at large t log h_t is near 0 anyway)
            assert float(exact.square().mean()) > 5 * err
    with pytest.raises(ConfigError, match="time-dependent"):
        ClassifierGuidance(fit_domain_classifier(src, tgt, hidden=(), config=TrainConfig(steps=2))[0])


def test_switched_score_uses_low_below_the_switch():
    high = lambda x, t, c: torch.ones_like(x)  # noqa: E731
    low = lambda x, t, c: -torch.ones_like(x)  # noqa: E731
    score = SwitchedScore(high, low, 0.2)
    out = score(torch.zeros(3, 2), torch.tensor([0.1, 0.2, 0.9]))
    assert out[:, 0].tolist() == [-1.0, 1.0, 1.0]
    with pytest.raises(Exception, match="switch"):
        SwitchedScore(high, low, 1.5)


def test_kernel_guidance_rejects_bad_settings():
    rows = torch.randn(50, 2)
    with pytest.raises(ConfigError, match="bandwidth"):
        KernelGuidance(rows, lambda x, t, c: torch.zeros(x.shape[0]), SCH, bandwidth=0.1)
    with pytest.raises(ConfigError, match="bandwidth"):
        KernelGuidance(rows, gaussian_log_ratio(), SCH, bandwidth=-1.0)
    guidance = KernelGuidance(rows, gaussian_log_ratio(), SCH)
    with pytest.raises(ShapeError, match="context"):
        guidance.log_h(torch.zeros(3, 2), 0.5, torch.ones(3, 1))
    capped = KernelGuidance(rows, gaussian_log_ratio(), SCH, bandwidth=10.0)
    lam = float(torch.linalg.eigvalsh(gaussian_log_ratio().quad).max())
    assert lam <= 0 or 2 * capped.bandwidth**2 * lam <= 0.5 + 1e-9


def test_inside_support_task_exact_pieces():
    task, gen = inside_support_task(), torch.Generator().manual_seed(6)
    assert task.label_probs("target").tolist() == pytest.approx([0.1, 0.9])
    data = task.sample(20_000, "target", gen)
    assert float((data.c == 1).float().mean()) == pytest.approx(0.9, abs=0.01)
    x = torch.randn(200, 2)
    t = torch.full((200,), 0.3)
    a, s = SCH.alpha(t), SCH.sigma(t)
    direct = task.noised_log_prob(x, "target", a, s) - task.noised_log_prob(x, "source", a, s)
    assert torch.allclose(task.log_guidance(x, a, s), direct)
    w = task.log_density_ratio(x).exp()
    assert float(w.min()) > 0.2 - 1e-4 and float(w.max()) < 1.8 + 1e-4  # inside the support: w bounded
    y = torch.ones(200, 1)
    assert torch.allclose(task.log_guidance(x, a, s, y), torch.full((200,), math.log(0.9 / 0.5)), atol=1e-5)
    assert float(task.guidance_grad(x, a, s, y).abs().max()) < 1e-5


def _piecewise(first, second, tau: float):
    """``first`` for t >= tau, ``second`` below: a score that is right only on one side of tau."""
    return SwitchedScore(first, second, tau)


def test_switch_selection_finds_where_each_score_is_right():
    task = TwoGaussianTask()
    exact, wrong = task.score_fn("target", SCH), task.score_fn("source", SCH)
    rows = task.sample(40, "target", torch.Generator().manual_seed(0)).x
    kw = {"candidates": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0), "samples": 400, "seed": 1}
    good_above, good_below = _piecewise(exact, wrong, 0.2), _piecewise(wrong, exact, 0.2)
    choice = select_switch(good_above, good_below, rows, None, SCH, **kw)
    assert choice.switch == 0.2, choice
    assert isinstance(choice.score(good_above, good_below), SwitchedScore)
    assert select_switch(exact, wrong, rows, None, SCH, **kw).switch == 0.0  # guidance right everywhere
    assert select_switch(wrong, exact, rows, None, SCH, **kw).switch == 1.0  # guidance wrong everywhere
    # negative control: with the roles swapped, the score right below 0.2 is used above it: 0.2 must not win
    swapped = select_switch(good_below, good_above, rows, None, SCH, **kw)
    assert swapped.switch != 0.2 and min(swapped.losses) > choice.losses[3]
    # conditional version: the label is passed through to both scores
    cond = task.sample(40, "target", torch.Generator().manual_seed(2))
    exact_y, wrong_y = (task.score_fn(d, SCH, conditional=True) for d in ("target", "source"))
    assert select_switch(exact_y, wrong_y, cond.x, cond.c, SCH, **kw).switch == 0.0
    with pytest.raises(ConfigError, match="candidates"):
        select_switch(exact, wrong, rows, None, SCH, candidates=(1.5,))


def test_effective_rows_counts_the_rows_the_kernel_averages():
    line = torch.stack([torch.arange(50.0), torch.zeros(50)], -1)  # rows 1 apart on a line
    kernel = KernelGuidance(line, lambda x, t, c: torch.zeros(x.shape[0]), SCH, bandwidth=0.0)
    at_row = line[[10, 20]] * SCH.alpha(torch.tensor(1e-4))
    assert torch.allclose(kernel.effective_rows(at_row, 1e-4), torch.ones(2), atol=1e-3)  # one row at t -> 0
    same = KernelGuidance(torch.zeros(30, 2), lambda x, t, c: torch.zeros(x.shape[0]), SCH, bandwidth=0.0)
    assert torch.allclose(same.effective_rows(torch.randn(5, 2), 0.3), torch.full((5,), 30.0), rtol=1e-5)


def test_a_linear_log_ratio_recovers_a_mean_shift_and_the_smoothed_kernel_guidance_ends_at_it():
    """Source N(0, I), target N(0.5 * 1, I) in d = 5: log w = 0.5 * 1^T x + const, linear. ``degree=1`` fits
    A = 0 and b near 0.5; the smoothed kernel guidance's closed form (the linear fast path) gives h_0 = w."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(2000, 5, generator=gen, dtype=torch.float64)
    tgt = torch.randn(400, 5, generator=gen, dtype=torch.float64) + 0.5
    ratio = fit_quadratic_log_ratio(src, tgt, degree=1)
    assert float(ratio.quad.abs().max()) == 0.0 and torch.allclose(
        ratio.linear, torch.full((1, 5), 0.5, dtype=torch.float64), atol=0.15
    )
    guidance = KernelGuidance(src[:300], ratio, VPSchedule(), bandwidth=0.5)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    assert torch.allclose(guidance.log_h(x, torch.full((7,), 1e-7)), ratio.log_ratio(x), atol=1e-6)
    with pytest.raises(ShapeError, match="degree"):
        fit_quadratic_log_ratio(src, tgt, degree=3)


def test_a_linear_log_ratio_on_a_basis_recovers_a_few_shot_tilt_and_picks_its_dimension_by_cv():
    """p = N(0, I_20), q = N(delta v, I_20): log w = delta v^T x - delta^2 / 2, linear along v. With a basis whose
    first column is v (the rest orthonormal noise directions) and n_t = 60, cross-validation keeps few columns and
    the slope is close to delta v; the full 20-dimensional fit on the same rows is further from it. Degree 2 and a
    basis of the wrong height are refused."""
    from diffusion.tgdp import fit_quadratic_log_ratio

    d, delta = 20, 1.0
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    v = basis[:, 0]
    xs = torch.randn(4000, d, generator=g, dtype=torch.float64)
    xt = torch.randn(60, d, generator=g, dtype=torch.float64) + delta * v
    low = fit_quadratic_log_ratio(xs, xt, degree=1, basis=basis, components=[1, 2, 5, 20])
    full = fit_quadratic_log_ratio(xs, xt, degree=1)
    err_low = float((low.linear[0] - delta * v).norm())
    err_full = float((full.linear[0] - delta * v).norm())
    assert low.components is not None and low.components <= 5 and full.components is None
    assert err_low < 0.35 and err_low < err_full
    with pytest.raises(ShapeError, match="basis needs degree = 1"):
        fit_quadratic_log_ratio(xs, xt, degree=2, basis=basis)
    with pytest.raises(ShapeError, match="basis must be"):
        fit_quadratic_log_ratio(xs, xt, degree=1, basis=basis[:5])
