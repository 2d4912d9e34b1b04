"""Predicted KL decay exponents: the rate template of docs/theory.md as code.

These are GENERIC NONPARAMETRIC RATES for beta-smooth conditional densities, with log factors dropped. They
are a template in the spirit of the transfer theory (Tian & Shen 2024; Cheng et al. 2025), NOT the papers'
exact theorem statements, which were not available. For the KL of a d-dimensional beta-smooth density
estimated from n samples the template is ``E KL <~ n^(-2 beta / (2 beta + d))``:

    no transfer:  E KL <~ n_t^(-2b / (2b + d_c + d_x))
    transfer:     E KL <~ n_t^(-2b / (2b + d_h + d_x)) + floor(n_s),  floor(n_s) <~ n_s^(-2b / (2b + d_c + d_x))
    oracle:       E KL <~ n_t^(-2b / (2b + d_h + d_x))        (transfer with the true embedding: no floor)

with b = beta for diffusion (and other score or density heads) and b = beta - 1 for flows, whose density
comes through a Jacobian. Fine-tuning has no prediction in the template (None). ``log_power`` = gamma makes
the log factor explicit: E KL <~ n^(-r) (log n)^gamma, and the checks fit the slope of log(KL / (log n)^gamma).

A PARAMETRIC head (a well-specified linear-Gaussian head, :data:`PARAMETRIC_HEADS`) is not a template case:
its maximum-likelihood fit has E KL = k / (2n) + O(n^-2) with k free parameters, exponent exactly 1 for the
variants that fit it on a fixed context (transfer's head term, oracle, direct). No-transfer still learns an
encoder (a nonparametric part) and the floor comes from the encoder, so those keep the template in d_c.

They are upper bounds with unknown constants, so a measured curve that decays FASTER than predicted is
consistent with them: the checks ask that the measured exponent be at least the predicted one.

ANALYTIC tasks (every shipped conditional task: Gaussian or Gaussian-mixture heads on a smooth embedding, so the
true conditional is analytic and finite-dimensional given h*) get :func:`analytic_rates` by default (``rate =
"auto"``): a head on a FIXED context (transfer's head term, oracle, direct) then learns a parametric-like object,
and its KL falls like (log n)^gamma / n with gamma = :data:`ANALYTIC_LOG_POWER`; over a grid of n_t this is an
exponent bound 1 - gamma * (slope of log log n on log n), about 0.58 over n_t = 25..800, far above the template's
0.1-0.33, so a curve that plateaus FAILs. Variants that learn the encoder from the target (no-transfer) and the
floor in n_s keep the nonparametric template, labelled as such. Tasks that are not analytic get the template.

A user can supply their own rate function with the signature of :data:`RateFunction`, either directly
(``predicted_rates(..., rate=my_fn)``) or from a config as ``"package.module:function"``.

Example:
    >>> r = generic_rates(d_c=16, d_h=2, d_x=2, beta=2.0, head="flow")
    >>> round(r.transfer, 4), round(r.no_transfer, 4), round(r.floor, 4)
    (0.3333, 0.1, 0.1)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from shared_embed.errors import ConfigError
from shared_embed.validation import check_positive_float, check_positive_int

#: Head kinds whose density comes through a Jacobian: effective smoothness beta - 1.
JACOBIAN_HEADS = ("flow",)
#: Well-specified finite-dimensional heads: the parametric rate 1 on a fixed context.
PARAMETRIC_HEADS = ("linear_gaussian",)
VARIANT_NAMES = ("transfer", "no_transfer", "fine_tune", "oracle", "direct")


@dataclass(frozen=True)
class Rates:
    """Predicted exponents r in ``E KL <~ C n^(-r)``: in n_t per variant (transfer: above its floor) and
    in n_s for the transfer floor. ``None``: the template makes no prediction. ``label`` names the source."""

    transfer: float
    no_transfer: float
    floor: float
    oracle: float | None = None
    fine_tune: float | None = None
    direct: float | None = None
    log_power: float = 0.0
    label: str = "generic nonparametric rate (log factors dropped)"
    #: variant -> log factor power gamma of that variant's prediction, where it differs from ``log_power``
    log_powers: dict[str, float] | None = None

    def log_power_for(self, variant: str) -> float:
        """The power gamma of the (log n)^gamma factor in ``variant``'s prediction."""
        return (self.log_powers or {}).get(variant, self.log_power)

    def for_variant(self, variant: str) -> float | None:
        """The exponent in n_t of ``variant`` (one of :data:`VARIANT_NAMES`), or None."""
        if variant not in VARIANT_NAMES:
            raise ConfigError(f"unknown variant {variant!r}; valid: {', '.join(VARIANT_NAMES)}")
        return getattr(self, variant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``rate(d_c=, d_h=, d_x=, beta=, head=) -> Rates``: what a user-supplied rate function must look like.
RateFunction = Callable[..., Rates]


def nonparametric_exponent(beta: float, dim: int) -> float:
    """``2 beta / (2 beta + dim)``: the KL exponent of a beta-smooth density in ``dim`` dimensions."""
    check_positive_float("beta", beta)
    check_positive_int("dim", dim)
    return 2.0 * beta / (2.0 * beta + dim)


def effective_smoothness(beta: float, head: str) -> float:
    """beta for diffusion/Gaussian heads, beta - 1 for flows (density through a Jacobian); must stay > 0."""
    check_positive_float("beta", beta)
    eff = beta - 1.0 if head in JACOBIAN_HEADS else beta
    if eff <= 0:
        raise ConfigError(
            f"beta={beta} leaves a {head!r} head an effective smoothness beta - 1 = {eff:g} <= 0; use beta > 1"
        )
    return eff


def generic_rates(d_c: int, d_h: int, d_x: int, beta: float, head: str = "flow", log_power: float = 0.0) -> Rates:
    """The exponents for a task of dimensions (d_c, d_h, d_x): the template with smoothness ``beta`` and log
    factor (log n)^``log_power``, or the parametric rate 1 for a parametric head on a fixed context."""
    for name, v in (("d_c", d_c), ("d_h", d_h), ("d_x", d_x)):
        check_positive_int(name, v)
    b = effective_smoothness(beta, head)
    low = nonparametric_exponent(b, d_h + d_x)
    high = nonparametric_exponent(b, d_c + d_x)
    if head in PARAMETRIC_HEADS:
        return Rates(
            transfer=1.0,
            no_transfer=high,
            floor=high,
            oracle=1.0,
            fine_tune=None,
            direct=1.0,
            log_power=log_power,
            label=f"parametric rate 1 (E KL ~ k/2n) on a fixed context; template "
            f"with smoothness {b:g} for the learned encoder (no-transfer, floor)",
        )
    return Rates(
        transfer=low,
        no_transfer=high,
        floor=high,
        oracle=low,
        fine_tune=None,
        direct=high,
        log_power=log_power,
        label=f"generic nonparametric template, effective smoothness {b:g}, log factor (log n)^{log_power:g}",
    )


#: gamma of the parametric-like rate (log n)^gamma / n of a flow or diffusion head on a fixed context
ANALYTIC_LOG_POWER = 2.0


def analytic_rates(d_c: int, d_h: int, d_x: int, beta: float, head: str = "flow", log_power: float = 0.0) -> Rates:
    """Predictions for an analytic task: (log n)^2 / n for heads on a fixed context (transfer's head term,
    oracle, direct), the nonparametric template for no-transfer and the floor; parametric heads as in
    :func:`generic_rates`."""
    base = generic_rates(d_c, d_h, d_x, beta, head, log_power)
    if head in PARAMETRIC_HEADS:
        return base
    fixed = {v: ANALYTIC_LOG_POWER for v in ("transfer", "oracle", "direct")}
    return Rates(
        transfer=1.0,
        no_transfer=base.no_transfer,
        floor=base.floor,
        oracle=1.0,
        fine_tune=None,
        direct=1.0,
        log_power=log_power,
        log_powers=fixed,
        label=f"parametric-like (log n)^{ANALYTIC_LOG_POWER:g} / n on a fixed context (analytic task); "
        f"nonparametric template, effective smoothness {effective_smoothness(beta, head):g}, for "
        "no-transfer and the floor",
    )


RATE_FUNCTIONS: dict[str, RateFunction] = {"generic": generic_rates, "analytic": analytic_rates}
#: The rate name that picks "analytic" for tasks that declare ``analytic = True`` and "generic" otherwise.
AUTO = "auto"


def rate_for_task(rate: str | RateFunction, task: object) -> str | RateFunction:
    """Resolve ``"auto"``: "analytic" for a task class declaring ``analytic = True``, else "generic"."""
    if rate != AUTO:
        return rate
    return "analytic" if getattr(task, "analytic", False) else "generic"


def check_rate_name(rate: str) -> str:
    """``rate`` if it is a registered name, "auto" or has the form ``package.module:function``; imports nothing."""
    if rate in RATE_FUNCTIONS or rate == AUTO:
        return rate
    module_name, sep, attr = rate.partition(":")
    if not (sep and attr.isidentifier() and all(p.isidentifier() for p in module_name.split("."))):
        raise ConfigError(f"unknown rate {rate!r}; valid: {sorted(RATE_FUNCTIONS)} or 'package.module:function'")
    return rate


def resolve_rate(rate: str | RateFunction) -> RateFunction:
    """A rate function from a callable, a registered name (``"generic"``) or ``"package.module:function"``."""
    if callable(rate):
        return rate
    if not isinstance(rate, str):
        raise ConfigError(f"rate must be a name, 'module:function' or a callable, got {type(rate).__name__}")
    if rate in RATE_FUNCTIONS:
        return RATE_FUNCTIONS[rate]
    if ":" not in rate:
        raise ConfigError(f"unknown rate {rate!r}; valid: {sorted(RATE_FUNCTIONS)} or 'package.module:function'")
    module_name, _, attr = rate.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"rate {rate!r} cannot be imported: {err}") from err
    if not callable(fn):
        raise ConfigError(f"rate {rate!r} is not callable")
    return fn


def predicted_rates(
    d_c: int,
    d_h: int,
    d_x: int,
    beta: float,
    head: str = "flow",
    rate: str | RateFunction = "generic",
    log_power: float = 0.0,
) -> Rates:
    """Call the rate function ``rate`` (see :func:`resolve_rate`) and check that it returned :class:`Rates`."""
    kw = {"log_power": log_power} if log_power else {}
    try:
        out = resolve_rate(rate)(d_c=d_c, d_h=d_h, d_x=d_x, beta=beta, head=head, **kw)
    except ConfigError:
        raise
    except Exception as err:  # a user's function that does not take these arguments, or fails on them
        raise ConfigError(
            f"rate function {rate!r} failed on (d_c={d_c}, d_h={d_h}, d_x={d_x}, beta={beta}, "
            f"head={head!r}): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, Rates):
        raise ConfigError(f"rate function {rate!r} must return theory.truth.rates.Rates, got {type(out).__name__}")
    return out
