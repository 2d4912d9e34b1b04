"""The completion study as a study of ``gentransfer run``.

A config with ``[experiment] kind = "completion"`` and a ``[completion]`` table of
:class:`~theory.studies.completion.experiment.CompletionExperiment` fields (``configs/completion.toml``) runs
through the study engine into ``--out DIR``: ``config.json``, ``study.json`` (the folder holds this study only),
``cells/`` (one record per cell; a rerun runs the missing and failed ones), then ``table.md``, ``records.json``, one
completion grid per (head, k) of the first seed (``completion_HEAD_kK.png``) and ``report.md``, all of which
``gentransfer report DIR`` rebuilds from the cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import DataError
from theory.engine.config import read_study
from theory.engine.records import dumps, failed_section
from theory.engine.run_folder import check_no_links, read_json
from theory.engine.study_runs import CellStudy
from theory.engine.vocabulary import PER_CLASS_PATHS, Vocabulary
from theory.studies.completion.evaluation import test_rows
from theory.studies.completion.experiment import (
    COORDINATES,
    CompletionExperiment,
    load_records,
    run_completion_experiment,
    split_references,
    study_settings,
)
from theory.studies.completion.image_grid import save_completion_grid
from theory.studies.completion.report import MARGIN_SE, format_table
from theory.studies.completion.task import HALF, CompletionTask

#: where the shared config words (theory.engine.vocabulary) live in :class:`CompletionExperiment`
VOCABULARY = Vocabulary("completion", PER_CLASS_PATHS)


def parse(raw: dict[str, Any]) -> tuple[dict[str, Any], CompletionExperiment]:
    """(the [experiment] table, the experiment) of a completion config; ConfigError naming a bad key."""
    return read_study(raw, VOCABULARY, CompletionExperiment, "completion")


#: What makes two runs one study (the grid axes a rerun may extend left out).
study = study_settings


def draw_grids(experiment: CompletionExperiment, records: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per (head, k) of the first seed: real test images and each variant's completions (from the records)."""
    seed = experiment.seeds[0]
    mine = [r for r in records if r["seed"] == seed]
    if not mine:
        return []
    task = CompletionTask(experiment.style, experiment.test_per_class, experiment.pool_per_class, seed)
    paths = []
    for head in experiment.heads:
        for k in experiment.per_class:
            cells = {r["variant"]: r for r in mine if r["head"] == head and r["per_class"] in (k, 0)}
            if not cells:
                continue
            rows = test_rows(task, experiment.grid_per_class)
            draws = {}
            for variant in ("transfer", "no_transfer", "fine_tune", "direct", "source_only"):
                if variant in cells:
                    b = torch.tensor(cells[variant]["grid_bottoms"]).reshape(-1, len(rows), HALF)
                    draws[variant] = list(b)
            paths.append(
                save_completion_grid(
                    task.test.levels[rows],
                    draws,
                    out / f"completion_{head}_k{k}.png",
                    title=f"{head} head, seed {seed}, {k} target images per class: top half given, bottom half drawn",
                )
            )
    return paths


def build_study_report(out: Path) -> tuple[Path, str]:
    """Rebuild ``out/report.md``, ``table.md``, ``records.json`` and the grids from the cell records."""
    check_no_links(out, ("cells",))
    raw = read_json(out / "config.json")
    if raw is None or raw.get("experiment", {}).get("kind") != "completion":
        raise DataError(f"{out} holds no completion config.json: is it a folder written by 'gentransfer run'?")
    exp, experiment = parse(raw)
    parts = split_references(load_records(experiment, out))
    records = parts["records"]
    if not records and not parts["failed"]:
        raise DataError(f"{out} holds no completion records yet (run 'gentransfer run' first)")
    table = format_table(records, parts["references"])
    grids = draw_grids(experiment, records, out)
    lines = (
        [
            f"# Completion study: {exp.get('name', 'completion')}",
            "",
            exp.get("description", ""),
            "",
            "c = the observed top half of an 8x8 digit (32 pixels), x = its bottom half (32 pixels, dequantised and "
            "logit-transformed). "
            f"Source: original-style digits; target: '{experiment.style}' digits, {list(experiment.per_class)} "
            f"images per class; h(c) (d_h = {experiment.embed_dim}) learned on the source and frozen. Seeds "
            f"{list(experiment.seeds)}. Test NLL in nats per image in the dequantised pixel space [0, 17)^32 "
            f"(uniform: 90.66 nats), on held-out target images; completion fidelity: a classifier trained on real "
            f"target-style digits names the digit of (true top + drawn bottom). Transfer counts as better only when "
            f"its NLL is lower by more than {MARGIN_SE:g} combined SEs over >= 3 seeds.",
            "",
            table,
            "",
            *failed_section(parts["failed"], COORDINATES),
            "## Completions (first seed)",
            "",
        ]
        + [f"![{p.stem}]({p.name})" for p in grids]
        + [""]
    )
    atomic_write_text(out / "table.md", table + "\n")
    atomic_write_text(out / "records.json", dumps({"experiment": experiment.to_dict(), **parts}))
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path, table


#: the ``[experiment] kind`` this study answers to, and the ``run`` options it takes besides the common ones
KIND = "completion"
OPTIONS: frozenset[str] = frozenset()
_CELLS = CellStudy(
    KIND, VOCABULARY, parse, study, run_completion_experiment, build_study_report, load_records, COORDINATES
)
#: :class:`theory.engine.study.Study`'s calls: ``gentransfer show``, ``run`` and ``report``, ``read_results``
resolved, run, report, records = _CELLS.resolved, _CELLS.run, _CELLS.report, _CELLS.records
