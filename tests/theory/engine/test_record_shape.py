"""Known answers of the record-shape check: each field named by its dotted path, optional and per-key fields,
numbers that are never booleans or text, lists with their lengths, and the reader's one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_embed.errors import DataError
from theory.engine.record_shape import (
    FLAG,
    FRACTION,
    NUMBER,
    TEXT,
    WHOLE,
    list_of,
    one_of,
    optional,
    read_shaped,
    shape_by_record,
    shape_problems,
)
from theory.engine.records import seal, write_cell

SHAPE = {
    "nll": NUMBER,
    "steps": WHOLE,
    "ok": FLAG,
    "share": FRACTION,
    "verdict": one_of("guided", "refused"),
    "probe": optional({"max_ratio": NUMBER, "note": optional(TEXT)}, null=True),
    "per_class": {"*": NUMBER},
    "points": list_of(list_of(NUMBER, length=2), nonempty=False),
}
GOOD = {
    "nll": 93.5,
    "steps": 10,
    "ok": False,
    "share": 0.5,
    "verdict": "guided",
    "probe": {"max_ratio": 0.3},
    "per_class": {"0": 1.0, "1": 0.5},
    "points": [[0.0, 1.0]],
}


def test_a_record_of_the_shape_has_no_problem_and_a_listed_null_stands_for_a_non_finite_number() -> None:
    assert shape_problems(GOOD, SHAPE) == []
    assert shape_problems({**GOOD, "probe": None, "points": []}, SHAPE) == []  # probe: optional(..., null=True)
    assert shape_problems({k: v for k, v in GOOD.items() if k != "probe"}, SHAPE) == []
    sealed = seal({**GOOD, "nll": float("inf"), "points": [[0.0, float("nan")]]}, settings_hash="0123456789ab")
    assert sealed["nll"] is None and sealed["nonfinite"] == {"nll": "inf", "points.0.1": "nan"}
    assert shape_problems(sealed, SHAPE) == []


def test_a_null_the_record_does_not_list_as_non_finite_is_refused_by_its_path() -> None:
    sealed = seal({**GOOD, "nll": float("inf")}, settings_hash="0123456789ab")
    listed = ", or null where 'nonfinite' lists it"
    assert shape_problems({**sealed, "nonfinite": {}}, SHAPE) == [f"nll = None (expected a number{listed})"]
    edited = {**sealed, "points": [[0.0, None]], "per_class": {"0": None}, "steps": None}
    assert shape_problems(edited, SHAPE) == [
        "steps = None (expected a whole number)",
        f"per_class.0 = None (expected a number{listed})",
        f"points.0.1 = None (expected a number{listed})",
    ]
    assert shape_problems({**sealed, "probe": {"max_ratio": 1.0, "note": None}}, SHAPE) == [
        "probe.note = None (expected text)"  # optional without null=True: absent, never null
    ]
    older = {**GOOD, "nll": None}  # no common field at all
    assert shape_problems(older, SHAPE) == []  # a record of the layout before the common fields: as written


@pytest.mark.parametrize(
    "edit, problem",
    [
        ({"nll": "93.5"}, "nll = '93.5' (expected a number)"),
        ({"nll": True}, "nll = True (expected a number)"),
        ({"steps": 10.5}, "steps = 10.5 (expected a whole number)"),
        ({"ok": 1}, "ok = 1 (expected true or false)"),
        ({"share": 1.5}, "share = 1.5 (expected a number in [0, 1])"),
        ({"verdict": "fine"}, "verdict = 'fine' (expected one of 'guided', 'refused')"),
        ({"probe": {"max_ratio": "big"}}, "probe.max_ratio = 'big' (expected a number)"),
        ({"probe": {"max_ratio": 1.0, "note": 3}}, "probe.note = 3 (expected text)"),
        ({"probe": {}}, "missing 'probe.max_ratio'"),
        ({"probe": [1]}, "probe = [1] (expected a JSON object)"),
        ({"per_class": {"0": 1.0, "7": "x"}}, "per_class.7 = 'x' (expected a number)"),
        ({"points": [[0.0]]}, "points.0 = [0.0] (expected a list of 2 numbers)"),
        ({"points": "x"}, "points = 'x' (expected a list of lists of 2 numbers)"),
    ],
)
def test_each_problem_names_the_field_by_its_path_and_what_it_expects(edit: dict, problem: str) -> None:
    assert shape_problems({**GOOD, **edit}, SHAPE) == [problem]


def test_a_missing_field_and_a_non_object_record_are_named() -> None:
    assert shape_problems({k: v for k, v in GOOD.items() if k != "nll"}, SHAPE) == ["missing 'nll'"]
    (problem,) = shape_problems([GOOD], SHAPE)
    assert problem.startswith("record = [{'nll': 93.5") and problem.endswith("... (expected a JSON object)")
    assert shape_problems({"xs": []}, {"xs": list_of(NUMBER)}) == ["xs = [] (expected a non-empty list of numbers)"]
    assert shape_problems({"xs": []}, {"xs": list_of(NUMBER, nonempty=False)}) == []


def test_read_shaped_refuses_in_one_line_naming_the_file_and_at_most_three_fields(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    write_cell(path, seal({**GOOD, "nll": "x", "steps": "y", "ok": "z", "share": 9}, settings_hash="0123456789ab"))
    with pytest.raises(DataError) as err:
        read_shaped(path, "toy record", lambda record: SHAPE)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path} is not a readable toy record: nll = 'x'")
    assert message.count("(expected") == 3
    failed = {**json.loads(path.read_text()), "status": "failed", "error": "ValueError: x"}
    path.write_text(json.dumps(failed))
    assert read_shaped(path, "toy record", lambda r: None if r["status"] == "failed" else SHAPE)["status"] == "failed"


def test_shape_by_record_picks_the_failed_reference_or_finished_shape() -> None:
    reference, failed = {"real_fidelity": NUMBER}, {"method": TEXT}
    pick = shape_by_record(SHAPE, reference=reference, failed=failed)
    assert pick({"status": "failed", "variant": "reference"}) is failed
    assert pick({"status": "ok", "variant": "reference"}) is reference and pick({"variant": "reference"}) is reference
    assert pick({"status": "ok", "variant": "transfer"}) is SHAPE
    plain = shape_by_record(SHAPE)
    assert plain({"status": "failed"}) is None and plain({"status": "ok", "variant": "reference"}) is SHAPE
