"""Benchmark: how true the progress line's "about T left" is on the README's main job.

Runs ``gentransfer run configs/default.toml --out <tmp>`` (progress lines on), stamps every
``progress: k/N cells done ... about T left`` line with the time it arrived, and when the last cell is done
compares, at the first line past 25%, 50% and 75% of the cells, the printed time left with the true time left
(the arrival of the ``N/N`` line). The baseline, measured on the same lines, is the unweighted estimate every cell
alike would give (elapsed / k x (N - k)), what the line printed before it weighted cells by their estimated cost.
One JSON line goes to ``benchmarks/results/progress_eta.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/progress_eta.py             # configs/default.toml (minutes)
    OMP_NUM_THREADS=1 python benchmarks/progress_eta.py --config configs/smoke.toml
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_record, machine_line, table  # noqa: E402

LINE = re.compile(r"progress: (\d+)/(\d+) cells done, (\S+) elapsed, about (\S+) left")


def seconds(text: str) -> float:
    """``42s``, ``3m07s`` or ``1h05m`` in seconds."""
    h = re.search(r"(\d+)h", text)
    m = re.search(r"(\d+)m(?!s)", text.replace("h", "h "))
    s = re.search(r"(\d+)s", text)
    return sum(int(g.group(1)) * k for g, k in ((h, 3600), (m, 60), (s, 1)) if g)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/progress_eta.jsonl)")
    p.add_argument("--timeline", type=Path, help="also write every progress line with its arrival time (CSV)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gentransfer_eta_"))
    script = Path(sys.executable).with_name("gentransfer")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "theory"]
    cmd = [*entry, "run", str(args.config), "--out", str(tmp / "run"), "--no-report"]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    lines: list[tuple[float, int, int, float, float]] = []  # (arrival, done, total, elapsed printed, left printed)
    with subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "GENTRANSFER_QUIET": "1"}, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if m := LINE.search(raw):
                done, total = int(m.group(1)), int(m.group(2))
                lines.append((time.perf_counter() - start, done, total, seconds(m.group(3)), seconds(m.group(4))))
    shutil.rmtree(tmp, ignore_errors=True)
    if args.timeline is not None:
        rows = ["arrival_s,done,total,printed_left_s"] + [f"{t:.2f},{d},{n},{left:g}" for t, d, n, _e, left in lines]
        args.timeline.write_text("\n".join(rows) + "\n")
    if proc.returncode or not lines:
        print(f"the run failed (exit {proc.returncode}) or printed no progress line")
        return 1
    end = next(t for t, done, total, _e, _l in lines if done == total)
    rows, record = [], {"config": str(args.config), "cells": lines[-1][2], "wall_s": end}
    for quarter in (0.25, 0.5, 0.75):
        t, done, total, elapsed, left = next(x for x in lines if x[1] >= quarter * x[2])
        true_left = end - t
        uniform = elapsed / done * (total - done)
        rows.append([f"{quarter:.0%}", f"{done}/{total}", true_left, left, left / true_left, uniform / true_left])
        record[f"at_{int(quarter * 100)}"] = {
            "cells_done": done,
            "true_left_s": true_left,
            "printed_left_s": left,
            "printed_over_true": left / true_left,
            "uniform_over_true": uniform / true_left,
        }
    print(machine_line())
    headers = ["at", "cells", "true left s", "printed left s", "printed / true", "baseline (per cell) / true"]
    print(table(headers, rows))
    print(f"appended to {append_record('progress_eta', record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
