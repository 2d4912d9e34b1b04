"""Rate template: known exponents, the flow smoothness shift, user-supplied rate functions, errors."""

from __future__ import annotations

import pytest

from shared_embed.errors import ConfigError
from theory.truth.rates import (
    Rates,
    effective_smoothness,
    generic_rates,
    nonparametric_exponent,
    predicted_rates,
    resolve_rate,
)


def test_nonparametric_exponent_known_values() -> None:
    assert nonparametric_exponent(1.0, 2) == pytest.approx(0.5)
    assert nonparametric_exponent(2.0, 4) == pytest.approx(0.5)
    assert nonparametric_exponent(2.0, 18) == pytest.approx(4 / 22)


def test_generic_rates_for_the_default_task() -> None:
    flow = generic_rates(d_c=16, d_h=2, d_x=2, beta=2.0, head="flow")  # smoothness 1
    assert flow.transfer == pytest.approx(2 / 6) and flow.oracle == pytest.approx(2 / 6)
    assert flow.no_transfer == pytest.approx(2 / 20) and flow.floor == pytest.approx(2 / 20)
    assert flow.fine_tune is None
    diff = generic_rates(d_c=16, d_h=2, d_x=2, beta=2.0, head="diffusion")  # smoothness 2
    assert diff.transfer == pytest.approx(4 / 8) and diff.no_transfer == pytest.approx(4 / 22)
    assert "template" in flow.label and "(log n)^0" in flow.label
    lin = generic_rates(d_c=16, d_h=2, d_x=2, beta=2.0, head="linear_gaussian", log_power=1.0)
    assert (lin.transfer, lin.oracle, lin.direct) == (1.0, 1.0, 1.0) and "parametric" in lin.label
    assert lin.no_transfer == pytest.approx(4 / 22) and lin.log_power == 1.0


def test_transfer_is_faster_than_no_transfer_whenever_d_h_below_d_c() -> None:
    for beta in (1.5, 2.0, 5.0):
        for d_c, d_h in ((4, 1), (16, 2), (64, 8)):
            r = generic_rates(d_c=d_c, d_h=d_h, d_x=2, beta=beta, head="diffusion")
            assert r.transfer > r.no_transfer


def test_flow_smoothness_is_one_less_and_must_stay_positive() -> None:
    assert effective_smoothness(3.0, "flow") == 2.0
    assert effective_smoothness(3.0, "diffusion") == 3.0
    with pytest.raises(ConfigError, match="beta > 1"):
        generic_rates(16, 2, 2, beta=1.0, head="flow")


def test_for_variant_and_unknown_variant() -> None:
    r = generic_rates(16, 2, 2, 2.0, "gaussian")
    assert r.for_variant("no_transfer") == r.no_transfer
    with pytest.raises(ConfigError, match="unknown variant"):
        r.for_variant("bogus")


def my_rates(d_c: int, d_h: int, d_x: int, beta: float, head: str) -> Rates:
    return Rates(transfer=1.0, no_transfer=0.5, floor=0.25, label="parametric")


def test_user_rate_function_as_callable_and_import_path() -> None:
    assert predicted_rates(16, 2, 2, 2.0, "flow", rate=my_rates).transfer == 1.0
    assert (
        predicted_rates(16, 2, 2, 2.0, "flow", rate="tests.theory.truth.test_theory_rates:my_rates").label
        == "parametric"
    )
    assert resolve_rate("generic") is generic_rates


def test_bad_rate_functions_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown rate"):
        resolve_rate("nope")
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve_rate("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="must return theory.truth.rates.Rates"):
        predicted_rates(16, 2, 2, 2.0, rate=lambda **kw: 0.5)
