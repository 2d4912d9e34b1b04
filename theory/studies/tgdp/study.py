"""The TGDP simulation as a study of ``gentransfer run``: its config, its run folder and its report.

A config with ``[experiment] kind = "tgdp"`` and a ``[tgdp]`` table of :class:`~theory.studies.tgdp.experiment.TGDPSettings`
fields (``configs/tgdp_simulation.toml``) runs through the study engine into ``--out DIR``: ``DIR/config.json``,
``DIR/study.json`` (the folder holds this study only), ``DIR/cells/`` (one record per cell, the layout of every study; a rerun runs the
missing ones), ``DIR/table.md``, the PNG plots and ``DIR/report.md``, which ``gentransfer report DIR`` rebuilds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import DataError
from theory.engine.config import study_tables
from theory.engine.loop import Executor, Log
from theory.engine.records import dumps, failed_section, split_failed
from theory.engine.run_folder import check_no_links, read_json
from theory.engine.study_runs import CellStudy
from theory.engine.vocabulary import Vocabulary
from theory.studies.tgdp.experiment import (
    COORDINATES,
    TGDPSettings,
    compare,
    format_tgdp_table,
    load_records,
    run_tgdp_experiment,
    sort_records,
    summarize_tgdp,
    write_tgdp_outputs,
)
from theory.studies.tgdp.settings import LEARNED, REFERENCES


def is_tgdp(raw: dict[str, Any]) -> bool:
    """Whether a raw config (a TOML dict) is a TGDP study."""
    exp = raw.get("experiment", {})
    return isinstance(exp, dict) and exp.get("kind") == "tgdp"


#: where the shared config words (theory.engine.vocabulary) live in :class:`TGDPSettings`: one diffusion head,
#: its three training phases, and the methods as the grid's variants
VOCABULARY = Vocabulary(
    "tgdp",
    (
        ("grid.seeds", "seeds"),
        ("grid.n_s", "n_source"),
        ("grid.n_t", "n_targets"),
        ("grid.conditional", "conditional"),
        ("grid.variants", "methods"),
        ("heads.diffusion.options", "head"),
        ("heads.diffusion.train.source", "source_train"),
        ("heads.diffusion.train.target", "target_train"),
        ("heads.diffusion.train.fine_tune", "fine_tune_train"),
    ),
)


def parse(raw: dict[str, Any]) -> tuple[dict[str, Any], TGDPSettings]:
    """(the [experiment] table, the settings) of a TGDP config; ConfigError naming a bad key."""
    exp, tgdp = study_tables(raw, VOCABULARY, "TGDP")
    with VOCABULARY.shared_names():
        return exp, TGDPSettings.from_dict(tgdp)


def build_study_report(out: Path) -> tuple[Path, str]:
    """Rebuild ``out/report.md``, ``table.md`` and the plots from the records; returns (path, table)."""
    check_no_links(out, ("cells",))
    raw = read_json(out / "config.json")
    if raw is None or not is_tgdp(raw):
        raise DataError(f"{out} holds no TGDP config.json: is it a folder written by 'gentransfer run'?")
    exp, settings = parse(raw)
    records, failed = split_failed(sort_records(load_records(out)))
    if not records and not failed:
        raise DataError(f"{out} holds no TGDP records yet (run 'gentransfer run' first)")
    summary = summarize_tgdp(records)
    table = format_tgdp_table(summary)
    plots = write_tgdp_outputs(out, settings, records, table)
    lines = [
        f"# TGDP simulation: {exp.get('name', 'tgdp')}",
        "",
        exp.get("description", ""),
        "",
        f"KL(q || q_hat) in nats by the probability-flow log-density on {settings.n_eval} fresh target draws "
        f"per seed (conditional: of the joint (x, y)), MMD^2 of ODE samples, log-h errors averaged over t in "
        f"{list(settings.times)}; mean +- SE over seeds; n_s = {settings.n_source}; rows marked (ref) do not "
        f"use the target sample ({', '.join(REFERENCES)}).",
        "",
        table,
        "",
        *failed_section(failed, COORDINATES),
        "## TGDP against the baselines",
        "",
        "| version | n_t | method | baseline | KL gap (baseline - method) | beats (gap > SE) | verdict at 2 SE |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for c in _comparisons(summary):
        lines.append(
            f"| {'cond' if c['conditional'] else 'uncond'} | {c['n_t']} | {c['method']} | {c['baseline']} "
            f"| {c['gap']:+.4f} +- {c['se']:.4f} | {'yes' if c['beats'] else 'no'} | "
            f"{'wins' if c['beats_2se'] else 'loses' if c['worse_2se'] else 'tie'} |"
        )
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.json", dumps(summary))
    return path, table


def _comparisons(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    have = {(r["conditional"], r["n_t"], r["method"]) for r in summary}
    return [
        compare(summary, m, b, n, cond)
        for cond in (False, True)
        for n in sorted({r["n_t"] for r in summary})
        for m in LEARNED
        for b in ("target_only", "fine_tune")
        if (cond, n, m) in have and (cond, n, b) in have
    ]


def _run_tgdp(
    settings: TGDPSettings, out: Path, *, log: Log | None, workers: int, executor: Executor | None
) -> dict[str, Any]:
    """The TGDP experiment as the engine runs a cell study (progress lines when there is a log)."""
    return run_tgdp_experiment(settings, out, progress=log is not None, workers=workers, executor=executor)


#: the ``[experiment] kind`` this study answers to, and the ``run`` options it takes besides the common ones
KIND = "tgdp"
OPTIONS: frozenset[str] = frozenset()
_CELLS = CellStudy(
    KIND,
    VOCABULARY,
    parse,
    TGDPSettings.study,
    _run_tgdp,
    build_study_report,
    lambda _settings, out: load_records(out),
    COORDINATES,
)
#: :class:`theory.engine.study.Study`'s calls: ``gentransfer show``, ``run`` and ``report``, ``read_results``
resolved, run, report, records = _CELLS.resolved, _CELLS.run, _CELLS.report, _CELLS.records
