"""No silent waits: a progress line within seconds whatever the first cell costs, a question before a grid of
many CPU-hours, no more LocalCluster workers than groups, and a message (then an error) while no dask worker
is there to run anything."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import theory.engine.loop as loop
from theory.cli import main
from theory.engine.loop import Progress, run_groups

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.toml"


@dataclass(frozen=True)
class _Group:
    cells: tuple[int, ...]


def _slow_runner(spec: dict[str, Any], out_dir: Path | None, group: _Group, log: Any, on_cell: Any) -> list[dict]:
    records = []
    for cell in group.cells:
        time.sleep(spec["seconds"])
        records.append({"cell": cell})
        on_cell()
    return records


def test_a_long_first_cell_still_gives_a_progress_line_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "HEARTBEAT_SECONDS", 0.2)
    said: list[tuple[float, str]] = []
    start = time.perf_counter()
    records = run_groups(
        _slow_runner,
        {"seconds": 1.0},
        None,
        [_Group((1, 2))],
        log=lambda m: said.append((time.perf_counter() - start, m)),
    )
    assert records == [{"cell": 1}, {"cell": 2}]
    first_when, first = said[0]
    assert first_when < 0.9 and first.startswith("progress: 0/2 cells done") and "still working" in first
    assert said[-1][1].startswith("progress: 2/2 cells done")


def test_the_heartbeat_stops_with_the_run() -> None:
    said: list[str] = []
    progress = Progress(3, said.append, heartbeat=0.1)
    progress.advance(3)
    progress.stop()
    time.sleep(0.4)
    assert said == [said[0]] and said[0].startswith("progress: 3/3")


def test_a_grid_of_many_cpu_hours_asks_for_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    start = time.perf_counter()
    assert main(["run", str(SMOKE), "--out", str(out), "--set", "train.target.steps=3000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this run is estimated at 54h00m of CPU time (24 cells;" in err
    assert "more than 24 h: rerun with --yes to start it" in err
    assert time.perf_counter() - start < 20 and not (out / "cells").exists() and not (out / "study.json").exists()


def test_a_local_cluster_has_no_more_workers_than_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    import theory.engine.dask_executor as de

    asked: list[int] = []

    class Stop(Exception):
        pass

    def cluster(n_workers: int, **_kw: Any) -> None:
        asked.append(n_workers)
        raise Stop

    monkeypatch.setattr(de, "LocalCluster", cluster)
    with pytest.raises(Stop):
        de.DaskExecutor(workers=26).run(None, [_Group((1,))] * 6, Progress(6, lambda _m: None))  # type: ignore[arg-type]
    assert asked == [6]


def test_a_grid_of_very_many_cells_asks_for_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    seeds = f"grid.seeds={list(range(5000))}"
    assert main(["run", str(SMOKE), "--out", str(out), "--set", seeds, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this run has 60000 cells to run, more than 10000 (estimated at" in err
    assert "rerun with --yes to start it" in err and not (out / "cells").exists()
