"""One owner per run folder: two runs into one folder at the same moment never both write, whatever they are."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared_embed.errors import ConfigError, FolderBusyError, GentransferError
from theory.cli import main
from theory.engine.folder_lock import hold_folder, run_in_progress
from theory.engine.run_folder import claim, write_json

ROOT = Path(__file__).resolve().parents[3]
CTX = multiprocessing.get_context("fork")
BUSY = re.compile(
    r"is in use by another gentransfer run \(pid \d+ on host .+, since .+\); wait for it to end, or "
    r"use another --out folder"
)


def _contender(out: str, name: str, go, mine, other) -> None:  # type: ignore[no-untyped-def]
    """A run in miniature: wait for the start signal, hold the folder, claim it for study ``name``, write its
    records, keep the folder until the other contender has tried; exit 0, or 2 with the message on stderr."""
    go.wait()
    code = 0
    try:
        with hold_folder(out):
            claim(Path(out), {"study": name}, False)
            for n_t in (8, 16, 32):
                write_json(Path(out) / f"cells/h/ns1/nt{n_t}_seed0_{name}.json", {"study": name, "n_t": n_t})
            mine.set()
            other.wait(10)
    except GentransferError as err:
        sys.stderr.write(f"{err}\n")
        code = 2
    mine.set()
    os._exit(code)


def _race(out: Path, names: tuple[str, str], capfd: pytest.CaptureFixture[str]) -> tuple[list[int], str]:
    go = CTX.Event()
    done = [CTX.Event(), CTX.Event()]
    procs = [CTX.Process(target=_contender, args=(str(out), names[i], go, done[i], done[1 - i])) for i in (0, 1)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(20)
    return [p.exitcode for p in procs], capfd.readouterr().err


def test_two_different_studies_started_together_one_runs_and_the_other_exits_2(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    for trial in range(20):
        out = tmp_path / f"race{trial}"
        codes, err = _race(out, ("alpha", "beta"), capfd)
        assert sorted(codes) == [0, 2], (trial, codes, err)
        assert len(err.strip().splitlines()) == 1 and BUSY.search(err), (trial, err)
        winner = ("alpha", "beta")[codes.index(0)]
        held = {json.loads(p.read_text())["study"] for p in out.glob("cells/*/*/*.json")}
        assert held == {winner}, trial
        assert json.loads((out / "study.json").read_text())["study"] == {"study": winner}


def test_two_identical_runs_never_compute_a_cell_twice(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    codes, err = _race(tmp_path / "same", ("alpha", "alpha"), capfd)
    assert sorted(codes) == [0, 2] and BUSY.search(err)


def test_a_study_file_of_another_study_is_refused_even_with_no_results(tmp_path: Path) -> None:
    claim(tmp_path, {"study": "alpha"}, False)
    with pytest.raises(ConfigError, match="holds another study \\(no results yet\\).*use a new --out folder"):
        claim(tmp_path, {"study": "beta"}, False)
    claim(tmp_path, {"study": "alpha"}, True)  # its own study: fine


def _holder(out: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    with hold_folder(out):
        ready.set()
        release.wait(30)
    os._exit(0)


def test_cli_run_into_a_held_folder_exits_2_naming_the_holder_and_report_says_a_run_is_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(
        [
            "run",
            "smoke",
            "--out",
            str(out),
            "--set",
            "grid.n_t=[8]",
            "--set",
            "grid.seeds=[0]",
            "--quiet",
            "--no-report",
        ]
    ) in (0, 1)
    capsys.readouterr()
    ready, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_holder, args=(str(out), ready, release))
    proc.start()
    try:
        assert ready.wait(20)
        start = time.perf_counter()
        assert main(["run", "smoke", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {proc.pid} on host {socket.gethostname()}" in err and BUSY.search(err)
        assert time.perf_counter() - start < 10  # refused before any compute
        assert run_in_progress(out) is not None
        assert main(["report", str(out)]) == 0
        assert f"a run is in progress in {str(out)!r} (pid {proc.pid} on host" in capsys.readouterr().err
    finally:
        release.set()
        proc.join(20)
    assert run_in_progress(out) is None
    assert main(["report", str(out)]) == 0
    assert "in progress" not in capsys.readouterr().err


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    ready, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_holder, args=(str(tmp_path), ready, release))
    proc.start()
    assert ready.wait(20)
    with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"):
        with hold_folder(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(20)
    with hold_folder(tmp_path):  # the OS dropped the dead process's lock
        assert run_in_progress(tmp_path) is None  # this process's own run is not "another run"


def test_shards_of_one_folder_run_together_but_never_beside_a_whole_run_or_the_same_shard(tmp_path: Path) -> None:
    ready, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_shard_holder, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(20)
        with hold_folder(tmp_path, (1, 2)):  # the other shard: runs beside it
            pass
        for shard in ((0, 2), (0, 1)):  # the same shard again, or the whole grid
            with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"):
                with hold_folder(tmp_path, shard):
                    pass
    finally:
        release.set()
        proc.join(20)


def _shard_holder(out: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    with hold_folder(out, (0, 2)):
        ready.set()
        release.wait(30)
    os._exit(0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_real_runs_of_different_studies_started_together(tmp_path: Path) -> None:
    """The command line itself, 20 times (GENTRANSFER_RACE_TRIALS): two smoke runs of different studies into one
    folder at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = ["--set", "grid.n_t=[8]", "--set", "grid.seeds=[0]", "--set", "grid.n_s=[64]", "--quiet", "--no-report"]
    for trial in range(int(os.environ.get("GENTRANSFER_RACE_TRIALS", "20"))):
        out = tmp_path / f"race{trial}"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "theory",
                    "run",
                    "smoke",
                    "--out",
                    str(out),
                    *base,
                    "--set",
                    f"encoder.hidden=[{width}]",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for width in (8, 9)
        ]
        results = [(p.wait(300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        codes = sorted(code for code, _ in results)
        refused = [err for code, err in results if code == 2]
        assert codes == [0, 2] and len(refused) == 1, (trial, results)
        assert BUSY.search(refused[0]) or "holds the results of another study" in refused[0], refused[0]
        hashes = {json.loads(p.read_text())["settings_hash"] for p in out.glob("cells/**/*.json")}
        assert len(hashes) == 1, trial
