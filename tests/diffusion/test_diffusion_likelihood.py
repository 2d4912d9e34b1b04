"""Known answers for the probability-flow likelihood: with the EXACT noised score of a Gaussian mixture the
ODE log-density is the true log-density; the exact divergence is the Jacobian's trace; Hutchinson's estimate
agrees with it within its Monte Carlo error; gradients flow through the solve.

Measured on 200 points (float64, dopri5, rtol = atol = 1e-5, t_eps = 1e-5): mean absolute error 2.8e-5 nats
against the true log-density of the TGDP source mixture with the N(0, I) prior (8.8e-6 with the exact p_1 as
prior, which isolates the solver error from the prior mismatch a_1 = 6.6e-3).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion import (
    VPSchedule,
    exact_divergence,
    hutchinson_divergence,
    jacobian_trace,
    likelihood,
    probability_flow,
    probability_flow_log_prob,
    standard_normal_log_prob,
)
from shared_embed import ConfigError, DataError, DTypeError, ShapeError
from theory.truth.tasks import ConditionalMixtureTask, TwoGaussianTask

SCH = VPSchedule()
A1, S1 = SCH.alpha(1.0), SCH.sigma(1.0)


@pytest.fixture(scope="module")
def two_gaussian() -> tuple[TwoGaussianTask, torch.Tensor]:
    task = TwoGaussianTask()
    return task, task.sample(200, "source", torch.Generator().manual_seed(0)).x.double()


def test_log_density_of_a_mixture_with_its_exact_score(two_gaussian) -> None:
    task, x = two_gaussian
    score = task.score_fn("source", SCH)
    true = task.log_prob(x, "source")
    with torch.no_grad():
        res = probability_flow(score, x, SCH)
    mae = float((res.log_prob - true).abs().mean())
    exact_prior = lambda x1, c: task.noised_log_prob(x1, "source", A1, S1)  # noqa: E731
    with torch.no_grad():
        mae_exact_prior = float((probability_flow_log_prob(score, x, SCH, prior=exact_prior) - true).abs().mean())
    print(f"MAE {mae:.2e} nats (N(0, I) prior), {mae_exact_prior:.2e} (exact p_1 prior); NFE {res.nfe}")
    assert mae < 2e-4 and mae_exact_prior < 5e-5
    assert torch.allclose(res.log_prob, res.prior_log_prob + res.delta)
    assert torch.allclose(res.prior_log_prob, standard_normal_log_prob(res.x1)) and 10 < res.nfe < 500


def test_conditional_log_density_of_the_mixture_task() -> None:
    task = ConditionalMixtureTask()
    data = task.sample(100, "target", torch.Generator().manual_seed(1))
    x, c = data.x.double(), data.c
    with torch.no_grad():
        lp = probability_flow_log_prob(
            task.score_fn("target", SCH),
            x,
            SCH,
            context=c,
            prior=lambda x1, ctx: task.noised_log_prob(x1, ctx, "target", A1, S1),
        )
    mae = float((lp - task.log_prob(x, c, "target")).abs().mean())
    print(f"conditional mixture task: MAE {mae:.2e} nats")
    assert mae < 1e-4


def test_exact_divergence_is_the_trace_of_the_jacobian() -> None:
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    div = exact_divergence(net(x), x, create_graph=False)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(net, x[i].detach())
        assert math.isclose(float(div[i]), float(torch.trace(jac)), rel_tol=1e-12, abs_tol=1e-12)
    # Hutchinson with the d unit vectors as "probes" is exact, scaled by d
    probes = torch.eye(3, dtype=torch.float64)[:, None, :].expand(3, 4, 3)
    assert torch.allclose(3 * hutchinson_divergence(net(x), x, probes, False), div)
    # the torch.func trace (one batched backward pass) gives the same output and trace
    out, trace = jacobian_trace(net, x)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    torch.testing.assert_close(trace, div, rtol=1e-12, atol=1e-12)


def test_torch_func_trace_is_differentiable_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loop = exact_divergence(net(x), x, create_graph=True)
    grads_loop = torch.autograd.grad(loop.sum(), [x, *net.parameters()], materialize_grads=True)
    monkeypatch.setattr(likelihood, "EXACT_CHUNK_ROWS", 12)  # two unit vectors per chunk
    _, trace = jacobian_trace(net, x)
    grads = torch.autograd.grad(trace.sum(), [x, *net.parameters()], materialize_grads=True)
    torch.testing.assert_close(trace, loop)
    for a, b in zip(grads, grads_loop):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [4, 300])  # "exact" takes torch.func for the small batch, the loop for the large
def test_every_exact_divergence_gives_the_same_flow(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"func": 0}

    def counted(fn, x):
        calls["func"] += 1
        return jacobian_trace(fn, x)

    monkeypatch.setattr(likelihood, "jacobian_trace", counted)
    d = likelihood.EXACT_FUNC_MIN_FEATURES
    v = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    score = lambda x, t, c: -x / (SCH.alpha(t).square()[:, None] * (v - 1) + 1)  # noqa: E731  N(0, diag(v)) noised
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        runs = {
            div: probability_flow(score, x, SCH, divergence=div, rtol=1e-5, atol=1e-5)
            for div in ("exact", "exact_func", "exact_loop")
        }
    nfe = runs["exact"].nfe
    assert calls["func"] == (2 * nfe if n * d <= likelihood.EXACT_FUNC_MAX_ROWS else nfe)  # which one "exact" took
    for div in ("exact_func", "exact_loop"):
        torch.testing.assert_close(runs[div].log_prob, runs["exact"].log_prob, rtol=1e-9, atol=1e-9)
        assert runs[div].nfe == runs["exact"].nfe


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@torch.no_grad()
def test_hutchinson_agrees_with_exact_within_monte_carlo_error(two_gaussian, probe: str) -> None:
    """Per point, the Hutchinson log-density minus the exact one is a zero-mean error (probes drawn per row):
    its mean over 200 points is within 4 SE of 0, and 8 probes shrink its spread by about sqrt(8)."""
    task, x = two_gaussian
    score = task.score_fn("source", SCH)
    exact = probability_flow_log_prob(score, x, SCH, rtol=1e-6, atol=1e-6)
    spread = {}
    for probes in (1, 8):
        est = probability_flow_log_prob(
            score,
            x,
            SCH,
            divergence="hutchinson",
            probes=probes,
            probe=probe,
            rtol=1e-6,
            atol=1e-6,
            generator=torch.Generator().manual_seed(probes),
        )
        diff = est - exact
        se = float(diff.std()) / math.sqrt(diff.shape[0])
        print(
            f"{probe}, {probes} probe(s): mean error {float(diff.mean()):+.4f} +- {se:.4f}, sd {float(diff.std()):.4f}"
        )
        assert abs(float(diff.mean())) < 4 * se
        spread[probes] = float(diff.std())
    assert 0 < spread[8] < spread[1] / 2
    # Rademacher probes carry no diagonal variance (v_i^2 = 1): measured sd 0.94 (1 probe) against 13 for Gaussian


def test_hutchinson_probes_are_seeded(two_gaussian) -> None:
    task, x = two_gaussian
    score, x = task.score_fn("source", SCH), x[:20]
    run = lambda gen: probability_flow_log_prob(score, x, SCH, divergence="hutchinson", generator=gen)  # noqa: E731
    assert torch.equal(run(None), run(None))
    assert torch.equal(run(torch.Generator().manual_seed(5)), run(torch.Generator().manual_seed(5)))
    assert not torch.equal(run(torch.Generator().manual_seed(5)), run(torch.Generator().manual_seed(6)))


def test_gradient_through_the_solve_is_the_data_score(two_gaussian) -> None:
    """d/dx log p_hat(x) through the ODE solve (create_graph divergence) = grad log p_0(x), the known score."""
    task, x = two_gaussian
    x = x[:10].clone().requires_grad_(True)
    lp = probability_flow_log_prob(task.score_fn("source", SCH), x, SCH, rtol=1e-6, atol=1e-6)
    assert lp.grad_fn is not None
    (grad,) = torch.autograd.grad(lp.sum(), x)
    true = task.noised_score(x.detach(), "source", 1.0, 0.0)
    assert torch.allclose(grad, true, atol=2e-3), (grad - true).abs().max()


def test_no_grad_mode_gives_the_same_values_without_a_graph(two_gaussian) -> None:
    task, x = two_gaussian
    score, x = task.score_fn("source", SCH), x[:20]
    with torch.no_grad():
        lp = probability_flow_log_prob(score, x, SCH)
    assert lp.grad_fn is None and not lp.requires_grad
    assert torch.allclose(lp, probability_flow_log_prob(score, x, SCH).detach(), atol=1e-10)


def test_bad_inputs_are_refused() -> None:
    score = lambda x, t, c: -x  # noqa: E731
    x = torch.randn(5, 2)
    with pytest.raises(ConfigError, match="divergence"):
        probability_flow_log_prob(score, x, SCH, divergence="skilling")
    with pytest.raises(DataError, match="probes"):
        probability_flow_log_prob(score, x, SCH, divergence="hutchinson", probes=0)
    with pytest.raises(DataError, match="x0"):
        probability_flow_log_prob(score, torch.full((5, 2), math.inf), SCH)
    with pytest.raises(ShapeError, match="x0"):
        probability_flow_log_prob(score, torch.randn(2, 3, 4), SCH)
    with pytest.raises(DTypeError, match="generator"):
        probability_flow_log_prob(score, x, SCH, generator=0)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="t_eps"):
        probability_flow_log_prob(score, x, SCH, t_eps=1.0)
    with pytest.raises(DataError, match="atol"):
        probability_flow_log_prob(score, x, SCH, atol=0.0)
    with pytest.raises(ConfigError, match="probe"):
        probability_flow_log_prob(score, x, SCH, divergence="hutchinson", probe="uniform")
