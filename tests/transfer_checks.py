"""The assertions the slow transfer experiments (flow and diffusion heads) share."""

from __future__ import annotations

import math
from typing import Any


def assert_transfer_beats_no_transfer(result: dict[str, Any], n_ts: tuple[int, ...] = (50, 100)) -> None:
    """At each n_t of ``n_ts``: transfer's KL below 0.6 x no-transfer's and the gap beyond 2 combined SE over
    seeds; a sample-efficiency ratio above 2 at n_t = 100; the transfer KL split adding up exactly."""
    mean = {(r["variant"], r["n_t"]): r for r in result["summary"]}
    for n_t in n_ts:
        transfer, no_transfer = mean[("transfer", n_t)], mean[("no_transfer", n_t)]
        assert transfer["kl_mean"] < 0.6 * no_transfer["kl_mean"], (n_t, transfer, no_transfer)
        gap = no_transfer["kl_mean"] - transfer["kl_mean"]
        assert gap > 2 * math.hypot(transfer["kl_se_seeds"], no_transfer["kl_se_seeds"])
    assert result["ratio"]["bound"] == ">" or result["ratio"]["ratio"] > 2
    for r in result["records"]:
        if r["variant"] == "transfer":
            assert math.isclose(r["kl"], r["floor"] + r["head_term"], abs_tol=1e-9)
