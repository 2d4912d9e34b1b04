"""Sweeps: the cell plan, nested data, records on disk, resume after a kill, refusal of mixed settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from shared_embed.errors import ConfigError
from theory.engine.config import ExperimentConfig
from theory.studies.transfer.sweep import (
    collect_records,
    nested_sample,
    parse_shard,
    pending_cells,
    plan_cells,
    plan_groups,
    run_sweep,
    shard_cells,
)
from theory.truth.tasks import ConditionalGaussianTask


def tiny(**grid: object) -> ExperimentConfig:
    g = {
        "n_s": [64],
        "n_t": [8, 16],
        "seeds": [0],
        "heads": ["gaussian"],
        "variants": ["transfer", "no_transfer", "oracle"],
        **grid,
    }
    return ExperimentConfig.from_dict(
        {
            "grid": g,
            "encoder": {"hidden": [8]},
            "train": {p: {"steps": 15, "eval_every": 5} for p in ("source", "target", "floor")},
            "evaluation": {"n_eval": 200, "floor_n": 100, "sample_n": 10, "sample_contexts": 2},
        }
    )


def test_plan_shares_source_free_cells_across_n_s() -> None:
    cfg = tiny(n_s=[64, 128], seeds=[0, 1])
    cells = plan_cells(cfg)
    assert len(cells) == 2 * 2 * (2 * 1 + 2)  # seeds x n_t x (transfer per n_s + no_transfer + oracle)
    assert {c.n_s for c in cells if c.variant != "transfer"} == {None}
    groups = plan_groups(cells)
    assert len(groups) == 2 * 3  # (n_s=64, n_s=128, source-free) per seed
    assert all(len({(c.head, c.n_s, c.seed) for c in g.cells}) == 1 for g in groups)


def test_nested_sample_prefixes_do_not_depend_on_the_size_asked_for() -> None:
    task = ConditionalGaussianTask()
    small = nested_sample(task, 300, "target", 0, "target")
    big = nested_sample(task, 1000, "target", 0, "target")
    assert torch.equal(small.c, big.c[:300]) and torch.equal(small.x, big.x[:300])
    other = nested_sample(task, 300, "target", 1, "target")
    assert not torch.equal(small.x, other.x)


def test_sweep_writes_records_and_resumes_only_missing_cells(tmp_path: Path) -> None:
    cfg = tiny()
    first = run_sweep(cfg, tmp_path, log=None)
    assert (first.ran, first.skipped, first.failed) == (6, 0, 0)
    records = collect_records(tmp_path)
    assert len(records) == 6
    transfer = [r for r in records if r["variant"] == "transfer"]
    assert all(r["kl"] == pytest.approx(r["floor_paired"] + r["head_term"], abs=1e-9) for r in transfer)
    assert all(r["settings"]["train"]["target"]["steps"] == 15 for r in records)
    for name in (
        "config.json",
        "results.csv",
        "groups/gaussian/ns64_seed0.json",
        "models/gaussian/ns64_seed0_source.safetensors",
        "models/gaussian/ns64_seed0_floor.safetensors",
        "samples/gaussian/ns64/nt8_seed0_transfer.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 7

    # a killed sweep: two cells lost (one source-using); the rerun recomputes exactly those, identically
    lost = [
        tmp_path / "cells/gaussian/ns64/nt16_seed0_transfer.json",
        tmp_path / "cells/gaussian/nsnone/nt8_seed0_oracle.json",
    ]
    before = [json.loads(p.read_text()) for p in lost]
    for p in lost:
        p.unlink()
    todo, done = pending_cells(cfg, tmp_path)
    assert len(todo) == 2 and len(done) == 4
    again = run_sweep(cfg, tmp_path, log=None)
    assert (again.ran, again.skipped) == (2, 4)
    after = [json.loads(p.read_text()) for p in lost]
    for b, a in zip(before, after):
        assert a["kl"] == b["kl"] and a.get("head_term") == b.get("head_term")

    # growing the grid reuses every cell on disk
    bigger = run_sweep(tiny(n_t=[8, 16, 32]), tmp_path, log=None)
    assert (bigger.ran, bigger.skipped) == (3, 6)


def test_sweep_refuses_cells_from_other_settings(tmp_path: Path) -> None:
    run_sweep(tiny(n_t=[8]), tmp_path, log=None)
    changed = ExperimentConfig.from_dict({**tiny(n_t=[8]).to_dict(), "encoder": {"hidden": [9]}})
    with pytest.raises(ConfigError, match="other settings.*encoder.hidden"):
        run_sweep(changed, tmp_path, log=None)


def test_parallel_workers_match_one_process(tmp_path: Path) -> None:
    cfg = tiny(n_t=[8], variants=["transfer", "no_transfer"])
    run_sweep(cfg, tmp_path / "one", workers=1, log=None)
    run_sweep(cfg, tmp_path / "two", workers=2, log=None)
    kl = lambda d: {(r["variant"], r["n_t"]): r["kl"] for r in collect_records(d)}  # noqa: E731
    assert kl(tmp_path / "one") == kl(tmp_path / "two")


def test_diverged_fits_are_failed_cells_reported_and_retried(tmp_path: Path) -> None:
    from theory.studies.transfer.report import build_report

    blowup = {"steps": 15, "lr": 1e30, "grad_clip": 1e30}
    cfg = ExperimentConfig.from_dict(
        {**tiny(n_t=[8], variants=["transfer", "no_transfer"]).to_dict(), "train": {"source": blowup, "target": blowup}}
    )
    result = run_sweep(cfg, tmp_path, log=None)
    assert (result.ran, result.failed) == (2, 2)
    records = collect_records(tmp_path)
    assert {r["status"] for r in records} == {"failed"}
    assert any(r["error"].startswith("source/floor fit failed") for r in records if r["variant"] == "transfer")
    report = build_report(tmp_path)
    assert report.checks == [] and "## Failed cells" in report.path.read_text()
    again = run_sweep(cfg, tmp_path, log=None)  # failed cells are retried by the next run, and listed
    assert (again.ran, again.failed) == (2, 2) and len(again.failures) == 2
    assert "transfer: source/floor fit failed" in "".join(again.failures)
    # the corrected config is another study: refused even in a folder of failures, until the folder is deleted
    with pytest.raises(ConfigError, match="another study \\(no results yet\\).*delete this one"):
        run_sweep(tiny(n_t=[8], variants=["transfer", "no_transfer"]), tmp_path, log=None)
    shutil.rmtree(tmp_path)
    fixed = run_sweep(tiny(n_t=[8], variants=["transfer", "no_transfer"]), tmp_path, log=None)
    assert (fixed.ran, fixed.failed) == (2, 0)
    assert {r["status"] for r in collect_records(tmp_path)} == {"ok"}


def test_shards_split_the_grid_into_disjoint_whole_groups() -> None:
    cfg = tiny(n_s=[64, 128], seeds=[0, 1, 2])
    cells = plan_cells(cfg)
    shards = [shard_cells(cfg, cells, (i, 3)) for i in range(3)]
    assert sorted(map(str, sum(shards, []))) == sorted(map(str, cells))  # every cell exactly once
    assert all(shards)  # 9 groups over 3 shards: none left idle
    for shard in shards:  # a group never straddles two shards (one source fit serves it)
        keys = {(c.head, c.n_s, c.seed) for c in shard}
        assert all((c.head, c.n_s, c.seed) in keys for c in cells if (c.head, c.n_s, c.seed) in keys)
    # the deal ignores what is already done: shard 1 of the remaining cells is a subset of shard 1
    remaining = [c for c in cells if c.seed != 0]
    assert set(map(str, shard_cells(cfg, remaining, (1, 3)))) <= set(map(str, shards[1]))


def test_two_shards_into_one_folder_run_every_cell_once(tmp_path: Path) -> None:
    cfg = tiny(seeds=[0, 1])
    a = run_sweep(cfg, tmp_path, log=None, shard=(0, 2))
    b = run_sweep(cfg, tmp_path, log=None, shard=(1, 2))
    assert a.ran + b.ran == len(plan_cells(cfg)) and a.ran and b.ran
    assert run_sweep(cfg, tmp_path, log=None).ran == 0  # nothing left for an unsharded run


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2", "0/0", ""])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)
