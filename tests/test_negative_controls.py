"""Every verdict-bearing check has power: a pipeline broken on purpose FAILs its check, the correct one PASSes.

Small studies run through the real engine (``run_sweep`` + ``run_checks``) with the exactly fitted
linear-Gaussian head, so they take seconds. The false-pass and false-fail RATES over repetitions are
measured by the slow test at the end (and written into docs/checks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from theory.checks import FAIL, PASS, run_checks
from theory.config import ExperimentConfig
from theory.controls import PIPELINE_CONTROLS, TARGET_CHECK, distort_records
from theory.rates import generic_rates
from theory.sweep import collect_records, run_sweep

KNOWN_ANSWER_CONTROLS = ("context_blind", "wrong_truth_variance", "kl_offset", "kl_factor")
SOURCE_CONTROLS = ("random_encoder", "trainable_encoder")


def study(control: str = "", *, source: bool, seeds: tuple[int, ...] = (0, 1, 2, 3), offset: int = 0) -> dict[str, Any]:
    """A small study: transfer (with a source) or the known-answer variants (oracle, direct) only."""
    grid = {"n_s": [100, 3200], "n_t": [20, 40], "variants": ["transfer"]} if source else \
        {"n_s": [100], "n_t": [25, 50, 100, 200], "variants": ["oracle", "direct"]}
    return {
        "experiment": {"name": "control", "control": control},
        "task": {"name": "conditional_gaussian", "d_c": 4},
        "grid": {**grid, "seeds": [s + offset for s in seeds], "heads": ["lin"]},
        "heads": {"lin": {"kind": "linear_gaussian"}},
        "encoder": {"hidden": [16]},
        "train": {"source": {"steps": 500, "lr": 1e-2, "eval_every": 50, "patience": 5}},
        "evaluation": {"n_eval": 3000, "floor_n": 2000, "sample_n": 10, "sample_contexts": 2},
        "run": {"workers": 1},
    }


def verdicts(raw: dict[str, Any], out: Path) -> dict[str, str]:
    """Run the study and return check name -> verdict (the worst over scopes: FAIL beats pass)."""
    config = ExperimentConfig.from_dict(raw)
    run_sweep(config, out, log=None)
    rates = {"lin": generic_rates(d_c=4, d_h=2, d_x=2, beta=2.0, head="linear_gaussian")}
    found: dict[str, str] = {}
    for c in run_checks(collect_records(out), rates):
        if found.get(c.name) != FAIL:
            found[c.name] = c.verdict
    return found


@pytest.fixture(scope="module")
def correct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("correct")
    return {"known": verdicts(study(source=False), base / "known"),
            "source": verdicts(study(source=True), base / "source")}


def test_every_control_is_aimed_at_a_check() -> None:
    assert set(TARGET_CHECK) == set(PIPELINE_CONTROLS) == set(KNOWN_ANSWER_CONTROLS) | set(SOURCE_CONTROLS)


def test_the_correct_pipeline_passes_every_targeted_check(correct: dict[str, dict[str, str]]) -> None:
    assert correct["known"]["KL equals its known answer"] == PASS
    assert correct["source"]["embedding floor falls as n_s grows"] == PASS
    assert correct["source"]["transfer keeps the source embedding"] == PASS
    assert FAIL not in correct["known"].values() and FAIL not in correct["source"].values()


@pytest.mark.parametrize("control", KNOWN_ANSWER_CONTROLS + SOURCE_CONTROLS)
def test_a_broken_pipeline_fails_its_check(control: str, tmp_path: Path) -> None:
    found = verdicts(study(control, source=control in SOURCE_CONTROLS), tmp_path)
    assert found[TARGET_CHECK[control]] == FAIL, found


@pytest.mark.parametrize("distortion", ["KL x3", "KL x0.1", "KL +0.05 nats", "one NaN KL"])
def test_distorted_records_turn_a_check_to_fail(distortion: str, tmp_path: Path) -> None:
    config = ExperimentConfig.from_dict(study(source=False))
    run_sweep(config, tmp_path, log=None)
    records = collect_records(tmp_path)
    assert FAIL not in {c.verdict for c in run_checks(records, {})}
    assert FAIL in {c.verdict for c in run_checks(distort_records(records, distortion), {})}


@pytest.mark.slow
@pytest.mark.parametrize("control", ("",) + KNOWN_ANSWER_CONTROLS + SOURCE_CONTROLS)
def test_false_pass_and_false_fail_rates(control: str, tmp_path: Path) -> None:
    """Over 10 independent repetitions (fresh seeds): a control never passes its check (false pass <= 10%),
    and the correct pipeline FAILs a check at most once (false fail <= 10%). Prints the rates."""
    reps, bad = 10, 0
    for rep in range(reps):
        if control:
            found = verdicts(study(control, source=control in SOURCE_CONTROLS, offset=100 * (rep + 1)),
                             tmp_path / f"r{rep}")
            bad += found[TARGET_CHECK[control]] != FAIL
        else:
            found = {**verdicts(study(source=False, offset=100 * (rep + 1)), tmp_path / f"k{rep}"),
                     **verdicts(study(source=True, offset=100 * (rep + 1)), tmp_path / f"s{rep}")}
            bad += FAIL in found.values()
    print(f"\n{control or 'correct pipeline'}: {'false fail' if not control else 'false pass'} rate "
          f"{bad}/{reps}")
    assert bad <= 1
