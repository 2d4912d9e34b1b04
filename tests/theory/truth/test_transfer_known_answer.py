"""Transfer's known answer: reduced-rank regression as the source fit, the exact floor, and its expected value.

The derivation (E KL_transfer = E floor(n_s) + E KL_ML(n_t), the floor to first order in 1/n_s) is compared with
a direct simulation of the estimator (20,000 replications at three (n_s, n_t) settings), and the library's own
pipeline (fit_source with a linear encoder and a linear-Gaussian head) with the simulated law.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_embed import Encoder, fit_source, fit_target_head
from shared_embed.errors import DataError, ShapeError
from shared_embed.linear_gaussian import LinearGaussianHead
from shared_embed.reduced_rank import canonical_row_space
from shared_embed.train import TrainConfig
from theory.truth.known_answers import expected_kl_gaussian_regression
from theory.truth.tasks import ConditionalGaussianTask
from theory.truth.transfer_known_answer import (
    LinearTransferTruth,
    first_order_floor,
    floor_of_row_space,
    simulate_transfer,
)

TASK = ConditionalGaussianTask(d_c=8, seed=3)
TRUTH = LinearTransferTruth.from_task(TASK)


def raw_row_space(model) -> np.ndarray:
    """The fitted encoder's rows in the raw coordinates of c (the model standardises c first)."""
    return model.encoder.net[0].weight.detach().double().numpy() / model.c_scaler.std.double().numpy()


def test_canonical_row_space_recovers_the_true_embedding_and_refuses_what_it_cannot_identify() -> None:
    data = TASK.sample(20_000, "source", torch.Generator().manual_seed(0))
    w_hat = canonical_row_space(data.c, data.x, rank=2).numpy()
    assert floor_of_row_space(TRUTH, w_hat) < 2e-3  # the true row space, up to sampling error
    assert floor_of_row_space(TRUTH, TRUTH.w) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ShapeError, match="rank must be <= min"):
        canonical_row_space(data.c, data.x, rank=3)
    with pytest.raises(DataError, match="more than d_c \\+ d_x"):
        canonical_row_space(data.c[:9], data.x[:9], rank=2)


def test_a_linear_encoder_with_a_linear_gaussian_head_is_fitted_exactly_and_beats_gradient_training() -> None:
    data = TASK.sample(400, "source", torch.Generator().manual_seed(1))
    exact = fit_source(Encoder(8, 2, hidden=()), LinearGaussianHead(2, 2), data)
    assert exact.history.steps_done == 0  # closed form: no gradient steps
    torch.manual_seed(0)
    grad = fit_source(
        Encoder(8, 2, hidden=()),
        LinearGaussianHead(2, 2),
        data,
        TrainConfig(steps=300, lr=1e-2, progress=False),
        val_fraction=0.0,
    )
    grad.encoder.unfreeze()
    nll = lambda m: float(-m.log_prob(data.x, data.c).detach().mean())  # noqa: E731
    assert nll(exact) <= nll(grad) + 1e-4  # maximum likelihood: no trained fit does better on its own data


def test_the_decomposition_and_the_first_order_floor_match_a_direct_simulation() -> None:
    """20,000 replications of the estimator per setting: E[KL - floor] is the Gaussian-regression known answer
    within 3 SE (exact), and the first-order floor is within 3 SE plus its O(1/n_s) relative remainder."""
    for n_s, n_t in ((200, 25), (400, 50), (800, 100)):
        sim = simulate_transfer(TRUTH, [n_s], [n_t], 20, 2, reps=20_000, chunk=500)
        floor = sim.true_floor[:, 0]
        head = sim.kl[:, 0, 0] - floor
        se = head.std() / np.sqrt(head.size)
        assert abs(head.mean() - expected_kl_gaussian_regression(n_t, 2, 2)) < 3 * se, (n_s, n_t)
        rel = first_order_floor(TRUTH, n_s) / floor.mean() - 1
        rel_se = floor.std() / np.sqrt(floor.size) / floor.mean()
        assert abs(rel) < 3 * rel_se + 4 * TRUTH.d_c / n_s, (n_s, rel)


def test_the_library_pipeline_follows_the_simulated_law_of_its_floor_and_head() -> None:
    n_s, n_t, reps = 200, 25, 150
    gen = torch.Generator().manual_seed(5)
    floors, heads = [], []
    for _ in range(reps):
        source = fit_source(Encoder(8, 2, hidden=()), LinearGaussianHead(2, 2), TASK.sample(n_s, "source", gen))
        floors.append(floor_of_row_space(TRUTH, raw_row_space(source)))
        target = fit_target_head(source, LinearGaussianHead(2, 2), TASK.sample(n_t, "target", gen))
        heads.append(target.history.steps_done)
    sim = simulate_transfer(TRUTH, [n_s], [n_t], 20, 2, reps=4000)
    expected, sd = sim.true_floor.mean(), sim.true_floor.std()
    assert abs(np.mean(floors) - expected) < 3.5 * sd / np.sqrt(reps)
    assert set(heads) == {0}  # the target head is fitted exactly as well


def test_a_linear_encoder_wider_than_d_x_is_refused_before_any_cell_runs(tmp_path) -> None:
    from shared_embed.errors import ConfigError
    from theory.engine.config import ExperimentConfig
    from theory.studies.transfer.sweep import run_sweep

    raw = {
        "task": {"name": "conditional_gaussian", "d_c": 8, "d_h": 4},
        "encoder": {"embed_dim": "d_h"},
        "grid": {"n_s": [100], "n_t": [20], "seeds": [0], "heads": ["lin"], "variants": ["transfer"]},
        "heads": {"lin": {"kind": "linear_gaussian", "encoder": {"hidden": []}}},
    }
    with pytest.raises(ConfigError, match="embed_dim <= min\\(d_c, d_x\\) = 2"):
        run_sweep(ExperimentConfig.from_dict(raw), tmp_path / "run", log=None)
    assert not (tmp_path / "run" / "cells").exists()
