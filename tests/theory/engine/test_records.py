"""The one cell-record layout of every study: common fields, strict JSON, one resume rule, failed cells reported."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from shared_embed.errors import ConfigError, DataError
from tests.presets import preset_args
from theory.cli import main
from theory.engine.records import (
    COMMON_FIELDS,
    cell_state,
    dumps,
    failed_record,
    loads_strict,
    read_cell,
    restore_nonfinite,
    seal,
    strict_json,
    write_cell,
)
from theory.engine.results import read_results
from theory.engine.run_folder import untimed

#: every study at its seconds-long size: the transfer smoke config and the others' smoke presets
SMOKE = {
    "transfer": ["smoke"],
    "tgdp": preset_args("tgdp_simulation"),
    "digits": preset_args("digits"),
    "completion": preset_args("completion"),
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# -- the writer and reader ----------------------------------------------------------------------------
def test_non_finite_floats_are_null_and_listed() -> None:
    record = seal({"seed": 0, "best_val": math.inf, "xs": [1.0, math.nan], "d": {"a": -math.inf}}, settings_hash="h")
    assert record["best_val"] is None and record["xs"] == [1.0, None] and record["d"] == {"a": None}
    assert record["nonfinite"] == {"best_val": "inf", "xs.1": "nan", "d.a": "-inf"}
    assert [k for k in COMMON_FIELDS if k not in record] == []
    back = restore_nonfinite(record)
    assert back["best_val"] == math.inf and math.isnan(back["xs"][1]) and back["d"]["a"] == -math.inf
    assert record["best_val"] is None  # restoring copies


def test_writer_refuses_what_is_not_strict_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seal it first"):
        write_cell(tmp_path / "a.json", {"seed": 0, "kl": 0.5})
    unsealed = {**seal({"seed": 0}, settings_hash="h"), "kl": math.nan}  # slipped past the sanitiser
    with pytest.raises(ValueError):
        write_cell(tmp_path / "b.json", unsealed)
    assert not (tmp_path / "b.json").exists()
    with pytest.raises(ValueError):
        loads_strict('{"kl": NaN}')
    assert loads_strict(dumps({"kl": math.inf})) == {"kl": None}
    assert strict_json((1.0, math.inf)) == ([1.0, None], {"1": "inf"})


def test_reader_and_resume_rule(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    assert cell_state(path, "h") == "run"  # missing
    path.write_text("{trunc")
    assert cell_state(path, "h") == "run"  # unreadable
    write_cell(path, failed_record({"seed": 0}, "h", RuntimeError("boom")))
    assert read_cell(path)["error"] == "RuntimeError: boom"
    assert cell_state(path, "h") == "run"  # failed: retried
    write_cell(path, seal({"seed": 0}, settings_hash="h"))
    assert cell_state(path, "h") == "done"
    with pytest.raises(ConfigError, match="cell.json was computed with other settings"):
        cell_state(path, "other")
    path.write_text(json.dumps({"seed": 0, "kl": 0.5}))  # an older record: no settings_hash
    with pytest.raises(ConfigError, match="carries no settings_hash"):
        cell_state(path, "h")
    with pytest.raises(DataError, match="missing 'status'"):
        read_cell(path)


# -- every study, through gentransfer run ------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each smoke config run once, with its report (a module's worth of seconds)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("smoke_runs")
    outs = {}
    for name, args in SMOKE.items():
        outs[name] = root / name
        assert main(["run", *args, "--out", str(outs[name]), "--quiet"]) == 0
    return outs


@pytest.mark.parametrize("name", SMOKE)
def test_every_record_has_the_common_fields_in_strict_json(smoke_runs: dict[str, Path], name: str) -> None:
    out = smoke_runs[name]
    cells = sorted(out.glob("cells/**/*.json"))
    assert cells
    for path in cells:
        record = loads_strict(path.read_text())
        assert {*COMMON_FIELDS} <= set(record), path
        assert record["status"] == "ok" and isinstance(record["settings_hash"], str), path
        assert all(v is None or isinstance(v, (int, float)) for k, v in record.items() if k.endswith("_seconds"))
    for path in out.glob("*.json"):  # config, study, records, summary, checks, ...
        loads_strict(path.read_text())
    rows = read_results(out, frame=False)
    assert rows and all(r["status"] == "ok" for r in rows)


def test_a_cell_study_reruns_failed_records_and_refuses_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ["run", *SMOKE["digits"], "--out", str(tmp_path / "run"), "--quiet", "--no-report"]
    out = tmp_path / "run"
    assert main(run) == 0
    cells = sorted(out.glob("cells/*/*.json"))
    failed, kept = cells[0], cells[1]
    good = read_cell(failed)
    coordinates = {k: v for k, v in good.items() if k in ("seed", "head", "k", "per_class", "n_t", "variant")}
    write_cell(failed, failed_record(coordinates, good["settings_hash"], "RuntimeError: diverged"))
    kept_text = kept.read_text()
    assert main(run) == 0
    assert untimed(read_cell(failed)) == untimed(good)  # run again, the same numbers
    assert kept.read_text() == kept_text  # a finished record is never rerun
    kept.write_text(kept_text.replace(good["settings_hash"], "0" * 12))
    capsys.readouterr()
    assert main(run) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(kept.name) in err[0] and "computed with other settings" in err[0]


def test_a_cell_that_raises_is_a_failed_record_the_report_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from theory.studies.digits import experiment

    real = experiment.evaluate_model

    def broken(model, task, test, clf, **kw):  # type: ignore[no-untyped-def]
        if kw["seed"] == experiment.cell_seed(0, "gaussian", 5, "sample") and model is not None:
            broken.calls += 1  # type: ignore[attr-defined]
            if broken.calls == 1:  # type: ignore[attr-defined]
                raise RuntimeError("the fit diverged")
        return real(model, task, test, clf, **kw)

    broken.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(experiment, "evaluate_model", broken)
    out = tmp_path / "run"
    run = ["run", *SMOKE["digits"], "--out", str(out), "--quiet"]
    assert main(run) == 1
    assert "1 cell(s) failed" in capsys.readouterr().err
    records = read_results(out, frame=False)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: the fit diverged"
    assert "## Failed cells" in (out / "report.md").read_text()
    assert main(run) == 0  # the rerun retries it
    assert all(r["status"] == "ok" for r in read_results(out, frame=False))


def test_transfer_best_val_is_null_without_a_validation_split(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["run", "smoke", "--out", str(out), "--quiet", "--set", "grid.seeds=[0]", "--set", "grid.n_s=[200]"]
    main([*argv, "--set", "encoder.val_fraction=0.0", "--set", "grid.n_t=[20]"])
    rows = [loads_strict(p.read_text()) for p in sorted(out.glob("cells/**/*.json"))]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["best_val"] is None and r["nonfinite"]["best_val"] == "inf" for r in ok)
    assert (out / "report.md").is_file()


def test_an_older_cell_study_folder_still_reports_and_a_rerun_refuses_its_records(
    smoke_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records written before the common fields: read as written by the report and read_results; a rerun stops
    with one line (their settings are unknown) rather than keep or overwrite them."""
    out = tmp_path / "older"
    shutil.copytree(smoke_runs["completion"], out)
    for path in out.glob("cells/*/*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k not in (*COMMON_FIELDS, "error")}))
    assert main(["report", str(out)]) == 0
    assert all("status" not in r for r in read_results(out, frame=False))
    capsys.readouterr()
    assert main(["run", *SMOKE["completion"], "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "carries no settings_hash" in err[0]
