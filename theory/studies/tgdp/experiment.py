"""The TGDP paper's simulation (docs/theory.md, 'TGDP'), reproduced with the library's pieces, and its baselines.

:class:`~theory.truth.tasks.TwoGaussianTask` (d = 2, variance 0.1; source modes +-(0.5, 0.5), target +-(0.5, -0.5)),
n_s = 10,000 source draws, n_t in {10, 100, 1000} target draws (nested), seeds {0, 1, 2}, unconditional and
label-conditional. Per seed and version ONE source ``DiffusionHead`` is trained; per n_t the methods are

- ``target_only``: a fresh head on the target (20% held out for early stopping), ``fine_tune``: the source
  head trained further on the target (same split), ``domain_guidance``: s_src + w (s_ft - s_src), w = 1.5;
- ``tgdp``: ``fit_tgdp`` without regularisers, ``tgdp_reg``: with eta_cycle = eta_consistency = 1;

and three n-independent reference rows, fitted once per seed and version and repeated at every n_t:
``source_only`` (the source head itself), ``tgdp_exact_w`` (the guidance regressed onto the EXACT
w = q / p instead of the classifier's: the guidance-regression error alone) and ``tgdp_exact_h`` (the
learned source score plus the EXACT grad log h_t: the source-score error alone). The conditional version
models the joint q_hat(x, y) = q_hat(y) q_hat(x | y) with q_hat(y) = ``LabelMarginal.fit`` of the n_t target
labels (Laplace smoothing; the references use the exact q(y) = (1/2, 1/2)), and its KL is that of the JOINT.

Scores (:mod:`theory.studies.tgdp.evaluation`): KL(q || q_hat) +- SE by the probability-flow likelihood on fresh exact
target draws (the same draws for every method of a seed: paired), MMD^2 of ODE samples, and for the TGDP rows
the log-h and grad-log-h errors over t and the classifier's log-w error. One JSON record per
(seed, n_t, conditional, method) under ``out_dir/cells/VERSION/``, ``table.md`` and PNG plots (:mod:`theory.studies.tgdp.plots`).

Example:
    >>> from theory.studies.tgdp.study import parse   # the shipped config with its quick preset
    >>> settings = parse(read_config(resolve_config(Path("tgdp_simulation")), "quick"))[1]
    >>> result = run_tgdp_experiment(settings, out_dir="runs/tgdp_quick", progress=True)
    >>> print(result["table"])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from diffusion.head import DiffusionHead
from diffusion.schedule import VPSchedule
from diffusion.tgdp import LabelMarginal, train_head
from shared_embed.checkpoint import atomic_write_text
from shared_embed.data import PairedData
from shared_embed.errors import DataError
from theory.engine.loop import Executor, Log, run_groups
from theory.engine.record_shape import FLAG, NUMBER, TEXT, WHOLE, Shape, list_of, optional, read_shaped, shape_by_record
from theory.engine.records import failed_lines, record_cells, settings_digest, split_failed, to_run
from theory.engine.run_folder import write_json
from theory.engine.seeding import derived_seed, stream_seed
from theory.engine.tables import plus_minus, row_se, summarize_seeds
from theory.studies.tgdp.evaluation import (
    LABELS,
    ScoreModel,
    guidance_errors,
    log_h_line,
    ratio_errors,
    score_errors,
    score_model,
    true_labels,
)
from theory.studies.tgdp.methods import cell_seed as tgdp_cell_seed  # (cell_seed is a local name below)
from theory.studies.tgdp.methods import fit_method
from theory.studies.tgdp.settings import METHODS, REFERENCES, TGDPSettings  # noqa: F401  (TGDPSettings: part of this module's API)
from theory.truth.tasks import TwoGaussianTask

ERROR_KEYS = ("log_h_mse_mean", "grad_mse_mean", "grad_mse_q_mean", "ratio_mse")


@dataclass(frozen=True)
class TGDPCell:
    """One (seed, version, n_t, method) of the grid, and where its record lives in a run folder."""

    seed: int
    conditional: bool
    n_t: int
    method: str

    @property
    def version(self) -> str:
        return "conditional" if self.conditional else "unconditional"

    @property
    def path(self) -> str:
        return f"cells/{self.version}/n{self.n_t}_seed{self.seed}_{self.method}.json"


@dataclass(frozen=True)
class TGDPGroup:
    """The cells of one seed and version: they share the source head and the reference fits."""

    seed: int
    conditional: bool
    cells: tuple[TGDPCell, ...]


def plan_tgdp(s: TGDPSettings, out_dir: Path | None = None) -> list[TGDPGroup]:
    """The groups of the grid, each with the cells whose record ``out_dir`` does not hold yet, or holds as failed
    (ConfigError naming a record of other settings: :func:`theory.engine.records.cell_state`)."""
    groups = []
    for seed in s.seeds:
        for conditional in s.conditional:
            cells = [
                TGDPCell(int(seed), bool(conditional), n, m)
                for n in sorted(s.n_targets)
                for m in METHODS
                if m in s.methods
            ]
            todo = tuple(to_run(cells, out_dir, settings_digest(s.study()), read=read_tgdp_record))
            if todo:
                groups.append(TGDPGroup(int(seed), bool(conditional), todo))
    return groups


def _log(progress: bool) -> Any:
    return (lambda m: print(time.strftime("%H:%M:%S"), m, flush=True)) if progress else (lambda _m: None)


def run_tgdp_experiment(
    settings: TGDPSettings | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    workers: int = 1,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run the grid through the study engine (:mod:`theory.engine.loop`); return records, summary, the Markdown
    table, the PNG paths and the wall time (s). With ``out_dir``, cells with a finished record there are not run again."""
    s = settings or TGDPSettings()
    unknown = sorted(set(s.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {list(METHODS)}")
    say, out = _log(progress), Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "settings.json", s.to_dict())
    start = time.perf_counter()
    records = run_groups(
        run_tgdp_group, s.to_dict(), out, plan_tgdp(s, out), workers=workers, log=say, executor=executor
    )
    seconds = time.perf_counter() - start
    if out is not None:
        records = load_records(out)
    records, failed = split_failed(sort_records(records))
    summary = summarize_tgdp(records)
    table = format_tgdp_table(summary)
    plots = write_tgdp_outputs(out, s, records, table) if out is not None else []
    return {
        "records": records,
        "failed": failed_lines(failed, COORDINATES),
        "summary": summary,
        "table": table,
        "plots": plots,
        "seconds": seconds,
    }


def sort_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` in grid order: (seed, version, n_t, method as :data:`METHODS` lists them)."""
    return sorted(records, key=lambda r: (r["seed"], r["conditional"], r["n_t"], METHODS.index(r["method"])))


def write_tgdp_outputs(out: Path, s: TGDPSettings, records: list[dict[str, Any]], table: str) -> list[str]:
    """``table.md`` and the PNG plots of each version in ``out``; returns the plot paths."""
    from theory.studies.tgdp.plots import plot_log_h, plot_tgdp_samples

    atomic_write_text(out / "table.md", table + "\n")
    plots = []
    for cond in sorted({bool(r["conditional"]) for r in records}):
        name = "conditional" if cond else "unconditional"
        for path in (
            plot_tgdp_samples(records, TwoGaussianTask(**s.task), cond, out / f"samples_{name}.png"),
            plot_log_h(records, cond, out / f"log_h_{name}.png"),
        ):
            if path is not None:
                plots.append(str(path))
    return plots


def run_tgdp_group(
    spec: dict[str, Any], out: Path | None, group: TGDPGroup, log: Log | None, on_cell: Callable[[], None]
) -> list[dict[str, Any]]:
    """The engine's runner of this study: one seed and version, the source head, then its cells in order, each
    record sealed and written as soon as it is scored (a cell that raises: a failed record;
    :func:`theory.engine.records.record_cells`)."""
    s = TGDPSettings.from_dict(spec)
    say = log or (lambda _m: None)
    return record_cells(
        group.cells,
        lambda: _prepare(s, group, say),
        coordinates=lambda cell: _coordinates(s, cell),
        settings_hash=settings_digest(s.study()),
        path=lambda cell: None if out is None else out / cell.path,
        on_cell=on_cell,
        say=say,
    )


#: a TGDP record's coordinates
COORDINATES = ("seed", "conditional", "n_t", "method")


def _coordinates(s: TGDPSettings, cell: TGDPCell) -> dict[str, Any]:
    """A cell's coordinates as its record names them (a failed record holds these and its error)."""
    return {
        "seed": cell.seed,
        "n_source": s.n_source,
        "n_t": cell.n_t,
        "conditional": cell.conditional,
        "method": cell.method,
        "reference": cell.method in REFERENCES,
    }


def _prepare(s: TGDPSettings, group: TGDPGroup, say: Log) -> Callable[[TGDPCell], dict[str, Any]]:
    """The seed's draws and the version's source head; returns ``one(cell) -> its record``."""
    task = TwoGaussianTask(**s.task)
    seed, conditional = group.seed, group.conditional
    source = task.sample(s.n_source, "source", _stream(seed, "source"))
    pool = task.sample(max(s.n_targets), "target", _stream(seed, "target-pool"))
    eval_data = task.sample(s.n_eval, "target", _stream(seed, "eval"))
    mmd_ref = task.sample(s.n_mmd, "target", _stream(seed, "mmd-reference")).x
    schedule = VPSchedule()
    version = "conditional" if conditional else "unconditional"
    t0 = time.perf_counter()
    torch.manual_seed(stream_seed("tgdp", seed, version, "source-init"))  # the source head's initial weights
    src = DiffusionHead(2, 1 if conditional else None, **s.head)
    train_head(src, source.x, source.c if conditional else None, config=s.source_train.replace(seed=seed))
    src.requires_grad_(False)
    src_seconds = time.perf_counter() - t0
    say(f"seed {seed} {version}: source head {s.source_train.steps} steps in {src_seconds:.0f}s")
    cache: dict[tuple[str, int | None], dict[str, Any]] = {}

    def one(cell: TGDPCell) -> dict[str, Any]:
        n, method = cell.n_t, cell.method
        key = (method, None if method in REFERENCES else n)
        if key not in cache:
            cache[key] = _fit_and_score(
                task, s, seed, conditional, n, method, src, source, pool.head(n), schedule, eval_data, mmd_ref, cache
            )
        rec = {
            "task": task.config,
            "seed": seed,
            "n_source": s.n_source,
            "n_t": n,
            "conditional": conditional,
            "method": method,
            "reference": method in REFERENCES,
            "source_seconds": src_seconds,
            **cache[key],
        }
        say(
            f"seed {seed} {version:13s} n_t {n:5d} {method:16s} KL {rec['kl']:.4f} +- {rec['kl_se']:.4f} "
            f"MMD2 {rec['mmd2']:.4f}"
            + (f" log-h MSE {rec['log_h_mse_mean']:.3f}" if "log_h_mse_mean" in rec else "")
            + f" [fit {rec['fit_seconds']:.0f}s]"
        )
        return rec

    return one


def _stream(seed: int, stream: str) -> torch.Generator:
    """The generator of one named stream of draws of a seed (:func:`theory.engine.seeding.derived_seed`)."""
    return torch.Generator().manual_seed(derived_seed("tgdp", seed, stream))


def _fit_and_score(
    task: TwoGaussianTask,
    s: TGDPSettings,
    seed: int,
    conditional: bool,
    n: int,
    method: str,
    src: DiffusionHead,
    source: PairedData,
    target: PairedData,
    schedule: VPSchedule,
    eval_data: PairedData,
    mmd_ref: torch.Tensor,
    cache: dict[Any, Any],
) -> dict[str, Any]:
    """Fit ``method`` and score it: metrics, errors of its guidance/classifier, the log-h line and timings."""
    cell_seed = tgdp_cell_seed(seed, n, method)
    torch.manual_seed(cell_seed)
    t0 = time.perf_counter()
    fitted = fit_method(method, task, s, cell_seed, conditional, src, source, target, schedule, cache, grid=(seed, n))
    fit_seconds = time.perf_counter() - t0
    labels = None
    if conditional:
        labels = (
            true_labels(task)
            if method in REFERENCES
            else LabelMarginal.fit(cast(torch.Tensor, target.c), LABELS.clone())
        )
    model = ScoreModel(fitted.score, schedule, labels, rtol=s.rtol, atol=s.rtol, t_eps=src.t_eps)
    t0 = time.perf_counter()
    gen = _stream(cell_seed, "score")
    rec = {
        "fit_seconds": fit_seconds,
        "steps": fitted.steps,
        "settings": fitted.info,
        **score_model(task, model, eval_data, mmd_ref, gen, s.keep_samples),
    }
    if fitted.guidance is not None:
        rec.update(guidance_errors(task, fitted.guidance, schedule, s.times, s.n_errors, conditional, gen))
        rec["log_h_line"] = log_h_line(task, fitted.guidance, schedule, s.plot_times, conditional)
    if fitted.ratio is not None:
        rec.update(ratio_errors(task, fitted.ratio, s.n_errors, conditional, gen))
    rec.update(score_errors(task, fitted.score, schedule, s.times, s.n_errors, conditional, gen))
    rec["eval_seconds"] = time.perf_counter() - t0
    return rec


_LINE = list_of(NUMBER)
#: what the report and the plots read of a finished record (the guidance and ratio errors where the method has them)
RECORD_SHAPE: Shape = {
    "seed": WHOLE,
    "n_t": WHOLE,
    "conditional": FLAG,
    "method": TEXT,
    "reference": FLAG,
    "kl": NUMBER,
    "kl_se": NUMBER,
    "mmd2": NUMBER,
    "samples": list_of(list_of(NUMBER, length=2), nonempty=False),  # points of the two-Gaussian task
    **{key: optional(NUMBER) for key in ERROR_KEYS},
    "log_h_line": optional({"s": _LINE, "exact": {"*": _LINE}, "learned": {"*": _LINE}}),
}
#: a failed record keeps its method: it names the row in the failures section
_SHAPE_OF = shape_by_record(RECORD_SHAPE, failed={"method": TEXT})


def read_tgdp_record(path: Path, *, older: bool = False) -> dict[str, Any]:
    """A TGDP cell record with every field the report and plots read checked (:data:`RECORD_SHAPE`); DataError
    naming the file and the fields otherwise, so a rerun recomputes it."""
    return read_shaped(path, "TGDP record", _SHAPE_OF, older=older)


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every record under ``out_dir/cells``, as written (failed ones too); DataError naming one that cannot be
    read (:func:`read_tgdp_record`)."""
    records = []
    for path in sorted(Path(out_dir, "cells").glob("*/*.json")):
        try:
            records.append(read_tgdp_record(path, older=True))
        except DataError as err:
            raise DataError(f"{err}: run the same command again to recompute it") from err
    return records


def summarize_tgdp(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (conditional, n_t, method): KL mean and SE over seeds (:func:`theory.engine.tables.summarize_seeds`;
    the pooled Monte Carlo SE for one seed), and mean ± SE of MMD^2 and the guidance / classifier errors."""
    rows = []
    for cond in (False, True):
        sub = [r for r in records if bool(r["conditional"]) == cond]
        for row in summarize_seeds(sub, "method", METHODS, extra=("mmd2", *ERROR_KEYS)):
            out = {
                "conditional": cond,
                "n_t": row["n_t"],
                "method": row["method"],
                "seeds": row["seeds"],
                "kl_mean": row["kl_mean"],
                "kl_se": row_se(row),
                "kl_se_mc": row["kl_se_mc"],
            }
            for key in ("mmd2", *ERROR_KEYS):
                if f"{key}_mean" in row:
                    out[key], out[f"{key}_se"] = row[f"{key}_mean"], row[f"{key}_se_seeds"]
            rows.append(out)
    return sorted(rows, key=lambda r: (r["conditional"], r["n_t"], METHODS.index(r["method"])))


def _pm(row: dict[str, Any], key: str, se_key: str, digits: int = 4) -> str:
    return plus_minus(row[key], row[se_key], digits) if key in row else "-"


def format_tgdp_table(summary: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per (version, n_t, method); 'mean ± SE over seeds' (KL: MC SE for one seed)."""
    lines = [
        "| version | n_t | method | KL (nats) | MMD^2 | log-h MSE (p_t) | grad log-h MSE (p_t) | "
        "grad log-h MSE (q_t) | classifier log-w MSE (p) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {'cond' if r['conditional'] else 'uncond'} | {r['n_t']} | {r['method']}"
            f"{' (ref)' if r['method'] in REFERENCES else ''} | {_pm(r, 'kl_mean', 'kl_se')} | "
            f"{_pm(r, 'mmd2', 'mmd2_se')} | " + " | ".join(_pm(r, k, f"{k}_se", 3) for k in ERROR_KEYS) + " |"
        )
    return "\n".join(lines)


def compare(
    summary: Sequence[dict[str, Any]], method: str, baseline: str, n_t: int, conditional: bool
) -> dict[str, Any]:
    """KL(baseline) - KL(method) at (n_t, version) with the combined SE hypot(se_m, se_b); ``beats``: gap > SE."""
    cell = {(r["conditional"], r["n_t"], r["method"]): r for r in summary}
    m, b = cell[(conditional, n_t, method)], cell[(conditional, n_t, baseline)]
    gap, se = b["kl_mean"] - m["kl_mean"], math.hypot(m["kl_se"], b["kl_se"])
    return {
        "method": method,
        "baseline": baseline,
        "n_t": n_t,
        "conditional": conditional,
        "gap": gap,
        "se": se,
        "beats": gap > se,
        "beats_2se": gap > 2 * se,
        "worse_2se": gap < -2 * se,
        "seeds": m["seeds"],
    }
