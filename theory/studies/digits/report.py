"""Summaries and Markdown tables of the digits experiment's records (see :mod:`theory.studies.digits.experiment`).

Per (head, k, variant), means over seeds of: test NLL (nats per image) and bits/dim, fidelity, MMD^2 and W1.
Standard errors: across seeds when there are several; with one seed, the NLL's SE over test images and the
fidelity's binomial SE sqrt(p (1 - p) / n). Records drawn with sampling options (e.g. a flow's temperature) also
carry the metrics of default sampling; their rows get a second table that sets the two side by side. The paired
comparison transfer - no_transfer uses per-image NLL differences on the same test images (SE over images, pooled over seeds).

Held-out NLLs of few-shot models are heavy-tailed: a test image with a pixel level that the few training
images never show at that position can get an astronomically low density (a diffusion model's
probability-flow likelihood, whose density is sharp at t_eps, most of all). So beside the mean the tables give
the median NLL, the number of test images with NLL > ``OUTLIER_NATS``, and for the paired comparison the
median difference and the fraction of test images on which transfer has the lower NLL.

MMD^2 and W1 against the test images cannot tell fresh draws of the target from replays of the few target images
a model was fitted to, so the table also gives the copying check (``theory.truth.metrics.copying``): the share of
draws nearer one of the cell's training images than the median test image is (1/2 for fresh draws), and
:func:`copying_lines` names every cell above :func:`copying_limit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from shared_embed.errors import DataError
from shared_embed.validation import check_choice
from theory.engine.tables import plus_minus
from theory.verdicts.stats import mean_se, paired_seed_difference

ORDER = ("source_only", "transfer", "no_transfer", "fine_tune", "tgdp")
#: the reference row's name when its records do not say what the real images are
REFERENCE_LABEL = "real target-style digits"
#: a test image whose NLL exceeds this many nats (about 22.5 bits/dim) counts as an outlier in the tables
OUTLIER_NATS = 1000.0
#: a cell with more of its draws nearer a training image than the median test image is flagged as crowding its
#: training images (or above 1/2 + COPYING_Z null sds, where that is higher: a cell of few draws); fresh draws of
#: the target give 1/2, with a null sd of 0.065 at 100 draws and 140 test images (theory.truth.metrics.copying)
COPYING_LIMIT = 0.75
COPYING_Z = 3.0


def _rank(variant: str) -> int:
    """A variant's place in the tables: ``ORDER``, then any other name."""
    return ORDER.index(variant) if variant in ORDER else len(ORDER)


def _by_cell(records: Sequence[dict[str, Any]]) -> dict[tuple[Any, str, int, str], dict[str, Any]]:
    """The records by (seed, head, per_class, variant)."""
    return {(r["seed"], r["head"], int(r["per_class"]), r["variant"]): r for r in records}


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (head, per_class, variant) with means over seeds and standard errors (module docstring)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["head"], int(r["per_class"]), r["variant"]), []).append(r)
    rows = []
    for (head, k, variant), rs in groups.items():
        row: dict[str, Any] = {
            "head": head,
            "per_class": k,
            "variant": variant,
            "seeds": len(rs),
            "nll_rows": rs[0]["n"],
        }
        for key in ("nll", "bpd", "fidelity", "mmd2", "w1"):
            row[key], row[f"{key}_se"] = mean_se([r[key] for r in rs])
        row["nll_median"] = sum(_median(r["nll_per_image"]) for r in rs) / len(rs)
        row["outliers"] = sum(sum(v > OUTLIER_NATS for v in r["nll_per_image"]) for r in rs)
        row["images"] = sum(len(r["nll_per_image"]) for r in rs)
        if all("copying" in r for r in rs):
            row["copying"], row["copying_se"] = mean_se([r["copying"]["closer_fraction"] for r in rs])
        if all("default_sampling" in r for r in rs):
            row["sample_options"] = rs[0]["sample_options"]
            for key in ("fidelity", "mmd2", "w1"):
                row[f"default_{key}"], row[f"default_{key}_se"] = mean_se([r["default_sampling"][key] for r in rs])
        if len(rs) == 1:
            row["nll_se"], row["bpd_se"] = rs[0]["nll_se"], rs[0]["bpd_se"]
            for key in ("fidelity", "default_fidelity"):
                if key in row:
                    p = row[key]
                    row[f"{key}_se"] = math.sqrt(p * (1 - p) / rs[0]["n_generated"])
        rows.append(row)
    rows.sort(key=lambda r: (r["head"], r["per_class"], _rank(r["variant"])))
    return rows


def paired_differences(
    records: Sequence[dict[str, Any]], a: str = "transfer", b: str = "no_transfer"
) -> list[dict[str, Any]]:
    """Per (head, per_class): mean and median per-image NLL difference a - b (nats), the mean's SE, the fraction
    of test images where a has the lower NLL, and the mean fidelity difference (pooled over seeds)."""
    index = _by_cell(records)
    out: dict[tuple[str, int], dict[str, list[float]]] = {}
    for (seed, head, k, variant), ra in index.items():
        rb = index.get((seed, head, k, b))
        if variant != a or rb is None:
            continue
        diffs = [x - y for x, y in zip(ra["nll_per_image"], rb["nll_per_image"])]
        acc = out.setdefault((head, k), {"diffs": [], "fid": []})
        acc["diffs"] += diffs
        acc["fid"].append(ra["fidelity"] - rb["fidelity"])
    rows = []
    for (head, k), acc in sorted(out.items()):
        mean, se = mean_se(acc["diffs"])
        wins = sum(d < 0 for d in acc["diffs"]) / len(acc["diffs"])
        rows.append(
            {
                "head": head,
                "per_class": k,
                "a": a,
                "b": b,
                "nll_diff": mean,
                "nll_diff_se": se,
                "nll_diff_median": _median(acc["diffs"]),
                "a_better_fraction": wins,
                "fidelity_diff": sum(acc["fid"]) / len(acc["fid"]),
                "pairs": len(acc["diffs"]),
            }
        )
    return rows


#: the record metrics :func:`paired_by_seed` compares (every one lower-is-better)
PAIRED_METRICS = ("nll", "mmd2", "w1")


def paired_by_seed(records: Sequence[dict[str, Any]], a: str, b: str, metric: str = "nll") -> list[dict[str, Any]]:
    """Per (head, per_class): the per-seed differences a - b of one lower-is-better metric, their mean over seeds,
    the paired SE (the SE of the per-seed differences) and the combined SE sqrt(SE_a^2 + SE_b^2) of the two
    variants' per-seed values (both None with one seed), and whether a is lower by more than 2 combined SE.

    ``metric``: ``"nll"`` (each seed's mean per-image difference on the same test images, nats) or a sample
    metric of the records, ``"mmd2"`` or ``"w1"`` (drawn from the same seeds' noise). b = ``source_only`` pairs
    with the one source-only record of the seed.
    """
    check_choice("paired metric", metric, PAIRED_METRICS)  # lower-is-better only: a win means lower
    index = _by_cell(records)
    per: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for (seed, head, k, variant), ra in sorted(index.items()):
        rb = index.get((seed, head, 0 if b == "source_only" else k, b))  # source_only: one record for every k
        if variant != a or rb is None:
            continue
        a_values, b_values = per.setdefault((head, k), ([], []))
        a_values.append(_seed_value(ra, rb, metric))
        b_values.append(_seed_value(rb, ra, metric))
    rows = []
    for (head, k), (a_values, b_values) in sorted(per.items()):
        mean, se, combined = paired_seed_difference(a_values, b_values)
        one_seed = len(a_values) == 1  # no SE across seeds
        rows.append(
            {
                "head": head,
                "per_class": k,
                "a": a,
                "b": b,
                "metric": metric,
                "seeds": len(a_values),
                "diff": mean,
                "paired_se": None if one_seed else se,
                "combined_se": None if one_seed else combined,
                "per_seed": [x - y for x, y in zip(a_values, b_values, strict=True)],
                "a_wins": not one_seed and mean < -2 * combined,
            }
        )
    return rows


def _seed_value(record: dict[str, Any], other: dict[str, Any], metric: str) -> float:
    """One seed's value of ``metric`` in ``record``; NLL as the mean over its test images, which must be as many
    as ``other``'s (the same test split of the seed)."""
    if metric != "nll":
        return float(record[metric])
    nlls, paired = record["nll_per_image"], other["nll_per_image"]
    if len(nlls) != len(paired):
        raise DataError(
            f"seed {record['seed']}: {record['variant']} and {other['variant']} scored {len(nlls)} and "
            f"{len(paired)} test images; a paired NLL difference needs the same images"
        )
    return sum(nlls) / len(nlls)


def format_tgdp_tables(records: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: what TGDP's guard did per cell (status, refusal reason, probe, clipped rows, switch) and the
    paired per-seed differences of TGDP against every other variant in NLL, MMD² and W1 (:func:`paired_by_seed`:
    a win is lower by more than 2 combined SE); [] without TGDP records."""
    guarded = [r for r in records if "tgdp" in r]
    if not guarded:
        return []
    lines = [
        "",
        "| k / class | seed | TGDP status | probe: rows with ‖∇log h‖ > limit × ‖s_src‖ (max ratio) | "
        "rows clipped in the solves | switch | refusal reason |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in sorted(guarded, key=lambda r: (r["per_class"], r["seed"])):
        g = r["tgdp"]
        probe = g.get("probe")
        probe_txt = (
            "-" if probe is None else f"{probe['fraction']:.1%} ({probe['max_ratio']:.3g}; limit {probe['limit']:g})"
        )
        guard = g.get("guard")
        clip_txt = "-" if guard is None else f"{guard['exploded']}/{guard['rows']} ({g['limit']['action']})"
        lines.append(
            f"| {r['per_class']} | {r['seed']} | {g['status']} | {probe_txt} | {clip_txt} | {g['switch']:g} | "
            f"{g.get('refused') or '-'} |"
        )
    variants = sorted({r["variant"] for r in records} - {"tgdp", "reference"}, key=_rank)
    for metric, title, digits in (
        ("nll", "paired NLL difference (nats)", 2),
        ("mmd2", "paired MMD² difference (samples vs the test images)", 4),
        ("w1", "paired W1 difference (samples vs the test images)", 3),
    ):
        rows = [d for v in variants for d in paired_by_seed(records, "tgdp", v, metric)]
        if not rows:
            continue
        lines += [
            "",
            f"| head | k / class | {title} | mean over seeds ± paired SE | combined SE | per seed "
            "| TGDP lower by > 2 combined SE |",
            "|---|---:|---|---:|---:|---|---|",
        ]
        for d in rows:
            per = ", ".join(f"{m:+.{digits}f}" for m in d["per_seed"])
            se = math.nan if d["paired_se"] is None else d["paired_se"]
            combined = "-" if d["combined_se"] is None else f"{d['combined_se']:.{digits}f}"
            lines.append(
                f"| {d['head']} | {d['per_class']} | tgdp − {d['b']} | {plus_minus(d['diff'], se, digits)} "
                f"| {combined} | {per} | {'yes' if d['a_wins'] else 'no'} |"
            )
    return lines


def gains_over_source(
    records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Per TGDP record (head, k, seed): the gain over the source model on the scored test images that TGDP's
    ratio predicts (``tgdp.predicted_gain``: :func:`diffusion.tgdp.predict_gain`) and the one it achieved (the
    source-only record's mean NLL minus TGDP's, same images), whether it realised the prediction
    (:func:`diffusion.tgdp.realised`), the achieved gain of every other variant of the cell, and the selection
    rule's gain (``selection_gain`` of the seed's reference,
    :meth:`~theory.studies.digits.task.DigitsTask.selection_log_ratio`: in expectation the most any reweighting of
    the source gains; None when absent or scored on other rows)."""
    from diffusion.tgdp import realised

    index = _by_cell(records)
    rows = []
    for (seed, head, k, variant), rec in sorted(index.items()):
        source = index.get((seed, head, 0, "source_only"))
        if variant != "tgdp" or source is None:
            continue
        pred = rec.get("tgdp", {}).get("predicted_gain")

        def gain(other: dict[str, Any], source: dict[str, Any] = source) -> float:
            return _seed_value(source, other, "nll") - _seed_value(other, source, "nll")

        achieved = gain(rec)
        others = {v: gain(r) for (s, h, kk, v), r in index.items() if (s, h, kk) == (seed, head, k) and v != "tgdp"}
        selection = (references or {}).get(seed, {}).get("selection_gain")
        if selection is not None and selection["rows"] != len(rec["nll_per_image"]):
            selection = None
        rows.append(
            {
                "head": head,
                "per_class": k,
                "seed": seed,
                "predicted": None if pred is None else pred["mean"],
                "predicted_se": None if pred is None else pred["se"],
                "achieved": achieved,
                "realised": None if pred is None else realised(achieved, pred["mean"], pred["se"]),
                "others": others,
                "selection": None if selection is None else selection["mean"],
            }
        )
    return rows


def unrealised_lines(
    records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None
) -> list[str]:
    """One line per TGDP cell whose achieved gain missed its ratio's prediction (:func:`gains_over_source`): the
    guidance does not do what its ratio says, whatever its premise check and probe said."""
    return [
        f"{r['head']} k={r['per_class']} seed={r['seed']} tgdp: achieved {r['achieved']:+.2f} nats over the source "
        f"model, its ratio predicted {r['predicted']:+.2f} ± {r['predicted_se']:.2f}: the guidance does not realise it"
        for r in gains_over_source(records, references)
        if r["realised"] is False
    ]


def copying_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per cell whose draws crowd its training images: more than :func:`copying_limit` of them nearer one
    of the cell's training images than the median test image is (module docstring). The line gives the draws' median
    distance over the test images' too: near 0 for replays of the training images, near 1 for draws merely
    concentrated toward them (a low sampling temperature). Either way MMD² and W1 against the test images can
    take the crowding for the target."""
    return [
        f"{r['head']} k={r['per_class']} seed={r['seed']} {r['variant']}: "
        f"{r['copying']['closer_fraction']:.0%} of its draws are nearer one of its {r['n_t']} training images "
        f"than the median test image is (fresh draws of the target: 50%; their median distance to one is "
        f"{r['copying']['distance_ratio']:.2f} of the test images', a replay's 0): the draws crowd the training "
        "images, which its MMD² and W1 can take for the target"
        for r in sorted(records, key=lambda r: (r["head"], r["per_class"], _rank(r["variant"]), r["seed"]))
        if "copying" in r and r["copying"]["closer_fraction"] > copying_limit(r["copying"])
    ]


def copying_limit(check: Mapping[str, Any]) -> float:
    """The share of draws above which a cell's copying check is flagged: ``COPYING_LIMIT``, or 1/2 + ``COPYING_Z``
    null sds where that is higher (few draws or test images make a fresh model's share noisy; a record without
    ``null_sd``, written before it was recorded, gets ``COPYING_LIMIT``)."""
    null_sd = check.get("null_sd")
    return COPYING_LIMIT if null_sd is None else max(COPYING_LIMIT, 0.5 + COPYING_Z * null_sd)


def _row(cells: Sequence[str]) -> str:
    """One Markdown table row of the given cells."""
    return "| " + " | ".join(cells) + " |"


def format_gain_table(
    records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None
) -> list[str]:
    """Markdown lines of :func:`gains_over_source`, one row per seed and a mean row per (head, k); [] without
    TGDP records."""
    from diffusion.tgdp import REALISED_REL, REALISED_Z

    rows = gains_over_source(records, references)
    if not rows:
        return []
    variants = sorted({v for r in rows for v in r["others"]}, key=_rank)
    lines = [
        "",
        "Gain over the source model on the scored test images (nats per image, source_only NLL minus the variant's, "
        f"same images). TGDP's is predicted by its ratio alone (reweighting the source rows); realised: within "
        f"{REALISED_Z:g} SE + {REALISED_REL:.0%} of the prediction. Selection rule: the target's exact ratio to the "
        "source, from the rule that drew it, reweighting the source rows (in expectation the most any reweighting "
        "gains: E_q[log w] − log E_p[w] <= KL(q ‖ p), equal at the true ratio).",
        "",
        _row(
            ["head", "k / class", "seed", "tgdp predicted ± SE", "tgdp achieved", "realised"]
            + [f"{v} achieved" for v in variants]
            + ["selection rule"]
        ),
        "|---|---:|---:|---:|---:|---|" + "---:|" * (len(variants) + 1),
    ]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def mean(values: list[float | None]) -> str:
        kept = [v for v in values if v is not None]
        if len(kept) < len(values) or not kept:
            return "-"
        m, se = mean_se(kept)
        return plus_minus(m, se, 2)

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["head"], r["per_class"]), []).append(r)
    for (head, k), rs in sorted(groups.items()):
        for r in rs:
            pred = "-" if r["predicted"] is None else plus_minus(r["predicted"], r["predicted_se"], 2)
            ok = "-" if r["realised"] is None else ("yes" if r["realised"] else "**NO**")
            others = [cell(r["others"].get(v)) for v in variants]
            lines.append(
                _row([head, str(k), str(r["seed"]), pred, f"{r['achieved']:.2f}", ok, *others, cell(r["selection"])])
            )
        judged = [r["realised"] for r in rs if r["realised"] is not None]  # cells without a prediction: not counted
        realised_count = f"{sum(judged)}/{len(judged)}" if judged else "-"
        others = [mean([r["others"].get(v) for r in rs]) for v in variants]
        lines.append(
            _row(
                [
                    head,
                    str(k),
                    "mean ± SE",
                    mean([r["predicted"] for r in rs]),
                    mean([r["achieved"] for r in rs]),
                    realised_count,
                    *others,
                    mean([r["selection"] for r in rs]),
                ]
            )
        )
    return lines


def reweighting_room(
    records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Per (head, k, baseline): whether the target leaves room for ANY reweighting of the source to beat the
    baseline by the verdict's margin. TGDP's NLL is lower than the baseline's by more than 2 combined SE exactly when
    its mean gain over the source model exceeds ``needed`` = the baseline's mean gain + 2 combined SE (same seeds,
    same test images); the selection rule's mean gain (``exact``) is, in expectation, the most any reweighting of
    the source gains (:func:`gains_over_source`). ``room``: exact > needed; False says that a TGDP win on this
    target would be chance, not a better ratio. Only baselines other than source_only, with >= 2 seeds and the
    selection rule on every seed."""
    gains = gains_over_source(records, references)
    rows = []
    baselines = sorted({v for r in gains for v in r["others"]} - {"source_only"}, key=_rank)
    for b in baselines:
        for d in paired_by_seed(records, "tgdp", b, "nll"):
            rs = [r for r in gains if (r["head"], r["per_class"]) == (d["head"], d["per_class"])]
            selection = [r["selection"] for r in rs]
            if d["combined_se"] is None or not rs or None in selection or any(b not in r["others"] for r in rs):
                continue
            gain = sum(r["others"][b] for r in rs) / len(rs)
            exact = sum(selection) / len(selection)
            needed = gain + 2 * d["combined_se"]
            rows.append(
                {
                    "head": d["head"],
                    "per_class": d["per_class"],
                    "baseline": b,
                    "baseline_gain": gain,
                    "combined_se": d["combined_se"],
                    "needed": needed,
                    "exact": exact,
                    "room": exact > needed,
                }
            )
    return rows


def format_room_table(
    records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None
) -> list[str]:
    """Markdown lines of :func:`reweighting_room`; [] when it has no row."""
    rows = reweighting_room(records, references)
    if not rows:
        return []
    lines = [
        "",
        "Room for a reweighting to win: TGDP beats a baseline by more than 2 combined SE in NLL exactly when its gain "
        "over the source model exceeds the baseline's gain + 2 combined SE; the selection rule's gain is, in "
        "expectation, the most any reweighting of the source gains. Where it is not above the gain needed, no ratio, "
        "however good, wins on this target except by chance.",
        "",
        "| head | k / class | baseline | its gain | 2 × combined SE | TGDP gain needed | selection rule's gain "
        "| room (rule − needed) |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['head']} | {r['per_class']} | {r['baseline']} | {r['baseline_gain']:.2f} | "
            f"{2 * r['combined_se']:.2f} | {r['needed']:.2f} | {r['exact']:.2f} | "
            f"{'yes' if r['room'] else 'no'} ({r['exact'] - r['needed']:+.3f}) |"
        )
    return lines


def format_table(records: Sequence[dict[str, Any]], references: Mapping[Any, dict[str, Any]] | None = None) -> str:
    """Markdown: the main table with the real-image reference, the density-ratio diagnostic (TGDP's premise,
    ``theory.studies.digits.domain_ratio``) and the paired transfer - no_transfer differences."""
    lines = [
        "| head | k / class | n_t | variant | test NLL (nats) | bits/dim | median NLL | NLL > 1e3 | fidelity "
        "| MMD² | W1 | draws nearer a training image (fresh: 0.5) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summarize(records):
        k = "-" if r["variant"] == "source_only" else str(r["per_class"])
        n_t = "0" if r["variant"] == "source_only" else str(10 * r["per_class"])
        lines.append(
            f"| {r['head']} | {k} | {n_t} | {r['variant']} | {plus_minus(r['nll'], r['nll_se'], 2)} | "
            f"{plus_minus(r['bpd'], r['bpd_se'], 3)} | {plus_minus(r['nll_median'], math.nan, 2)} | "
            f"{r['outliers']}/{r['images']} | "
            f"{plus_minus(r['fidelity'], r['fidelity_se'], 3)} | "
            f"{r['mmd2']:.4f} | {r['w1']:.3f} | "
            f"{plus_minus(r['copying'], r['copying_se'], 2) if 'copying' in r else '-'} |"
        )
    if references:
        refs = list(references.values())
        mean = lambda key: sum(r[key] for r in refs) / len(refs)  # noqa: E731
        label = refs[0].get("label", REFERENCE_LABEL)
        lines.append(
            f"| {label} | - | - | reference | - | - | - | - | "
            f"{mean('classifier_test_accuracy'):.3f} | {mean('mmd2'):.4f} | {mean('w1'):.3f} | - |"
        )
    optioned = [r for r in summarize(records) if "sample_options" in r]
    if optioned:
        lines += [
            "",
            "| head | k / class | variant | sampling options | fidelity | fidelity, default sampling | MMD² | "
            "MMD², default sampling |",
            "|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in optioned:
            k = "-" if r["variant"] == "source_only" else str(r["per_class"])
            options = ", ".join(f"{name} = {value}" for name, value in sorted(r["sample_options"].items()))
            lines.append(
                f"| {r['head']} | {k} | {r['variant']} | {options} | {plus_minus(r['fidelity'], r['fidelity_se'], 3)} | "
                f"{plus_minus(r['default_fidelity'], r['default_fidelity_se'], 3)} | {r['mmd2']:.4f} | "
                f"{r['default_mmd2']:.4f} |"
            )
    ratios = [r["domain_ratio"] for r in (references or {}).values() if "domain_ratio" in r]
    if ratios:
        lines += [
            "",
            "| k / class | domain classifier AUC (source vs target) | E_p[w] on the source | ESS / n_s |",
            "|---:|---:|---:|---:|",
        ]
        for k in sorted(ratios[0], key=int):

            def mean(key: str, k: str = k) -> float:
                return sum(r[k][key] for r in ratios) / len(ratios)

            lines.append(f"| {k} | {mean('auc'):.3f} | {mean('mean_weight'):.3f} | {mean('ess_fraction'):.3f} |")
    checked = [r for r in records if "premise" in r]
    if checked:
        lines += [
            "",
            "| k / class | seed | TGDP premise: classifier AUC | ESS / n_s | E_p[w] | verdict (checked before "
            "sampling) |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for r in sorted(checked, key=lambda r: (r["per_class"], r["seed"])):
            p = r["premise"]
            verdict = "holds" if p["ok"] else "FAILS: " + "; ".join(p["failures"])
            lines.append(
                f"| {r['per_class']} | {r['seed']} | {p['auc']:.3f} | {p['ess_fraction']:.3f} | "
                f"{p['mean_weight']:.3f} | {verdict} |"
            )
    lines += format_tgdp_tables(records)
    lines += format_gain_table(records, references)
    lines += format_room_table(records, references)
    diffs = paired_differences(records)
    if diffs:
        lines += [
            "",
            "| head | k / class | NLL transfer − no_transfer: mean (nats, paired) | median | "
            "transfer lower on | fidelity transfer − no_transfer |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for d in diffs:
            lines.append(
                f"| {d['head']} | {d['per_class']} | {plus_minus(d['nll_diff'], d['nll_diff_se'], 2)} | "
                f"{plus_minus(d['nll_diff_median'], math.nan, 2)} | {d['a_better_fraction']:.0%} | "
                f"{d['fidelity_diff']:+.3f} |"
            )
    return "\n".join(lines)
