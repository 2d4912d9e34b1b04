"""Every study's report reads only records whose fields have the declared shape: a hand-edited field anywhere in a
record (a number as text, a deleted entry, a nested guard entry, a reference's table) is refused by ``gentransfer
report`` in one line naming the file and the field by its path, and ``gentransfer run`` recomputes exactly that
cell to its seeded value (:mod:`theory.engine.record_shape`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from theory.cli import main

#: study -> (the run command's arguments, the record kind its errors name); every one a seconds-long preset
STUDIES = {
    "digits": (["digits", "--preset", "smoke", "--set", 'grid.heads=["gaussian"]'], "digits record"),
    "digits_tgdp": (["digits_tgdp", "--preset", "smoke"], "digits record"),
    "completion": (["completion", "--preset", "smoke"], "completion record"),
    "tgdp_simulation": (
        [
            "tgdp_simulation",
            "--preset",
            "smoke",
            "--set",
            "grid.conditional=[true]",
            "--set",
            'grid.variants=["fine_tune","tgdp"]',
        ],
        "TGDP record",
    ),
}
DELETE = object()

#: (study, record under cells/, the field's path (list entries by index), the value written there (DELETE: the
#: field removed; None: a null its record does not list as non-finite), whether a rerun is checked to recompute it)
CASES = [
    ("digits", "gaussian/seed0_k5_transfer.json", ("mmd2",), "0.1", True),
    ("digits", "gaussian/seed0_k5_transfer.json", ("nll",), True, True),
    ("digits", "gaussian/seed0_k5_transfer.json", ("nll_per_image",), [], False),
    ("digits", "gaussian/seed0_k5_transfer.json", ("copying", "closer_fraction"), 7, True),
    ("digits", "gaussian/seed0_k5_transfer.json", ("copying", "closer_fraction"), True, False),
    ("digits", "gaussian/seed0_k5_transfer.json", ("copying",), "x", False),
    ("digits", "gaussian/seed0_k5_transfer.json", ("w1",), DELETE, True),
    ("digits", "gaussian/seed0_k5_transfer.json", ("nll",), None, False),  # null: not listed as non-finite
    ("digits", "gaussian/seed0_k5_transfer.json", ("nll_per_image", 3), None, False),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("tgdp", "probe", "max_ratio"), "big", True),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("tgdp", "switch"), DELETE, False),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("tgdp", "guard", "rows"), "n", False),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("premise", "ok"), "yes", False),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("tgdp",), None, False),
    ("digits_tgdp", "diffusion/seed0_k5_tgdp.json", ("copying",), None, False),
    ("digits_tgdp", "diffusion/seed0_k0_reference.json", ("reference", "domain_ratio", "5", "auc"), "x", True),
    ("digits_tgdp", "diffusion/seed0_k0_reference.json", ("reference", "selection_gain"), [], False),
    ("completion", "diffusion/seed0_k2_transfer.json", ("nll",), "1", True),
    ("completion", "diffusion/seed0_k2_transfer.json", ("completion_mse",), DELETE, False),
    ("completion", "diffusion/seed0_k2_transfer.json", ("grid_bottoms", 0), [1, 2], False),
    ("completion", "diffusion/seed0_k2_transfer.json", ("grid_bottoms",), [[0] * 32] * 19, True),  # 20 in the config
    ("completion", "flow/seed0_k0_reference.json", ("real_fidelity",), "x", True),
    ("completion", "diffusion/seed0_k2_transfer.json", ("nll_per_image", 0), None, False),
    ("tgdp_simulation", "conditional/n10_seed0_fine_tune.json", ("kl",), "1", True),
    ("tgdp_simulation", "conditional/n10_seed0_fine_tune.json", ("kl_se",), True, False),
    ("tgdp_simulation", "conditional/n10_seed0_fine_tune.json", ("samples", 0), [1.0], False),
    ("tgdp_simulation", "conditional/n10_seed0_tgdp.json", ("log_h_line", "learned", "0.1"), "x", False),
    ("tgdp_simulation", "conditional/n10_seed0_tgdp.json", ("grad_mse_mean",), "x", False),
    ("tgdp_simulation", "conditional/n10_seed0_tgdp.json", ("samples", 0, 1), None, False),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished smoke run folder per study, made when a test first asks for it."""
    return {}


def _copy_of(study: str, finished: dict[str, Path], tmp_path: Path) -> Path:
    if study not in finished:
        out = tmp_path.parent / f"finished_{study}"
        assert main(["run", *STUDIES[study][0], "--out", str(out), "--quiet"]) == 0
        finished[study] = out
    copy = tmp_path / "run"
    shutil.copytree(finished[study], copy, symlinks=True)
    for lock in copy.glob(".*lock*"):
        lock.unlink()
    return copy


def _get(record: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        record = record[key]
    return record


def _edit(record: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    inner = _get(record, path[:-1])
    if value is DELETE:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value


@pytest.mark.parametrize("study, name, path, value, rerun", CASES)
def test_a_tampered_field_is_refused_by_report_in_one_line_and_recomputed_by_run(
    study: str,
    name: str,
    path: tuple[str | int, ...],
    value: object,
    rerun: bool,
    finished: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _copy_of(study, finished, tmp_path)
    record = out / "cells" / name
    good = json.loads(record.read_text())
    edited = json.loads(record.read_text())
    _edit(edited, path, value)
    record.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    dotted = ".".join(map(str, path))
    said = f"missing {dotted!r}" if value is DELETE else f"{dotted} = "
    assert err.count("\n") == 1, err
    assert f"{name} is not a readable {STUDIES[study][1]}: {said}" in err, err
    if rerun:
        assert main(["run", *STUDIES[study][0], "--out", str(out), "--quiet"]) == 0
        assert _get(json.loads(record.read_text()), path) == _get(good, path)  # the seeded cell as before
        assert main(["report", str(out)]) == 0
