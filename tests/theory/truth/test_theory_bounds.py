"""The Girsanov bound of a fitted diffusion model against a ground-truth task, and its place in a sweep."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from shared_embed import Standardizer
from theory.engine.config import ExperimentConfig
from theory.studies.transfer.sweep import collect_records, run_sweep
from theory.truth.bounds import standardized_law
from theory.truth.tasks import ConditionalMixtureTask


def test_standardized_law_is_the_law_of_the_standardized_outcome() -> None:
    """log p_z(z) = log p_x(x) + sum log std (change of variables), and its score is std * grad_x log p_x."""
    task = ConditionalMixtureTask(d_c=4, d_h=2, d_x=2)
    data = task.sample(200, "target", torch.Generator().manual_seed(0))
    scaler = Standardizer.fit(data.x.double())
    law_x = task.conditional(data.c.double(), "target")
    law_z = standardized_law(law_x, scaler)
    x = data.x.double()
    z = scaler(x)
    expected = law_x.log_prob(x) + scaler.std.log().sum()
    assert torch.allclose(law_z.log_prob(z), expected, atol=1e-10)
    assert torch.allclose(law_z.score(z), scaler.std * law_x.score(x), atol=1e-10)


def test_a_diffusion_sweep_cell_records_its_bound_beside_its_kl(tmp_path: Path) -> None:
    """A tiny diffusion-head sweep: every cell carries a finite Girsanov bound with its SE and the kNN KL of
    its SDE law (on 2 x bound_n draws), and the girsanov check reads them (its verdict on an untrained head is not the point here)."""
    config = ExperimentConfig.from_dict(
        {
            "task": {"name": "conditional_gaussian", "d_c": 4},
            "grid": {"n_s": [64], "n_t": [16], "seeds": [0], "heads": ["diffusion"], "variants": ["transfer"]},
            "heads": {
                "diffusion": {
                    "kind": "diffusion",
                    "options": {"width": 8, "blocks": 1, "time_features": 4, "rtol": 1e-3, "atol": 1e-3},
                }
            },
            "encoder": {"hidden": [8]},
            "train": {p: {"steps": 10, "eval_every": 5} for p in ("source", "target", "floor")},
            "evaluation": {"n_eval": 64, "floor_n": 64, "bound_n": 64, "sample_n": 4, "sample_contexts": 1},
        }
    )
    result = run_sweep(config, tmp_path, log=None)
    assert (result.ran, result.failed) == (1, 0)
    (record,) = collect_records(tmp_path)
    assert math.isfinite(record["bound"]) and record["bound_se"] > 0 and record["bound_n"] == 64
    assert record["bound"] > 0 and math.isfinite(record["kl"])
    assert math.isfinite(record["kl_sde"]) and record["kl_sde_se"] > 0 and record["kl_sde_n"] == 128
