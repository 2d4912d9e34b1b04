"""The transfer grid with diffusion heads: a fast check that the grid runs and scores them by the
probability-flow KL, and the full experiment of the flow issue for diffusion heads (``-m slow``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffusion import make_diffusion_head
from shared_embed import TrainConfig, TransferConfig
from theory.diffusion_experiment import run_diffusion_experiment
from theory.tasks import ConditionalGaussianTask
from theory.transfer_experiment import format_table, run_transfer_grid

from .transfer_checks import assert_transfer_beats_no_transfer


def test_grid_runs_diffusion_heads() -> None:
    task = ConditionalGaussianTask()
    quick = TrainConfig(steps=20, eval_every=10)
    config = TransferConfig(source_train=quick, target_train=quick, encoder_hidden=(8,))
    factory = make_diffusion_head(2, width=8, blocks=1, time_features=4, rtol=1e-3, atol=1e-3)
    recs = run_transfer_grid(task, factory, 200, [20], [0], transfer_config=config, n_eval=200)
    assert [r["variant"] for r in recs] == ["transfer", "no_transfer", "fine_tune", "oracle"]
    assert all(math.isfinite(r["kl"]) and r["kl_se"] > 0 and r["n_eval"] == 200 for r in recs)
    assert recs[0]["head"]["kind"] == "diffusion" and recs[0]["head"]["width"] == 8
    json.dumps(recs)
    assert "| 20 |" in format_table(recs)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the suite's 300 s limit is for the default run
def test_diffusion_transfer_experiment() -> None:
    """Conditional Gaussian task, n_s = 10,000, n_t in {50, ..., 1000}, 3 seeds, four variants, KL by the
    probability-flow log-density on 10,000 target pairs per seed, the KL split of transfer (about 18 min on
    one core): transfer beats no-transfer by a wide margin at n_t = 50 and 100."""
    torch.set_num_threads(1)
    result = run_diffusion_experiment(log=print)
    print(result["table"])
    print(result["split_table"])
    print("sample-efficiency ratio:", result["ratio"]["text"])
    assert_transfer_beats_no_transfer(result)
