"""The completion study on real 8x8 digits: the data contract, known answers of its pieces, and the whole path
through ``gentransfer run`` / ``report`` on the smoke config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from shared_embed.errors import ConfigError, DataError
from tests.presets import preset_args, preset_settings
from theory.studies.completion.task import (
    HALF,
    LEVELS,
    N_CLASSES,
    CompletionTask,
    apply_style,
    dequantize,
    from_logit,
    log_abs_det,
    quantize,
    redequantize,
    to_logit,
)


@pytest.fixture(scope="module")
def task() -> CompletionTask:
    return CompletionTask(seed=0)


def test_logit_log_det_matches_autograd_jacobian():
    y = dequantize(torch.randint(0, LEVELS, (3, HALF)), torch.Generator().manual_seed(0), torch.float64)
    for row in y:
        jac = torch.autograd.functional.jacobian(to_logit, row)
        assert torch.allclose(torch.linalg.slogdet(jac)[1], log_abs_det(row[None])[0])
    assert torch.allclose(from_logit(to_logit(y)), y)


def test_a_model_uniform_on_pixel_space_scores_32_ln_17(task):
    """Known answer of the whole scoring path: p_y uniform on [0, 17)^32, i.e. log p_x(x) = -32 ln 17 - log|dx/dy|."""
    from theory.studies.completion.evaluation import evaluate, fit_classifier, test_rows

    class Uniform:
        def eval(self):
            return self

        def log_prob(self, x, c):
            return -HALF * math.log(LEVELS) - log_abs_det(from_logit(x.double())).to(x.dtype)

        def sample(self, n, c):
            return to_logit(LEVELS * torch.rand(n, HALF))

    rec = evaluate(
        Uniform(),
        task,
        fit_classifier(task),
        seed=0,
        nll_rows=50,
        gen_rows=20,
        grid_rows=test_rows(task, 1),
        grid_draws=2,
    )
    assert rec["n"] == 50 and rec["nll"] == pytest.approx(HALF * math.log(LEVELS), abs=1e-3)
    assert rec["bpd"] == pytest.approx(math.log2(LEVELS), abs=1e-4)
    assert len(rec["grid_bottoms"]) == 2 * N_CLASSES and len(rec["nll_per_image"]) == 50


def test_redequantize_keeps_the_levels_and_quantize_inverts_the_data_map(task):
    data = task.paired(task.target_train(2), torch.Generator().manual_seed(1))
    assert data.c.shape == (20, HALF) and data.x.shape == (20, HALF)
    levels = task.target_train(2).bottom
    assert torch.equal(quantize(data.x), levels)
    torch.manual_seed(0)
    fresh = redequantize(data.x)
    assert torch.equal(quantize(fresh), levels) and not torch.allclose(fresh, data.x)
    assert torch.equal(data.c * (LEVELS - 1), task.target_train(2).top.float())


def test_thicken_dilates_a_pixel_into_a_2x2_block():
    img = torch.zeros(1, 64, dtype=torch.int64)
    img[0, 3 * 8 + 4] = 9
    out = apply_style(img, "thicken").reshape(8, 8)
    assert out.sum() == 4 * 9 and out[2:4, 3:5].eq(9).all()
    assert torch.equal(apply_style(img, "original"), img)


def test_splits_are_disjoint_balanced_and_nested(task):
    assert len(task.test) == 10 * task.test_per_class and len(task.pool) == 10 * task.pool_per_class
    assert len(task.source) + len(task.test) + len(task.pool) == 1797
    assert torch.equal(task.target_train(2).levels, task.target_train(5).levels[:20])
    assert torch.equal(task.target_train(2).labels.sort().values, torch.arange(10).repeat_interleave(2))
    assert torch.equal(task.test.labels[:10].sort().values, torch.arange(10))  # any prefix is balanced
    with pytest.raises(DataError, match="per_class"):
        task.target_train(task.pool_per_class + 1)


def test_comparisons_know_the_combined_se_and_the_verdict():
    from theory.studies.completion.report import comparisons

    def rec(seed, variant, nll):
        return {
            "seed": seed,
            "head": "flow",
            "per_class": 2,
            "variant": variant,
            "nll": nll,
            "nll_per_image": [nll - 1, nll + 1],
        }

    a, b = [80.0, 82.0, 84.0], [90.0, 95.0, 100.0]  # SEs 1.1547 and 2.8868
    rows = comparisons(
        [rec(s, "transfer", x) for s, x in enumerate(a)] + [rec(s, "no_transfer", x) for s, x in enumerate(b)]
    )
    (row,) = rows
    assert row["nll_diff"] == pytest.approx(-13.0) and row["paired_se"] == pytest.approx(1.7320508)
    assert row["combined_se"] == pytest.approx(math.sqrt(4 / 3 + 25 / 3)) and row["wins"]
    close = comparisons(
        [rec(s, "transfer", x) for s, x in enumerate(a)] + [rec(s, "no_transfer", x + 3) for s, x in enumerate(a)]
    )
    assert not close[0]["wins"]  # 3 nats lower, but 2 combined SEs are 3.27
    (one,) = comparisons([rec(0, "transfer", 80.0), rec(0, "no_transfer", 90.0)])
    assert one["paired_se"] == 0.0 and math.isnan(one["combined_se"]) and not one["wins"]  # per-image: -10, -10


def test_the_smoke_preset_overlays_the_shipped_settings():
    """The smoke preset changes sizes and steps only: the style, variants and head kinds are the shipped study's."""
    full, smoke = preset_settings("completion", None), preset_settings("completion")
    assert (smoke.style, smoke.variants, smoke.heads) == (full.style, full.variants, full.heads)
    assert smoke.per_class == (2,) and smoke.seeds == (0,) and smoke.head_options["flow"]["transform"] == "nsf"


def test_bad_settings_name_themselves():
    from theory.studies.completion.experiment import CompletionExperiment

    with pytest.raises(ConfigError, match="head"):
        CompletionExperiment(heads=("vae",))
    with pytest.raises(ConfigError, match="pool_per_class"):
        CompletionExperiment(per_class=(30,))
    with pytest.raises(ConfigError, match="variant"):
        CompletionExperiment(variants=("oracle",))
    with pytest.raises(ConfigError, match="target_val_fraction head"):
        CompletionExperiment(target_val_fraction={"gaussian": 0.0})


def test_the_completion_study_runs_and_reports_through_gentransfer(tmp_path, capsys):
    from theory.cli import main
    from theory.engine.run_folder import untimed
    from theory.studies.completion.experiment import run_completion_experiment

    out = tmp_path / "run"
    assert main(["run", *preset_args("completion"), "--out", str(out), "--quiet"]) == 0
    records = json.loads((out / "records.json").read_text())["records"]
    assert {(r["head"], r["variant"]) for r in records} == {
        (h, v) for h in ("flow", "diffusion") for v in ("source_only", "transfer", "no_transfer", "fine_tune", "direct")
    }
    assert all(math.isfinite(r["nll"]) for r in records)
    report = (out / "report.md").read_text()
    assert "transfer − no_transfer" in report and (out / "completion_flow_k2.png").is_file()
    assert (out / "completion_diffusion_k2.png").is_file()
    library = run_completion_experiment(preset_settings("completion"))["records"]
    assert [(r["head"], r["variant"], r["nll"]) for r in library] == [
        (r["head"], r["variant"], r["nll"]) for r in records
    ]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0 and "| flow |" in capsys.readouterr().out
    (out / "cells" / "flow" / "seed0_k2_transfer.json").unlink()
    assert (
        main(["run", *preset_args("completion"), "--out", str(out), "--quiet", "--no-report"]) == 0
    )  # reruns that cell
    rerun = json.loads((out / "records.json").read_text())["records"]
    assert [untimed(r) for r in rerun] == [untimed(r) for r in records]


def test_adding_a_variant_or_a_head_changes_no_other_cells_records():
    """Each cell draws from a digest of its own coordinates: the flow head's transfer cell is the same, bit for
    bit, in a grid of that cell alone and in one with another variant and another head."""
    import dataclasses

    from theory.engine.run_folder import untimed
    from theory.studies.completion.experiment import run_completion_experiment

    tiny = dataclasses.replace(preset_settings("completion"), heads=("flow",))
    alone = dataclasses.replace(tiny, variants=("transfer",), source_only=False)
    more = dataclasses.replace(tiny, heads=("diffusion", "flow"), variants=("no_transfer", "transfer"))
    cells = [run_completion_experiment(exp)["records"] for exp in (alone, more)]
    flow_transfer = [[untimed(r) for r in rs if (r["head"], r["variant"]) == ("flow", "transfer")] for rs in cells]
    assert len(flow_transfer[0]) == 1 and flow_transfer[0] == flow_transfer[1]


@pytest.mark.slow
def test_the_shipped_completion_study_meets_its_goal(tmp_path):
    """configs/completion.toml as shipped (about 18 CPU-minutes): at the smallest target size transfer's test NLL
    is lower than no-transfer's by more than 2 combined SEs over the shipped seeds, for flows and for diffusion."""
    import pathlib

    from theory.engine.config import read_toml
    from theory.studies.completion.experiment import run_completion_experiment
    from theory.studies.completion.report import comparisons, format_table
    from theory.studies.completion.study import parse

    config = pathlib.Path(__file__).resolve().parents[3] / "configs" / "completion.toml"
    experiment = parse(read_toml(config))[1]
    result = run_completion_experiment(experiment, tmp_path, log=print)
    print(format_table(result["records"], result["references"]))
    smallest = min(experiment.per_class)
    verdicts = {
        c["head"]: c["wins"]
        for c in comparisons(result["records"])
        if c["per_class"] == smallest and c["b"] == "no_transfer"
    }
    assert verdicts == {"flow": True, "diffusion": True}
