"""Executors: a study run on dask.distributed (a LocalCluster; a scheduler and workers started by the test; a
worker killed mid-group) or as a SLURM job array (submitit's local cluster) writes the records of a local run,
record for record (timings aside), with the same progress line.

The study: configs/smoke.toml cut to two groups (one source fit shared by 2 transfer cells, one source-free group
of 4 cells), a few seconds of work.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed", reason="the dask extra: pip install 'gentransfer[dask]'")
pytest.importorskip("submitit", reason="the slurm extra: pip install 'gentransfer[slurm]'")

import theory.studies.transfer.sweep as sweep  # noqa: E402
from shared_embed.errors import GentransferError  # noqa: E402
from tests.workers.killed_once import KILL_FILE, run_group_killed_once  # noqa: E402
from theory.cli import main  # noqa: E402
from theory.engine.config import load_config  # noqa: E402
from theory.engine.dask_executor import DaskExecutor  # noqa: E402
from theory.engine.run_folder import untimed_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.toml"
TWO_GROUPS = ["grid.seeds=[0]", "grid.n_s=[200]", "grid.n_t=[20,40]"]
CELLS = 6


def run(out: Path, *options: str) -> str:
    """``gentransfer run`` of the two-group study into ``out``; what it printed (stdout and stderr)."""
    sets = [a for s in TWO_GROUPS for a in ("--set", s)]
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(buf):
        status = main(["run", str(SMOKE), "--out", str(out), "--no-report", *sets, *options])
    assert status == 0, buf.getvalue()
    return buf.getvalue()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("local") / "run"
    run(out, "--quiet")
    found = untimed_cells(out)
    assert len(found) == CELLS and all(r["status"] == "ok" for r in found.values())
    return found


def test_dask_local_cluster_writes_the_local_records(local: dict, tmp_path: Path) -> None:
    printed = run(tmp_path, "--executor", "dask", "--workers", "2")
    assert untimed_cells(tmp_path) == local
    assert f"progress: {CELLS}/{CELLS} cells done" in printed and "executor dask" in printed
    assert json.loads((tmp_path / "run.json").read_text())["executor"] == "dask"


def _kill_when_ready(path: Path, killed: list[int], how: signal.Signals = signal.SIGKILL) -> None:
    """Wait for the pid a worker leaves at ``path``; send it ``how`` (never to this process)."""
    deadline = time.monotonic() + 120
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    if path.is_file():
        pid = int(path.read_text())
        assert pid != os.getpid()
        os.kill(pid, how)
        killed.append(pid)


def _killer(path: Path, how: signal.Signals = signal.SIGKILL) -> list[int]:
    """Start :func:`_kill_when_ready` in a thread; the list it fills with the pid it signalled."""
    killed: list[int] = []
    threading.Thread(target=_kill_when_ready, args=(path, killed, how), daemon=True).start()
    return killed


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_group_costs_a_retry_not_the_study(
    local: dict, tmp_path: Path, retries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first worker to finish a cell stops there and is killed by pid; its group must run again elsewhere
    monkeypatch.setattr(sweep, "run_transfer_group", run_group_killed_once)
    monkeypatch.setenv(KILL_FILE, str(tmp_path / "kill"))
    killed = _killer(tmp_path / "kill")
    said: list[str] = []
    config = load_config(SMOKE, TWO_GROUPS)
    executor = DaskExecutor(workers=2, retries=retries)
    if retries == 0:  # the control: without a retry the lost group stops the study, naming the option
        with pytest.raises(GentransferError, match="lost its worker 1 time.*--retries 0"):
            sweep.run_sweep(config, tmp_path / "run", log=said.append, executor=executor)
        assert len(killed) == 1
        return
    result = sweep.run_sweep(config, tmp_path / "run", log=said.append, executor=executor)
    assert len(killed) == 1 and result.failed == 0
    assert any("worker was lost; submitted again (1/1)" in m for m in said)
    assert untimed_cells(tmp_path / "run") == local
    assert said[-1].startswith(f"progress: {CELLS}/{CELLS} cells done")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_running_scheduler_and_its_workers_write_the_local_records(local: dict, tmp_path: Path) -> None:
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "dask"]
    logs = (tmp_path / "dask.log").open("w")
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            stdout=logs,
            stderr=logs,
        )
    ]
    try:
        # two threads each: a worker process then runs its groups one at a time (they seed torch's generator)
        procs += [
            subprocess.Popen(
                [
                    *dask,
                    "worker",
                    address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "2",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=logs,
                stderr=logs,
            )
            for _ in range(2)
        ]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        printed = run(tmp_path / "run", "--executor", "dask", "--scheduler", address)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        logs.close()
    assert untimed_cells(tmp_path / "run") == local
    assert f"executor dask at {address}" in printed and f"progress: {CELLS}/{CELLS} cells done" in printed


def test_slurm_job_array_on_submitits_local_cluster_writes_the_local_records(local: dict, tmp_path: Path) -> None:
    printed = run(
        tmp_path, "--executor", "slurm", "--slurm-cluster", "local", "--workers", "2", "--slurm", "timeout_min=10"
    )
    assert untimed_cells(tmp_path) == local
    assert "submitted 2 job(s) (local)" in printed and f"progress: {CELLS}/{CELLS} cells done" in printed
    assert len(list((tmp_path / "slurm").glob("*_log.out"))) == 2  # one log per job of the array


@pytest.mark.parametrize("how", [signal.SIGUSR2, signal.SIGKILL], ids=["preempted", "killed"])
def test_a_preempted_or_killed_slurm_job_runs_its_group_again(
    local: dict, tmp_path: Path, how: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGUSR2 is SLURM's warning before preemption or the time limit: submitit checkpoints the job and requeues
    # it; a SIGKILL leaves no result, and the executor submits the group again
    monkeypatch.chdir(ROOT)  # the job processes import tests.workers from here
    monkeypatch.setattr(sweep, "run_transfer_group", run_group_killed_once)
    monkeypatch.setenv(KILL_FILE, str(tmp_path / "kill"))
    killed = _killer(tmp_path / "kill", how)
    printed = run(tmp_path / "run", "--executor", "slurm", "--slurm-cluster", "local")
    assert len(killed) == 1 and untimed_cells(tmp_path / "run") == local
    resubmitted = "ended without a result; submitted again (1/2)" in printed
    logs = " ".join(p.read_text() for p in (tmp_path / "run" / "slurm").glob("*_log.err"))
    if how == signal.SIGKILL:
        assert resubmitted
    else:
        # submitit caught the signal in the job, which went on (requeued) without a resubmission of ours
        assert not resubmitted and "caught signal sigusr2" in logs.lower(), logs[-2000:]


def test_a_missing_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask.distributed were not installed
    monkeypatch.delitem(sys.modules, "theory.engine.dask_executor")
    assert main(["run", str(SMOKE), "--out", str(tmp_path), "--executor", "dask"]) == 2
    assert "pip install 'gentransfer[dask]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler is an option of --executor dask"),
        (["--executor", "dask", "--retries", "-1"], "--retries must be >= 0"),
        (["--executor", "slurm", "--slurm", "timeout_min"], "--slurm takes KEY=VALUE"),
        (["--slurm-cluster", "local"], "options of --executor slurm"),
    ],
)
def test_executor_options_are_checked_before_anything_runs(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(SMOKE), "--out", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_readme_commands_parse() -> None:
    """Every ``gentransfer`` command of the README's "Several machines" section is one the CLI accepts."""
    import shlex

    from theory.cli import _parser

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Several machines") : text.index("\n## ", text.index("## Several machines") + 1)]
    lines = section.replace("\\\n", " ").splitlines()  # continued lines joined
    commands = [shlex.split(line.split("#")[0]) for line in lines if line.strip().startswith("gentransfer ")]
    assert len(commands) >= 6
    executors = set()
    for words in commands:
        args = _parser().parse_args(words[1:])
        executors.add(getattr(args, "executor", None))
    assert {"local", "dask", "slurm"} <= executors


def test_a_scheduler_lost_mid_run_is_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the worker that finishes a cell first stops there; the test then kills the scheduler (not the worker)
    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "dask"]
    env = {**os.environ, KILL_FILE: str(tmp_path / "kill"), "PYTHONPATH": str(ROOT)}
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sweep, "run_transfer_group", run_group_killed_once)
    logs = (tmp_path / "dask.log").open("w")
    scheduler = subprocess.Popen(
        [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
        stdout=logs,
        stderr=logs,
    )
    worker = subprocess.Popen(
        [*dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
        stdout=logs,
        stderr=logs,
        env=env,
    )
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)

        def kill_scheduler() -> None:
            deadline = time.monotonic() + 120
            while not (tmp_path / "kill").is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            scheduler.kill()

        threading.Thread(target=kill_scheduler, daemon=True).start()
        sets = [a for s in TWO_GROUPS for a in ("--set", s)]
        status = main(
            [
                "run",
                str(SMOKE),
                "--out",
                str(tmp_path / "run"),
                "--no-report",
                "--quiet",
                *sets,
                "--executor",
                "dask",
                "--scheduler",
                address,
            ]
        )
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait(timeout=30)
        logs.close()
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"the dask scheduler {address} was lost with" in err and "run the same command again to resume" in err


def test_a_scheduler_with_no_worker_says_so_then_gives_up(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    logs = (tmp_path / "dask.log").open("w")
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--no-dashboard",
        ],
        stdout=logs,
        stderr=logs,
    )
    said: list[str] = []
    try:
        from distributed import Client

        with Client(address, timeout="60s"):
            pass  # the scheduler answers
        executor = DaskExecutor(scheduler=address, worker_timeout=2)
        with pytest.raises(GentransferError, match=f"no dask worker joined the scheduler {address} within 2 s"):
            sweep.run_sweep(load_config(SMOKE, TWO_GROUPS), tmp_path / "run", log=said.append, executor=executor)
    finally:
        scheduler.kill()
        scheduler.wait(timeout=30)
        logs.close()
    assert any(f"the dask scheduler {address} has no worker yet: waiting up to 2 s" in m for m in said), said
