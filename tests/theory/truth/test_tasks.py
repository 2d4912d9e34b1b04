"""Known answers for the ground-truth tasks: moments, densities, noised scores and the exact TGDP guidance."""

import math

import pytest
import torch

from diffusion.schedule import VPSchedule
from shared_embed import ConfigError, ShapeError
from theory.truth.mixture import GaussianMixture
from theory.truth.tasks import ConditionalGaussianTask, ConditionalMixtureTask, TwoGaussianTask, make_task

CONDITIONAL = [ConditionalGaussianTask, ConditionalMixtureTask]


@pytest.mark.parametrize("task_cls", CONDITIONAL)
@pytest.mark.parametrize("embedding", ["linear", "nonlinear"])
def test_shapes_and_shared_embedding(task_cls, embedding, generator):
    task = task_cls(embedding=embedding)
    data = task.sample(64, "source", generator)
    assert (data.d_c, data.d_x) == (16, 2)
    assert task.embedding(data.c).shape == (64, 2)
    assert task.log_prob(data.x, data.c, "target").shape == (64,)


def test_gaussian_task_log_prob_matches_torch_distributions(generator):
    task = ConditionalGaussianTask()
    data = task.sample(50, "target", generator)
    a, b, cov = task.params["target"]
    mean = task.embedding(data.c).double() @ a.T + b
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(data.x.double())
    assert torch.allclose(task.log_prob(data.x.double(), data.c, "target"), ref, atol=1e-10)


def test_conditional_sample_moments_match_the_law(generator):
    task = ConditionalMixtureTask()
    c = torch.randn(1, 16, generator=generator).expand(20000, -1)
    law = task.conditional(c[:1], "source")
    x = task.conditional(c, "source").sample(generator)
    se = x.std(0) / math.sqrt(len(x))
    assert torch.all((x.mean(0) - law.mean()[0]).abs() < 4 * se)
    assert torch.allclose(torch.cov(x.T), law.covariance()[0], rtol=0.05, atol=0.02)


@pytest.mark.parametrize("task_cls", CONDITIONAL)
def test_noised_score_is_the_gradient_of_the_noised_log_density(task_cls, generator):
    task = task_cls()
    sch = VPSchedule()
    data = task.sample(32, "target", generator)
    t = torch.rand(32, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    a, s = sch.alpha(t), sch.sigma(t)
    x_t = a[:, None] * data.x.double() + s[:, None] * torch.randn(32, 2, generator=generator, dtype=torch.float64)
    x_t.requires_grad_(True)
    lp = task.noised_log_prob(x_t, data.c, "target", a, s)
    (grad,) = torch.autograd.grad(lp.sum(), x_t)
    assert torch.allclose(task.noised_score(x_t.detach(), data.c, "target", a, s), grad, atol=1e-8)
    score = task.score_fn("target", sch)(x_t.detach(), t, data.c)
    assert torch.allclose(score, grad, atol=1e-8)


def test_noised_mixture_is_the_law_of_the_forward_process(generator):
    task = ConditionalGaussianTask()
    c = torch.randn(1, 16, generator=generator)
    x0 = task.conditional(c.expand(40000, -1), "source").sample(generator)
    a, s = 0.6, 0.8
    xt = a * x0 + s * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    law = task.conditional(c, "source").noised(a, s)
    assert torch.allclose(xt.mean(0), law.mean()[0], atol=0.02)
    assert torch.allclose(torch.cov(xt.T), law.covariance()[0], atol=0.02)


def test_two_gaussian_task_matches_the_paper(generator):
    task = TwoGaussianTask()
    data = task.sample(40000, "target", generator)
    y = data.c.flatten()
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(data.x[y == 1].mean(0), torch.tensor([0.5, -0.5]), atol=0.01)
    assert torch.allclose(data.x[y == 1].var(0), torch.full((2,), 0.1), atol=0.005)
    x = torch.randn(5, 2, dtype=torch.float64)
    ref = torch.logsumexp(
        torch.stack(
            [
                torch.distributions.MultivariateNormal(m, 0.1 * torch.eye(2, dtype=torch.float64)).log_prob(x)
                for m in (torch.tensor([0.5, 0.5]).double(), -torch.tensor([0.5, 0.5]).double())
            ]
        ),
        0,
    ) - math.log(2)
    assert torch.allclose(task.log_prob(x, "source"), ref, atol=1e-10)


@pytest.mark.parametrize("labels", [False, True])
def test_exact_guidance_is_the_ratio_of_noised_marginals(labels, generator):
    """h_t = q_t / p_t and grad log h_t = target score - source score (REFERENCE section 3)."""
    task = TwoGaussianTask()
    x = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    y = torch.where(torch.rand(64, generator=generator) < 0.5, 1.0, -1.0)[:, None] if labels else None
    a, s = 0.7, math.sqrt(1 - 0.49)
    log_h = task.log_guidance(x, a, s, y)
    ratio = task.noised_log_prob(x, "target", a, s, y) - task.noised_log_prob(x, "source", a, s, y)
    assert torch.allclose(log_h, ratio)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(task.log_guidance(x, a, s, y).sum(), x)
    assert torch.allclose(task.guidance_grad(x.detach(), a, s, y), grad, atol=1e-8)
    composed = task.noised_score(x.detach(), "source", a, s, y) + grad
    assert torch.allclose(composed, task.noised_score(x.detach(), "target", a, s, y), atol=1e-8)


def test_guidance_is_the_posterior_mean_of_the_density_ratio(generator):
    """h_t(x) = E_p[w(x_0) | x_t = x]: check by importance weights on a fine 2-D grid of x_0."""
    task = TwoGaussianTask()
    a, s = 0.8, 0.6
    g = torch.linspace(-2.5, 2.5, 301, dtype=torch.float64)
    x0 = torch.cartesian_prod(g, g)
    log_p0 = task.log_prob(x0, "source")
    w = task.log_density_ratio(x0).exp()
    x = torch.tensor([[0.3, -0.2], [-0.5, 0.6], [0.0, 0.0]], dtype=torch.float64)
    for xi, log_h in zip(x, task.log_guidance(x, a, s)):
        log_k = -((xi - a * x0).square().sum(-1)) / (2 * s**2)
        post = torch.softmax(log_p0 + log_k, 0)
        assert float((post * w).sum().log()) == pytest.approx(float(log_h), abs=1e-6)


def test_gaussian_mixture_score_and_bad_inputs():
    gm = GaussianMixture(
        torch.tensor([[0.3, 0.7]]), torch.tensor([[[0.0, 1.0], [2.0, -1.0]]]), torch.eye(2).expand(1, 2, 2, 2) * 0.5
    )
    x = torch.tensor([[0.4, 0.1]], requires_grad=True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.score(x.detach()), grad, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown domain"):
        ConditionalGaussianTask().sample(3, "sauce")
    with pytest.raises(ShapeError, match="d_h must be <= d_c"):
        ConditionalGaussianTask(d_c=2, d_h=3)
    with pytest.raises(ShapeError, match="last dimension 16"):
        ConditionalGaussianTask().log_prob(torch.randn(3, 2), torch.randn(3, 15), "source")
    with pytest.raises(ConfigError, match="unknown task"):
        make_task("moons")
