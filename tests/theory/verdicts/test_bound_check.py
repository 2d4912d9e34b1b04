"""The Girsanov-bound check on the closed-form linear-error case: correct records PASS, broken ones FAIL."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from diffusion.sampling import sample_sde
from theory.truth.knn_kl import knn_cross_kl
from theory.truth.linear_score import LinearErrorCase
from theory.verdicts.bound_check import DIAGNOSTIC, check_sde_bound, diagnose_ode_bound, holm_reject
from theory.verdicts.checks import FAIL, INSUFFICIENT, PASS

#: The cells: N(0, I_2) data with score error A = a I + b (1, 1).
ERRORS = ((0.2, 0.0), (0.3, 0.0), (0.0, 0.2))


def _log_p(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(1) - math.log(2 * math.pi)


def closed_form_records(seed: int, n: int = 2000, wrong_bound: float = 1.0) -> list[dict[str, Any]]:
    """One record per error: kl_sde by kNN from n reverse-SDE draws (Heun, 200 steps) of the analytic learned
    score against n exact draws of p_{t_eps} = N(0, I); the bound exact (SE 0) for the error scaled by
    ``wrong_bound`` (1: the right score; < 1: the bound of a better score than the one sampled, a broken pipeline);
    "kl" the exact ODE-law KL with a nominal SE."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for i, (a, b) in enumerate(ERRORS):
        case = LinearErrorCase.isotropic(2, a, b)
        x = torch.randn(n, 2, generator=g, dtype=torch.float64)
        y = sample_sde(
            case.learned_score,
            torch.randn(n, 2, generator=g, dtype=torch.float64),
            case.schedule,
            steps=200,
            method="heun",
            t_eps=case.t_eps,
            generator=g,
        )
        est = knn_cross_kl(x, _log_p(x), y)
        kls = case.kls()
        bound = LinearErrorCase.isotropic(2, wrong_bound * a, wrong_bound * b).kls().bound
        records.append(
            {
                "head": "diffusion",
                "variant": "transfer",
                "n_t": 100 * (i + 1),
                "seed": seed,
                "status": "ok",
                "kl": kls.kl_ode,
                "kl_se": 0.01,
                "bound": bound,
                "bound_se": 0.0,
                "kl_sde": est.value,
                "kl_sde_se": est.se,
                "kl_sde_exact": kls.kl_sde,
            }
        )
    return records


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return closed_form_records(0)


def test_the_knn_kl_of_the_sde_sampler_finds_the_exact_sde_law_kl(records: list[dict[str, Any]]) -> None:
    """The pipeline the check reads: kNN KL of the project's SDE sampler within 3 SE + 0.03 (the estimator's
    stated bias) of the moment-ODE KL."""
    for r in records:
        assert abs(r["kl_sde"] - r["kl_sde_exact"]) < 3 * r["kl_sde_se"] + 0.03


def test_correct_records_pass_with_power(records: list[dict[str, Any]]) -> None:
    result = check_sde_bound(records, "diffusion")
    assert result.verdict == PASS, result.summary
    assert result.numbers["violations"] == 0 and result.numbers["powered"] == len(ERRORS)
    assert "Holm" in result.statistic and "reverse-SDE" in result.hypothesis


def test_a_bound_for_the_wrong_score_fails() -> None:
    """Negative control: each cell's bound computed for an error a third the size of the one sampled."""
    result = check_sde_bound(closed_form_records(1, wrong_bound=1 / 3), "diffusion")
    assert result.verdict == FAIL, result.summary
    assert result.numbers["violations"] >= 2


def test_an_inflated_sde_kl_fails(records: list[dict[str, Any]]) -> None:
    """Negative control: one cell's measured KL moved to 1.5 x its bound (an estimator off by a constant)."""
    broken = [dict(r) for r in records]
    broken[1]["kl_sde"] = 1.5 * broken[1]["bound"]
    result = check_sde_bound(broken, "diffusion")
    assert result.verdict == FAIL and result.numbers["violations"] == 1


def test_without_power_the_verdict_is_insufficient(records: list[dict[str, Any]]) -> None:
    noisy = [{**r, "kl_sde_se": r["bound"]} for r in records]
    assert check_sde_bound(noisy, "diffusion").verdict == INSUFFICIENT
    assert check_sde_bound([], "diffusion").verdict == INSUFFICIENT
    no_sde = [{k: v for k, v in r.items() if k != "kl_sde"} for r in records]
    assert check_sde_bound(no_sde, "diffusion").verdict == INSUFFICIENT


def test_the_ode_comparison_is_a_diagnostic_even_when_the_ode_kl_exceeds_the_bound(
    records: list[dict[str, Any]],
) -> None:
    """On the closed-form case the exact ODE-law KL is above the bound in every cell, with correct code."""
    result = diagnose_ode_bound(records, "diffusion")
    assert result.verdict == DIAGNOSTIC
    assert result.numbers["ode_above_bound"] == len(ERRORS) and result.numbers["ratio_median"] > 2
    assert diagnose_ode_bound([], "diffusion").verdict == DIAGNOSTIC


def test_holm_steps_down() -> None:
    """m = 3 at alpha 0.05: thresholds 0.0167, 0.025, 0.05 in p order; stops at the first p above its threshold."""
    assert holm_reject([0.01, 0.04, 0.02], 0.05) == [True, True, True]
    assert holm_reject([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert holm_reject([0.02, 0.001, 0.9], 0.05) == [True, True, False]
    assert holm_reject([0.03, 0.001, 0.9], 0.05) == [False, True, False]
    assert holm_reject([], 0.05) == []


@pytest.mark.slow
def test_error_rates_over_repetitions() -> None:
    """20 independent repetitions: the correct pipeline passes every time (false-fail 0/20) and the wrong-score
    bound fails every time (false-pass 0/20)."""
    verdicts = [check_sde_bound(closed_form_records(100 + s), "diffusion").verdict for s in range(20)]
    broken = [check_sde_bound(closed_form_records(200 + s, wrong_bound=1 / 3), "diffusion").verdict for s in range(20)]
    assert verdicts.count(PASS) == 20 and broken.count(FAIL) == 20
