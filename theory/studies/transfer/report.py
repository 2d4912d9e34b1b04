"""The Markdown report of a sweep folder: setup, predictions, KL tables, the checks table and the PNG plots.

:func:`build_report` reads only what the sweep left on disk (config.json, the cell records, group files and
samples), so ``gentransfer report DIR`` rebuilds it at any time, e.g. while a sweep is still running.
Writes ``DIR/report.md``, ``DIR/checks.json``, ``DIR/results.csv`` and ``DIR/plots/*.png``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import ConfigError, DataError
from shared_embed.transfer import VARIANTS
from theory.engine.config import ExperimentConfig, task_label
from theory.engine.plots import plot_floor, plot_kl_curves, plot_samples
from theory.engine.records import dumps
from theory.engine.run_folder import (
    check_no_links,
    collect_records,
    failed_cells,
    flagged_cells,
    read_json,
    stored_predictions,
    study_predictions,
)
from theory.studies.transfer.dimension_plots import plot_dimension_laws
from theory.studies.transfer.headline import headline
from theory.studies.transfer.summary import format_split_table, format_table, sample_efficiency_ratio
from theory.studies.transfer.sweep import write_csv
from theory.truth.rates import Rates, check_rate_name, effective_smoothness, predicted_rates, rate_for_task
from theory.truth.tasks import Task
from theory.verdicts.checks import (
    CheckResult,
    fit_exponent,
    format_checks,
    format_hypotheses,
    ok_records,
    run_checks,
    series,
)
from theory.verdicts.controls import DISTORTIONS, distort_records
from theory.verdicts.dimension_checks import dimension_axes, run_dimension_checks
from theory.verdicts.known_answer_check import transfer_known_answer_table
from theory.verdicts.stats import slope_interval_coverage
from theory.verdicts.verdict import FAIL, PASS

Record = dict[str, Any]


@dataclass
class Report:
    """A built report: its path, the checks, the per-(head, n_s) KL tables, the plot paths and its opening
    summary lines (Markdown)."""

    path: Path
    checks: list[CheckResult]
    tables: dict[str, str]
    plots: list[Path]
    summary: list[str] = field(default_factory=list)


def load_run_config(out_dir: str | os.PathLike[str], task: str | None = None) -> ExperimentConfig:
    """The resolved config a sweep stored in ``out_dir/config.json``.

    A folder whose task is user code (``task.name = "package.module:Class"``) is read only when ``task`` names
    that same class: a report imports code its caller gives, never code named by the folder alone."""
    raw = read_json(Path(out_dir) / "config.json")
    if raw is None:
        raise ConfigError(f"{os.fspath(out_dir)!r} holds no config.json: is it a folder written by 'gentransfer run'?")
    named = raw.get("task", {}).get("name") if isinstance(raw.get("task"), dict) else None
    if isinstance(named, str) and ":" in named and named != task:
        raise ConfigError(
            f"{os.fspath(out_dir)!r} holds a run of the user task {named!r}: a report imports only code it is "
            f"given, so name it: gentransfer report {os.fspath(out_dir)} --task {named}"
            + (f" (--task {task} was given)" if task else "")
        )
    return ExperimentConfig.from_dict(raw)


def head_kinds(config: ExperimentConfig, records: list[Record]) -> dict[str, str]:
    """Head name -> kind, for every head of the records (a folder may hold earlier runs' heads) and the config."""
    kinds: dict[str, str] = {r["head"]: r["head_kind"] if "head_kind" in r else r["head"] for r in records}
    kinds.update({name: h.kind for name, h in config.heads.items()})
    return kinds


def predictions(config: ExperimentConfig, task: Task, kinds: dict[str, str]) -> dict[str, Rates]:
    """Head name -> the predicted exponents for the task's dimensions, beta and the config's rate function."""
    th = config.theory
    return {
        name: predicted_rates(task.d_c, task.d_h, task.d_x, th.beta, kind, rate_for_task(th.rate, task), th.log_power)
        for name, kind in kinds.items()
    }


def subset(records: list[Record], head: str, n_s: int | None) -> list[Record]:
    """A head's records at one n_s: source variants at that n_s plus the source-free variants."""
    return [r for r in ok_records(records) if r["head"] == head and (r.get("n_s") is None or r["n_s"] == n_s)]


def _n_ss(records: list[Record], head: str) -> list[int | None]:
    found = sorted({int(r["n_s"]) for r in records if r["head"] == head and r.get("n_s") is not None})
    return [*found] if found else [None]


def _prediction_table(config: ExperimentConfig, rates: dict[str, Rates], kinds: dict[str, str]) -> str:
    lines = [
        "| head | prediction | smoothness used | transfer (in n_t, above the floor) | no transfer (n_t) "
        "| oracle (n_t) | floor (in n_s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rates.items():
        kind = kinds[name]
        try:
            eff = f"{effective_smoothness(config.theory.beta, kind):g}"
        except ConfigError:
            eff = "custom"

        def fmt(variant: str, r: Rates = r) -> str:
            value, gamma = r.for_variant(variant) if variant != "floor" else r.floor, r.log_power_for(variant)
            if value is None:
                return "-"
            return f"{value:.3f}" + (f" x (log n)^{gamma:g}" if gamma else "")

        lines.append(
            f"| {name} ({kind}) | {r.label} | {eff} | {fmt('transfer')} | {fmt('no_transfer')} | "
            f"{fmt('oracle')} | {r.floor:.3f} |"
        )
    return "\n".join(lines)


def _exponent_table(records: list[Record], rates: dict[str, Rates], config: ExperimentConfig) -> str:
    lines = ["| head | variant | n_s | quantity | measured exponent [CI] | predicted |", "|---|---|---:|---|---:|---:|"]
    boot = {"confidence": config.theory.confidence, "log_power": config.theory.log_power}
    for head in sorted({r["head"] for r in records}):
        for variant in ("transfer", "fine_tune", "no_transfer", "oracle", "direct"):
            for n_s in _n_ss(records, head) if variant in ("transfer", "fine_tune") else [None]:
                key = (
                    "head_term" if variant == "transfer" and series(records, head, variant, n_s, "head_term") else "kl"
                )
                data = {
                    n: {s: r[key] for s, r in lv.items()} for n, lv in series(records, head, variant, n_s, key).items()
                }
                if not data:
                    continue
                fit = fit_exponent(data, **boot)
                pred = rates[head].for_variant(variant) if head in rates else None
                ci = f" [{fit.low:.3f}, {fit.high:.3f}]" if math.isfinite(fit.low) else ""
                quantity = "KL - floor" if key == "head_term" else "KL"
                lines.append(
                    f"| {head} | {variant} | {'-' if n_s is None else n_s} | {quantity} | "
                    f"{fit.exponent:.3f}{ci} | {'-' if pred is None else f'{pred:.3f}'} |"
                )
    return "\n".join(lines)


def _timing(out_dir: Path, records: list[Record]) -> str:
    cell = sum(
        (r.get("fit_seconds") or 0) + (r.get("eval_seconds") or 0) + (r.get("bound_seconds") or 0) for r in records
    )
    groups = [read_json(p) or {} for p in out_dir.glob("groups/*/*.json")]
    shared = sum((g.get("source_seconds") or 0) + (g.get("floor_seconds") or 0) for g in groups)
    run = read_json(out_dir / "run.json") or {}
    wall = (
        f"; last `gentransfer run`: {run['seconds']:.0f} s wall with {run.get('workers', '?')} worker(s)"
        if "seconds" in run
        else ""
    )
    return f"compute {cell + shared:.0f} s in total (cells {cell:.0f} s, source and floor fits {shared:.0f} s){wall}"


def _checks(config: ExperimentConfig, records: list[Record], by_task: dict[str, dict[str, Rates]]) -> list[CheckResult]:
    """Every check of the run as one Holm family: per head (and task), plus the dimension laws of a study."""
    th = config.theory
    multi = len(config.grid.tasks) > 1 or len({r.get("task", "") for r in records}) > 1
    extra: list[CheckResult] = []
    d_h_fixed, d_c_fixed = dimension_axes(records)
    if multi and d_h_fixed is not None and d_c_fixed is not None:
        n_s = max((int(r["n_s"]) for r in records if r.get("n_s") is not None), default=0)
        for head in sorted({r["head"] for r in records}):
            extra += run_dimension_checks(
                records,
                head,
                n_t=None,
                n_s=n_s,
                d_h_fixed=d_h_fixed,
                d_c_fixed=d_c_fixed,
                margin=th.flat_margin,
                confidence=th.confidence,
            )
    return run_checks(
        records,
        lambda head, task: by_task.get(task, {}).get(head),
        confidence=th.confidence,
        margin=th.margin,
        extra=extra,
        per_task=multi,
    )


def controls_table(
    config: ExperimentConfig, records: list[Record], by_task: dict[str, dict[str, Rates]], own: list[CheckResult]
) -> str:
    """Each record distortion applied to this run's records: the checks it turns to FAIL (none is a defect)."""
    lines = [
        "| records distorted | checks that FAIL | verdicts (pass / FAIL) |",
        "|---|---|---:|",
        f"| none (this run) | {'; '.join(sorted({c.name for c in own if c.verdict == FAIL})) or '-'} | "
        f"{sum(c.verdict == PASS for c in own)} / {sum(c.verdict == FAIL for c in own)} |",
    ]
    for name in DISTORTIONS:
        res = _checks(config, distort_records(records, name), by_task)
        failed = sorted({c.name for c in res if c.verdict == FAIL})
        lines.append(
            f"| {name} | {'; '.join(failed) or '**none: this distortion would go unnoticed**'} | "
            f"{sum(c.verdict == PASS for c in res)} / {sum(c.verdict == FAIL for c in res)} |"
        )
    return "\n".join(lines)


def _coverage_line(records: list[Record], confidence: float) -> str:
    seeds = len({r["seed"] for r in records})
    levels = sorted({int(r["n_t"]) for r in records})
    if seeds < 2 or len(levels) < 2:
        return "Interval coverage: not measured (fewer than 2 seeds or n_t levels)."
    cov = slope_interval_coverage(seeds, levels, confidence=confidence, reps=4000)
    return (
        f"Exponent intervals are Student t intervals on per-seed slopes; their coverage, measured now by "
        f"simulation at this run's {seeds} seeds and n_t {levels} (KL-like Gamma scatter, 4000 "
        f"repetitions), is {cov:.1%} for a nominal {confidence:.0%}."
    )


def _plots(out: Path, ok: list[Record], task: Task, rates: dict[str, Rates]) -> list[Path]:
    plots: list[Path] = []
    multi = len({r.get("task", "") for r in ok}) > 1
    d_h_fixed, d_c_fixed = dimension_axes(ok)
    for head in sorted({r["head"] for r in ok}):
        if multi and d_h_fixed is not None and d_c_fixed is not None:
            n_s = max((int(r["n_s"]) for r in ok if r.get("n_s") is not None), default=0)
            plots.append(
                plot_dimension_laws(
                    ok,
                    head,
                    n_t=min(int(r["n_t"]) for r in ok),
                    n_s=n_s,
                    d_h_fixed=d_h_fixed,
                    d_c_fixed=d_c_fixed,
                    path=out / f"plots/kl_vs_dimension_{head}.png",
                )
            )
            continue
        plots.append(plot_kl_curves(ok, head, rates.get(head), out / f"plots/kl_vs_nt_{head}.png"))
        if any(r.get("floor") is not None for r in ok if r["head"] == head):
            plots.append(plot_floor(ok, head, rates.get(head), out / f"plots/floor_vs_ns_{head}.png"))
        samples = plot_samples(out, ok, head, task, out / f"plots/samples_{head}.png")
        if samples is not None:
            plots.append(samples)
    return plots


def _setup_lines(config: ExperimentConfig, out: Path, records: list[Record], ok: list[Record], task: Task) -> list[str]:
    g = config.grid
    axis = lambda key: sorted({r[key] for r in records if r.get(key) is not None})  # noqa: E731
    instance = (
        "every seed draws its own task instance (task seed = grid seed)"
        if config.task.instance == "per_seed"
        else f"one task instance for every seed (task seed {task.seed})"
    )
    return [
        f"# Theory-validation report: {config.name}",
        "",
        config.description,
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from `{out}` "
        f"({len(ok)} finished cells, {len(records) - len(ok)} failed). Rebuild with `gentransfer report {out}`.",
        "",
        "## Setup",
        "",
        f"- task: `{config.task.name}` {json.dumps({k: v for k, v in task.config.items() if k != 'seed'})}; {instance}"
        + (f"; grid tasks {[task_label(t) for t in g.tasks]}" if len(g.tasks) > 1 else ""),
        "- heads: " + "; ".join(f"`{n}` = {h.kind} {json.dumps(h.options)}" for n, h in config.heads.items()),
        f"- grid of the records: n_s {axis('n_s')}, n_t {axis('n_t')}, seeds {axis('seed')}, variants "
        f"{[v for v in VARIANTS if v in {r['variant'] for r in records}]} (latest config: n_s {g.n_s}, n_t {g.n_t}, "
        f"seeds {g.seeds})" + (f"; NEGATIVE CONTROL `{config.control}`" if config.control else ""),
        "- KL(p_T || p_hat) by Monte Carlo on fresh target pairs (n_eval per head: "
        + ", ".join(f"{n} {config.eval_setting(n, 'n_eval')}" for n in config.heads)
        + "); embedding floor: a head fitted on floor_n fresh target pairs on the frozen source encoder (floor_n "
        + ", ".join(f"{n} {config.eval_setting(n, 'floor_n')}" for n in config.heads)
        + ")",
        f"- {_timing(out, records)}",
        "",
    ]


def build_report(
    out_dir: str | os.PathLike[str],
    config: ExperimentConfig | None = None,
    *,
    rate: str | None = None,
    user_task: str | None = None,
) -> Report:
    """Rebuild ``out_dir/report.md`` (and checks.json, results.csv, plots) from the records on disk.

    ``config``: the config just run (its rate function may be called); None reads the folder's config.json and
    the predictions the run stored, importing nothing the folder names. ``rate`` ("module:function"): a rate
    function the caller names, imported and used instead. ``user_task`` ("module:Class"): the user task the
    folder's config names, which is imported only when given here (:func:`load_run_config`).
    """
    out = Path(out_dir)
    trusted = config is not None or rate is not None
    config = config or load_run_config(out, user_task)
    if rate is not None:
        config.theory.rate = check_rate_name(rate)
    check_no_links(out)
    records = collect_records(out, config)
    if not records:
        raise DataError(f"{os.fspath(out)!r} holds no cell records yet (run 'gentransfer run' first)")
    write_csv(records, out / "results.csv")
    task = config.task.build(seed=min(config.grid.seeds), overrides=config.grid.tasks[0])
    kinds = head_kinds(config, records)
    by_task = study_predictions(config, kinds) if trusted else stored_predictions(config, out, kinds)
    rates = by_task.get(task_label(config.grid.tasks[0]), {})
    ok = ok_records(records)
    th = config.theory
    checks = _checks(config, records, by_task)
    plots = _plots(out, ok, task, rates)
    setup = _setup_lines(config, out, records, ok, task)
    summary = headline(records, checks, _what_ran(config, records, task))
    lines = (
        setup[:6]
        + summary
        + setup[6:]
        + [
            "## Predictions",
            "",
            "Which rate each curve should show. A linear-Gaussian head is PARAMETRIC: its whole law is known (E KL = k/2n "
            "to first order), and its KL, exponent and, with a linear encoder, transfer's floor and head term are checked "
            "two-sided against it. On an ANALYTIC task (rate function `auto` or `analytic`) a flow or diffusion head on a "
            "fixed context falls like (log n)^2 / n: exponent 1 after dividing by (log n_t)^2, about 0.58 raw over "
            "n_t = 25..800. Otherwise, and for no-transfer and the floor, the generic nonparametric template for "
            f"beta-smooth densities (a template, not the papers' exact theorems): E KL <~ n^-r (log n)^{th.log_power:g}, "
            f"beta = {th.beta:g} (flows: beta - 1). Rate function `{th.rate}`. Predictions are bounds with unknown "
            "constants: a faster decay is consistent.",
            "",
            _prediction_table(config, rates, kinds),
            "",
            "## Results: KL(p_T || p_hat) in nats, mean +- SE over seeds",
            "",
        ]
    )
    tables = _result_tables(ok, lines)
    lines += _transfer_known_answer_lines(ok)
    lines += [
        "## Measured exponents",
        "",
        f"Per-seed least-squares slopes of log KL (transfer: log(KL - floor)) against log n_t; "
        f"{th.confidence:.0%} Student t interval over seeds.",
        "",
        _exponent_table(ok, rates, config),
        "",
        "## Checks",
        "",
        f"Verdicts: pass / FAIL / insufficient data / insufficient seeds (< 3). All checks form one family: "
        f"Holm's procedure keeps the chance of any false FAIL (and, separately, any false pass) at "
        f"{1 - th.confidence:.0%}. 'gof' marks a goodness-of-fit check: it passes when not rejected AND "
        f"powered against a factor {th.margin:g} either way.",
        "",
        format_checks(checks),
        "",
        _coverage_line(ok, th.confidence),
        "",
        "### What each check claims and computes",
        "",
        format_hypotheses(checks),
        "",
        "### Power on this run: the checks under distorted records",
        "",
        "Every KL field of the records distorted as named, checks rebuilt. Measured false-pass rates of each "
        "check against broken pipelines are in `docs/checks.md`.",
        "",
        controls_table(config, records, by_task, checks),
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    failed = failed_cells(records)
    if failed:
        lines += (
            ["## Failed cells", "", "Run the same command again to retry them.", ""]
            + [f"- {line}" for line in failed]
            + [""]
        )
    flagged = flagged_cells(records)
    if flagged:
        lines += (
            ["## Flagged cells", "", "Finished and checked, but doubtful:", ""]
            + [f"- {line}" for line in flagged]
            + [""]
        )
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(
        out / "checks.json",
        dumps(
            {"checks": [c.to_dict() for c in checks], "predictions": {k: v.to_dict() for k, v in rates.items()}},
            default=str,
        ),
    )
    return Report(path, checks, tables, plots, summary)


def _what_ran(config: ExperimentConfig, records: list[Record], task: Task) -> dict[str, Any]:
    axis = lambda key: sorted({r[key] for r in records if r.get(key) is not None})  # noqa: E731
    return {
        "task": f"`{config.task.name}` (d_c = {task.d_c}, d_h = {task.d_h}, d_x = {task.d_x})",
        "heads": ", ".join(f"{n} ({h.kind})" for n, h in config.heads.items()),
        "variants": [v for v in VARIANTS if v in {r["variant"] for r in records}],
        "n_s": axis("n_s"),
        "n_t": axis("n_t"),
    }


def _transfer_known_answer_lines(ok: list[Record]) -> list[str]:
    """The section that sets transfer's measured KL beside its known answer, per head that has one."""
    lines: list[str] = []
    for head in sorted({r["head"] for r in ok}):
        table = transfer_known_answer_table(ok, head)
        if table:
            lines += [
                f"## Transfer's known answer: `{head}`",
                "",
                "A linear encoder fitted with a linear-Gaussian source head by maximum likelihood is reduced-rank "
                "regression; with its row space frozen, the target head's KL splits exactly into the embedding "
                "floor of that row space and the known answer of a Gaussian regression on rank regressors: "
                "E KL = E floor(n_s) + E KL_ML(n_t). The floor's expectation comes from the exact law of the "
                "estimator (simulated for each seed's task instance) and, beside it, its first-order formula "
                "(d_c - d_h) / (2 (n_s - d_c - 2)) tr(Sigma_T^-1 A_T Omega A_T^T). The checks table holds "
                "the two-sided verdicts.",
                "",
                table,
                "",
            ]
    return lines


def _result_tables(ok: list[Record], lines: list[str]) -> dict[str, str]:
    """Append the KL tables (per task, head and n_s) to ``lines``; return them by name."""
    tables: dict[str, str] = {}
    for task in sorted({r.get("task", "") for r in ok}):
        mine = [r for r in ok if r.get("task", "") == task]
        for head in sorted({r["head"] for r in mine}):
            for n_s in _n_ss(mine, head):
                sub = subset(mine, head, n_s)
                table = format_table(sub)
                name = f"{task + ' ' if task else ''}{head}/n_s={n_s}"
                tables[name] = table
                lines += [f"### {task + ', ' if task else ''}{head}, n_s = {n_s}", "", table, ""]
                ref = (
                    min(r["n_t"] for r in sub if r["variant"] == "transfer")
                    if any(r["variant"] == "transfer" for r in sub)
                    else None
                )
                if ref is not None and any(r["variant"] == "no_transfer" for r in sub):
                    ratio = sample_efficiency_ratio(sub, ref)
                    lines += [
                        f"Sample efficiency: no transfer needs {ratio['text']} times the target pairs to "
                        f"match transfer at n_t = {ref} (KL {ratio['target_kl']:.4f}).",
                        "",
                    ]
                split = format_split_table(sub)
                if split:
                    lines += [
                        "KL split of transfer (total = embedding floor + head term, one evaluation sample):",
                        "",
                        split,
                        "",
                    ]
    return tables
