"""The transfer grid with diffusion heads: a fast check that the grid runs and scores them by the
probability-flow KL, and the full experiment of the flow issue for diffusion heads (``-m slow``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.transfer_checks import assert_transfer_beats_no_transfer
from theory.studies.transfer.experiments import run_diffusion_experiment
from theory.studies.transfer.summary import format_table


def test_the_experiment_runs_diffusion_heads(tmp_path) -> None:
    tiny = (
        "grid.n_s=[200]",
        "grid.n_t=[20]",
        "grid.seeds=[0]",
        "encoder.hidden=[8]",
        "train.source.steps=20",
        "train.source.eval_every=10",
        "train.target.steps=20",
        "train.target.eval_every=10",
        "evaluation.n_eval=200",
        "evaluation.floor_n=0",
        "heads.diffusion.options.width=8",
        "heads.diffusion.options.blocks=1",
        "heads.diffusion.options.time_features=4",
        "heads.diffusion.options.rtol=1e-3",
        "heads.diffusion.options.atol=1e-3",
    )
    recs = run_diffusion_experiment(tiny, out=tmp_path)["records"]
    assert sorted(r["variant"] for r in recs) == sorted(["transfer", "no_transfer", "fine_tune", "oracle"])
    assert all(math.isfinite(r["kl"]) and r["kl_se"] > 0 and r["n_eval"] == 200 for r in recs)
    assert all(r["head_kind"] == "diffusion" and r["settings"]["head"]["options"]["width"] == 8 for r in recs)
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
