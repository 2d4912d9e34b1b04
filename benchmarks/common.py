"""Shared bits of the benchmark scripts: repository imports, machine info, timing, tables, the JSON-line writer.

Every script in ``benchmarks/`` does ``from common import ...`` (the script's folder is on ``sys.path`` when it
runs as ``python benchmarks/<name>.py``); importing this module also puts the repository root on ``sys.path``
so ``shared_embed``, ``flows``, ``diffusion`` and ``theory`` import from the checkout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ('unknown' where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """torch / python versions, torch threads, OMP_NUM_THREADS, CPU model and logical core count."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def machine_line() -> str:
    """One human line of :func:`machine_info` for the printed report."""
    m = machine_info()
    return (
        f"machine: {m['cpu']} ({m['cpu_count']} logical cores), torch {m['torch']} with {m['threads']} "
        f"thread(s), python {m['python']}"
    )


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``. On a shared machine the CPU time of a
    single-threaded run is the steadier figure: time spent waiting for a core does not count."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """``{name: {"wall": [...], "cpu": [...]}}``: seconds per call of each ``fns`` entry, the entries
    interleaved round by round so slow drifts of a shared machine hit every entry alike; ``warmup``
    untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time_call(fn)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats printed with 4 significant digits."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def append_record(name: str, record: dict[str, Any], out: Path | None = None) -> Path:
    """Append one JSON line ``{"benchmark": name, "time": ..., **machine_info(), **record}`` to
    ``out`` (default ``benchmarks/results/<name>.jsonl``); returns the path."""
    path = out or RESULTS / f"{name}.jsonl"
    line = {
        "benchmark": name,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **machine_info(),
        **record,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return path


def read_latest(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """The last JSON line of ``results/<name>.jsonl``, or None when the file is absent or empty."""
    path = results / f"{name}.jsonl"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def plain_train(
    module: nn.Module,
    loss: Callable[[Tensor, Tensor], Tensor],
    c: Tensor,
    x: Tensor,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
) -> None:
    """The plain baseline every overhead benchmark compares with: shuffle, slice a batch, zero_grad, backward,
    Adam step; ``loss(c_batch, x_batch)``, no checks, no schedule, no clipping, no logging."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    step = 0
    module.train()
    while step < steps:
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            value = loss(c[idx], x[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            step += 1
            if step >= steps:
                return


def make_data(n: int) -> tuple[Tensor, Tensor]:
    """The overhead benchmarks' data, seeded: (c, x) with c ~ N(0, I_2), x = A c + 0.5 noise (unit scale)."""
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(n, 2, generator=gen)
    x = c @ torch.tensor([[0.8, -0.3], [0.4, 0.6]]) + 0.5 * torch.randn(n, 2, generator=gen)
    return c, x


# -- the transfer-grid benchmarks (flow_transfer.py, diffusion_transfer.py) --------------------------------
def add_grid_arguments(p: argparse.ArgumentParser, results: Path) -> None:
    """The arguments every transfer-grid benchmark takes (its head's own options are added by the script)."""
    p.add_argument(
        "--quick", action="store_true", help="the config's [presets.quick] overlay: n_t in {50, 100, 1000}, one seed"
    )
    p.add_argument("--n-s", type=int, help="source sample size (default 10000)")
    p.add_argument("--n-t", type=int, nargs="+", help="target sample sizes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds")
    p.add_argument("--floor-n", type=int, help="target pairs for the embedding-floor head (0: no KL split)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=results, help="JSON-lines file to append to")
    p.add_argument("--quiet", action="store_true", help="no per-cell log lines")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config override, as gentransfer --set")


def grid_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` assignments (``section.key=value``) the grid arguments make on the experiment's config."""
    out = [f"grid.n_s=[{args.n_s}]"] if args.n_s else []
    if args.n_t:
        out.append(f"grid.n_t={list(args.n_t)}")
    if args.seeds:
        out.append(f"grid.seeds={list(args.seeds)}")
    if args.floor_n is not None:
        out.append(f"evaluation.floor_n={args.floor_n}")
    return out + list(args.set or [])


def print_grid_result(result: dict[str, Any], what: str, floor_n: int | None) -> None:
    """The KL table, the transfer KL split and the sample-efficiency ratio of a transfer-grid result."""
    print()
    print(what)
    print(result["table"])
    if result["split_table"]:
        print(
            f"\nKL split of transfer (embedding floor: a head fit to {floor_n} target pairs on the frozen "
            "source encoder):"
        )
        print(result["split_table"])
    if result["ratio"] is not None:
        r = result["ratio"]
        print(
            f"sample-efficiency ratio (n_t no-transfer needs to match transfer at n_t=100, / 100): {r['text']}"
            f" (transfer KL at 100: {r['target_kl']:.4f})"
        )
