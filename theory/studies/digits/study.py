"""The digits study (few-shot transfer on restyled 8x8 digits) as a study of ``gentransfer run``.

A config with ``[experiment] kind = "digits"`` and a ``[digits]`` table of
:class:`~theory.studies.digits.experiment.DigitsExperiment` fields (``configs/digits.toml``) runs through the study
engine into ``--out DIR``: ``DIR/config.json``, ``DIR/study.json`` (the folder holds this study only),
``DIR/cells/`` (one record per cell; a rerun runs the missing and failed ones), ``records.json``, ``table.md``, the PNG
grids and ``DIR/report.md``, which ``gentransfer report DIR`` rebuilds from the cells.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import DataError
from theory.engine.config import read_study
from theory.engine.records import failed_section, split_failed
from theory.engine.run_folder import check_no_links, read_json
from theory.engine.study_runs import CellStudy
from theory.engine.vocabulary import PER_CLASS_PATHS, Vocabulary
from theory.studies.digits.experiment import (
    COORDINATES,
    DigitsExperiment,
    load_digits_records,
    run_digits_experiment,
    study_settings,
)
from theory.studies.digits.report import COPYING_LIMIT, COPYING_Z, copying_lines, format_table, unrealised_lines

#: where the shared config words (theory.engine.vocabulary) live in :class:`DigitsExperiment`
VOCABULARY = Vocabulary("digits", (*PER_CLASS_PATHS, ("heads.*.sample_options", "sample_options.*")))


def parse(raw: dict[str, Any]) -> tuple[dict[str, Any], DigitsExperiment]:
    """(the [experiment] table, the experiment) of a digits config; ConfigError naming a bad key."""
    return read_study(raw, VOCABULARY, DigitsExperiment, "digits")


#: What makes two runs one study (the grid axes a rerun may extend left out).
study = study_settings


def _listed(intro: str, lines: list[str]) -> list[str]:
    """A Markdown paragraph ``intro`` over a bullet list of ``lines``; nothing when there are none."""
    return [intro, "", *(f"- {line}" for line in lines), ""] if lines else []


def build_study_report(out: Path) -> tuple[Path, str]:
    """Rebuild ``out/report.md`` and ``table.md`` from the cell records; returns (path, table)."""
    check_no_links(out, ("cells",))
    raw = read_json(out / "config.json")
    if raw is None or raw.get("experiment", {}).get("kind") != "digits":
        raise DataError(f"{out} holds no digits config.json: is it a folder written by 'gentransfer run'?")
    exp, experiment = parse(raw)
    written, references = load_digits_records(experiment, out)
    records, failed = split_failed(written)
    if not records and not failed:
        raise DataError(f"{out} holds no digits records yet (run 'gentransfer run' first)")
    table = format_table(records, references)
    unrealised = unrealised_lines(records, references)
    copies = copying_lines(records)
    for line in unrealised + copies:  # one line each, like the flagged cells of the transfer study
        print(f"gentransfer: warning: {line}", file=sys.stderr)
    flagged = [
        *_listed("Finished, but TGDP did not realise its predicted gain:", unrealised),
        *_listed("Finished, but the draws crowd the training images (their sample metrics may measure that):", copies),
    ]
    flagged = ["## Flagged cells", "", *flagged] if flagged else []
    grids = sorted(out.glob("digits_*_k*.png"))
    lines = (
        [
            f"# Digits study: {exp.get('name', 'digits')}",
            "",
            exp.get("description", ""),
            "",
            f"Target style '{experiment.style}', images per class {list(experiment.per_class)}, seeds "
            f"{list(experiment.seeds)}; held-out NLL in nats and bits/dim, conditional fidelity, MMD^2 and W1 of "
            "generated digits, against real digits scored the same way (the reference row: target-style digits, "
            "or for a sub-population style the source split's own digits). MMD^2 and W1 against the test images "
            "also reward a model that replays its few training images, so the last column is the share of draws "
            "nearer one of the cell's training images than the median test image is: fresh draws of the target "
            "give 0.5, replays 1, draws concentrated toward the training images (a low sampling temperature) "
            f"more than 0.5; cells above {COPYING_LIMIT:g} (or 0.5 + {COPYING_Z:g} null sd where that is higher, "
            "for few draws) are flagged.",
            "",
            table,
            "",
            *flagged,
            *failed_section(failed, COORDINATES),
            "## Generated digits",
            "",
        ]
        + [f"![{p.stem}]({p.name})" for p in grids]
        + [""]
    )
    path = out / "report.md"
    atomic_write_text(out / "table.md", table + "\n")
    atomic_write_text(path, "\n".join(lines))
    return path, table


#: the ``[experiment] kind`` this study answers to, and the ``run`` options it takes besides the common ones
KIND = "digits"
OPTIONS: frozenset[str] = frozenset()
_CELLS = CellStudy(
    KIND,
    VOCABULARY,
    parse,
    study,
    run_digits_experiment,
    build_study_report,
    lambda experiment, out: load_digits_records(experiment, out)[0],
    COORDINATES,
)
#: :class:`theory.engine.study.Study`'s calls: ``gentransfer show``, ``run`` and ``report``, ``read_results``
resolved, run, report, records = _CELLS.resolved, _CELLS.run, _CELLS.report, _CELLS.records
