"""The gentransfer command line end to end on configs/smoke.toml: files, tables, report rebuild, errors."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from theory.cli import main
from theory.engine.config import load_config
from theory.engine.toml_writer import dumps as toml_dumps

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.toml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("smoke") / "run"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["run", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    return out, buf.getvalue()


def test_run_writes_records_csv_report_and_plots(smoke_run: tuple[Path, str]) -> None:
    out, printed = smoke_run
    cells = sorted(out.glob("cells/*/*/*.json"))
    assert len(cells) == 24  # 2 seeds x 3 n_t x (transfer at 2 n_s + no_transfer + oracle)
    record = json.loads(cells[0].read_text())
    for key in ("kl", "kl_se", "n_eval", "seed", "n_t", "variant", "fit_seconds", "eval_seconds", "settings"):
        assert key in record
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 25 and csv_lines[0].startswith("head,head_kind,n_s,n_t,seed,variant,status,kl")
    report = (out / "report.md").read_text()
    for text in (
        "# Theory-validation report: smoke",
        "## Predictions",
        "| check | scope | verdict | Holm p",
        "transfer beats no-transfer at small n_t",
        "embedding floor falls as n_s grows",
        "no-transfer catches up at large n_t",
        "floor is a floor",
        "measured exponent >= predicted",
        "![kl_vs_nt_gaussian](plots/kl_vs_nt_gaussian.png)",
        "template",
        "every seed draws its own task",
        "### What each check claims and computes",
        "| records distorted | checks that FAIL",
        "coverage, measured now by simulation",
    ):
        assert text in report, text
    for png in ("kl_vs_nt_gaussian.png", "floor_vs_ns_gaussian.png", "samples_gaussian.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
    checks = json.loads((out / "checks.json").read_text())
    assert {c["verdict"] for c in checks["checks"]} <= {
        "pass",
        "fail",
        "insufficient data",
        "insufficient seeds",
        "not tested",
    }
    assert all(c["hypothesis"] and c["statistic"] for c in checks["checks"])
    assert "predictions" in checks and "| n_t | transfer | no_transfer | oracle |" in printed
    # two seeds: the run says its verdicts mean nothing, in the report's first lines and on the console
    assert "Verdicts: " in printed and "Too small to mean anything" in printed
    assert report.index("## Summary") < report.index("## Setup") and "Too small to mean anything" in report


def test_report_rebuilds_from_disk_and_rerun_skips_everything(
    smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = smoke_run
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert main(["run", str(SMOKE), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "0 cells run, 24 found on disk" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(SMOKE), "--out", str(tmp_path), "--set", "grid.nt=[5]"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'grid.nt'" in err and "n_t" in err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_show_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(SMOKE), "--set", "grid.seeds=[4]", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"]["seeds"] == [4]


@pytest.mark.parametrize("name", ["default", "full", "smoke"])  # the configs of `gentransfer run`
def test_show_prints_toml_that_runs_as_the_same_config(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", name, "--set", "run.workers=3"]) == 0  # a shipped config by name
    text = capsys.readouterr().out
    assert tomllib.loads(text)["run"]["workers"] == 3
    (tmp_path / "shown.toml").write_text(text)
    expected = load_config(ROOT / "configs" / f"{name}.toml", ["run.workers=3"]).to_dict()
    assert load_config(tmp_path / "shown.toml").to_dict() == expected


def test_toml_writer_round_trips_every_value_kind() -> None:
    value = {
        "a": 1,
        "b": -2.5e-7,
        "c": 'x "y" \u00e9',
        "d": [1, 2],
        "e": True,
        "f": None,
        "g": {},
        "t": {"u": {"v": [0.5, "w"], "inline": [{"k": 1}]}, "z": float("inf")},
        "odd key": 3,
    }
    back = tomllib.loads(toml_dumps(value))
    assert back == {k: v for k, v in value.items() if v is not None}


def test_version_and_a_closed_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gentransfer {importlib.metadata.version('gentransfer')}"
    # `gentransfer show CONFIG | head`: the reader leaves before the output is written
    proc = subprocess.Popen(
        [sys.executable, "-m", "theory", "show", "full"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_configs_ship_with_the_package(tmp_path: Path) -> None:
    """A wheel holds configs/ as package data, and the CLI finds them there, away from the source tree."""
    wheel_dir, site, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    source.mkdir()  # build from a copy, so the build leaves the source tree untouched
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    for name in ("gentransfer", "shared_embed", "flows", "diffusion", "theory", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("gentransfer-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = {f"theory/configs/{p.name}" for p in (ROOT / "configs").glob("*.toml")}
    assert shipped and shipped <= names
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from theory.engine.config import shipped_configs, resolve_config; from pathlib import Path; "
        "print(shipped_configs()); print(resolve_config(Path('default')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
    )
    folder, default = done.stdout.split()
    assert Path(folder) == site / "theory" / "configs" and Path(default) == site / "theory" / "configs" / "default.toml"


def test_unknown_config_names_list_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "defualt"]) == 2
    err = capsys.readouterr().err
    assert "no config file defualt" in err and "default" in err and "smoke" in err


def test_help_for_newcomers() -> None:
    done = subprocess.run([sys.executable, "-m", "theory", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    for text in ("gentransfer run configs/default.toml --out runs/default", "report", "--set", "resume"):
        assert text in done.stdout, text
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("args, message", [(["--shard", "2/2"], "shard"), (["--device", "tpu"], "device")])
def test_bad_shard_or_device_is_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["run", str(SMOKE), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gentransfer: error:") and message in err and not list(tmp_path.iterdir())


def test_the_samples_figure_is_labelled(smoke_run: tuple[Path, str]) -> None:
    """Axes with units, a legend of the conditions, and each panel's KL in its title."""
    from theory.engine.config import load_config as load
    from theory.engine.plots import samples_figure
    from theory.studies.transfer.sweep import collect_records

    out, _ = smoke_run
    records = [r for r in collect_records(out) if r.get("status", "ok") == "ok"]
    head = records[0]["head"]
    fig = samples_figure(out, records, head, load(SMOKE).task.build())
    assert fig is not None
    axes = [ax for ax in fig.axes if ax.has_data()]
    assert any("data units" in ax.get_xlabel() for ax in axes) and any("data units" in ax.get_ylabel() for ax in axes)
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["c1", "c2"]
    model_panels = [ax for ax in axes if not ax.get_title().startswith("truth")]
    assert model_panels and all("KL = " in ax.get_title() and "nats" in ax.get_title() for ax in model_panels)


def test_the_kl_curves_figure_is_readable(smoke_run: tuple[Path, str]) -> None:
    """At most 6 legend entries per panel, the predicted exponents and the floor's value in them, and more than
    a decade's worth of labelled ticks on the log KL axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from theory.engine.config import load_config as load
    from theory.engine.plots import kl_curves_figure
    from theory.studies.transfer.report import predictions
    from theory.studies.transfer.sweep import collect_records

    out, _ = smoke_run
    config = load(SMOKE)
    records = [r for r in collect_records(out) if r.get("status", "ok") == "ok"]
    head = records[0]["head"]
    rates = predictions(config, config.task.build(), {head: config.heads[head].kind})
    fig = kl_curves_figure(records, head, rates.get(head))
    FigureCanvasAgg(fig).draw()
    left, right = fig.axes
    texts = [t.get_text() for t in left.get_legend().get_texts()]
    assert len(texts) <= 6 and len(right.get_legend().get_texts()) <= 6, texts
    assert any("predicted" in t and "n^-" in t for t in texts) and any("floor" in t and "nats" in t for t in texts)
    lo, hi = left.get_ylim()
    labelled = [t for t in left.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(labelled) >= 3, [t.get_text() for t in labelled]
    assert "nats" in left.get_ylabel() and "target pairs" in left.get_xlabel()
