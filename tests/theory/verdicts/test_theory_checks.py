"""Checks on synthetic records with known answers, each in both directions: the right records PASS, wrong FAIL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theory.truth.rates import Rates
from theory.verdicts.checks import (
    FAIL,
    INSUFFICIENT,
    INSUFFICIENT_SEEDS,
    PASS,
    check_catch_up,
    check_embedding_frozen,
    check_exponent,
    check_floor_falls,
    check_floor_is_floor,
    check_records_finite,
    check_transfer_beats_no_transfer,
    decide,
    fit_exponent,
    format_checks,
    run_checks,
)
from theory.verdicts.verdict import CheckResult

N_T = [25, 50, 100, 200, 400, 800]
SEEDS = [0, 1, 2, 3]
JITTER = {0: 1.0, 1: 1.04, 2: 0.97, 3: 1.01}  # per-seed multiplicative factor: slopes stay exact
ALPHA = 0.05


def record(variant: str, n_t: int, seed: int, kl: float, n_s: int | None = None, **extra: float) -> dict:
    return {
        "head": "flow",
        "head_kind": "flow",
        "variant": variant,
        "n_t": n_t,
        "seed": seed,
        "n_s": n_s,
        "kl": kl,
        "kl_se": 0.001 * kl,
        "status": "ok",
        **extra,
    }


def power_law_records(floor_by_ns: dict[int, float] | None = None, noise: float = 0.0) -> list[dict]:
    """no_transfer 10 n^-0.5, oracle 2 n^-0.8, transfer floor + 2 n^-0.8 (head term exact), per seed jitter."""
    floor_by_ns = floor_by_ns or {1000: 0.1, 10000: 0.02}
    rng = np.random.default_rng(0)
    recs = []
    for s in SEEDS:
        j = JITTER[s]
        for n in N_T:
            e = lambda: float(np.exp(noise * rng.standard_normal()))  # noqa: E731
            recs.append(record("no_transfer", n, s, j * 10 * n**-0.5 * e()))
            recs.append(record("oracle", n, s, j * 2 * n**-0.8 * e()))
            for n_s, fl in floor_by_ns.items():
                head = j * 2 * n**-0.8
                recs.append(
                    record(
                        "transfer",
                        n,
                        s,
                        fl * j + head,
                        n_s,
                        floor=fl * j,
                        floor_se=0.001,
                        floor_paired=fl * j,
                        floor_paired_se=0.001,
                        head_term=head,
                        head_term_se=0.001 * head,
                        encoder_digest="a",
                        source_encoder_digest="a",
                    )
                )
    return recs


def verdict(result: CheckResult) -> str:
    return result.provisional(ALPHA).verdict


def test_fit_exponent_recovers_an_exact_power_law() -> None:
    data = {n: {s: JITTER[s] * 3.0 * n**-0.37 for s in SEEDS} for n in N_T}
    fit = fit_exponent(data)
    assert fit.exponent == pytest.approx(0.37, abs=1e-9)
    assert fit.low == pytest.approx(0.37, abs=1e-9) and fit.high == pytest.approx(0.37, abs=1e-9)
    assert fit.intercept == pytest.approx(math.log(3.0 * sum(JITTER.values()) / 4), abs=1e-9)
    assert (fit.n_levels, fit.n_seeds) == (6, 4)


def test_fit_exponent_with_an_explicit_log_factor() -> None:
    data = {n: {s: JITTER[s] * n**-0.5 * math.log(n) ** 2 for s in SEEDS} for n in N_T}
    assert fit_exponent(data, log_power=2.0).exponent == pytest.approx(0.5, abs=1e-9)
    assert fit_exponent(data).exponent < 0.2  # ignoring the log factor flattens the slope


def test_fit_exponent_interval_widens_with_seed_noise_and_covers_truth() -> None:
    noise = {0: (1.3, 0.8), 1: (0.8, 1.25), 2: (1.1, 0.95), 3: (0.9, 1.05)}  # seed-dependent slopes
    data = {n: {s: 3.0 * n**-0.5 * (noise[s][0] if n < 100 else noise[s][1]) for s in SEEDS} for n in N_T}
    fit = fit_exponent(data)
    assert fit.low < 0.5 < fit.high and fit.low < fit.exponent < fit.high
    assert fit.high - fit.low > 0.01


def test_exponent_verdicts_against_known_slopes() -> None:
    recs = power_law_records()
    assert verdict(check_exponent(recs, "flow", "no_transfer", 0.4)) == PASS
    assert verdict(check_exponent(recs, "flow", "no_transfer", 0.6)) == FAIL
    r = check_exponent(recs, "flow", "transfer", 0.7, 1000)  # head term decays as n^-0.8
    assert verdict(r) == PASS and r.numbers["quantity"] == "KL - floor"
    assert r.numbers["exponent"] == pytest.approx(0.8, abs=1e-9)
    assert verdict(check_exponent(recs, "flow", "oracle", 0.9)) == FAIL
    for seeds in ({0}, {0, 1}):  # an interval over fewer than 3 seeds decides nothing
        few = [x for x in recs if x["seed"] in seeds]
        assert verdict(check_exponent(few, "flow", "oracle", 0.5)) == INSUFFICIENT_SEEDS
    assert verdict(check_exponent(recs, "flow", "oracle", None)) == INSUFFICIENT


def test_a_constant_kl_bias_fails_a_parametric_exponent() -> None:
    """+0.05 nats on every KL flattens a 1/n curve: the parametric exponent 1 must FAIL."""
    recs = [record("oracle", n, s, JITTER[s] * 4.5 / n) for s in SEEDS for n in N_T]
    assert verdict(check_exponent(recs, "flow", "oracle", 1.0)) != FAIL
    biased = [dict(r, kl=r["kl"] + 0.05) for r in recs]
    assert verdict(check_exponent(biased, "flow", "oracle", 1.0)) == FAIL


def test_transfer_beats_no_transfer_at_small_n_t() -> None:
    recs = power_law_records()
    r = check_transfer_beats_no_transfer(recs, "flow", 1000)
    assert verdict(r) == PASS and r.numbers["n_t"] == 25
    assert r.numbers["mean"] == pytest.approx(sum(JITTER[s] * (10 * 25**-0.5 - 2 * 25**-0.8 - 0.1) for s in SEEDS) / 4)
    swapped = [
        {
            **x,
            "variant": {"transfer": "no_transfer", "no_transfer": "transfer"}.get(x["variant"], x["variant"]),
            "n_s": 1000 if x["variant"] == "no_transfer" else None,
        }
        for x in recs
        if x["variant"] == "no_transfer" or x.get("n_s") == 1000
    ]
    assert verdict(check_transfer_beats_no_transfer(swapped, "flow", 1000)) == FAIL
    tie = [record("transfer", 25, s, 1.0 + 0.01 * s, 1000) for s in SEEDS] + [
        record("no_transfer", 25, s, 1.0 + 0.01 * (3 - s)) for s in SEEDS
    ]
    assert verdict(check_transfer_beats_no_transfer(tie, "flow", 1000)) == INSUFFICIENT


def test_floor_falls_as_n_s_grows() -> None:
    r = check_floor_falls(power_law_records({1000: 0.1, 4000: 0.05, 16000: 0.025}), "flow", predicted=0.3)
    assert verdict(r) == PASS
    assert r.numbers["exponent"] == pytest.approx(0.5, abs=1e-9)
    flat = power_law_records({1000: 0.1, 10000: 0.1}, noise=0.0)
    for x in flat:  # a random encoder: the floor does not move with n_s (seeds differ a little)
        if "floor" in x:
            x["floor"] *= 1 + 0.01 * ((x["seed"] + x["n_s"] // 1000) % 3)
    assert verdict(check_floor_falls(flat, "flow", predicted=0.1)) == FAIL
    assert verdict(check_floor_falls(power_law_records({1000: 0.1}), "flow")) == INSUFFICIENT


def test_catch_up_passes_on_a_crossover_and_fails_on_a_growing_gap() -> None:
    # no_transfer 10/n, transfer 0.1 + 1/n: equal where 9/n = 0.1, i.e. n = 90
    recs = []
    for s in SEEDS:
        j = 1 + 0.01 * s
        for n in [10, 30, 60, 120, 240]:
            recs.append(record("no_transfer", n, s, j * 10 / n))
            recs.append(record("transfer", n, s, (2 - j) * (0.1 + 1 / n), 500))
    assert verdict(check_catch_up(recs, "flow", 500)) == PASS
    short = [x for x in recs if x["n_t"] <= 60]  # crossover beyond the grid
    assert verdict(check_catch_up(short, "flow", 500)) == INSUFFICIENT
    growing = [dict(x, kl=x["kl"] * (x["n_t"] if x["variant"] == "no_transfer" else 1)) for x in recs]
    assert verdict(check_catch_up(growing, "flow", 500)) == FAIL


def test_floor_is_a_floor_and_its_failure() -> None:
    recs = power_law_records()
    assert verdict(check_floor_is_floor(recs, "flow", 1000)) == PASS
    broken = [dict(x) for x in recs]
    for x in broken:
        if x.get("n_s") == 1000 and x["n_t"] == 50:
            x["head_term"] = -0.5  # the model beats its own floor by far: impossible
    assert verdict(check_floor_is_floor(broken, "flow", 1000)) == FAIL
    assert verdict(check_floor_is_floor(power_law_records(), "flow", 12345)) == INSUFFICIENT


def test_embedding_frozen_premise() -> None:
    recs = power_law_records()
    assert verdict(check_embedding_frozen(recs, "flow")) == PASS
    recs[5 if recs[5]["variant"] == "transfer" else 2]["encoder_digest"] = "b"
    assert verdict(check_embedding_frozen(recs, "flow")) == FAIL


def test_a_nan_record_fails_instead_of_passing() -> None:
    recs = power_law_records()
    assert verdict(check_records_finite(recs)) == PASS
    recs[0]["kl"] = math.nan
    assert verdict(check_records_finite(recs)) == FAIL
    # the other checks skip the NaN record rather than average it
    assert verdict(check_exponent(recs, "flow", "no_transfer", 0.4)) == PASS


def test_holm_family_decides_all_checks_together() -> None:
    weak = [CheckResult("c", str(i), INSUFFICIENT, "", p_pass=0.02, p_fail=0.9) for i in range(5)]
    assert all(r.verdict == INSUFFICIENT for r in decide(weak, ALPHA))  # 0.02 * 5 > 0.05
    strong = [CheckResult("c", "x", INSUFFICIENT, "", p_pass=0.001, p_fail=0.9)] + weak[:1]
    out = decide(strong, ALPHA)
    assert out[0].verdict == PASS and out[1].verdict == PASS  # Holm: 0.001*2, then 0.02*1


def test_run_checks_covers_every_claim_and_formats_a_table() -> None:
    rates = {"flow": Rates(transfer=0.5, no_transfer=0.3, floor=0.1, oracle=0.5)}
    results = run_checks(power_law_records(), rates)
    names = {c.name for c in results}
    assert {
        "transfer beats no-transfer at small n_t",
        "measured exponent >= predicted",
        "embedding floor falls as n_s grows",
        "no-transfer catches up at large n_t",
        "floor is a floor (head term >= 0)",
        "transfer keeps the source embedding",
        "records are finite",
    } <= names
    verdicts = {(c.name, c.scope): c.verdict for c in results}
    assert verdicts[("embedding floor falls as n_s grows", "flow")] == PASS
    assert verdicts[("measured exponent >= predicted", "flow, no_transfer")] == PASS
    assert all(c.hypothesis and c.statistic for c in results)
    table = format_checks(results)
    assert table.startswith("| check | scope | verdict |") and "**pass**" in table
    failed = [dict(x, status="failed", kl=None) for x in power_law_records()]
    assert run_checks(failed, rates) == []  # no finished cell: nothing to judge
