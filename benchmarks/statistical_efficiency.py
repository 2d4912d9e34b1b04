"""Benchmark report: sample-efficiency ratios read from the latest transfer and TGDP benchmark records.

Reads the latest line of ``benchmarks/results/flow_transfer.jsonl`` and ``diffusion_transfer.jsonl`` and, when it
exists, ``tgdp_simulation.jsonl`` (a missing or empty file is reported and skipped), and prints, through
``theory.studies.transfer.summary.sample_efficiency_ratio``, the n_t that a baseline needs to match a method at a
reference n_t, over that n_t (e.g. '4.2': no-transfer needs 4.2x the target data; '> 10': more than the grid
holds):

- flows and diffusion: transfer, fine-tune and oracle against no-transfer at n_t = 50 and 100;
- TGDP simulation (per version, unconditional / label-conditional): TGDP (and TGDP with regularisers) against
  fine-tuning and target-only at n = 10 and 100, with the KLs beside.

By default the latest full (not ``--quick``) line of each file is used, else the latest line; ``--quick``
takes the latest line whatever it is. Nothing is trained, so this takes seconds. One JSON line goes to
``benchmarks/results/statistical_efficiency.jsonl``.

Usage (from the repository root):
    python benchmarks/statistical_efficiency.py
    python benchmarks/statistical_efficiency.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, append_record, table  # noqa: E402

from shared_embed.errors import DataError  # noqa: E402
from theory.studies.transfer.summary import sample_efficiency_ratio, summarize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="use the latest line of each file, quick runs included")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON-lines files")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/statistical_efficiency.jsonl)")
    return p.parse_args(argv)


def latest(name: str, results: Path, any_run: bool) -> dict[str, Any] | None:
    """The latest line of ``results/<name>.jsonl`` (the latest full run unless ``any_run``), or None."""
    path = results / f"{name}.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    full = [ln for ln in lines if not ln.get("quick")]
    pick = lines if any_run or not full else full
    return pick[-1] if pick else None


def ratio_row(records: list[dict[str, Any]], reference: str, baseline: str, n_t: int) -> dict[str, Any] | None:
    """sample_efficiency_ratio with the KLs of both at n_t; None when either is missing there."""
    try:
        r = sample_efficiency_ratio(records, reference_n_t=n_t, reference=reference, baseline=baseline)
    except DataError:
        return None
    kl = {(s["variant"], s["n_t"]): s["kl_mean"] for s in summarize(records)}
    return {
        "reference": reference,
        "baseline": baseline,
        "n_t": n_t,
        "ratio": r["ratio"],
        "text": r["text"],
        "kl_reference": r["target_kl"],
        "kl_baseline": kl.get((baseline, n_t)),
    }


def transfer_ratios(line: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n_t in (50, 100):
        for reference in ("transfer", "fine_tune", "oracle"):
            row = ratio_row(line["records"], reference, "no_transfer", n_t)
            if row is not None:
                rows.append(row)
    return rows


def tgdp_ratios(line: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cond in (False, True):
        records = [{**r, "variant": r["method"]} for r in line["records"] if bool(r["conditional"]) == cond]
        for n_t in (10, 100):
            for method in ("tgdp", "tgdp_reg", "tgdp_kernel", "tgdp_noisy_clf"):
                for baseline in ("fine_tune", "target_only"):
                    row = ratio_row(records, method, baseline, n_t)
                    if row is not None:
                        rows.append({"version": "conditional" if cond else "unconditional", **row})
    return rows


def show(rows: list[dict[str, Any]], version: bool = False) -> str:
    head = (["version"] if version else []) + [
        "n_t",
        "method",
        "baseline",
        "KL method",
        "KL baseline",
        "ratio (baseline n_t needed / n_t)",
    ]
    body = [
        ([r["version"]] if version else [])
        + [
            r["n_t"],
            r["reference"],
            r["baseline"],
            r["kl_reference"],
            "-" if r["kl_baseline"] is None else r["kl_baseline"],
            r["text"],
        ]
        for r in rows
    ]
    return table(head, body)


def describe(line: dict[str, Any]) -> str:
    return (
        f"line of {line.get('time', '?')} ({'quick' if line.get('quick') else 'full'} run, torch "
        f"{line.get('torch', '?')}, {line.get('threads', '?')} thread(s))"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: dict[str, Any] = {"quick": args.quick, "sources": {}, "ratios": {}}
    for name, fn, version in (
        ("flow_transfer", transfer_ratios, False),
        ("diffusion_transfer", transfer_ratios, False),
        ("tgdp_simulation", tgdp_ratios, True),
    ):
        line = latest(name, args.results, args.quick)
        print(f"\n## {name}")
        if line is None:
            print(f"no records: {args.results / (name + '.jsonl')} is missing or empty; skipped")
            out["sources"][name] = None
            continue
        rows = fn(line)
        print(describe(line))
        print(show(rows, version) if rows else "no comparable (method, baseline, n_t) cells in these records")
        out["sources"][name] = {"time": line.get("time"), "quick": line.get("quick")}
        out["ratios"][name] = rows
    print(f"\nappended to {append_record('statistical_efficiency', out, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
