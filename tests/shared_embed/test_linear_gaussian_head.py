"""The linear-Gaussian head: its exact fit is the maximum-likelihood estimate, and it behaves as every head does."""

from __future__ import annotations

import math

import pytest
import torch

from shared_embed import ConditionalModel, LinearGaussianHead, TrainConfig, TransferConfig, fit_variants
from shared_embed.errors import DataError
from theory.truth.kl import kl_to_task
from theory.truth.known_answers import expected_kl_gaussian_regression
from theory.truth.tasks import ConditionalGaussianTask


def data(n: int = 200, p: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, p, generator=g)
    x = z @ torch.tensor([[1.0, -0.5], [0.3, 0.2], [0.0, 1.0]]) + 0.4 * torch.randn(n, 2, generator=g) + 1.0
    return z, x


def test_closed_form_fit_is_the_maximum_likelihood_estimate() -> None:
    z, x = data()
    head = LinearGaussianHead(2, 3)
    head.fit_closed_form(x, z)
    loss = head.loss(x, z)
    grads = torch.autograd.grad(loss, list(head.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-4  # a stationary point of the NLL
    cov = head.scale_tril() @ head.scale_tril().T
    resid = x - (z @ head.weight.T + head.bias)
    assert torch.allclose(cov, resid.T @ resid / len(x), atol=1e-5)  # Sigma_hat = RSS / n (not n - p)


def test_log_prob_matches_torch_multivariate_normal_and_samples_are_seeded() -> None:
    z, x = data()
    head = LinearGaussianHead(2, 3)
    head.fit_closed_form(x, z)
    assert torch.allclose(head.log_prob(x, z), head.law(z).log_prob(x), atol=1e-5)
    a = head.sample(5, z[0], generator=torch.Generator().manual_seed(1))
    b = head.sample(5, z[0], generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 2) and torch.equal(a, b)
    draws = head.rsample(4000, z[0], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(draws.mean(0), head.law(z[:1]).mean[0], atol=0.05)


def test_too_few_rows_and_non_finite_data_are_clear_errors() -> None:
    z, x = data(n=5)
    with pytest.raises(DataError, match="more than d_z \\+ d_x = 5 rows"):
        LinearGaussianHead(2, 3).fit_closed_form(x, z)
    z, x = data()
    x[3, 0] = math.nan
    with pytest.raises(DataError, match="NaN"):
        LinearGaussianHead(2, 3).fit_closed_form(x, z)


def test_saved_and_loaded_model_keeps_its_density(tmp_path) -> None:
    task = ConditionalGaussianTask(d_c=4, d_h=2, d_x=2)
    target = task.sample(100, "target", torch.Generator().manual_seed(0))
    fitted = fit_variants(lambda k: LinearGaussianHead(2, k), target, target, TransferConfig(), ["direct"])["direct"]
    path = fitted.model.save(tmp_path / "direct.safetensors")
    loaded = ConditionalModel.load(path)
    assert torch.allclose(loaded.log_prob(target.x, target.c), fitted.model.log_prob(target.x, target.c))


def test_oracle_and_direct_variants_fit_exactly_and_match_their_known_answer() -> None:
    """Over 12 independent targets, the oracle (p = d_h) and direct (p = d_c) KLs average to the exact E KL."""
    task = ConditionalGaussianTask(d_c=4, d_h=2, d_x=2, seed=3)
    cfg = TransferConfig(target_train=TrainConfig(steps=1))
    kls: dict[str, list[float]] = {"oracle": [], "direct": []}
    for rep in range(12):
        target = task.sample(60, "target", torch.Generator().manual_seed(rep))
        res = fit_variants(
            lambda k: LinearGaussianHead(2, k),
            target,
            target,
            cfg,
            ["oracle", "direct"],
            oracle_embedding=task.embedding,
        )
        for variant, r in res.items():
            assert r.model.history.steps_done == 0  # solved, not trained
            kls[variant].append(kl_to_task(task, r.model, n=4000, generator=torch.Generator().manual_seed(99)).value)
    for variant, p in (("oracle", 2), ("direct", 4)):
        mean = sum(kls[variant]) / 12
        sd = (sum((v - mean) ** 2 for v in kls[variant]) / 11) ** 0.5
        assert abs(mean - expected_kl_gaussian_regression(60, 2, p)) < 3 * sd / 12**0.5 + 0.005, (variant, mean)
