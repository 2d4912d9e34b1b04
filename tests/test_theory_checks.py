"""Checks on synthetic records with known answers: exact power laws, known gaps, floors and crossovers."""

from __future__ import annotations

import math

import pytest

from theory.checks import (
    FAIL,
    INSUFFICIENT,
    PASS,
    bonferroni_z,
    check_catch_up,
    check_exponent,
    check_floor_falls,
    check_girsanov,
    check_kl_split,
    check_transfer_beats_no_transfer,
    crossover_n_t,
    extrapolated_crossover,
    fit_exponent,
    format_checks,
    run_checks,
)
from theory.rates import Rates

N_T = [25, 50, 100, 200, 400, 800]
SEEDS = [0, 1, 2, 3]
JITTER = {0: 1.0, 1: 1.04, 2: 0.97, 3: 1.01}  # per-seed multiplicative factor: slopes stay exact


def record(variant: str, n_t: int, seed: int, kl: float, n_s: int | None = None, **extra: float) -> dict:
    return {"head": "flow", "head_kind": "flow", "variant": variant, "n_t": n_t, "seed": seed, "n_s": n_s,
            "kl": kl, "kl_se": 0.001 * kl, "status": "ok", **extra}


def power_law_records(floor_by_ns: dict[int, float] | None = None) -> list[dict]:
    """no_transfer 10 n^-0.5, oracle 2 n^-0.8, transfer floor + 2 n^-0.8 (head term exact), per seed jitter."""
    floor_by_ns = floor_by_ns or {1000: 0.1, 10000: 0.02}
    recs = []
    for s in SEEDS:
        j = JITTER[s]
        for n in N_T:
            recs.append(record("no_transfer", n, s, j * 10 * n**-0.5))
            recs.append(record("oracle", n, s, j * 2 * n**-0.8))
            for n_s, fl in floor_by_ns.items():
                head = j * 2 * n**-0.8
                recs.append(record("transfer", n, s, fl + head, n_s, floor=fl, floor_se=0.001, floor_paired=fl,
                                   floor_paired_se=0.001, head_term=head, head_term_se=0.001 * head))
    return recs


def test_fit_exponent_recovers_an_exact_power_law() -> None:
    data = {n: {s: JITTER[s] * 3.0 * n**-0.37 for s in SEEDS} for n in N_T}
    fit = fit_exponent(data, bootstrap=300)
    assert fit.exponent == pytest.approx(0.37, abs=1e-9)
    assert fit.low == pytest.approx(0.37, abs=1e-9) and fit.high == pytest.approx(0.37, abs=1e-9)
    assert fit.intercept == pytest.approx(math.log(3.0 * sum(JITTER.values()) / 4), abs=1e-9)
    assert (fit.n_levels, fit.n_seeds) == (6, 4)


def test_fit_exponent_interval_widens_with_seed_noise_and_covers_truth() -> None:
    noise = {0: (1.3, 0.8), 1: (0.8, 1.25), 2: (1.1, 0.95), 3: (0.9, 1.05)}  # seed-dependent slopes
    data = {n: {s: 3.0 * n**-0.5 * (noise[s][0] if n < 100 else noise[s][1]) for s in SEEDS} for n in N_T}
    fit = fit_exponent(data, bootstrap=500)
    assert fit.low < fit.exponent < fit.high
    assert fit.high - fit.low > 0.01


def test_exponent_verdicts_against_known_slopes() -> None:
    recs = power_law_records()
    assert check_exponent(recs, "flow", "no_transfer", 0.4, bootstrap=200).verdict == PASS
    assert check_exponent(recs, "flow", "no_transfer", 0.6, bootstrap=200).verdict == FAIL
    r = check_exponent(recs, "flow", "transfer", 0.7, 1000, bootstrap=200)  # head term decays as n^-0.8
    assert r.verdict == PASS and r.numbers["quantity"] == "log(KL - floor)"
    assert r.numbers["exponent"] == pytest.approx(0.8, abs=1e-9)
    assert check_exponent(recs, "flow", "oracle", 0.9, bootstrap=200).verdict == FAIL
    for seeds in ({0}, {0, 1}):  # a bootstrap over fewer than 3 seeds decides nothing
        few = [x for x in recs if x["seed"] in seeds]
        assert check_exponent(few, "flow", "oracle", 0.5, bootstrap=200).verdict == INSUFFICIENT
    assert check_exponent(recs, "flow", "oracle", None, bootstrap=200).verdict == INSUFFICIENT


def test_transfer_beats_no_transfer_at_small_n_t() -> None:
    recs = power_law_records()
    r = check_transfer_beats_no_transfer(recs, "flow", 1000)
    assert r.verdict == PASS and r.numbers["n_t"] == 25
    assert r.numbers["difference"] == pytest.approx(
        sum(JITTER[s] * (10 * 25**-0.5 - 2 * 25**-0.8) - 0.1 for s in SEEDS) / 4)
    swapped = [{**x, "variant": {"transfer": "no_transfer", "no_transfer": "transfer"}.get(x["variant"], x["variant"]),
                "n_s": 1000 if x["variant"] == "no_transfer" else None}
               for x in recs if x["variant"] == "no_transfer" or x.get("n_s") == 1000]
    assert check_transfer_beats_no_transfer(swapped, "flow", 1000).verdict == FAIL
    tie = [record("transfer", 25, s, 1.0 + 0.01 * s, 1000) for s in SEEDS] + \
          [record("no_transfer", 25, s, 1.0 + 0.01 * (3 - s)) for s in SEEDS]
    assert check_transfer_beats_no_transfer(tie, "flow", 1000).verdict == INSUFFICIENT


def test_floor_falls_as_n_s_grows() -> None:
    r = check_floor_falls(power_law_records({1000: 0.1, 4000: 0.05, 16000: 0.025}), "flow", predicted=0.3,
                          bootstrap=200)
    assert r.verdict == PASS
    assert r.numbers["exponent"] == pytest.approx(0.5, abs=1e-9)
    rising = power_law_records({1000: 0.02, 10000: 0.1})
    for x in rising:  # seeds disagree a little so the SE is not zero
        if "floor" in x:
            x["floor"] *= JITTER[x["seed"]]
    assert check_floor_falls(rising, "flow", bootstrap=200).verdict == FAIL
    assert check_floor_falls(power_law_records({1000: 0.1}), "flow").verdict == INSUFFICIENT


def test_crossover_interpolation_is_exact_for_a_linear_gap_in_log_n() -> None:
    assert crossover_n_t([10, 100], [1.0, -1.0]) == pytest.approx(math.sqrt(10 * 100))
    assert crossover_n_t([10, 100, 1000], [2.0, 1.0, 0.5]) is None
    assert crossover_n_t([10, 100], [-1.0, -2.0]) == 10


def test_catch_up_finds_the_known_crossover() -> None:
    # no_transfer 10/n, transfer 0.1 + 1/n: equal where 9/n = 0.1, i.e. n = 90
    recs = []
    for s in SEEDS:
        j = 1 + 0.001 * s
        for n in [10, 30, 60, 120, 240]:
            recs.append(record("no_transfer", n, s, j * 10 / n))
            recs.append(record("transfer", n, s, j * (0.1 + 1 / n), 500, floor=0.1, floor_se=1e-3,
                               head_term=j / n, head_term_se=1e-3))
    r = check_catch_up(recs, "flow", 500)
    assert r.verdict == PASS and 60 < r.numbers["crossover_n_t"] < 120
    short = [x for x in recs if x["n_t"] <= 60]  # crossover beyond the grid: extrapolated near 90
    r = check_catch_up(short, "flow", 500)
    assert r.verdict == INSUFFICIENT
    assert r.numbers["extrapolated_crossover_n_t"] == pytest.approx(90, rel=0.02)


def test_extrapolated_crossover_of_power_laws() -> None:
    nt = {n: 8 * n**-0.5 for n in (10, 100, 1000)}
    head = {n: 1 * n**-1.0 for n in (10, 100, 1000)}
    n_star = extrapolated_crossover(nt, head, floor=0.01)
    assert 8 * n_star**-0.5 == pytest.approx(0.01 + 1 / n_star, rel=1e-6)
    assert extrapolated_crossover(nt, head, floor=0.0) is None


def test_kl_split_and_its_failures() -> None:
    recs = power_law_records()
    assert check_kl_split(recs, "flow", 1000).verdict == PASS
    broken = [dict(x) for x in recs]
    for x in broken:
        if x.get("n_s") == 1000 and x["n_t"] == 50:
            x["head_term"] = -0.5  # the model beats its own floor by far: impossible
    assert check_kl_split(broken, "flow", 1000).verdict == FAIL
    assert check_kl_split(power_law_records(), "flow", 12345).verdict == INSUFFICIENT


def test_girsanov_check() -> None:
    recs = [record("transfer", n, s, 0.1, 100, bound=0.3, bound_se=0.01) for n in (10, 20) for s in SEEDS]
    assert check_girsanov(recs, "flow").verdict == PASS
    recs[0]["bound"] = 0.05
    assert check_girsanov(recs, "flow").verdict == FAIL
    assert check_girsanov(power_law_records(), "flow").verdict == INSUFFICIENT


def test_bonferroni_z_grows_with_the_number_of_tests() -> None:
    assert bonferroni_z(2.0, 1) == pytest.approx(2.0, abs=1e-9)
    assert bonferroni_z(2.0, 10) == pytest.approx(2.837, abs=1e-3)


def test_run_checks_covers_every_claim_and_formats_a_table() -> None:
    rates = {"flow": Rates(transfer=0.5, no_transfer=0.3, floor=0.1, oracle=0.5)}
    results = run_checks(power_law_records(), rates, bootstrap=200)
    names = {c.name for c in results}
    assert {"transfer beats no-transfer at small n_t", "measured exponent >= predicted",
            "embedding floor falls as n_s grows", "no-transfer catches up at large n_t",
            "KL split adds up (floor + head term)"} <= names
    verdicts = {(c.name, c.scope): c.verdict for c in results}
    assert verdicts[("embedding floor falls as n_s grows", "flow")] == PASS
    assert verdicts[("measured exponent >= predicted", "flow, no_transfer")] == PASS
    table = format_checks(results)
    assert table.startswith("| check | scope | verdict | numbers |") and "**pass**" in table
    failed = [dict(x, status="failed", kl=None) for x in power_law_records()]
    assert run_checks(failed, rates) == []
