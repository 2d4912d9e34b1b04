"""The dimension-law figure: KL against d_c (fixed d_h) and against d_h (fixed d_c), per variant.

Each point is the mean over seeds at one n_t (and the largest n_s for transfer) with its SE; for a
linear-Gaussian head the exact expectations k / 2n of the oracle and the direct fit are drawn as lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from theory.engine.plots import COLORS, LABELS, _save
from theory.truth.known_answers import expected_kl_gaussian_regression, min_rows
from theory.verdicts.dimension_checks import by_dimension
from theory.verdicts.verdict import Record

#: (variant, record key, label suffix, line style) drawn on each panel.
SERIES = (
    ("oracle", "kl", "", "o-"),
    ("transfer", "kl", "", "o-"),
    ("transfer", "head_term", " head term", "s--"),
    ("transfer", "floor", " floor", "^:"),
    ("no_transfer", "kl", "", "o-"),
    ("direct", "kl", "", "o-"),
)


def plot_dimension_laws(
    records: Sequence[Record],
    head: str,
    *,
    n_t: int,
    n_s: int,
    d_h_fixed: int,
    d_c_fixed: int,
    path: str | os.PathLike[str],
) -> Path:
    """Two log-log panels: KL vs d_c at d_h = ``d_h_fixed``; KL vs d_h at d_c = ``d_c_fixed``."""
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    d_x = next((int(r["d_x"]) for r in records if r.get("d_x") is not None), None)
    exact = any(r.get("head_kind") == "linear_gaussian" for r in records if r["head"] == head)
    for ax, axis, fixed in ((axes[0], "d_c", {"d_h": d_h_fixed}), (axes[1], "d_h", {"d_c": d_c_fixed})):
        for variant, key, suffix, style in SERIES:
            values = by_dimension(records, head, variant, axis, fixed, n_t, key, n_s if variant == "transfer" else None)
            values = {k: v for k, v in values.items() if v and np.mean(v) > 0}
            if not values:
                continue
            x = np.array(list(values), dtype=float)
            m = np.array([np.mean(v) for v in values.values()])
            se = np.array([np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in values.values()])
            ax.errorbar(
                x,
                m,
                yerr=se,
                fmt=style,
                color=COLORS[variant],
                capsize=3,
                alpha=0.9,
                label=f"{LABELS[variant]}{suffix}",
            )
        if exact and d_x is not None:
            _exact_lines(ax, axis, fixed, n_t, d_x, records)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{axis} ({'condition' if axis == 'd_c' else 'embedding'} dimension)")
        ax.set_ylabel(f"KL(p_T || p_hat) at n_t = {n_t} (nats), mean +- SE over seeds")
        fixed_txt = ", ".join(f"{k} = {v}" for k, v in fixed.items())
        ax.set_title(f"{head}: KL vs {axis} ({fixed_txt}, n_s = {n_s})", fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _exact_lines(ax, axis: str, fixed: dict[str, int], n_t: int, d_x: int, records: Sequence[Record]) -> None:
    """The exact E KL of the oracle (p = d_h) and direct (p = d_c) linear-Gaussian fits along ``axis``."""
    dims = sorted(
        {
            (int(r["d_c"]), int(r["d_h"]))
            for r in records
            if r.get("d_c") is not None and all(r.get(k) == v for k, v in fixed.items())
        }
    )
    for variant, pick in (("oracle", 1), ("direct", 0)):
        pts = [
            (d[0] if axis == "d_c" else d[1], expected_kl_gaussian_regression(n_t, d_x, d[pick]))
            for d in dims
            if n_t >= min_rows(d_x, d[pick])
        ]
        if len(pts) >= 2:
            ax.plot(*zip(*pts), "-", color=COLORS[variant], lw=0.8, alpha=0.6, label=f"exact E KL, {LABELS[variant]}")
