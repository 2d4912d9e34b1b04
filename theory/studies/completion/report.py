"""Tables of the completion study's records.

Per (head, k, variant): means over seeds of the test NLL (nats per image, bits/dim over the 32 pixels), the
completion fidelity and MSE, with the SE across seeds (with one seed, the NLL's SE over test images).

Comparisons of transfer against each baseline b, per (head, k): the mean over seeds of the per-seed NLL
difference transfer - b (both scored on the same test images, so the difference is paired), its SE across seeds
(one seed: the SE over the per-image differences), and the *combined SE* sqrt(SE_transfer^2 + SE_b^2) of the two
unpaired means (the stricter yardstick when the variants are positively correlated across seeds). ``wins`` says
whether transfer's NLL is lower by more than ``MARGIN_SE`` combined SEs; it needs at least ``MIN_SEEDS`` seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from theory.engine.tables import plus_minus
from theory.verdicts.stats import mean_se, paired_seed_difference

ORDER = ("source_only", "transfer", "no_transfer", "fine_tune", "direct")
MARGIN_SE = 2.0
MIN_SEEDS = 3


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (head, per_class, variant): seeds, mean and SE of nll, bpd, fidelity, completion_mse."""
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
            "n": rs[0]["n"],
            "fit_seconds": sum(r["fit_seconds"] for r in rs) / len(rs),
        }
        for key in ("nll", "bpd", "fidelity", "completion_mse"):
            row[key], row[f"{key}_se"] = mean_se([r[key] for r in rs], [r.get(f"{key}_se", math.nan) for r in rs])
        rows.append(row)
    rows.sort(key=lambda r: (r["head"], r["per_class"], ORDER.index(r["variant"])))
    return rows


def comparisons(records: Sequence[dict[str, Any]], a: str = "transfer") -> list[dict[str, Any]]:
    """Per (head, k, baseline b): paired NLL difference a - b over seeds, its SE, the combined SE, ``wins``."""
    index = {(r["seed"], r["head"], int(r["per_class"]), r["variant"]): r for r in records}
    out = []
    for head, k in sorted({(h, kk) for (_, h, kk, v) in index if v == a}):
        seeds = sorted(s for (s, h, kk, v) in index if (h, kk, v) == (head, k, a))
        for b in ORDER:
            both = (
                [s for s in seeds if (s, head, k, b) in index]
                if b != "source_only"
                else [s for s in seeds if (s, head, 0, b) in index]
            )
            if b == a or not both:
                continue
            rb = [index[(s, head, k if b != "source_only" else 0, b)] for s in both]
            ra = [index[(s, head, k, a)] for s in both]
            diff, diff_se, combined = paired_seed_difference([r["nll"] for r in ra], [r["nll"] for r in rb])
            if len(both) < 2:  # one seed: the SE of the per-image paired differences (evaluation noise only)
                per_image = [x - y for r1, r2 in zip(ra, rb) for x, y in zip(r1["nll_per_image"], r2["nll_per_image"])]
                diff_se = mean_se(per_image)[1]
            out.append(
                {
                    "head": head,
                    "per_class": k,
                    "a": a,
                    "b": b,
                    "seeds": len(both),
                    "nll_diff": diff,
                    "paired_se": diff_se,
                    "combined_se": combined,
                    "wins": len(both) >= MIN_SEEDS and diff < -MARGIN_SE * combined,
                }
            )
    return out


def format_table(records: Sequence[dict[str, Any]], references: Mapping[int, float] | None = None) -> str:
    """Markdown: the main table (with the real images' fidelity) and the comparisons of transfer."""
    lines = [
        "| head | k / class | n_t | variant | seeds | test NLL (nats) | bits/dim | completion fidelity | "
        "completion MSE | fit s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summarize(records):
        k = "-" if r["variant"] == "source_only" else str(r["per_class"])
        lines.append(
            f"| {r['head']} | {k} | {10 * r['per_class']} | {r['variant']} | {r['seeds']} | "
            f"{plus_minus(r['nll'], r['nll_se'], 2)} | {plus_minus(r['bpd'], r['bpd_se'], 3)} | "
            f"{plus_minus(r['fidelity'], r['fidelity_se'], 3)} | "
            f"{plus_minus(r['completion_mse'], r['completion_mse_se'], 4)} | {r['fit_seconds']:.0f} |"
        )
    if references:
        lines.append(
            f"| real target images | - | - | reference | {len(references)} | - | - | "
            f"{sum(references.values()) / len(references):.3f} | 0 | - |"
        )
    comps = comparisons(records)
    if comps:
        lines += [
            "",
            f"| head | k / class | transfer − baseline | seeds | NLL difference (nats) ± paired SE | "
            f"combined SE | transfer better by > {MARGIN_SE:g} combined SE |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for c in comps:
            lines.append(
                f"| {c['head']} | {c['per_class']} | transfer − {c['b']} | {c['seeds']} | "
                f"{plus_minus(c['nll_diff'], c['paired_se'], 2)} | {c['combined_se']:.2f} | "
                f"{'yes' if c['wins'] else 'no'} |"
            )
    return "\n".join(lines)
