"""The flow transfer experiment: its summaries, the library call against the CLI, and the full run (``-m slow``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from shared_embed import DataError
from tests.transfer_checks import assert_transfer_beats_no_transfer
from theory.cli import main
from theory.engine.run_folder import collect_records, untimed
from theory.studies.transfer.experiments import run_flow_experiment
from theory.studies.transfer.summary import format_table, sample_efficiency_ratio, summarize


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
    assert "| 50 | 2.0000 ± 0.5774 |" in format_table(recs)


#: a seconds-long version of the shipped flow experiment (same config, smaller grid and training)
TINY = (
    "grid.n_s=[200]",
    "grid.n_t=[40, 20]",
    "grid.seeds=[0, 1]",
    "encoder.hidden=[8]",
    "train.source.steps=30",
    "train.source.eval_every=10",
    "train.target.steps=30",
    "train.target.eval_every=10",
    "train.floor.steps=30",
    "train.floor.eval_every=10",
    "evaluation.n_eval=500",
    "evaluation.floor_n=300",
    "heads.flow.options.transform=maf",
    "heads.flow.options.transforms=1",
    "heads.flow.options.hidden=[8, 8]",
)


def test_the_library_call_and_the_cli_give_identical_records(tmp_path) -> None:
    """run_flow_experiment is ``gentransfer run configs/flow_transfer.toml``: one engine, one seeding scheme."""
    result = run_flow_experiment(TINY, out=tmp_path / "api")
    args = [a for o in TINY for a in ("--set", o)]
    assert main(["run", "flow_transfer", "--out", str(tmp_path / "cli"), "--quiet", "--no-report", *args]) == 0
    assert [untimed(r) for r in result["records"]] == [untimed(r) for r in collect_records(tmp_path / "cli")]
    recs = result["records"]
    assert len(recs) == 2 * 2 * 4 and all(math.isfinite(r["kl"]) and r["kl_se"] > 0 for r in recs)
    transfer = [r for r in recs if r["variant"] == "transfer"]
    assert all(math.isclose(r["kl"], r["floor_paired"] + r["head_term"], abs_tol=1e-9) for r in transfer)
    assert "| 20 |" in result["table"] and "| 40 |" in result["split_table"]
    json.dumps(recs)


def test_a_cell_does_not_depend_on_what_else_runs(tmp_path) -> None:
    """Seeds derive from the cell itself: a grid of one variant gives that variant's records unchanged."""
    both = run_flow_experiment((*TINY, "grid.seeds=[0]"), out=tmp_path / "all")["records"]
    alone = run_flow_experiment((*TINY, "grid.seeds=[0]", 'grid.variants=["no_transfer"]'), out=tmp_path / "one")[
        "records"
    ]
    assert [untimed(r) for r in alone] == [untimed(r) for r in both if r["variant"] == "no_transfer"]


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
