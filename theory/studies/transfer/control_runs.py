"""Run the negative controls through the engine and count how often each check gives the wrong verdict.

:func:`control_verdicts` runs one small study (:func:`theory.verdicts.controls.control_study`) and returns its
verdicts; :func:`control_rates` repeats every control on fresh seeds and returns, per control, how often its
target check did NOT fail (the false-pass rate) and, for the correct pipeline, how often any check FAILed
(the false-fail rate), with the record distortions applied to each correct repetition's records beside them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from theory.engine.config import ExperimentConfig
from theory.studies.transfer.sweep import collect_records, run_sweep
from theory.truth.rates import Rates, generic_rates
from theory.verdicts.checks import FAIL, run_checks
from theory.verdicts.controls import (
    DISTORTIONS,
    OTHER_DISTORTIONS,
    PIPELINE_CONTROLS,
    SOURCE_CONTROLS,
    SOURCE_DISTORTIONS,
    TARGET_CHECK,
    aimed_checks,
    control_study,
    distort_records,
)
from theory.verdicts.verdict import Record


def control_rates_of(records: Sequence[Record]) -> dict[str, Rates]:
    """The predictions for a control study's linear head, at the records' own dimensions."""
    d_c = int(next((r["d_c"] for r in records if r.get("d_c")), 4))
    return {"lin": generic_rates(d_c=d_c, d_h=2, d_x=2, beta=2.0, head="linear_gaussian")}


def worst_verdicts(records: Sequence[Record]) -> dict[str, str]:
    """Check name -> verdict over its scopes (a FAIL anywhere wins)."""
    found: dict[str, str] = {}
    for c in run_checks(records, control_rates_of(records)):
        if found.get(c.name) != FAIL:
            found[c.name] = c.verdict
    return found


def control_verdicts(raw: dict[str, Any], out: str | os.PathLike[str]) -> tuple[dict[str, str], list[Record]]:
    """Run a control study into ``out``; return (check name -> worst verdict, the records)."""
    run_sweep(ExperimentConfig.from_dict(raw), out, log=None)
    records = collect_records(out)
    return worst_verdicts(records), records


def control_rates(
    reps: int,
    out: str | os.PathLike[str],
    controls: Sequence[str] = PIPELINE_CONTROLS,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Per control and per record distortion: repetitions, wrong verdicts, their rate and the checks that FAILed.

    A pipeline control's verdict is wrong when its target check does not FAIL; a distortion's when no check
    FAILs on the distorted records of a correct repetition; the correct pipeline's when any check FAILs.
    """
    out = Path(out)
    names = ("", *controls, *(d for d in DISTORTIONS if d != "oracle reads c"))
    wrong = {c: 0 for c in names}
    failed: dict[str, Counter[str]] = {c: Counter() for c in names}
    for rep in range(reps):
        offset = 1000 * (rep + 1)
        correct: dict[str, str] = {}
        for source in (False, True):
            found, records = control_verdicts(control_study(source=source, offset=offset), out / f"ok{rep}{source}")
            correct.update({k: v for k, v in found.items() if correct.get(k) != FAIL})
            for name in DISTORTIONS:
                if name == "oracle reads c":
                    continue  # aimed at the dimension laws: a study over d_c (the report applies it there)
                if (name in SOURCE_DISTORTIONS) != source:
                    continue  # those two need the source study's records, the others the known-answer study's
                hit = [k for k, v in worst_verdicts(distort_records(records, name)).items() if v == FAIL]
                wrong[name] += not hit
                failed[name].update(hit)
        wrong[""] += FAIL in correct.values()
        failed[""].update(k for k, v in correct.items() if v == FAIL)
        for control in controls:
            found, _ = control_verdicts(
                control_study(control, source=control in SOURCE_CONTROLS, offset=offset), out / f"{control}{rep}"
            )
            wrong[control] += not any(found.get(name) == FAIL for name in aimed_checks(control))
            failed[control].update(k for k, v in found.items() if v == FAIL)
        say(f"repetition {rep + 1}/{reps}: wrong verdicts so far {wrong}")
    return {
        name or "correct pipeline": {
            "reps": reps,
            "wrong": wrong[name],
            "rate": wrong[name] / reps,
            "kind": "false fail (any check)" if not name else "false pass",
            "check": " or ".join(aimed_checks(name))
            if name in TARGET_CHECK
            else OTHER_DISTORTIONS.get(name, "any check"),
            "failed_checks": dict(failed[name]),
        }
        for name in names
    }
