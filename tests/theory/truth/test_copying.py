"""Known answers of the copying check (theory.truth.metrics.copying): 1/2 for fresh draws, 1 for replays."""

from __future__ import annotations

import pytest
import torch

from shared_embed.errors import DataError, DTypeError, ShapeError
from theory.truth.metrics import copying


def _draws(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fresh_draws_of_the_datas_law_sit_as_near_the_training_points_as_held_out_points_do():
    train, held_out = _draws(200, 0), _draws(1001, 1)
    fractions = [copying(_draws(1000, 10 + s), train, held_out)["closer_fraction"] for s in range(5)]
    # sd of one fraction: binomial over 1000 draws (0.016) and the held-out median's F-value (0.016)
    assert sum(fractions) / 5 == pytest.approx(0.5, abs=0.03)
    assert all(abs(f - 0.5) < 0.1 for f in fractions)
    assert copying(_draws(1000, 20), train, held_out)["distance_ratio"] == pytest.approx(1.0, abs=0.05)


def test_null_sd_is_the_spread_of_fresh_draws_shares_over_repeated_experiments():
    """Known answer: 2,000 experiments of 20 fresh draws, 10 training and 21 held-out points each (a fresh set of
    every kind per experiment); their shares' sd matches sqrt(22 / (4 * 20 * 23) + 1 / (4 * 23)) = 0.151 within its
    own sampling error (about 1.6 % at 2,000 experiments); the binomial part alone (0.112) would be far too small."""
    gen = torch.Generator().manual_seed(0)
    shares, sds = [], set()
    for _ in range(2000):
        train, held_out, draws = (torch.randn(k, 2, generator=gen, dtype=torch.float64) for k in (10, 21, 20))
        check = copying(draws, train, held_out)
        shares.append(check["closer_fraction"])
        sds.add(check["null_sd"])
    (sd,) = sds
    assert sd == pytest.approx((22 / (4 * 20 * 23) + 1 / (4 * 23)) ** 0.5)
    spread = torch.tensor(shares, dtype=torch.float64)
    assert spread.mean().item() == pytest.approx(0.5, abs=3 * sd / 2000**0.5)
    assert spread.std().item() == pytest.approx(sd, rel=0.06)


def test_replayed_training_points_count_as_copies_and_blurrier_draws_as_less_than_half():
    train, held_out = _draws(200, 0), _draws(501, 1)
    replay = train[torch.randint(0, 200, (400,), generator=torch.Generator().manual_seed(2))]
    near = copying(replay + 0.05 * _draws(400, 3), train, held_out)
    assert near["closer_fraction"] == 1.0 and near["distance_ratio"] < 0.1
    wide = copying(_draws(1000, 4, scale=1.5), train, held_out)
    assert wide["closer_fraction"] < 0.2 and wide["distance_ratio"] > 1.2


def test_copying_names_bad_inputs():
    x = _draws(10, 0)
    with pytest.raises(ShapeError, match="train"):
        copying(x, x[:, :3], x)
    with pytest.raises(ShapeError, match="held_out"):
        copying(x, x, x[0])
    with pytest.raises(DataError, match="samples"):
        copying(x.clone().fill_(float("nan")), x, x)
    with pytest.raises(DTypeError, match="train"):
        copying(x, x.long(), x)
    with pytest.raises(DataError, match="samples"):
        copying(x[:0], x, x)
