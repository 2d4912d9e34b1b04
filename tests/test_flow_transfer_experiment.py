"""The transfer grid: fast checks of its bookkeeping, and the full flow-head experiment (``-m slow``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flows import make_flow_head
from shared_embed import ConfigError, DataError, GaussianHead, TrainConfig, TransferConfig
from theory.flow_experiment import run_flow_experiment
from theory.tasks import ConditionalGaussianTask
from theory.transfer_experiment import (
    format_split_table,
    format_table,
    run_transfer_grid,
    sample_efficiency_ratio,
    summarize,
)

from .transfer_checks import assert_transfer_beats_no_transfer


def record(variant: str, n_t: int, kl: float, seed: int = 0) -> dict:
    return {"variant": variant, "n_t": n_t, "kl": kl, "kl_se": 0.01, "seed": seed}


def test_sample_efficiency_ratio_interpolates_in_log_log() -> None:
    # no_transfer KL = 10 / n_t exactly: matching transfer's 0.025 at n_t = 100 needs n_t = 400.
    recs = [record("transfer", 100, 0.025)] + [record("no_transfer", n, 10 / n) for n in (50, 100, 200, 500, 1000)]
    r = sample_efficiency_ratio(recs)
    assert r["bound"] == "=" and math.isclose(r["n_t_needed"], 400.0, rel_tol=1e-9) and r["text"] == "4"
    never = [record("transfer", 100, 1e-4)] + [record("no_transfer", n, 10 / n) for n in (50, 100, 1000)]
    assert sample_efficiency_ratio(never)["text"] == "> 10" and sample_efficiency_ratio(never)["ratio"] is None
    at_once = [record("transfer", 100, 1.0)] + [record("no_transfer", n, 0.5) for n in (50, 100)]
    assert sample_efficiency_ratio(at_once)["text"] == "<= 0.5"
    with pytest.raises(DataError, match="n_t=100"):
        sample_efficiency_ratio([record("transfer", 50, 1.0), record("no_transfer", 50, 1.0)])


def test_summary_averages_over_seeds() -> None:
    recs = [record("transfer", 50, kl, seed) for seed, kl in enumerate((1.0, 2.0, 3.0))]
    (row,) = summarize(recs)
    assert row["kl_mean"] == 2.0 and math.isclose(row["kl_se_seeds"], 1 / math.sqrt(3))
    assert math.isclose(row["kl_se_mc"], 0.01 / math.sqrt(3))
    assert "| 50 | 2.0000 +- 0.5774 |" in format_table(recs)


def test_grid_records_are_json_and_complete() -> None:
    task = ConditionalGaussianTask()
    quick = TrainConfig(steps=30, eval_every=10)
    config = TransferConfig(source_train=quick, target_train=quick, encoder_hidden=(8,))
    factory = make_flow_head(2, transform="maf", transforms=1, hidden=(8, 8))
    recs = run_transfer_grid(task, factory, 200, [40, 20], [0, 1], transfer_config=config, n_eval=500)
    assert len(recs) == 2 * 2 * 4
    assert [r["n_t"] for r in recs[:8]] == [20] * 4 + [40] * 4
    assert all(math.isfinite(r["kl"]) and r["kl_se"] > 0 and r["n_eval"] == 500 for r in recs)
    assert recs[0]["head"]["transform"] == "maf" and recs[0]["task"]["name"] == "conditional_gaussian"
    json.dumps(recs)
    again = run_transfer_grid(task, factory, 200, [20, 40], [0], variants=["no_transfer"], transfer_config=config,
                              n_eval=500)
    assert again[0]["kl"] == recs[1]["kl"]  # seeded per cell: the other variants do not change it
    with pytest.raises(ConfigError, match="oracle"):
        run_transfer_grid(object(), lambda k: GaussianHead(2, k), 10, [5], [0], variants=["oracle"])


def test_grid_kl_split_adds_up() -> None:
    task = ConditionalGaussianTask()
    quick = TrainConfig(steps=30, eval_every=10)
    config = TransferConfig(source_train=quick, target_train=quick, encoder_hidden=(8,))
    factory = make_flow_head(2, transform="maf", transforms=1, hidden=(8, 8))
    recs = run_transfer_grid(task, factory, 200, [30], [0], variants=["transfer", "oracle"], transfer_config=config,
                             n_eval=500, floor_n=300, floor_train=quick)
    transfer, oracle = recs
    assert math.isclose(transfer["kl"], transfer["floor"] + transfer["head_term"], abs_tol=1e-9)
    assert transfer["floor_se"] > 0 and transfer["floor_n"] == 300 and "floor" not in oracle
    assert "| 30 |" in format_split_table(recs)


@pytest.mark.slow
def test_flow_transfer_experiment() -> None:
    """Default task, n_s = 10,000, n_t in {50, ..., 1000}, 3 seeds, four variants, the KL split of transfer
    (about 5 min on one core): transfer beats no-transfer by a wide margin at n_t = 50 and 100."""
    torch.set_num_threads(1)
    result = run_flow_experiment(log=print)
    print(result["table"])
    print(result["split_table"])
    print("sample-efficiency ratio:", result["ratio"]["text"])
    assert_transfer_beats_no_transfer(result)
