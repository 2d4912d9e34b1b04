"""The report's error control: integrity rules gate two Holm tiers, and a band decides its check at its level."""

from __future__ import annotations

import numpy as np
import pytest

from theory.truth.rates import analytic_rates, generic_rates, rate_for_task
from theory.truth.tasks import ConditionalGaussianTask
from theory.verdicts.checks import run_checks
from theory.verdicts.integrity_checks import check_kl_is_divergence, check_replicates_independent
from theory.verdicts.simulated_law import Band
from theory.verdicts.stats import holm, holm_levels
from theory.verdicts.verdict import (
    FAIL,
    INSUFFICIENT_SEEDS,
    INTEGRITY,
    NOT_TESTED,
    PASS,
    PRIMARY,
    SECONDARY,
    CheckResult,
    decide,
)


def check(name: str, tier: str, p_fail: float, p_pass: float | None = 0.5) -> CheckResult:
    return CheckResult(name, "s", "", "summary", p_fail=p_fail, p_pass=p_pass, tier=tier)


@pytest.mark.parametrize("seed", range(20))
def test_holm_levels_agree_with_holm_adjusted_p_values(seed: int) -> None:
    p = np.random.default_rng(seed).uniform(0, 0.1, size=8) ** 2
    adjusted, levels = holm(p), holm_levels(p, 0.05)
    assert [a <= 0.05 for a in adjusted] == [pi <= lv for pi, lv in zip(p, levels)]


@pytest.mark.parametrize("observed", [0.5, 0.9, 1.0, 1.1, 1.25, 1.3, 2.0])
def test_a_band_and_its_p_value_never_disagree(observed: float) -> None:
    band = Band(np.random.default_rng(1).normal(1.0, 0.1, 20_000), observed)
    for level in (0.001, 0.01, 0.05, 0.2):
        assert (band.p_value() <= level) == band.outside(level)


def test_a_verdict_never_contradicts_the_band_printed_beside_it() -> None:
    """R = 1.40 beside a band whose upper end is 1.39 is a FAIL, whatever else the family holds."""
    null = np.random.default_rng(2).normal(1.0, 0.16, 20_000)
    sharp = CheckResult(
        "KL equals its known answer",
        "x",
        "",
        "R = 1.40, {band}",
        p_fail=None,
        p_pass=None,
        tier=PRIMARY,
        band=Band(null, 1.40, {"x2": null * 2, "x1/2": null / 2}),
    )
    sharp.p_fail = sharp.band.p_value()
    others = [check(f"shape {i}", SECONDARY, 0.9) for i in range(15)]
    decide([sharp, *others], 0.05)
    lo, hi = sharp.numbers["band"]
    assert (sharp.verdict == FAIL) == (not lo < 1.40 <= hi)
    assert "{band}" not in sharp.summary and f"{hi:.3g}" in sharp.summary


def test_the_sharp_tier_is_not_diluted_by_the_shapes() -> None:
    """p = 0.006 FAILs a primary check beside 15 secondary ones; Holm over all 16 (0.05 / 16) would not."""
    sharp = check("known answer", PRIMARY, 0.006, None)
    decide([sharp, *[check(f"shape {i}", SECONDARY, 0.9) for i in range(15)]], 0.05)
    assert sharp.verdict == FAIL
    assert holm([0.006] + [0.9] * 15)[0] > 0.05


def test_an_integrity_fail_leaves_the_statistical_tiers_untested() -> None:
    rule = check("replicates are independent", INTEGRITY, 0.0, 1.0)
    sharp, shape = check("known answer", PRIMARY, 0.5, None), check("shape", SECONDARY, 1e-9, 0.5)
    decide([rule, sharp, shape])
    assert rule.verdict == FAIL and sharp.verdict == shape.verdict == NOT_TESTED
    primary, secondary = check("known answer", PRIMARY, 1e-6, None), check("shape", SECONDARY, 0.5, 1e-6)
    decide([primary, secondary])
    assert primary.verdict == FAIL and secondary.verdict == NOT_TESTED


def test_the_tiers_split_the_error_rate_only_when_both_are_tested() -> None:
    alone = check("shape", SECONDARY, 0.03)
    assert decide([alone], 0.05)[0].verdict == FAIL  # a tier alone keeps the whole alpha
    both = [check("known answer", PRIMARY, 0.5, None), check("shape", SECONDARY, 0.03)]
    decide(both, 0.05, primary_share=0.8)
    assert both[1].verdict != FAIL and both[1].numbers["tier_alpha"] == pytest.approx(0.01)


def record(seed: int, kl: float, **extra: object) -> dict:
    return {
        "head": "h",
        "variant": "oracle",
        "n_t": 10,
        "seed": seed,
        "n_s": None,
        "kl": kl,
        "kl_se": 0.01,
        "status": "ok",
        "task_seed": seed,
        **extra,
    }


def test_a_kl_below_minus_three_se_is_not_a_divergence() -> None:
    assert decide([check_kl_is_divergence([record(0, -0.02), record(1, 0.1)])])[0].verdict == PASS
    bad = decide([check_kl_is_divergence([record(0, -0.1), record(1, 0.1)])])[0]
    assert bad.verdict == FAIL and "-10.0 SE" in bad.summary


def test_replicates_that_share_a_task_instance_a_value_or_a_sample_are_caught() -> None:
    fine = [record(s, 0.1 + s / 100, eval_digest=f"e{s}", target_digest=f"t{s}") for s in range(4)]
    assert decide([check_replicates_independent(fine)])[0].verdict == PASS
    same_value = [record(s, 0.1, eval_digest=f"e{s}") for s in range(4)]
    same_eval = [record(s, 0.1 + s / 100, eval_digest="e") for s in range(4)]
    repeated_task = [dict(record(s, 0.1 + s / 100), task_seed=s % 2) for s in range(4)]
    for records in (same_value, same_eval, repeated_task):
        assert decide([check_replicates_independent(records)])[0].verdict == FAIL
    fixed = [dict(record(s, 0.1 + s / 100), task_seed=7) for s in range(4)]
    assert check_replicates_independent(fixed).verdict == INSUFFICIENT_SEEDS  # one instance, one replicate


def test_a_fixed_task_instance_withholds_every_verdict_that_needs_replicates() -> None:
    recs = [
        dict(record(s, 9 / (2 * n) * (1 + s / 50), n_t=n), head_kind="flow", task_seed=0)
        for s in range(4)
        for n in (25, 50, 100, 200)
    ]
    out = run_checks(recs, {"h": analytic_rates(4, 2, 2, 2.0, "flow")})
    assert all(c.verdict == INSUFFICIENT_SEEDS for c in out if c.tier != INTEGRITY and c.p_fail is not None)


def test_the_analytic_prediction_is_informative_where_the_template_is_not() -> None:
    """A flow oracle whose KL falls like n^-0.45 (a head that stalls) passes the template's exponent 0.33 but
    FAILs the parametric-like (log n)^2 / n prediction of an analytic task (about 0.58 over this grid)."""
    assert rate_for_task("auto", ConditionalGaussianTask(d_c=4)) == "analytic"
    n_t = [25, 50, 100, 200, 400, 800]
    jitter = {0: 1.0, 1: 1.05, 2: 0.96, 3: 1.02}
    slow = [
        dict(record(s, 0.5 * n**-0.45 * jitter[s] ** (np.log(n) / 4), n_t=n), head_kind="flow")
        for s in range(4)
        for n in n_t
    ]
    verdict = {c.name: c.verdict for c in run_checks(slow, {"h": analytic_rates(16, 2, 2, 2.0, "flow")})}
    assert verdict["measured exponent >= predicted"] == FAIL
    template = {c.name: c.verdict for c in run_checks(slow, {"h": generic_rates(16, 2, 2, 2.0, "flow")})}
    assert template["measured exponent >= predicted"] == PASS
    good = [
        dict(record(s, 3 * np.log(n) ** 2 / n * (1 + 0.05 * s), n_t=n), head_kind="flow") for s in range(4) for n in n_t
    ]
    verdict = {c.name: c.verdict for c in run_checks(good, {"h": analytic_rates(16, 2, 2, 2.0, "flow")})}
    assert verdict["measured exponent >= predicted"] != FAIL


def test_the_direct_slope_in_d_c_is_held_to_its_known_answer_both_ways() -> None:
    """Direct KL x n_t follows E KL(n; p = d_c) x n across d_c: the exact slope passes; a flat curve (d_c ignored)
    and a doubled slope FAIL."""
    from theory.truth.known_answers import expected_kl_gaussian_regression as e
    from theory.verdicts.dimension_checks import check_predicted_slope

    def records(kl_of) -> list[dict]:
        rng = np.random.default_rng(0)
        return [
            {
                "head": "lin",
                "head_kind": "linear_gaussian",
                "variant": "direct",
                "task_name": "conditional_gaussian",
                "embedding": "linear",
                "seed": s,
                "n_t": n,
                "n_s": None,
                "d_c": d_c,
                "d_h": 2,
                "d_x": 2,
                "task": f"d_c={d_c}",
                "status": "ok",
                "kl": kl_of(n, d_c) * rng.gamma(50, 1 / 50),
            }
            for d_c in (4, 16, 64)
            for s in range(6)
            for n in (100, 200, 400, 800)
        ]

    verdict = lambda recs: decide([check_predicted_slope(recs, "lin", "direct", "d_c", {"d_h": 2})])[0]  # noqa: E731
    right = verdict(records(lambda n, d_c: e(n, 2, d_c)))
    assert right.verdict == PASS, right.summary
    assert verdict(records(lambda n, d_c: e(n, 2, 16))).verdict == FAIL  # flat in d_c
    assert verdict(records(lambda n, d_c: e(n, 2, d_c) ** 2 / e(n, 2, 4))).verdict == FAIL  # twice the slope
