"""PNG plots of a sweep (matplotlib, drawn off-screen on an Agg canvas; pyplot's global state is not used).

- :func:`plot_kl_curves`: log-log KL vs n_t per variant (mean +- SE over seeds) with the predicted slopes drawn
  in, and the transfer curves of every n_s against their embedding floors;
- :func:`plot_floor`: the embedding floor vs n_s with the predicted slope;
- :func:`plot_samples`: draws of each variant at fixed conditions beside draws of the true target law, each panel
  titled with its KL (:func:`samples_figure` builds the figure without saving it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from theory.truth.rates import Rates
from theory.truth.tasks import Task
from theory.verdicts.checks import floors, level_stats, mean_se, series
from theory.verdicts.known_answer_check import known_curves

COLORS = {
    "transfer": "tab:blue",
    "no_transfer": "tab:red",
    "fine_tune": "tab:green",
    "oracle": "tab:purple",
    "direct": "tab:orange",
}
LABELS = {
    "transfer": "transfer",
    "no_transfer": "no transfer",
    "fine_tune": "fine-tune",
    "oracle": "oracle h*",
    "direct": "direct on c",
}
Record = dict[str, Any]


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _log_axes(ax: Axes, x_ticks: Sequence[float], log_y: bool = True) -> None:
    """Log axes with plain-number labels; x ticks at the grid's sample sizes, y ticks at 1-2-5 steps (finer
    within one decade), every one labelled."""
    plain = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(x_ticks)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if hi / lo < 10 else (1.0, 2.0, 5.0)
        ax.yaxis.set_major_locator(LogLocator(subs=subs))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _curve(
    records: Sequence[Record], head: str, variant: str, n_s: int | None, key: str = "kl"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = series(records, head, variant, n_s, key)
    n = np.array(list(data), dtype=float)
    stats = [level_stats(lv, key) for lv in data.values()]
    return n, np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def _slope_line(
    ax: Axes,
    n: np.ndarray,
    y0: float,
    exponent: float,
    floor: float,
    color: str,
    label: str | None,
    log_power: float = 0.0,
) -> None:
    """floor + (y0 - floor) (n / n0)^-exponent (log n / log n0)^log_power through the first point, dashed."""
    if not n.size or y0 - floor <= 0:
        return
    grid = np.geomspace(n.min(), n.max(), 50)
    shape = (grid / n.min()) ** (-exponent) * (np.log(grid) / np.log(n.min())) ** log_power
    ax.plot(grid, floor + (y0 - floor) * shape, "--", color=color, lw=1, alpha=0.8, label=label)


def _mean_floor(records: Sequence[Record], head: str, n_s: int) -> float | None:
    fl = floors(records, head).get(n_s)
    return None if not fl else mean_se(list(fl.values()))[0]


def plot_kl_curves(records: Sequence[Record], head: str, rates: Rates | None, path: str | os.PathLike[str]) -> Path:
    """Save :func:`kl_curves_figure` to ``path``."""
    return _save(kl_curves_figure(records, head, rates), path)


def kl_curves_figure(records: Sequence[Record], head: str, rates: Rates | None) -> Figure:
    """Left: each variant at the largest n_s with its predicted slope (dashed, exponent in the legend); right:
    transfer at every n_s against its embedding floor (dotted)."""
    n_ss = sorted({int(r["n_s"]) for r in records if r["head"] == head and r.get("n_s") is not None})
    big = n_ss[-1] if n_ss else None
    exact = known_curves(records, head)
    has_transfer = any(r["head"] == head and r["variant"] == "transfer" for r in records)
    slopes_drawn = False
    fig = Figure(figsize=(12, 4.6) if has_transfer else (6.5, 4.6))
    left, right = fig.subplots(1, 2, sharey=True) if has_transfer else (fig.subplots(), None)
    for variant in ("transfer", "fine_tune", "no_transfer", "oracle", "direct"):
        n, m, se = _curve(records, head, variant, big)
        if not n.size:
            continue
        color = COLORS[variant]
        ns_txt = f" (n_s={big})" if variant in ("transfer", "fine_tune") else ""
        pred = rates.for_variant(variant) if rates else None
        pred_txt = ""
        known = exact.get((variant, big if variant == "transfer" else None))
        if known is not None:  # the exact E KL curve, not a slope through the first point
            left.plot(known[0], known[1], "--", color=color, lw=1.2)
            pred_txt = "; dashed: exact E KL"
        elif pred is not None:
            floor = (_mean_floor(records, head, big) or 0.0) if variant == "transfer" and big else 0.0
            gamma = rates.log_power_for(variant) if rates else 0.0
            pred_txt = f"; predicted {'floor + ' if floor else ''}C n^-{pred:.2f}" + (
                f" (log n)^{gamma:g}" if gamma else ""
            )
            _slope_line(left, n, m[0], pred, floor, color, None, gamma)
            slopes_drawn = True
        left.errorbar(n, m, yerr=se, fmt="o-", color=color, capsize=3, label=f"{LABELS[variant]}{ns_txt}{pred_txt}")
    if slopes_drawn:
        left.plot([], [], "k--", lw=1, label="dashed: predicted rate through the first point")
    if big is not None and (fl := _mean_floor(records, head, big)):
        left.axhline(fl, color=COLORS["transfer"], ls=":", lw=1, label=f"embedding floor (n_s={big}): {fl:.3f} nats")
    left.set_title(f"{head}: KL(p_T || p_hat) vs n_t")
    n_ts = sorted({int(r["n_t"]) for r in records if r["head"] == head})
    if right is None:
        _log_axes(left, n_ts)
        left.set_xlabel("n_t (target pairs)")
        left.legend(fontsize=7)
        left.set_ylabel("KL (nats), mean +- SE over seeds")
        return fig
    cmap = [COLORS["transfer"], "tab:cyan", "tab:olive", "tab:orange", "tab:brown", "tab:gray"]
    for i, n_s in enumerate(n_ss):
        n, m, se = _curve(records, head, "transfer", n_s)
        color = cmap[i % len(cmap)]
        fl = _mean_floor(records, head, n_s)
        floor_txt = f" (floor {fl:.3f})" if fl else ""
        right.errorbar(n, m, yerr=se, fmt="o-", color=color, capsize=3, label=f"transfer, n_s={n_s}{floor_txt}")
        if ("transfer", n_s) in exact:
            right.plot(*exact[("transfer", n_s)], "--", color=color, lw=1.2)
        if fl:
            right.axhline(fl, color=color, ls=":", lw=1)
    n, m, se = _curve(records, head, "no_transfer", None)
    if n.size:
        right.errorbar(n, m, yerr=se, fmt="s--", color=COLORS["no_transfer"], capsize=3, label="no transfer")
    right.set_title("transfer at each n_s (dotted: its embedding floor" + ("; dashed: exact E KL)" if exact else ")"))
    for ax in (left, right):
        _log_axes(ax, n_ts)
        ax.set_xlabel("n_t (target pairs)")
        ax.legend(fontsize=7)
    left.set_ylabel("KL (nats), mean +- SE over seeds")
    return fig


def plot_floor(records: Sequence[Record], head: str, rates: Rates | None, path: str | os.PathLike[str]) -> Path:
    """The embedding floor (mean +- SE over seeds) against n_s, with the template's slope through the first point."""
    fl = floors(records, head)
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    if fl:
        n = np.array(list(fl), dtype=float)
        stats = [mean_se(list(d.values())) for d in fl.values()]
        m, se = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
        ax.errorbar(n, m, yerr=se, fmt="o-", color=COLORS["transfer"], capsize=3, label="measured floor")
        if rates is not None and m[0] > 0:
            _slope_line(ax, n, m[0], rates.floor, 0.0, "k", f"predicted C n_s^-{rates.floor:.2f}")
        _log_axes(ax, list(n), log_y=bool((m > 0).all()))
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no floor estimates\n(evaluation.floor_n = 0 or no transfer cells)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("n_s (source pairs)")
    ax.set_ylabel("embedding floor KL (nats)")
    ax.set_title(f"{head}: embedding floor vs n_s")
    return _save(fig, path)


def _load_samples(out_dir: Path, record: Record) -> dict[str, Any] | None:
    ns = "none" if record.get("n_s") is None else str(record["n_s"])
    path = out_dir / f"samples/{record['head']}/ns{ns}/nt{record['n_t']}_seed{record['seed']}_{record['variant']}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def plot_samples(
    out_dir: str | os.PathLike[str],
    records: Sequence[Record],
    head: str,
    task: Task,
    path: str | os.PathLike[str],
    max_columns: int = 3,
) -> Path | None:
    """Save :func:`samples_figure` to ``path``; None when the run stored no samples."""
    fig = samples_figure(out_dir, records, head, task, max_columns)
    return None if fig is None else _save(fig, path)


def samples_figure(
    out_dir: str | os.PathLike[str], records: Sequence[Record], head: str, task: Task, max_columns: int = 3
) -> Figure | None:
    """Rows: variants (transfer / fine-tune at the largest n_s); columns: the truth, then up to ``max_columns``
    n_t. Each panel scatters the first two coordinates of draws at the same fixed conditions (one colour each,
    keyed in the legend) and is titled with that cell's KL(p_T || p_hat). None when the run stored no samples."""
    out_dir = Path(out_dir)
    rs = [r for r in records if r["head"] == head and r.get("status", "ok") == "ok"]
    if not rs:
        return None
    seed = min(int(r["seed"]) for r in rs)
    n_ss = sorted({int(r["n_s"]) for r in rs if r.get("n_s") is not None})
    big = n_ss[-1] if n_ss else None
    panels: dict[tuple[str, int], dict[str, Any]] = {}
    cell_kl: dict[tuple[str, int], tuple[float, float]] = {}
    for r in rs:
        if int(r["seed"]) != seed or (r.get("n_s") is not None and r["n_s"] != big):
            continue
        s = _load_samples(out_dir, r)
        if s is not None:
            panels[(r["variant"], int(r["n_t"]))] = s
            if r.get("kl") is not None:
                cell_kl[(r["variant"], int(r["n_t"]))] = (float(r["kl"]), float(r.get("kl_se") or 0.0))
    if not panels:
        return None
    variants = [v for v in COLORS if any(k[0] == v for k in panels)]
    n_ts = sorted({k[1] for k in panels})
    if len(n_ts) > max_columns:
        idx = np.unique(np.linspace(0, len(n_ts) - 1, max_columns).round().astype(int))
        n_ts = [n_ts[i] for i in idx]
    any_panel = next(iter(panels.values()))
    contexts = torch.tensor(any_panel["contexts"], dtype=torch.float32)
    n_draw = len(any_panel["samples"][0])
    gen = torch.Generator().manual_seed(0)
    if hasattr(task, "conditional"):
        truth = [task.conditional(c.expand(n_draw, -1), "target").sample(gen).numpy() for c in contexts]
    elif hasattr(task, "sample_x"):  # a user's task (theory.truth.tasks.TASK_MEMBERS)
        truth = [task.sample_x(c.expand(n_draw, -1), "target", gen).numpy() for c in contexts]
    else:
        return None
    allx = np.concatenate(truth)
    lo, hi = np.quantile(allx, 0.002, axis=0), np.quantile(allx, 0.998, axis=0)
    pad = 0.35 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fig = Figure(figsize=(2.7 * (1 + len(n_ts)) + 0.8, 2.9 * len(variants)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(variants), 1 + len(n_ts), squeeze=False))
    for i, variant in enumerate(variants):
        for j in range(1 + len(n_ts)):
            ax = axes[i, j]
            if j == 0:
                sets, title = truth, "truth p_T(x | c)"
            else:
                s = panels.get((variant, n_ts[j - 1]))
                sets = [] if s is None else [np.asarray(x) for x in s["samples"]]
                ns_txt = f", n_s={big}" if variant in ("transfer", "fine_tune") else ""
                title = f"{LABELS[variant]}, n_t={n_ts[j - 1]}{ns_txt}"
                if (kl := cell_kl.get((variant, n_ts[j - 1]))) is not None:
                    title += f"\nKL = {kl[0]:.3f} +- {kl[1]:.3f} nats"
            for k, x in enumerate(sets):
                ax.scatter(
                    x[:, 0],
                    x[:, 1] if x.shape[1] > 1 else np.zeros(len(x)),
                    s=3,
                    alpha=0.5,
                    color=colors[k % len(colors)],
                )
            ax.set_xlim(lo[0], hi[0])
            if allx.shape[1] > 1:
                ax.set_ylim(lo[1], hi[1])
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
            if i == len(variants) - 1:
                ax.set_xlabel("x[0] (data units)", fontsize=7)
            if j == 0:
                ax.set_ylabel("x[1] (data units)" if allx.shape[1] > 1 else "(x is 1-D)", fontsize=7)
    keys = [
        axes[0, 0].scatter([], [], s=12, color=colors[k % len(colors)], label=f"c{k + 1}") for k in range(len(contexts))
    ]
    fig.legend(handles=keys, title="condition", loc="outside right upper", fontsize=7, title_fontsize=7)
    fig.suptitle(
        f"{head}: samples at {len(contexts)} fixed conditions c (one colour each), seed {seed}; "
        "KL(p_T || p_hat) of each cell",
        fontsize=10,
    )
    return fig
