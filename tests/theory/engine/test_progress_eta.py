"""The run's progress line: its time left weighs each cell by its group's estimated cost, and an exact head's
cells cost only their evaluation (the accuracy on the main job is measured in benchmarks/progress_eta.py)."""

from __future__ import annotations

import re
import time

import pytest

from theory.engine.config import ExperimentConfig
from theory.engine.loop import Progress, run_groups
from theory.studies.transfer.costs import KIND_COSTS, group_cost
from theory.studies.transfer.sweep import plan_cells, plan_groups


def _left(line: str) -> float:
    m = re.search(r"about (?:(\d+)m)?(\d+)s left", line)
    assert m, line
    return 60 * int(m.group(1) or 0) + int(m.group(2))


def test_time_left_weighs_cells_by_their_work(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    clock = iter([0.0, 40.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    progress = Progress(4, said.append, work=10.0)
    progress.advance(1, 8.0)  # 80% of the work done in 40 s: 10 s left, though 3 of 4 cells remain
    assert said == ["progress: 1/4 cells done, 40s elapsed, about 10s left"]


class _Group:
    def __init__(self, cells: int, cost: float) -> None:
        self.cells, self.cost = tuple(range(cells)), cost


def test_run_groups_spreads_each_groups_cost_over_its_cells() -> None:
    said: list[str] = []

    def runner(spec, out, group, log, on_cell):  # type: ignore[no-untyped-def]
        for _ in group.cells:
            time.sleep(0.2 if group.cost > 1 else 0.0)
            on_cell()
        return []

    groups = [_Group(2, 9.0), _Group(2, 1.0)]
    run_groups(runner, {}, None, groups, log=said.append, cost=lambda g: g.cost)
    lines = [line for line in said if "cells done" in line and "left" in line]
    # after the costly group (90% of the work) the line expects a tenth of the elapsed time, not as much again
    after_costly = lines[1]
    assert after_costly.startswith("progress: 2/4 cells done") and _left(after_costly) == 0


def test_an_exact_heads_cells_cost_no_training_steps() -> None:
    raw = {
        "grid": {"n_s": [500], "n_t": [50], "seeds": [0], "heads": ["linear"], "variants": ["transfer", "direct"]},
        "heads": {"linear": {"kind": "linear_gaussian", "encoder": {"hidden": []}}},
        "encoder": {"embed_dim": 2},
    }
    config = ExperimentConfig.from_dict(raw)
    [group] = [g for g in plan_groups(plan_cells(config)) if g.n_s is not None]
    n_eval, eval_s = config.eval_setting("linear", "n_eval"), KIND_COSTS["linear_gaussian"].eval_s
    # the floor model's evaluation and the transfer cell's two: no source, floor or target steps
    assert [c.variant for c in group.cells] == ["transfer"]
    assert group_cost(config, group) == pytest.approx(3 * n_eval * eval_s)
    flow = ExperimentConfig.from_dict({**raw, "heads": {"linear": {"kind": "flow"}}})
    [flow_group] = [g for g in plan_groups(plan_cells(flow)) if g.n_s is not None]
    assert group_cost(flow, flow_group) > 100 * group_cost(config, group)


def test_parallel_groups_credit_the_work_still_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, four groups of equal work, each 10 s: when the first ends at 10 s (the second nearly done
    too), the time left is the two groups still queued on two workers, 10 s, not the 30 s that counting the
    finished work alone would give."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    said: list[str] = []
    groups = [_Group(3, 5.0) for _ in range(4)]
    progress = Progress(12, said.append, work=20.0, workers=2)
    progress.group_work = {id(g): 5.0 for g in groups}
    progress.start_group(groups[0])
    now[0] = 0.5
    progress.start_group(groups[1])
    now[0] = 10.0
    progress.finish_group(groups[0])
    progress.start_group(groups[2])
    assert _left(said[-1]) == 10  # 5 units running at 95% (0.95 x 5 credited), 10 left, 2 s per unit, 2 workers
    now[0] = 10.5
    progress.finish_group(groups[1])
    progress.start_group(groups[3])
    assert 9 <= _left(said[-1]) <= 10
