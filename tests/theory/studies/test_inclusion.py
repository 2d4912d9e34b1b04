"""Inclusion probabilities of a Gumbel top-n draw: known answers by enumeration, their sum, and the digits draw."""

from __future__ import annotations

import itertools

import pytest
import torch

from shared_embed.errors import ConfigError, ShapeError
from theory.studies.digits.inclusion import inclusion_log_odds, inclusion_probabilities


def enumerated(logits: torch.Tensor, n: int) -> torch.Tensor:
    """pi by summing over every ordered draw of n items, each with its successive-sampling probability."""
    w = logits.double().exp()
    pi = torch.zeros(len(w), dtype=torch.float64)
    for order in itertools.permutations(range(len(w)), n):
        p, left = 1.0, float(w.sum())
        for j in order:
            p, left = p * float(w[j]) / left, left - float(w[j])
        pi[list(order)] += p
    return pi


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_inclusion_probabilities_match_the_enumerated_draw_orders(n):
    logits = torch.tensor([0.0, 1.5, -2.0, 3.0, 0.3, -0.7])
    pi = inclusion_probabilities(logits, n)
    assert torch.allclose(pi, enumerated(logits, n), rtol=0, atol=1e-7)
    assert float(pi.sum()) == pytest.approx(n, abs=1e-7)


def test_inclusion_probabilities_are_uniform_without_a_tilt_and_sum_to_n_with_one():
    assert torch.allclose(
        inclusion_probabilities(torch.zeros(40), 7), torch.full((40,), 7 / 40, dtype=torch.float64), atol=1e-9
    )
    logits = 4.0 * torch.randn(180, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pi = inclusion_probabilities(logits, 31)
    assert float(pi.sum()) == pytest.approx(31, abs=1e-6)
    order = torch.argsort(logits)
    assert bool((pi[order].diff() >= -1e-12).all())  # more weight, never less chance
    assert torch.equal(inclusion_probabilities(logits, 0), torch.zeros(180, dtype=torch.float64))
    assert torch.equal(inclusion_probabilities(logits, 180), torch.ones(180, dtype=torch.float64))


def test_log_odds_of_items_drawn_almost_surely_stay_finite_and_converge():
    """The complement is integrated on its own: 1 - pi below float64's resolution near 1 still has log odds."""
    logits = 16.0 * torch.linspace(-2.5, 2.5, 60, dtype=torch.float64)
    odds = inclusion_log_odds(logits, 10)
    assert bool(torch.isfinite(odds).all()) and float(odds.max()) > 40
    assert float(1 - inclusion_probabilities(logits, 10).max()) == 0.0  # 1 - pi is below float64's resolution
    assert torch.allclose(odds, inclusion_log_odds(logits, 10, grid_step=0.02), rtol=0, atol=1e-5)


def test_inclusion_probabilities_match_the_digits_draw_by_simulation():
    """tilted_ink_rows is a Gumbel top-n draw with logits tilt * z: its frequencies over 4,000 draws of one class
    agree with the quadrature within 5 binomial SE on every image."""
    from theory.studies.digits.task import ink_mass, load_digit_levels, tilted_ink_rows

    levels, labels = load_digit_levels()
    digit = levels[labels == 3]
    ink = ink_mass(digit).double()
    z = (ink - ink.mean()) / ink.std()
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    hits = torch.zeros(len(digit), dtype=torch.float64)
    for _ in range(draws):
        hits[tilted_ink_rows(digit, 2.0, 25, gen)[0]] += 1
    pi = inclusion_probabilities(2.0 * z, 25)
    se = (pi * (1 - pi) / draws).sqrt().clamp_min(1 / draws)
    assert float(((hits / draws - pi).abs() / se).max()) < 5


def test_bad_arguments_are_named():
    with pytest.raises(ShapeError, match="one-dimensional"):
        inclusion_probabilities(torch.zeros(3, 2), 1)
    with pytest.raises(ConfigError, match="n must be in 0..3"):
        inclusion_probabilities(torch.zeros(3), 4)
    with pytest.raises(ConfigError, match="finite"):
        inclusion_probabilities(torch.tensor([0.0, float("nan")]), 1)
    with pytest.raises(ConfigError, match="grid_step"):
        inclusion_probabilities(torch.zeros(3), 1, grid_step=0.0)
    with pytest.raises(ConfigError, match="finite log odds"):
        inclusion_log_odds(torch.zeros(3), 3)
