"""The transfer grid for any head: fit the four variants over (seed, n_t) and score each by KL to the truth.

:func:`run_transfer_grid` takes a ground-truth task and a head factory and returns one JSON-able record per
(seed, n_t, variant); :func:`summarize` averages over seeds, :func:`format_table` prints KL +- SE per
variant and n_t, and :func:`sample_efficiency_ratio` reads off the n_t that ``no_transfer`` needs to match
``transfer`` at a reference n_t. Sweeps, checks and reports build on these records.

Example:
    >>> task = ConditionalGaussianTask()
    >>> records = run_transfer_grid(task, make_flow_head(2), n_s=10_000, n_t_list=[50, 100], seeds=[0])
    >>> print(format_table(records))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from shared_embed.errors import ConfigError, DataError
from shared_embed.head import Head
from shared_embed.model import ConditionalModel
from shared_embed.train import TrainConfig
from shared_embed.transfer import VARIANTS, TransferConfig, fit_source, fit_variants, new_encoder
from shared_embed.validation import check_choice, check_positive_int

from .engine import run_cells, run_groups
from .kl import GroundTruthTask, fit_floor_model, log_densities, monte_carlo_kl

HeadFactory = Callable[[int | None], Head]
FLOOR = "__floor__"
Log = Callable[[str], None]


def _seeded(config: TransferConfig, seed: int) -> TransferConfig:
    return replace(config, source_train=config.source_train.replace(seed=seed),
                   target_train=config.target_train.replace(seed=seed))


def _config_dict(config: TransferConfig) -> dict[str, Any]:
    d = asdict(config)
    d["encoder_hidden"] = list(config.encoder_hidden)
    return d


def _cell_seed(seed: int, n_t: int, variant: str) -> int:
    return 1_000_003 * seed + 101 * n_t + VARIANTS.index(variant)


def run_transfer_grid(
    task: GroundTruthTask,
    head_factory: HeadFactory,
    n_s: int,
    n_t_list: Sequence[int],
    seeds: Iterable[int],
    variants: Sequence[str] = VARIANTS[:4],  # the four of the paper; "direct" on request
    transfer_config: TransferConfig | None = None,
    *,
    n_eval: int = 20_000,
    floor_n: int | None = None,
    floor_train: TrainConfig | None = None,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Fit ``variants`` for every seed and n_t and score each against the task's exact target density.

    Per seed: n_s source pairs and max(n_t_list) target pairs are drawn (smaller n_t use nested subsets),
    one source model is fitted and shared by every n_t, and one fresh evaluation sample of ``n_eval``
    target pairs scores every variant (paired comparisons). ``oracle`` uses ``task.embedding`` (h*).
    Training seeds derive from (seed, n_t, variant), so a cell's result does not depend on which other
    variants are run (the data depend on seed, n_s and max(n_t_list)).

    With ``floor_n``, the embedding floor of each seed's source encoder is estimated by a head trained on
    ``floor_n`` fresh target pairs with that encoder frozen (``floor_train`` settings), and the
    ``transfer`` records carry the KL split on the evaluation sample: floor + head_term = kl.

    Returns:
        records with keys task, head, transfer_config, seed, n_s, n_t, variant, kl, kl_se, n_eval,
        seconds (the variant's fit), source_seconds, steps, best_val; with ``floor_n``, transfer
        records add floor, floor_se, head_term, head_term_se.
    """
    check_positive_int("n_s", n_s)
    n_t_list = sorted({check_positive_int("n_t", int(n)) for n in n_t_list})
    if not n_t_list:
        raise DataError("n_t_list must hold at least one target sample size")
    variants = [check_choice("variant", v, VARIANTS) for v in variants]
    oracle = getattr(task, "embedding", None) if "oracle" in variants else None
    if "oracle" in variants and oracle is None:
        raise ConfigError("variant 'oracle' needs a task with a known embedding (task.embedding)")
    config = transfer_config or TransferConfig()
    head_info = getattr(head_factory, "config", None)
    if head_info is None:
        probe = head_factory(config.embed_dim)
        head_info = {"kind": probe.kind, **probe.config}
    task_info = getattr(task, "config", {"name": type(task).__name__})
    grid = _Grid(task, head_factory, n_s, n_t_list, variants, config, n_eval, floor_n, floor_train, oracle,
                 head_info, task_info, log or (lambda _msg: None))
    groups = [_SeedGroup(int(seed), tuple(n_t_list)) for seed in seeds]
    return run_groups(lambda _spec, _out, group, _log, on_cell: grid.run_seed(group.seed, on_cell), {}, None,
                      groups, log=log)


@dataclass(frozen=True)
class _SeedGroup:
    """One seed of the grid: its cells are the n_t levels, each scoring every variant on one sample."""

    seed: int
    cells: tuple[int, ...]


@dataclass
class _Grid:
    """The settings of :func:`run_transfer_grid`, and the work of one seed (the engine runs the seeds)."""

    task: GroundTruthTask
    head_factory: HeadFactory
    n_s: int
    n_t_list: list[int]
    variants: list[str]
    config: TransferConfig
    n_eval: int
    floor_n: int | None
    floor_train: TrainConfig | None
    oracle: Any
    head_info: dict[str, Any]
    task_info: dict[str, Any]
    say: Log

    def run_seed(self, seed: int, on_cell: Callable[[], None]) -> list[dict[str, Any]]:
        """The seed's data, its source (and floor) model, then every n_t level: records of every variant."""
        task, variants = self.task, self.variants
        gen = torch.Generator().manual_seed(seed)
        source = task.sample(self.n_s, "source", gen)
        target_pool = task.sample(self.n_t_list[-1], "target", gen)
        cfg = _seeded(self.config, seed)
        source_model: ConditionalModel | None = None
        source_seconds = 0.0
        if any(v in ("transfer", "fine_tune") for v in variants):
            torch.manual_seed(seed)
            start = time.perf_counter()
            source_model = fit_source(new_encoder(source.d_c, cfg), self.head_factory(cfg.embed_dim),
                                      source.to(cfg.device), cfg.source_train, val_fraction=cfg.val_fraction)
            source_seconds = time.perf_counter() - start
            self.say(f"seed {seed}: source fitted in {source_seconds:.1f}s (steps {source_model.history.steps_done})")
        floor_model = None
        if self.floor_n is not None and source_model is not None and "transfer" in variants:
            torch.manual_seed(seed)
            floor_model = fit_floor_model(task, source_model, self.head_factory, n=self.floor_n,
                                          train=self.floor_train, generator=torch.Generator().manual_seed(20_000 + seed))
            self.say(f"seed {seed}: floor model fitted on {self.floor_n} target pairs")

        def level(n_t: int) -> list[dict[str, Any]]:
            return self._score_level(seed, n_t, cfg, source, target_pool.head(n_t), source_model, floor_model,
                                     source_seconds)

        return [r for rs in run_cells(self.n_t_list, level, on_cell) for r in rs]

    def _score_level(self, seed: int, n_t: int, cfg: TransferConfig, source: Any, target: Any,
                     source_model: ConditionalModel | None, floor_model: ConditionalModel | None,
                     source_seconds: float) -> list[dict[str, Any]]:
        """Fit every variant at one n_t and score them on one evaluation sample of the seed (paired)."""
        fitted = {}
        for v in self.variants:  # each cell seeded on its own: reproducible whatever else is in the grid
            torch.manual_seed(_cell_seed(seed, n_t, v))
            fitted[v] = fit_variants(self.head_factory, source, target, cfg, [v], oracle_embedding=self.oracle,
                                     source_model=source_model)[v]
        eval_gen = torch.Generator().manual_seed(10_000 + seed)  # one evaluation sample per seed
        models = {v: fitted[v].model for v in self.variants}
        if floor_model is not None:
            models[FLOOR] = floor_model
        log_p, log_q = log_densities(self.task, models, n=self.n_eval, generator=eval_gen)
        records = []
        for v in self.variants:
            est = monte_carlo_kl(log_p, log_q[v])
            summary = fitted[v].summary()
            records.append({
                "task": self.task_info, "head": self.head_info, "transfer_config": _config_dict(self.config),
                "seed": seed, "n_s": self.n_s, "n_t": n_t, "variant": v, "kl": est.value, "kl_se": est.se,
                "n_eval": est.n, "seconds": summary["seconds"], "source_seconds": source_seconds,
                "steps": summary["steps"]["target"], "best_val": summary["best_val"]["target"],
            })
            if v == "transfer" and floor_model is not None:
                floor, head = monte_carlo_kl(log_p, log_q[FLOOR]), monte_carlo_kl(log_q[FLOOR], log_q[v])
                records[-1].update(floor=floor.value, floor_se=floor.se, head_term=head.value,
                                   head_term_se=head.se, floor_n=self.floor_n)
            self.say(f"seed {seed} n_t {n_t:5d} {v:12s} KL {est.value:.4f} +- {est.se:.4f} "
                     f"({summary['seconds']:.1f}s, {summary['steps']['target']} steps)"
                     + (f" = floor {records[-1]['floor']:.4f} + head {records[-1]['head_term']:.4f}"
                        if "floor" in records[-1] else ""))
        return records


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean KL over seeds per (variant, n_t), with the SE across seeds and the pooled Monte Carlo SE."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["variant"], int(r["n_t"])), []).append(r)
    rows = []
    for (variant, n_t), rs in sorted(groups.items(), key=lambda kv: (VARIANTS.index(kv[0][0])
                                                                      if kv[0][0] in VARIANTS else 99, kv[0][1])):
        kls = torch.tensor([r["kl"] for r in rs], dtype=torch.float64)
        se_seeds = float(kls.std(unbiased=True)) / math.sqrt(len(rs)) if len(rs) > 1 else float("nan")
        se_mc = math.sqrt(sum(r["kl_se"] ** 2 for r in rs)) / len(rs)
        row = {"variant": variant, "n_t": n_t, "seeds": len(rs), "kl_mean": float(kls.mean()),
               "kl_se_seeds": se_seeds, "kl_se_mc": se_mc}
        if all("floor" in r for r in rs):
            for key in ("floor", "head_term"):
                vals = torch.tensor([r[key] for r in rs], dtype=torch.float64)
                row[f"{key}_mean"] = float(vals.mean())
                row[f"{key}_se_seeds"] = float(vals.std(unbiased=True)) / math.sqrt(len(rs)) if len(rs) > 1 else \
                    math.sqrt(sum(r[f"{key}_se"] ** 2 for r in rs)) / len(rs)
        rows.append(row)
    return rows


def format_split_table(records: Sequence[dict[str, Any]], variant: str = "transfer") -> str:
    """A Markdown table of the KL split of ``variant`` per n_t: total = floor + head term (mean +- SE)."""
    rows = [r for r in summarize(records) if r["variant"] == variant and "floor_mean" in r]
    if not rows:
        return ""
    lines = ["| n_t | KL total | embedding floor | head term |", "|---:|---:|---:|---:|"]
    for r in rows:
        se = r["kl_se_seeds"] if r["seeds"] > 1 else r["kl_se_mc"]
        lines.append(f"| {r['n_t']} | {r['kl_mean']:.4f} +- {se:.4f} | {r['floor_mean']:.4f} +- "
                     f"{r['floor_se_seeds']:.4f} | {r['head_term_mean']:.4f} +- {r['head_term_se_seeds']:.4f} |")
    return "\n".join(lines)


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per n_t, one column per variant, 'mean +- SE across seeds' in nats."""
    rows = summarize(records)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    n_ts = sorted({r["n_t"] for r in rows})
    cell = {(r["variant"], r["n_t"]): r for r in rows}
    lines = ["| n_t | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for n_t in n_ts:
        parts = []
        for v in variants:
            r = cell.get((v, n_t))
            if r is None:
                parts.append("-")
            else:
                se = r["kl_se_seeds"] if r["seeds"] > 1 else r["kl_se_mc"]
                parts.append(f"{r['kl_mean']:.4f} +- {se:.4f}")
        lines.append(f"| {n_t} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def sample_efficiency_ratio(
    records: Sequence[dict[str, Any]],
    reference_n_t: int = 100,
    reference: str = "transfer",
    baseline: str = "no_transfer",
    floor: float = 1e-6,
) -> dict[str, Any]:
    """The n_t that ``baseline`` needs to match ``reference`` at ``reference_n_t``, over reference_n_t.

    Mean KLs over seeds; the first crossing of the baseline curve below the reference KL is located by
    linear interpolation in (log n_t, log KL) (KLs clipped below at ``floor``). When the baseline never
    gets there within the grid the answer is a lower bound '> max(n_t)/reference_n_t'; when it is already
    below at the smallest n_t, an upper bound '<= min(n_t)/reference_n_t'.

    Returns:
        dict with target_kl, n_t_needed (None for a lower bound), ratio (None likewise), bound
        ('=', '>' or '<=') and text, e.g. '4.2' or '> 10'.
    """
    mean = {(r["variant"], r["n_t"]): r["kl_mean"] for r in summarize(records)}
    if (reference, reference_n_t) not in mean:
        raise DataError(f"no {reference!r} records at n_t={reference_n_t}")
    curve = sorted((n, kl) for (v, n), kl in mean.items() if v == baseline)
    if not curve:
        raise DataError(f"no {baseline!r} records")
    target = mean[(reference, reference_n_t)]
    out: dict[str, Any] = {"reference": reference, "baseline": baseline, "reference_n_t": reference_n_t,
                           "target_kl": target, "baseline_curve": [list(p) for p in curve]}
    if curve[0][1] <= target:
        n_t = curve[0][0]
        return {**out, "n_t_needed": None, "ratio": None, "bound": "<=",
                "text": f"<= {n_t / reference_n_t:.3g}"}
    log_t = math.log(max(target, floor))
    for (n0, k0), (n1, k1) in zip(curve[:-1], curve[1:]):
        if k1 <= target:
            l0, l1 = math.log(max(k0, floor)), math.log(max(k1, floor))
            frac = (l0 - log_t) / (l0 - l1) if l0 != l1 else 1.0
            n_needed = math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))
            ratio = n_needed / reference_n_t
            return {**out, "n_t_needed": n_needed, "ratio": ratio, "bound": "=", "text": f"{ratio:.3g}"}
    return {**out, "n_t_needed": None, "ratio": None, "bound": ">",
            "text": f"> {curve[-1][0] / reference_n_t:.3g}"}


def grid_result(records: Sequence[dict[str, Any]], seconds: float, reference_n_t: int = 100) -> dict[str, Any]:
    """What an experiment returns: its records, the per-(variant, n_t) summary, the Markdown tables (KL per
    variant, transfer KL split), the sample-efficiency ratio at ``reference_n_t`` (None when that n_t was not
    run) and the wall time."""
    ran_reference = any(int(r["n_t"]) == reference_n_t for r in records)
    return {"records": list(records), "summary": summarize(records), "table": format_table(records),
            "split_table": format_split_table(records),
            "ratio": sample_efficiency_ratio(records, reference_n_t) if ran_reference else None, "seconds": seconds}
