"""The cost model of a group and the deal of ``--shard I/N`` by cost: known answers, and the full study's
shards each get a mix of heads and an even share (where the old round-robin deal did neither)."""

from __future__ import annotations

from pathlib import Path

import pytest

from theory.engine.config import ExperimentConfig, load_config
from theory.studies.transfer.costs import KindCost, deal_by_cost, format_loads, group_cost, shard_loads
from theory.studies.transfer.sweep import plan_cells, plan_groups, shard_cells

ROOT = Path(__file__).resolve().parents[3]


def tiny() -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "grid": {
                "n_s": [64],
                "n_t": [8, 16],
                "seeds": [0],
                "heads": ["gaussian"],
                "variants": ["transfer", "no_transfer"],
            },
            "train": {"source": {"steps": 30}, "target": {"steps": 20, "batch_size": 8}, "floor": {"steps": 10}},
            "evaluation": {"n_eval": 100, "floor_n": 50, "bound_n": 7},
        }
    )


def test_group_cost_counts_every_fit_and_every_scored_pair() -> None:
    cfg = tiny()
    transfer, free = sorted(plan_groups(plan_cells(cfg)), key=lambda g: g.n_s is None)
    steps = {"gaussian": KindCost(step_s=1.0, row_s=0.0, eval_s=0.0)}
    # one step costs 1: the source fit, the floor fit and one target fit per cell
    assert group_cost(cfg, transfer, steps) == 30 + 10 + 2 * 20
    assert group_cost(cfg, free, steps) == 2 * 20
    rows = {"gaussian": KindCost(step_s=0.0, row_s=1.0, eval_s=0.0)}
    # rows per step: min(batch, 80% of the pairs): source min(256, 51.2), floor min(512, 45), target min(8, 6.4 | 12.8)
    assert group_cost(cfg, transfer, rows) == pytest.approx(30 * 51.2 + 10 * 45 + 20 * (6.4 + 8))
    pairs = {"gaussian": KindCost(step_s=0.0, row_s=0.0, eval_s=1.0, bound_s=1.0)}
    # the floor model scored once, then beside each transfer cell; the bound's 3 x bound_n pairs per cell
    assert group_cost(cfg, transfer, pairs) == 100 + 2 * (2 * 100) + 2 * 3 * 7
    assert group_cost(cfg, free, pairs) == 2 * 100 + 2 * 3 * 7


def test_deal_by_cost_gives_the_next_biggest_to_the_lightest_shard() -> None:
    assert deal_by_cost([3.0, 5.0, 3.0, 4.0, 3.0], 2) == [1, 0, 0, 1, 1]  # loads 5 + 3 = 8, 4 + 3 + 3 = 10
    assert deal_by_cost([1.0, 1.0], 3) == [0, 1]
    assert deal_by_cost([], 2) == []


def test_full_study_shards_get_every_head_and_an_even_share() -> None:
    cfg = load_config(ROOT / "configs" / "full.toml")
    groups = plan_groups(plan_cells(cfg))
    costs = [group_cost(cfg, g) for g in groups]
    assert min(c for g, c in zip(groups, costs) if g.head == "diffusion") > max(
        c for g, c in zip(groups, costs) if g.head == "flow"
    )  # ODE log-densities and the bound: the costly head

    def shards_of(deal: list[int]) -> list:
        return shard_loads(cfg, groups, deal, 8)

    new = shards_of(deal_by_cost(costs, 8))
    old = shards_of([k % 8 for k in range(len(groups))])  # the control: the old round-robin deal
    mixed = lambda loads: all({"flow", "diffusion"} <= set(s.cells_by_head) for s in loads)  # noqa: E731
    worst = lambda loads: max(s.cost for s in loads) / (sum(s.cost for s in loads) / 8)  # noqa: E731
    assert mixed(new) and worst(new) < 1.05
    assert not mixed(old) and worst(old) > 1.3
    assert "slowest shard / mean: 1.0" in format_loads(new)
    # and --shard deals exactly this: shard I holds the cells of the groups dealt to I
    for index in (0, 7):
        cells = shard_cells(cfg, plan_cells(cfg), (index, 8))
        assert sum(len(g.cells) for g, s in zip(groups, deal_by_cost(costs, 8)) if s == index) == len(cells)
