"""PNG plots of the TGDP simulation from its records (matplotlib on an Agg canvas, no pyplot state; as
:mod:`theory.engine.plots`).

- :func:`plot_tgdp_samples`: ODE samples of each method (columns) at each n_t (rows) beside exact target draws;
- :func:`plot_log_h`: learned vs exact log h_t along the line x = (0.5, s) through mu_S and mu_T, one panel per t.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from theory.engine.plots import _save
from theory.studies.tgdp.evaluation import LINE_X
from theory.studies.tgdp.settings import METHODS, REFERENCES
from theory.truth.tasks import TwoGaussianTask

Record = dict[str, Any]
N_COLORS = ["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"]


def _seed_records(records: Sequence[Record], conditional: bool) -> tuple[list[Record], int | None]:
    rs = [r for r in records if bool(r["conditional"]) == conditional]
    if not rs:
        return [], None
    seed = min(int(r["seed"]) for r in rs)
    return [r for r in rs if int(r["seed"]) == seed], seed


def plot_tgdp_samples(
    records: Sequence[Record], task: TwoGaussianTask, conditional: bool, path: str | os.PathLike[str]
) -> Path | None:
    """Rows: n_t; column 0: exact target draws, then one column per method (the n-independent reference
    methods in the first row only). The first seed's stored samples. None when there are no records."""
    rs, seed = _seed_records(records, conditional)
    if not rs:
        return None
    cell = {(r["method"], int(r["n_t"])): r for r in rs}
    methods = [m for m in METHODS if any(k[0] == m for k in cell)]
    n_ts = sorted({k[1] for k in cell})
    n_draw = max(len(r["samples"]) for r in rs)
    truth = task.sample(n_draw, "target", torch.Generator().manual_seed(0)).x.numpy()
    fig = Figure(figsize=(2.1 * (1 + len(methods)), 2.3 * len(n_ts)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(n_ts), 1 + len(methods), squeeze=False))
    for i, n_t in enumerate(n_ts):
        for j in range(1 + len(methods)):
            ax = axes[i, j]
            method = methods[j - 1] if j else None
            if method in REFERENCES and i > 0:
                ax.axis("off")
                continue
            if method is None:
                x, title = truth, "exact target q"
            else:
                r = cell.get((method, n_t))
                x = np.asarray(r["samples"]) if r is not None else np.zeros((0, 2))
                title = f"{method}\n" + ("any n_t (ref)" if method in REFERENCES else f"n_t={n_t}")
                if r is not None:
                    title += f"\nKL {r['kl']:.3f}, MMD2 {r['mmd2']:.4f}"
            if x.size:
                x = x[np.isfinite(x).all(axis=1)]
                ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="k" if method is None else "tab:blue")
            ax.set_xlim(-2, 2)
            ax.set_ylim(-2, 2)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=7)
            ax.tick_params(labelsize=6)
    version = "conditional (x of q_hat(y) q_hat(x|y))" if conditional else "unconditional"
    fig.suptitle(f"TGDP simulation, {version}: ODE samples, seed {seed}", fontsize=10)
    return _save(fig, path)


def plot_log_h(records: Sequence[Record], conditional: bool, path: str | os.PathLike[str]) -> Path | None:
    """One panel per stored t: the exact log h_t along x = (0.5, s) (label y = +1 in the conditional version)
    and the learned log h_psi of ``tgdp`` (solid), ``tgdp_reg`` (dashed) per n_t and ``tgdp_exact_w`` (dotted)."""
    rs, seed = _seed_records(records, conditional)
    rs = [r for r in rs if "log_h_line" in r]
    if not rs:
        return None
    line = rs[0]["log_h_line"]
    times = list(line["exact"])
    s = np.asarray(line["s"])
    n_ts = sorted({int(r["n_t"]) for r in rs if not r["reference"]})
    fig = Figure(figsize=(4.2 * len(times), 3.8), layout="constrained")
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    for ax, t in zip(axes, times):
        exact = np.asarray(line["exact"][t])
        ax.plot(s, exact, color="k", lw=2.2, label="exact log h_t")
        for r in sorted(rs, key=lambda q: (q["reference"], int(q["n_t"]), q["method"])):
            style = {"tgdp": "-", "tgdp_reg": "--", "tgdp_exact_w": ":"}.get(r["method"])
            first = min(int(q["n_t"]) for q in rs)
            if style is None or (r["reference"] and int(r["n_t"]) != first):  # references repeat at every n_t
                continue
            if r["reference"]:
                color, label = "tab:gray", f"{r['method']} (exact w)"
            else:
                color = N_COLORS[n_ts.index(int(r["n_t"])) % len(N_COLORS)]
                label = f"{r['method']}, n_t={r['n_t']}"
            ax.plot(s, np.asarray(r["log_h_line"]["learned"][t]), style, color=color, lw=1.2, label=label)
        lo, hi = float(exact.min()), float(exact.max())
        pad = 0.5 * (hi - lo) + 0.5
        ax.set_ylim(lo - pad, hi + pad)
        for mu, name in ((0.5, "mu_S"), (-0.5, "mu_T")):
            ax.axvline(mu, color="0.6", lw=0.8, ls=":")
            ax.text(mu, hi + 0.8 * pad, name, fontsize=7, ha="center")
        ax.set_title(f"t = {t}", fontsize=9)
        ax.set_xlabel(f"s, x = ({LINE_X}, s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("log h_t(x)" + (" (y = +1)" if conditional else ""))
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(
        f"learned vs exact log h_t, {'conditional' if conditional else 'unconditional'}, seed {seed}", fontsize=10
    )
    return _save(fig, path)
