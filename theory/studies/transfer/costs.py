"""What a group of cells costs, from the config alone: the deal of ``--shard I/N`` balances it.

A group's cost is its estimated CPU-seconds on one thread, the sum of what it runs:

    source fit (n_s given)      source steps x step(kind, rows)                  rows = min(batch, 0.8 n_s)
    embedding floor (transfer)  floor steps x step(kind, rows) + n_eval x eval(kind)
    each cell                   target steps x step(kind, rows) + n_eval x eval(kind) [x 2 for transfer:
                                the floor model is scored on the same pairs] + 3 bound_n x bound(kind)

with ``step(kind, rows) = step_s + rows x row_s`` (fixed per-step overhead plus per-row work), ``eval`` the
seconds per evaluation pair (a flow's log-density is one pass; a diffusion head's is a probability-flow ODE
solve) and ``bound`` the seconds per pair of the Girsanov bound and its reverse-SDE check (diffusion only).
Steps are the configured caps (none for a head with an exact solver: a linear-Gaussian head on a frozen
context, or under a linear encoder): early stopping ends many fits sooner, most of all the small ones, so the costs
rank groups and balance shards; they do not predict wall time. The per-kind figures (:data:`KIND_COSTS`) were
measured by ``benchmarks/shard_balance.py --calibrate`` (a small run of every head kind of configs/full.toml).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from theory.engine.config import ExperimentConfig

#: the share of a fit's pairs it trains on (the rest is its validation split; the encoder's val_fraction)
_FLOOR_TRAIN = 0.9  # theory.kl.fit_floor_model holds out 10%


@dataclass(frozen=True)
class KindCost:
    """CPU-seconds of one head kind: a training step (``step_s`` + ``row_s`` per row of the batch), a pair of
    the KL evaluation (``eval_s``), a pair of the diffusion bound (``bound_s``)."""

    step_s: float
    row_s: float
    eval_s: float
    bound_s: float = 0.0

    def step(self, rows: float) -> float:
        return self.step_s + rows * self.row_s


#: Measured with ``benchmarks/shard_balance.py --calibrate`` on configs/full.toml (1 torch thread, 2 shared cores).
KIND_COSTS: dict[str, KindCost] = {
    "flow": KindCost(step_s=5.8e-03, row_s=6.4e-06, eval_s=6.0e-06),
    "diffusion": KindCost(step_s=5.8e-03, row_s=1.9e-05, eval_s=2.6e-03, bound_s=9.4e-03),
    "linear_gaussian": KindCost(step_s=2.7e-03, row_s=0.0, eval_s=2.1e-06),
    "gaussian": KindCost(step_s=2.7e-03, row_s=0.0, eval_s=2.1e-06),  # not in configs/full.toml: as linear_gaussian
}


def kind_cost(config: ExperimentConfig, head: str, costs: dict[str, KindCost] | None = None) -> KindCost:
    """The cost figures of ``head``'s kind: from ``costs`` when it has them, else :data:`KIND_COSTS` (where a
    kind it does not know, a head registered by a user, costs what a flow does)."""
    kind = config.heads[head].kind
    if costs is not None and kind in costs:
        return costs[kind]
    return KIND_COSTS.get(kind, KIND_COSTS["flow"])


def group_cost(config: ExperimentConfig, group: Any, costs: dict[str, KindCost] | None = None) -> float:
    """Estimated CPU-seconds of a :class:`~theory.studies.transfer.sweep.Group` (see the module doc)."""
    k = kind_cost(config, group.head, costs)
    fit = 1.0 - config.encoder.val_fraction
    train = {phase: config.train_config(group.head, phase, 0) for phase in ("source", "target", "floor")}
    steps = {phase: t.steps for phase, t in train.items()}
    exact = callable(getattr(config.heads[group.head].head_class(), "fit_closed_form", None))
    linear_encoder = not config.encoder_for(group.head).get("hidden")
    if exact:  # an exact head takes no steps on a frozen context (floor), nor under a linear encoder (source)
        steps["floor"] = 0
        steps["source"] = 0 if linear_encoder else steps["source"]
    n_eval = config.eval_setting(group.head, "n_eval")
    total = 0.0
    if group.n_s is not None:
        src = train["source"]
        total += steps["source"] * k.step(min(src.batch_size, fit * group.n_s))
        floor_n = config.eval_setting(group.head, "floor_n")
        if floor_n > 0 and any(c.variant == "transfer" for c in group.cells):
            fl = train["floor"]
            total += steps["floor"] * k.step(min(fl.batch_size, _FLOOR_TRAIN * floor_n)) + n_eval * k.eval_s
    tgt = train["target"]
    bound_n = config.eval_setting(group.head, "bound_n") if k.bound_s else 0
    for cell in group.cells:
        scored = n_eval * (2 if cell.variant == "transfer" and group.n_s is not None else 1)
        frozen = cell.variant in ("transfer", "oracle", "direct")
        target_steps = 0 if exact and (frozen or linear_encoder) else steps["target"]
        total += target_steps * k.step(min(tgt.batch_size, fit * cell.n_t)) + scored * k.eval_s
        total += 3 * bound_n * k.bound_s
    return total


def deal_by_cost(costs: Sequence[float], count: int) -> list[int]:
    """The shard (0..count-1) of each item: biggest first, each to the shard with the least cost so far (ties:
    the lowest shard). Depends on the costs only, so every host computes the same deal."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads, shard = [0.0] * count, [0] * len(costs)
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        shard[i] = target
        loads[target] += costs[i]
    return shard


@dataclass(frozen=True)
class ShardLoad:
    """One shard of a deal: its estimated CPU-seconds, its groups and cells per head."""

    index: int
    cost: float
    groups: int
    cells_by_head: dict[str, int]


def shard_loads(
    config: ExperimentConfig,
    groups: Iterable[Any],
    shards: Sequence[int],
    count: int,
    costs: dict[str, KindCost] | None = None,
) -> list[ShardLoad]:
    """The load of each of ``count`` shards when group ``k`` goes to shard ``shards[k]``."""
    loads = [ShardLoad(i, 0.0, 0, {}) for i in range(count)]
    for group, s in zip(groups, shards):
        old = loads[s]
        heads = dict(old.cells_by_head)
        heads[group.head] = heads.get(group.head, 0) + len(group.cells)
        loads[s] = ShardLoad(s, old.cost + group_cost(config, group, costs), old.groups + 1, heads)
    return loads


def format_loads(loads: Sequence[ShardLoad]) -> str:
    """A Markdown table of shard loads, and the slowest shard's cost over the mean (1.0: perfectly even)."""
    mean = sum(s.cost for s in loads) / max(len(loads), 1)
    heads = sorted({h for s in loads for h in s.cells_by_head})
    lines = [
        "| shard | cost (CPU-h) | / mean | groups | " + " | ".join(f"{h} cells" for h in heads) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(heads),
    ]
    for s in loads:
        lines.append(
            f"| {s.index} | {s.cost / 3600:.2f} | {s.cost / mean:.2f} | {s.groups} | "
            + " | ".join(str(s.cells_by_head.get(h, 0)) for h in heads)
            + " |"
        )
    worst = max(s.cost for s in loads) / mean
    return "\n".join(lines) + f"\n\nslowest shard / mean: {worst:.2f}"
