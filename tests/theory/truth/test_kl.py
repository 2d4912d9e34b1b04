"""The KL estimators against closed forms, and the KL split (embedding floor + head term)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from flows import make_flow_head
from shared_embed import ConditionalModel, DataError, FixedEmbedding, ShapeError, Standardizer, TrainConfig
from shared_embed.transfer import fit_target_head
from theory.truth.kl import KLEstimate, estimate_floor, gaussian_kl, kl_split, kl_to_task, monte_carlo_kl
from theory.truth.tasks import ConditionalGaussianTask, TrueEmbedding


def random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)


class ExactModel:
    """The task's own law of ``domain`` as a model: log_prob(x, c) = log p_domain(x | c)."""

    def __init__(self, task: ConditionalGaussianTask, domain: str) -> None:
        self.task, self.domain = task, domain

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.task.log_prob(x.double(), c, self.domain)


def test_gaussian_kl_matches_torch_and_special_cases() -> None:
    gen = torch.Generator().manual_seed(0)
    m0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    m1 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    s0 = torch.stack([random_spd(3, gen) for _ in range(5)])
    s1 = torch.stack([random_spd(3, gen) for _ in range(5)])
    expected = kl_divergence(MultivariateNormal(m0, s0), MultivariateNormal(m1, s1))
    torch.testing.assert_close(gaussian_kl(m0, s0, m1, s1), expected)
    assert float(gaussian_kl(m0[0], s0[0], m0[0], s0[0]).abs()) < 1e-12
    one = torch.eye(1, dtype=torch.float64)  # 1-D: (mu0 - mu1)^2 / 2 for unit variances
    zero_mean, unit_mean = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    assert math.isclose(float(gaussian_kl(zero_mean, one, unit_mean, one)), 0.5)
    with pytest.raises(ShapeError):
        gaussian_kl(m0, s0[..., :2], m1, s1)


def test_monte_carlo_kl_agrees_with_closed_form_within_its_standard_error() -> None:
    gen = torch.Generator().manual_seed(1)
    m0, m1 = torch.zeros(2, dtype=torch.float64), torch.tensor([0.7, -0.4], dtype=torch.float64)
    s0 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    s1 = torch.tensor([[1.5, -0.2], [-0.2, 0.8]], dtype=torch.float64)
    p, q = MultivariateNormal(m0, s0), MultivariateNormal(m1, s1)
    truth = float(gaussian_kl(m0, s0, m1, s1))
    for n in (2_000, 50_000):
        x = m0 + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s0).T
        est = monte_carlo_kl(p.log_prob(x), q.log_prob(x))
        assert isinstance(est, KLEstimate) and est.n == n
        assert abs(est.value - truth) < 3 * est.se, (est, truth)
    assert est.se < 0.01 and est.to_dict() == {"value": est.value, "se": est.se, "n": n}


def test_monte_carlo_kl_checks_inputs() -> None:
    with pytest.raises(ShapeError):
        monte_carlo_kl(torch.zeros(5), torch.zeros(4))
    with pytest.raises(DataError):
        monte_carlo_kl(torch.zeros(1), torch.zeros(1))
    with pytest.raises(DataError):
        monte_carlo_kl(torch.zeros(3), torch.tensor([0.0, float("nan"), 1.0]))


def test_kl_to_task_of_exact_model_is_zero_and_of_source_law_is_closed_form() -> None:
    task = ConditionalGaussianTask()
    gen = torch.Generator().manual_seed(2)
    exact = kl_to_task(task, ExactModel(task, "target"), "target", n=5_000, generator=gen)
    assert exact.value == 0.0 and exact.se == 0.0 and exact.n == 5_000

    # E_c KL(p_T(.|c) || p_S(.|c)) with means A_k h + b_k, h ~ N(0, I): the mean term averages to
    # tr(D^T S_S^-1 D) + delta^T S_S^-1 delta with D = A_T - A_S, delta = b_T - b_S.
    (a_t, b_t, s_t), (a_s, b_s, s_s) = task.params["target"], task.params["source"]
    s_inv = torch.linalg.inv(s_s)
    d, delta = a_t - a_s, b_t - b_s
    mean_term = torch.trace(d.T @ s_inv @ d) + delta @ s_inv @ delta
    truth = float(
        gaussian_kl(torch.zeros(2, dtype=torch.float64), s_t, torch.zeros(2, dtype=torch.float64), s_s)
        + 0.5 * mean_term
    )
    est = kl_to_task(task, ExactModel(task, "source"), "target", n=50_000, generator=gen)
    assert abs(est.value - truth) < 3 * est.se, (est, truth)


def test_kl_split_adds_up_and_finds_the_closed_form_floor() -> None:
    """A deficient embedding h_hat = h*_1 (first coordinate only). Then x | h_hat ~ N(a_1 h_1 + b, S + a_2 a_2^T)
    and the floor is E_c KL(p(x|c) || p(x|h_hat)) = 1/2 log(1 + a_2^T S^-1 a_2) (a_j: columns of A_T)."""
    task = ConditionalGaussianTask()
    a, b, s = task.params["target"]
    a2 = a[:, 1]
    floor_truth = 0.5 * math.log(1 + float(a2 @ torch.linalg.solve(s, a2)))

    gen = torch.Generator().manual_seed(3)
    h1 = FixedEmbedding(TrueEmbedding(task.embedding.weight[:1].clone(), nonlinear=False), 16, 1)
    factory = make_flow_head(2, transform="maf", transforms=2, hidden=(32, 32))
    deficient = ConditionalModel(factory(1), h1, Standardizer(2))
    floor = estimate_floor(
        task,
        deficient,
        factory,
        n_train=10_000,
        n_eval=20_000,
        generator=gen,
        train=TrainConfig(steps=800, batch_size=512, lr=3e-3, eval_every=100),
    )
    assert abs(floor.kl.value - floor_truth) < 3 * floor.kl.se + 0.01, (floor.kl, floor_truth)

    # The split of a model on the same embedding trained on few pairs: total = floor + head, head >= 0.
    target = task.sample(200, "target", gen)
    small = fit_target_head(h1, factory(1), target, TrainConfig(steps=300, lr=3e-3, eval_every=20, patience=5))
    split = kl_split(task, small, floor.model, n=20_000, generator=gen)
    assert math.isclose(split.total.value, split.floor.value + split.head.value, abs_tol=1e-9)
    assert abs(split.floor.value - floor_truth) < 3 * split.floor.se + 0.01
    assert split.head.value > -3 * split.head.se
    assert split.total.value > floor_truth
    assert set(split.to_dict()) == {"total", "floor", "head"}

    # The split of the floor model against itself: the head term is exactly zero.
    self_split = kl_split(task, floor.model, floor.model, n=1_000, generator=gen)
    assert self_split.head.value == 0.0


def test_floor_of_the_true_embedding_is_near_zero() -> None:
    task = ConditionalGaussianTask()
    gen = torch.Generator().manual_seed(4)
    factory = make_flow_head(2, transform="maf", transforms=2, hidden=(32, 32))
    model = ConditionalModel(factory(2), FixedEmbedding(task.embedding, 16, 2), Standardizer(2))
    floor = estimate_floor(
        task,
        model,
        factory,
        n_train=10_000,
        n_eval=20_000,
        generator=gen,
        train=TrainConfig(steps=800, batch_size=512, lr=3e-3, eval_every=100),
    )
    assert floor.kl.value < 0.02, floor.kl
