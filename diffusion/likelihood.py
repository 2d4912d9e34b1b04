"""Log-densities through the probability-flow ODE, for ANY score function ``score(x, t, context)``.

With f(x, t) = -1/2 beta(t) [x + s(x, t)] the instantaneous change of variables gives, along the ODE path
from x_{t_eps} = x_0 to x_1,

    log p_hat(x_0) = log N(x_1; 0, I) + int_{t_eps}^1 div f(x_t, t) dt,   div f = -1/2 beta(t) [d + div s].

The divergence is exact or Hutchinson's estimator. The exact trace of the Jacobian has two implementations
with the same result: ``"exact_func"``, ``torch.func`` with the d vector-Jacobian products batched by ``vmap``
into one backward pass, and ``"exact_loop"``, d separate backward passes. Both cost d backward passes in
arithmetic; the batched form saves the fixed cost of each pass, which pays when d is large and the batch small.
``"exact"`` (the default) picks ``exact_func`` when d >= ``EXACT_FUNC_MIN_FEATURES`` and
n * d <= ``EXACT_FUNC_MAX_ROWS``, the loop otherwise (the measured crossover:
docs/notes/2026-12-02-exact-divergence-batched-or-loop.md; ``benchmarks/likelihood.py`` times them side by side).
The third choice is Hutchinson's estimator E_v[v^T (ds/dx) v] with ``probes`` seeded Rademacher (or Gaussian)
vectors drawn once and held fixed along the path, so the ODE stays deterministic for the adaptive solver and
the estimate is unbiased for the same integral. Rademacher is the default: its variance has no diagonal term,
and its per-point spread is far smaller than Gaussian probes' (docs/notes/2026-11-24-diffusion-head-design.md);
the spread falls like 1/sqrt(probes). Both assume the score acts row by row (row i of the output depends on row
i of x only), as every network and analytic score here does.

Gradients follow torch's grad mode: when grad is enabled at the call, nothing is detached and the
divergence is built with ``create_graph=True``, so the result is differentiable in x_0, the context and
every parameter the score closes over (backpropagation through the solver's steps, not the adjoint
method). Under ``torch.no_grad()`` (evaluation, e.g. KL estimates) each divergence is computed under a
local ``enable_grad`` on a detached copy and the result carries no graph, which keeps memory flat.

Example:
    >>> score = lambda x, t, context: -x                       # the score of N(0, I) at every t
    >>> probability_flow_log_prob(score, torch.randn(5, 2), VPSchedule())     # (5,) = log N(x; 0, I)

References:
    Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole, "Score-Based Generative Modeling
    through Stochastic Differential Equations", ICLR 2021, https://arxiv.org/abs/2011.13456.
    W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, "FFJORD: Free-form Continuous
    Dynamics for Scalable Reversible Generative Models", ICLR 2019, https://arxiv.org/abs/1810.01367.
    M. F. Hutchinson, "A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
    Splines", Communications in Statistics - Simulation and Computation, 1989 (no arXiv version).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

from shared_embed.errors import DTypeError
from shared_embed.validation import check_choice, check_positive_float, check_positive_int

from .sampling import ODE_METHODS, ScoreFn, _call, check_finite_score, check_score_inputs, solve_ode
from .schedule import VPSchedule

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "DIVERGENCES",
    "EXACT_CHUNK_ROWS",
    "EXACT_FUNC_MAX_ROWS",
    "EXACT_FUNC_MIN_FEATURES",
    "FlowOptions",
    "PROBES",
    "PriorLogProb",
    "ProbabilityFlowResult",
    "draw_probes",
    "exact_divergence",
    "hutchinson_divergence",
    "jacobian_trace",
    "probability_flow",
    "probability_flow_log_prob",
    "standard_normal_log_prob",
]

DIVERGENCES = ("exact", "exact_func", "exact_loop", "hutchinson")
#: rows (points x basis vectors) of one batched backward pass of ``exact_func``; bounds its memory.
EXACT_CHUNK_ROWS = 2**16
#: ``"exact"`` takes ``exact_func`` from this many features and up to this many rows n * d, the d-pass loop
#: otherwise (see the module docstring).
EXACT_FUNC_MIN_FEATURES = 32
EXACT_FUNC_MAX_ROWS = 4096
PROBES = ("rademacher", "gaussian")
#: log-density of x_1 at t = 1 given the context; the default is the standard normal.
PriorLogProb = Callable[[Tensor, "Tensor | None"], Tensor]


class FlowOptions(TypedDict, total=False):
    """The keyword options :func:`probability_flow_log_prob` passes on to :func:`probability_flow`."""

    probe: str
    method: str
    prior: PriorLogProb | None


@dataclass
class ProbabilityFlowResult:
    """What one likelihood solve gives: ``log_prob`` (n,) = ``prior_log_prob`` (n,) + ``delta`` (n,), the
    endpoints x1 (n, d), and ``nfe``, the evaluations of the ODE's right-hand side (each one score call plus
    d exact or ``probes`` Hutchinson vector-Jacobian products)."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta: Tensor
    x1: Tensor
    nfe: int


def standard_normal_log_prob(x: Tensor, context: Tensor | None = None) -> Tensor:
    """log N(x; 0, I), (n,)."""
    return -0.5 * (x.square().sum(-1) + x.shape[-1] * math.log(2 * math.pi))


def jacobian_trace(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x), div)``: the output (n, d) of a row-wise ``fn`` and sum_i d fn_i / d x_i per row, (n,).

    ``torch.func.vjp`` runs ``fn`` once; ``vmap`` pulls the d unit vectors back in one batched pass (in chunks
    of at most ``EXACT_CHUNK_ROWS`` rows). The result is differentiable in x and in everything ``fn`` closes over
    when those carry gradients (torch.func composes with ordinary autograd).
    """
    # torch annotates vjp's result as a 2- or 3-tuple (3 with has_aux=True) without overloads; here it is 2
    out, pullback = torch.func.vjp(fn, x)  # type: ignore[misc]
    n, d = x.shape
    basis = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, n, d)
    (rows,) = torch.func.vmap(pullback, chunk_size=max(1, min(d, EXACT_CHUNK_ROWS // max(n, 1))))(basis)
    return out, rows.diagonal(dim1=0, dim2=2).sum(-1)  # rows[i, :, i] = d fn_i / d x_i


def exact_divergence(out: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """sum_i d out_i / d x_i per row, (n,), by d separate vector-Jacobian products (``"exact_loop"``)."""
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        (grad,) = torch.autograd.grad(out[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + grad[:, i]
    return div


def hutchinson_divergence(out: Tensor, x: Tensor, probes: Tensor, create_graph: bool) -> Tensor:
    """mean_k v_k^T (d out / d x) v_k per row, (n,), for probes (k, n, d)."""
    est = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for v in probes:
        (vjp,) = torch.autograd.grad(out, x, v, create_graph=create_graph, retain_graph=True)
        est = est + (vjp * v).sum(-1)
    return est / probes.shape[0]


def draw_probes(count: int, shape: torch.Size, kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """(count, *shape) Rademacher (+-1) or standard Gaussian probe vectors; seed 0 when no generator is given."""
    gen = generator if generator is not None else torch.Generator(device=like.device).manual_seed(0)
    if kind == "gaussian":
        return torch.randn((count, *shape), generator=gen, dtype=like.dtype, device=like.device)
    bits = torch.randint(0, 2, (count, *shape), generator=gen, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def probability_flow(
    score: ScoreFn,
    x0: Tensor,
    schedule: VPSchedule,
    *,
    context: Tensor | None = None,
    divergence: str = "exact",
    probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    prior: PriorLogProb | None = None,
) -> ProbabilityFlowResult:
    """Solve the probability-flow ODE with its log-density integral from t_eps to 1; see the module docstring.

    Args:
        score: ``score(x (n, d), t (n,), context) -> (n, d)``, the score grad_x log p_t.
        x0: points (n, d) whose log-density is wanted; context: (n, k) or None, passed to ``score``.
        divergence: ``"exact"`` (the faster of the next two for the batch size), ``"exact_func"`` (torch.func),
            ``"exact_loop"`` (d backward passes) or ``"hutchinson"``
            (``probes`` vectors of kind ``probe``, drawn with
            ``generator``; seed 0 when it is None, so repeated calls agree).
        rtol / atol / method: torchdiffeq's adaptive solver and its tolerances (state: x and the integral).
        t_eps: the lower end; the result is the density of the model's x_{t_eps} (s_{t_eps} ~ 1e-3 for
            the default linear schedule, negligible against data scales).
        prior: log-density of x_1 given the context (default ``log N(0, I)``); the exact p_1 isolates the
            solver error in tests.

    Raises:
        ShapeError, DTypeError, DataError: x0 or the context malformed, a setting of the wrong type or not
            positive, the score's output not (n, d) or not finite. ConfigError: an unknown ``divergence``,
            ``probe`` or ``method``.
    """
    check_score_inputs(score, x0, "x0", context, t_eps)
    check_choice("divergence", divergence, DIVERGENCES)
    check_positive_int("probes", probes)
    check_choice("probe", probe, PROBES)
    check_positive_float("rtol", rtol)
    check_positive_float("atol", atol)
    check_choice("method", method, ODE_METHODS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    keep_graph = torch.is_grad_enabled()
    vectors = draw_probes(probes, x0.shape, probe, x0, generator) if divergence == "hutchinson" else None
    nfe = 0

    def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        x = state[0]
        beta = schedule.beta(t).to(x)
        with torch.enable_grad():
            if not (keep_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            if divergence == "exact_func" or (
                divergence == "exact" and x.shape[1] >= EXACT_FUNC_MIN_FEATURES and x.numel() <= EXACT_FUNC_MAX_ROWS
            ):
                s, div_s = jacobian_trace(lambda z: _call(score, z, t, context, (t_eps, 1.0)), x)
            else:
                s = _call(score, x, t, context, (t_eps, 1.0))
                div_s = (
                    exact_divergence(s, x, keep_graph)
                    if vectors is None
                    else hutchinson_divergence(s, x, vectors, keep_graph)
                )
        check_finite_score(score, s, t)
        check_finite_score(score, div_s, t, "divergence of the score")
        dx = -0.5 * beta * (x + s)
        ddelta = -0.5 * beta * (x.shape[1] + div_s)
        if not keep_graph:
            dx, ddelta = dx.detach(), ddelta.detach()
        return dx, ddelta

    ts = torch.tensor([t_eps, 1.0], dtype=x0.dtype, device=x0.device)
    start = (x0, torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device))
    xs, deltas = solve_ode(score, rhs, start, ts, rtol=rtol, atol=atol, method=method, options={"step_t": ts[1:]})
    x1, delta = xs[-1], deltas[-1]
    prior_lp = (prior or standard_normal_log_prob)(x1, context)
    return ProbabilityFlowResult(prior_lp + delta, prior_lp, delta, x1, nfe)


def probability_flow_log_prob(
    score: ScoreFn,
    x0: Tensor,
    schedule: VPSchedule,
    *,
    context: Tensor | None = None,
    divergence: str = "exact",
    probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float = 1e-5,
    generator: torch.Generator | None = None,
    **options: Unpack[FlowOptions],
) -> Tensor:
    """log p_hat(x0) (n,) in nats through the probability-flow ODE (:func:`probability_flow` for the NFE).

    ``options``: ``probe``, ``method`` and ``prior`` of :func:`probability_flow`.

    Example:
        >>> lp = probability_flow_log_prob(score, torch.randn(100, 2), VPSchedule(), divergence="exact")
    """
    return probability_flow(
        score,
        x0,
        schedule,
        context=context,
        divergence=divergence,
        probes=probes,
        rtol=rtol,
        atol=atol,
        t_eps=t_eps,
        generator=generator,
        **options,
    ).log_prob
