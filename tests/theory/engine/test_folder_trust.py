"""Nothing in a run folder is trusted beyond what it is: predictions are recomputed (or checked against the
config), records are read from regular files inside the folder only and must match the config in settings and
field types, and a run never writes through a link out of its folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from shared_embed.errors import DataError, GentransferError
from tests.theory.engine.test_run_folder import raw
from theory.cli import main
from theory.engine.config import ExperimentConfig
from theory.engine.toml_writer import dumps as toml_dumps
from theory.studies.transfer.report import build_report
from theory.studies.transfer.sweep import run_sweep


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "run"
    run_sweep(ExperimentConfig.from_dict(raw(variants=["no_transfer"], n_t=[8, 16])), out, log=None)
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    for lock in out.glob(".*lock*"):
        lock.unlink()
    return out


def _record(out: Path) -> Path:
    return sorted(out.glob("cells/*/*/*.json"))[0]


def test_hand_edited_predictions_of_a_built_in_rate_are_ignored(run: Path) -> None:
    honest = {c.name: c.to_dict() for c in build_report(run).checks}
    stored = json.loads((run / "predictions.json").read_text())
    for by_head in stored["by_task"].values():
        for rates in by_head.values():
            for key, value in rates.items():
                if isinstance(value, float):
                    rates[key] = -5.0
    (run / "predictions.json").write_text(json.dumps(stored))
    assert {c.name: c.to_dict() for c in build_report(run).checks} == honest
    assert "-5.000" not in (run / "report.md").read_text()


def test_hand_edited_predictions_of_a_user_rate_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "user_rate.py").write_text("from theory.truth.rates import generic_rates as rates\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    run_sweep(
        ExperimentConfig.from_dict(
            {**raw(variants=["no_transfer"], n_t=[8, 16]), "theory": {"rate": "user_rate:rates"}}
        ),
        out,
        log=None,
    )
    sys.modules.pop("user_rate", None)
    build_report(out)  # the stored predictions, signed by the study: read
    stored = json.loads((out / "predictions.json").read_text())
    next(iter(next(iter(stored["by_task"].values())).values()))["kl_exponent"] = -5.0
    (out / "predictions.json").write_text(json.dumps(stored))
    with pytest.raises(DataError, match="predictions.json does not match this folder's config"):
        build_report(out)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rate user_rate:rates" in err


def test_a_record_linked_to_a_file_outside_the_folder_is_refused(run: Path, tmp_path: Path) -> None:
    record = _record(run)
    outside = tmp_path / "outside.json"
    outside.write_text(record.read_text())
    record.unlink()
    record.symlink_to(outside)
    with pytest.raises(DataError, match="is a symbolic link.*regular files inside"):
        build_report(run)


def test_a_linked_cells_subfolder_never_makes_run_write_outside(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "elsewhere"
    head = run / "cells" / "gaussian"
    shutil.move(head, outside)
    head.symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.rglob("*"))
    config = tmp_path / "c.toml"
    config.write_text(toml_dumps(ExperimentConfig.from_dict(raw(variants=["no_transfer"], n_t=[8, 16, 32])).to_dict()))
    assert main(["run", str(config), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{head} is a symbolic link" in err
    with pytest.raises(DataError, match="symbolic link"):
        run_sweep(ExperimentConfig.from_dict(raw(variants=["no_transfer"], n_t=[8, 16, 32])), run, log=None)
    assert sorted(p.name for p in outside.rglob("*")) == before  # nothing written through the link


def test_a_write_through_a_link_made_during_a_run_is_refused(tmp_path: Path) -> None:
    from theory.engine.run_folder import inside

    (tmp_path / "out").mkdir()
    (tmp_path / "away").mkdir()
    (tmp_path / "out" / "cells").symlink_to(tmp_path / "away", target_is_directory=True)
    with pytest.raises(DataError, match="leads outside the run folder"):
        inside(tmp_path / "out", tmp_path / "out" / "cells" / "h" / "r.json")
    assert inside(tmp_path / "out", tmp_path / "out" / "groups" / "g.json")


def test_report_refuses_a_record_of_other_settings_as_run_does(run: Path) -> None:
    record = _record(run)
    data = json.loads(record.read_text())
    data["settings_hash"] = "0123456789ab"
    record.write_text(json.dumps(data))
    with pytest.raises(DataError, match="computed with other settings"):
        build_report(run)


@pytest.mark.parametrize(
    "field, value", [("kl", "0.5"), ("n_t", 8.5), ("kl", True), ("status", "done"), ("seed", None)]
)
def test_report_refuses_a_field_of_the_wrong_type_and_run_recomputes_it(run: Path, field: str, value: object) -> None:
    record = _record(run)
    good = json.loads(record.read_text())
    record.write_text(json.dumps({**good, field: value}))
    with pytest.raises(DataError, match=f"not a readable cell record: {field} = "):
        build_report(run)
    rerun = run_sweep(ExperimentConfig.from_dict(raw(variants=["no_transfer"], n_t=[8, 16])), run, log=None)
    assert rerun.ran == 1 and json.loads(record.read_text())[field] == good[field]


def test_a_cached_model_of_another_group_is_refitted_never_used(tmp_path: Path) -> None:
    config = ExperimentConfig.from_dict(raw(variants=["transfer"], n_s=[64, 96], n_t=[8]))
    out = tmp_path / "run"
    run_sweep(config, out, log=None)
    honest = {p.name: json.loads(p.read_text())["kl"] for p in out.glob("cells/*/*/*.json")}
    models = out / "models" / "gaussian"
    for name in ("source", "floor"):  # the n_s = 64 fits dropped in place of the n_s = 96 ones
        shutil.copyfile(models / f"ns64_seed0_{name}.safetensors", models / f"ns96_seed0_{name}.safetensors")
    for record in out.glob("cells/gaussian/ns96/*.json"):
        record.unlink()
    said: list[str] = []
    run_sweep(config, out, log=said.append)
    assert any("cached model unreadable, fitting it again" in m and "was fitted for" in m for m in said), said
    assert {p.name: json.loads(p.read_text())["kl"] for p in out.glob("cells/*/*/*.json")} == honest


def test_report_reads_no_link_in_any_run_subfolder_nor_a_linked_config(run: Path, tmp_path: Path) -> None:
    (tmp_path / "planted").mkdir()
    (run / "models").mkdir(exist_ok=True)
    (run / "models" / "planted").symlink_to(tmp_path / "planted", target_is_directory=True)
    with pytest.raises(DataError, match="models/planted is a symbolic link"):
        build_report(run)
    (run / "models" / "planted").unlink()
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(GentransferError, match="holds no config.json"):
        build_report(run)


@pytest.mark.parametrize("config, sub", [("tgdp_simulation", "cells"), ("digits", "cells"), ("completion", "cells")])
def test_every_study_refuses_a_linked_record_folder_for_run_and_report(
    config: str, sub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TGDP, digits and completion folders, like a transfer folder, never read or write through a link."""
    from theory.cli import main

    away = tmp_path / "away"
    away.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / sub).symlink_to(away, target_is_directory=True)
    assert main(["run", config, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link" in err, err
    assert list(away.iterdir()) == []  # nothing written outside the folder
    assert main(["report", str(out)]) == 2
