import math

import pytest
import torch

from shared_embed import GaussianHead, ShapeError, TrainConfig, fit


def test_unconditional_fit_reaches_the_maximum_likelihood_estimate():
    x = torch.randn(2000, 2) * torch.tensor([0.5, 2.0]) + torch.tensor([1.0, -1.0])
    head = GaussianHead(2)
    fit(head, lambda b: head.loss(b[0]), (x,), config=TrainConfig(steps=1500, lr=0.05, batch_size=2000))
    mean, log_var = head._moments(1, None)
    assert torch.allclose(mean[0], x.mean(0), atol=1e-2)
    assert torch.allclose(log_var[0].exp(), x.var(0, unbiased=False), rtol=1e-2)


def test_log_prob_matches_closed_form():
    head = GaussianHead(3, context_features=2)
    x, ctx = torch.randn(7, 3), torch.randn(7, 2)
    mean, log_var = head._moments(7, ctx)
    normal = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    assert torch.allclose(head.log_prob(x, ctx), normal.log_prob(x).sum(-1), atol=1e-5)


def test_sample_broadcasts_a_shared_context():
    head = GaussianHead(2, context_features=3)
    assert head.sample(5, torch.randn(3)).shape == (5, 2)
    assert head.sample(5, torch.randn(5, 3)).shape == (5, 2)
    with pytest.raises(ShapeError, match="context must be"):
        head.sample(5, torch.randn(4, 3))


def test_context_mismatches_are_refused():
    with pytest.raises(ShapeError, match="unconditional"):
        GaussianHead(2).log_prob(torch.randn(3, 2), torch.randn(3, 1))
    with pytest.raises(ShapeError, match="is required"):
        GaussianHead(2, 1).log_prob(torch.randn(3, 2))


def test_standard_normal_log_density():
    head = GaussianHead(1)
    assert math.isclose(float(head.log_prob(torch.zeros(1, 1)).detach()), -0.5 * math.log(2 * math.pi), rel_tol=1e-6)
