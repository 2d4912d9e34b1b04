"""Every failure of the command line that is not a failed cell: exit 2 and one line saying what to change;
SIGTERM and Ctrl-C say how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.presets import preset_args
from theory.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.toml"


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI: it must exit 2 with one line on stderr; that line."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gentransfer: error: "), err
    return err


@pytest.mark.parametrize("address", ["http://127.0.0.1:8786", "127.0.0.1:8786", "tcp://host", "tcp://host:port"])
def test_a_scheduler_that_is_no_address_is_refused_before_anything_runs(
    tmp_path: Path, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fails(
        ["run", str(SMOKE), "--out", str(tmp_path / "o"), "--executor", "dask", "--scheduler", address], capsys
    )
    assert "--scheduler must be a dask scheduler's address such as tcp://10.0.0.5:8786" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("task.noise=0.0", "[task] conditional_gaussian: noise must be a finite number > 0, got 0.0"),
        ("task.noise=-1.0", "noise must be a finite number > 0"),
        ("task.noise=1e-200", "noise = 1e-200 gives the source covariance that is not positive definite"),
    ],
)
def test_degenerate_task_values_are_refused_before_any_cell(
    tmp_path: Path, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.perf_counter()
    err = _fails(["run", str(SMOKE), "--out", str(tmp_path / "o"), "--set", setting], capsys)
    assert message in err and time.perf_counter() - start < 20
    assert not (tmp_path / "o" / "cells").exists()


def test_threads_beyond_the_machine_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["run", str(SMOKE), "--out", str(tmp_path / "o"), "--set", "run.threads=100000"], capsys)
    assert f"run.threads = 100000: this machine has {os.cpu_count()} core(s)" in err
    err = _fails(
        ["run", *preset_args("tgdp_simulation"), "--out", str(tmp_path / "t"), "--set", "run.threads=100000"], capsys
    )
    assert "run.threads = 100000" in err


def test_an_unexpected_error_is_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the first line\n  more detail\nthe last line")

    import theory.studies.transfer.sweep as sweep  # the CLI imports it inside the command (a fast --help)

    monkeypatch.setattr(sweep, "run_sweep", broken)
    err = _fails(["run", str(SMOKE), "--out", str(tmp_path / "o")], capsys)
    assert "RuntimeError: the first line ... the last line (an unexpected error: set GENTRANSFER_TRACEBACK=1" in err
    monkeypatch.setenv("GENTRANSFER_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["run", str(SMOKE), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("how, said", [(signal.SIGTERM, "stopped by SIGTERM")])
def test_sigterm_and_ctrl_c_stop_a_run_saying_how_to_resume(tmp_path: Path, how: signal.Signals, said: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "theory",
            "run",
            str(SMOKE),
            "--out",
            str(out),
            "--set",
            "train.target.steps=100000",
            "--set",
            "grid.seeds=[0]",
            "--no-report",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the run's first line: it has started
    assert first.startswith("gentransfer run:"), first
    time.sleep(1.0)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + how
    assert err.strip().splitlines()[-1] == (
        f"gentransfer: {said}; finished cells are kept: run the same command again to resume"
    )
