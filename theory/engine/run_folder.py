"""A run folder's bookkeeping: the study it belongs to, its cell records, the predictions stored with it.

A folder belongs to ONE study (:meth:`theory.engine.config.ExperimentConfig.fingerprint`): ``DIR/study.json`` names it,
and :func:`claim_folder` refuses another study before anything is computed (whether or not the folder holds
results yet), so cached source and floor models are never overwritten by a different study. A run holds the
folder's OS-level lock (:mod:`theory.engine.folder_lock`) from before its claim until its report is written.

The predicted exponents are computed once, when the user runs a config (whose ``theory.rate`` they chose), and
stored in ``DIR/predictions.json``: ``gentransfer report DIR`` reads them and never imports code a folder names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared_embed.checkpoint import atomic_write_text, config_diff
from shared_embed.errors import ConfigError, DataError
from theory.engine.config import ExperimentConfig, fingerprint, task_label
from theory.engine.folder_lock import claim_lock
from theory.engine.records import dumps, json_number, read_cell, restore_nonfinite, strict_json
from theory.truth.rates import Rates, predicted_rates, rate_for_task

STUDY_FILE = "study.json"
PREDICTIONS_FILE = "predictions.json"
#: Fields every cell record has; a file without them is not a record.
RECORD_KEYS = ("head", "n_s", "n_t", "seed", "variant", "status")
Record = dict[str, Any]
Log = Callable[[str], None]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's dict, or None when it is missing, unreadable or a symbolic link (which could lead out of
    the folder: never read through; a cache that is then rebuilt)."""
    if Path(path).is_symlink():
        return None
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically as strict JSON: a non-finite float becomes null
    (:func:`theory.engine.records.dumps`); every JSON file of a run folder is written here or by
    :func:`theory.engine.records.write_cell`."""
    atomic_write_text(path, dumps(data))


#: Record fields -> the JSON types their values may have (``bool`` is never a number here).
TEXT_FIELDS = ("head", "variant", "status", "task", "settings_hash", "head_kind", "error", "flag")
INT_FIELDS = ("n_t", "seed", "n_eval", "floor_n", "bound_n", "steps")
NUMBER_FIELDS = (
    "kl",
    "kl_se",
    "floor",
    "floor_se",
    "floor_paired",
    "floor_paired_se",
    "head_term",
    "head_term_se",
    "bound",
    "bound_se",
    "kl_sde",
    "kl_sde_se",
    "best_val",
    "initial_val",
    "fit_seconds",
    "eval_seconds",
    "source_seconds",
    "floor_seconds",
    "bound_seconds",
)


def _type_problems(data: Record) -> list[str]:
    """What in ``data`` has the wrong JSON type for a cell record (e.g. ``kl = '0.5'`` where a number belongs)."""

    bad = [f"{k} = {data[k]!r} (expected text)" for k in TEXT_FIELDS if k in data and not isinstance(data[k], str)]
    bad += [
        f"{k} = {data[k]!r} (expected a whole number)"
        for k in INT_FIELDS
        if (k in ("n_t", "seed") or data.get(k) is not None) and not json_number(data.get(k), whole=True)
    ]
    if data.get("n_s") is not None and not json_number(data["n_s"], whole=True):
        bad.append(f"n_s = {data['n_s']!r} (expected a whole number or null)")
    bad += [
        f"{k} = {data[k]!r} (expected a number)"
        for k in NUMBER_FIELDS
        if data.get(k) is not None and not json_number(data[k])
    ]
    if data.get("status") == "ok" and not json_number(data.get("kl")):
        bad.append("kl missing from a finished record")
    if data.get("status") not in (None, "ok", "failed"):
        bad.append(f"status = {data['status']!r} (expected 'ok' or 'failed')")
    return bad


def read_record(path: Path) -> Record:
    """The cell record at ``path``; DataError when the file is truncated, binary, not a record, or holds a field
    of the wrong type (``"kl": "0.5"`` is refused, never read as 0.5)."""
    data = read_cell(path)
    missing = [k for k in RECORD_KEYS if k not in data]
    if missing:
        raise DataError(f"{path} is not a readable cell record: missing {missing}")
    bad = _type_problems(data)
    if bad:
        raise DataError(f"{path} is not a readable cell record: {'; '.join(bad[:3])}")
    return data


def _links_under(out: Path, sub: str) -> list[Path]:
    """Every symbolic link at or under ``out/sub`` (never followed)."""
    top = out / sub
    if top.is_symlink():
        return [top]
    links = []
    for root, dirs, names in os.walk(top, followlinks=False):
        links += [Path(root) / n for n in [*dirs, *names] if (Path(root) / n).is_symlink()]
    return links


#: The subfolders a run writes into: none may hold a symbolic link (it could lead a read or a write out).
RUN_SUBFOLDERS = ("cells", "groups", "models", "samples")


def check_no_links(out_dir: str | os.PathLike[str], subs: Sequence[str] = RUN_SUBFOLDERS) -> None:
    """DataError naming a symbolic link under the run folder's ``subs``: records and models are read from, and
    written to, regular files inside the folder only."""
    out = Path(out_dir)
    links = [p for sub in subs for p in _links_under(out, sub)]
    if links:
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise DataError(
            f"{links[0]} is a symbolic link{more}; a run folder reads and writes regular files inside "
            "itself only: replace the link by the file or folder itself"
        )


def record_paths(out_dir: Path) -> list[Path]:
    """Every cell record file under ``out_dir/cells`` (with or without a grid-task level); DataError when a
    symbolic link is there (:func:`check_no_links`)."""
    out = Path(out_dir)
    check_no_links(out, ("cells",))
    return sorted([*out.glob("cells/*/*/*.json"), *out.glob("cells/*/*/*/*.json")])


def inside(out_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` when, with every link of its folder resolved, it lies inside ``out_dir`` and is no link itself;
    else DataError (a write that would leave the run folder)."""
    root = Path(os.path.realpath(out_dir))
    target = Path(path)
    where = Path(os.path.realpath(target.parent)) / target.name
    if root not in where.parents or target.is_symlink():
        raise DataError(
            f"{target} leads outside the run folder {os.fspath(out_dir)!r} (through a symbolic link); "
            "a run writes inside its folder only: replace the link by the folder itself"
        )
    return target


def untimed(record: Record) -> Record:
    """``record`` less what differs between two runs of the same cell: its wall-clock times (``*seconds``,
    ``finished_at``). Two runs of a cell, on any executor, agree on everything else."""
    return {k: v for k, v in record.items() if not k.endswith("seconds") and k != "finished_at"}


def untimed_cells(out_dir: str | os.PathLike[str]) -> dict[str, Record]:
    """Every cell record under ``out_dir/cells`` by its path in the folder, less its times (:func:`untimed`)."""
    out = Path(out_dir)
    return {str(p.relative_to(out)): untimed(json.loads(p.read_text())) for p in sorted(out.glob("cells/**/*.json"))}


def collect_records(
    out_dir: str | os.PathLike[str], config: ExperimentConfig | None = None, *, restore: bool = True
) -> list[Record]:
    """Every cell record under ``out_dir/cells``, sorted by (task, head, variant, n_s, n_t, seed).

    ``restore``: the non-finite floats a record lists in ``nonfinite`` put back in place of their nulls, for
    arithmetic (:func:`theory.engine.records.restore_nonfinite`); False: the records as written (strict JSON).

    A record that cannot be read (or, given the folder's ``config``, was computed with other settings than the
    config's) is an error naming it, never a silently smaller or mixed report.
    """
    records, bad = [], []
    for path in record_paths(Path(out_dir)):
        try:
            record = read_record(path)
            if config is not None:
                check_settings(config, record, path)
            records.append(restore_nonfinite(record) if restore else record)
        except DataError as err:
            bad.append(str(err))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{bad[0]}{more}; run 'gentransfer run' with the same config to recompute it (a record "
            "of other settings: delete it first)"
        )
    return sorted(
        records, key=lambda r: (r.get("task", ""), r["head"], r["variant"], r["n_s"] or 0, r["n_t"], r["seed"])
    )


def check_settings(config: ExperimentConfig, record: Record, path: Path) -> None:
    """DataError unless ``record`` (at ``path``) carries the settings digest ``config`` gives its head and task."""
    try:
        want = config.settings_hash(record["head"], config.grid.task_overrides(record.get("task", "")))
    except (ConfigError, KeyError) as err:
        raise DataError(
            f"{path} is not a record of this folder's study (head {record['head']!r}, task "
            f"{record.get('task', '')!r}: {err})"
        ) from err
    if record.get("settings_hash") != want:
        raise DataError(
            f"{path} was computed with other settings (settings_hash {record.get('settings_hash')!r}, "
            f"this folder's config gives {want!r})"
        )


# -- the study a folder belongs to -----------------------------------------------------------------
def _results(out: Path) -> list[Path]:
    """What a folder holds that is a result: cached models and every record that is not a readable failure."""
    found = sorted(out.glob("models/**/*.safetensors"))
    for path in record_paths(out):
        record = read_json(path)
        if record is None or record.get("status") != "failed":
            found.append(path)
    return found


def _legacy_foreign(config: ExperimentConfig, out: Path) -> list[str]:
    """In a folder written before study files: the records that are not this study's (by settings digest)."""
    foreign = []
    for path in record_paths(out):
        r = read_json(path)
        if r is None or r.get("status") == "failed":
            continue
        try:
            mine = r["head"] in config.heads and r.get("settings_hash") == config.settings_hash(
                r["head"], config.grid.task_overrides(r.get("task", ""))
            )
        except ConfigError:
            mine = False
        if not mine:
            foreign.append(str(path))
    return foreign


def claim_folder(config: ExperimentConfig, out_dir: Path, log: Log | None = None) -> None:
    """Make ``out_dir`` this study's folder, or refuse (ConfigError) when it belongs to another study.

    Called before any compute, by a run that holds the folder (:func:`theory.engine.folder_lock.hold_folder`).
    ``log`` is kept for callers; nothing is removed from a folder of another study.
    """
    out = Path(out_dir)
    if read_json(out / STUDY_FILE) is None:
        foreign = _legacy_foreign(config, out)
        if foreign:
            raise ConfigError(
                f"{out} holds records computed with other settings ({foreign[0]} and "
                f"{len(foreign) - 1} more); use a new --out folder"
            )
    claim(out, config.study(), bool(_results(out)))


def claim(out_dir: Path, study: dict[str, Any], has_results: bool) -> None:
    """Write ``study`` (and its fingerprint) to ``out_dir/study.json``, or refuse (ConfigError saying how they
    differ) when the folder already names another study, whether or not it holds results yet.

    The read and the write happen under ``DIR/.claim-lock``, so two runs claiming one empty folder at the same
    moment cannot both take it. ``has_results`` only shapes the message.
    """
    out = Path(out_dir)
    mine = {"fingerprint": fingerprint(study), "study": study}
    with claim_lock(out):
        held = _read_study(out)
        if held is not None and held.get("fingerprint") == mine["fingerprint"]:
            return
        if held is not None:
            diff = config_diff(held.get("study", {}), study, found_name="this config")
            what = "the results of another study" if has_results else "another study (no results yet)"
            raise ConfigError(
                f"{out} holds {what}, computed with other settings ({'; '.join(diff[:5]) or 'unknown'}); a folder "
                "holds one study: use a new --out folder, or delete this one to recompute"
            )
        write_json(out / STUDY_FILE, mine)


def _read_study(out: Path) -> dict[str, Any] | None:
    """``out/study.json``, None when missing; a file that is there but unreadable is refused, never replaced."""
    path = out / STUDY_FILE
    if not path.exists() and not path.is_symlink():
        return None
    held = read_json(path)
    if held is None or not isinstance(held.get("fingerprint"), str):
        raise DataError(
            f"{path} is not a study file (unreadable, or no 'fingerprint'); a folder holds one "
            "study: use a new --out folder, or delete this one"
        )
    return held


# -- predictions -------------------------------------------------------------------------------------
def study_predictions(config: ExperimentConfig, kinds: dict[str, str] | None = None) -> dict[str, dict[str, Rates]]:
    """Grid task label -> head name -> predicted exponents, from the config's rate function.

    This calls (and may import) ``config.theory.rate``: only for a config the user runs or names.
    """
    th = config.theory
    kinds = kinds or {name: h.kind for name, h in config.heads.items()}
    out = {}
    for overrides in config.grid.tasks:
        task = config.task.build(seed=0, overrides=overrides)
        rate = rate_for_task(th.rate, task)
        out[task_label(overrides)] = {
            name: predicted_rates(task.d_c, task.d_h, task.d_x, th.beta, kind, rate, th.log_power)
            for name, kind in kinds.items()
        }
    return out


def _predictions_digest(config: ExperimentConfig, body: dict[str, Any]) -> str:
    """SHA-256 of the stored predictions ``body`` together with the study's fingerprint: a hand edit of either
    (or predictions copied from another study) no longer matches."""
    blob = json.dumps(strict_json({"fingerprint": config.fingerprint(), **body})[0], sort_keys=True, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_predictions(
    config: ExperimentConfig, out_dir: Path, rates: dict[str, dict[str, Rates]] | None = None
) -> dict[str, dict[str, Rates]]:
    """Store the predictions (``rates``, computed here when not given) in ``out_dir/predictions.json``, signed
    by the study's fingerprint (:func:`stored_predictions` refuses them when the signature does not match)."""
    rates = study_predictions(config) if rates is None else rates
    body = {
        "theory": {"rate": config.theory.rate, "beta": config.theory.beta, "log_power": config.theory.log_power},
        "by_task": {label: {h: r.to_dict() for h, r in by_head.items()} for label, by_head in rates.items()},
    }
    write_json(Path(out_dir) / PREDICTIONS_FILE, {**body, "digest": _predictions_digest(config, body)})
    return rates


def stored_predictions(
    config: ExperimentConfig, out_dir: Path, kinds: dict[str, str] | None = None
) -> dict[str, dict[str, Rates]]:
    """The predicted exponents of the folder's config: recomputed from a registered (built-in) rate function,
    never read from the folder; for a user rate function, the ones the run stored, when their signature
    matches the config (a hand-edited or foreign ``predictions.json`` is a DataError).

    A folder whose config names a user rate function and holds no stored predictions is refused: reporting
    never imports code a folder names (the user may name it: ``gentransfer report DIR --rate MODULE:FUNCTION``).
    """
    from theory.truth.rates import AUTO, RATE_FUNCTIONS

    th = config.theory
    if th.rate in RATE_FUNCTIONS or th.rate == AUTO:
        return study_predictions(config, kinds)
    path = Path(out_dir) / PREDICTIONS_FILE
    stored = None if path.is_symlink() else read_json(path)
    if stored is None:
        raise ConfigError(
            f"{os.fspath(out_dir)!r} names the rate function {th.rate!r} and stores no predictions "
            f"for it; reporting never imports code named by a folder: pass --rate {th.rate} to "
            "import it yourself"
        )
    body = {k: stored.get(k) for k in ("theory", "by_task")}
    if stored.get("digest") != _predictions_digest(config, body):
        raise DataError(
            f"{path} does not match this folder's config (edited, or copied from another study); pass "
            f"--rate {th.rate} to recompute the predictions yourself"
        )
    try:
        return {label: {h: Rates(**r) for h, r in by_head.items()} for label, by_head in stored["by_task"].items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is malformed: {err}") from err


def _where(r: Record) -> str:
    task = f"[{r['task']}] " if r.get("task") else ""
    return f"{task}{r['head']} n_s={r['n_s']} n_t={r['n_t']} seed={r['seed']} {r['variant']}"


def failed_cells(records: Sequence[Record]) -> list[str]:
    """One line per failed cell: where and why."""
    return [f"{_where(r)}: {r.get('error')}" for r in records if r.get("status") == "failed"]


def flagged_cells(records: Sequence[Record]) -> list[str]:
    """One line per finished cell whose result is doubtful (its ``flag``): where and why."""
    return [f"{_where(r)}: {r['flag']}" for r in records if r.get("status") == "ok" and r.get("flag")]
