"""Scoring the TGDP simulation's models against the exact answers of :class:`~theory.truth.tasks.TwoGaussianTask`.

- :class:`ScoreModel`: any score function (a learned head, TGDP's composed score, Domain Guidance) read as a
  density model of the target: log q_hat(x) by the probability-flow ODE, samples by the ODE sampler; in the
  conditional version the joint q_hat(x, y) = q_hat(y) q_hat(x | y) with a
  :class:`~diffusion.tgdp.LabelMarginal`.
- :func:`score_model`: KL(q || q_hat) with its Monte Carlo SE (``theory.truth.kl``) on fresh exact target draws, and
  MMD^2 (``theory.truth.metrics``, median-heuristic bandwidth) between ODE samples and exact target draws, on x.
- :func:`guidance_errors`: log h_psi against the exact log h_t = log q_t / p_t, and grad_x log h against the
  exact grad, at points of p_t (and of q_t) for a grid of t; :func:`score_errors`: any score against the exact
  target score at points of q_t; :func:`ratio_errors`: the domain classifier's
  log w against the exact log w = log q / p at t = 0; :func:`log_h_line`: both along the line x = (0.5, s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from diffusion.likelihood import probability_flow_log_prob
from diffusion.sampling import ScoreFn, sample_ode
from diffusion.schedule import VPSchedule
from diffusion.tgdp import DensityRatio, LabelMarginal, guidance_grad
from diffusion.tgdp.guidance import Guidance
from diffusion.tgdp.quadratic_ratio import QuadraticLogRatio
from shared_embed.data import PairedData
from theory.truth.kl import monte_carlo_kl
from theory.truth.metrics import mmd2
from theory.truth.tasks import TwoGaussianTask

#: the label set of the simulation (y = +1 is the component at +mu)
LABELS = torch.tensor([-1.0, 1.0])
#: the line x = (LINE_X, s), s in [-1.5, 1.5], passes through both mu_S = (0.5, 0.5) and mu_T = (0.5, -0.5)
LINE_X = 0.5


def true_labels(task: TwoGaussianTask | None = None) -> LabelMarginal:
    """q(y), the exact target label marginal over LABELS (for the n-independent reference rows)."""
    probs = torch.tensor([0.5, 0.5]) if task is None else task.label_probs("target").float()
    return LabelMarginal(LABELS.clone(), probs)


@dataclass
class ScoreModel:
    """A score read as a model of x (n, 2), or of (x, y (n, 1)) when ``labels`` (q_hat(y)) is given."""

    score: ScoreFn
    schedule: VPSchedule
    labels: LabelMarginal | None = None
    rtol: float = 1e-4
    atol: float = 1e-4
    t_eps: float = 1e-5

    @torch.no_grad()
    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log q_hat(x) or log q_hat(y) + log q_hat(x | y), (n,), by the probability-flow ODE (exact divergence)."""
        ctx = y if self.labels is not None else None
        lp = probability_flow_log_prob(
            self.score,
            x,
            self.schedule,
            context=ctx,
            divergence="exact",
            rtol=self.rtol,
            atol=self.atol,
            t_eps=self.t_eps,
        ).detach()
        return lp if self.labels is None else lp + self.labels.log_prob(cast(Tensor, y))  # y given with labels

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, 2) draws of x by the ODE sampler (y ~ q_hat(y) first in the conditional version)."""
        y = None if self.labels is None else self.labels.sample(n, generator)
        x1 = torch.randn(n, 2, generator=generator)
        return sample_ode(self.score, x1, self.schedule, context=y, rtol=self.rtol, atol=self.atol, t_eps=self.t_eps)


def true_log_prob(task: TwoGaussianTask, data: PairedData, conditional: bool) -> Tensor:
    """log q(x) (n,), or log q(x, y) = log 1/2 + log q(x | y) in the conditional version."""
    if not conditional:
        return task.log_prob(data.x.double(), "target").double()
    log_qy = task.label_probs("target").log()
    y = cast(Tensor, data.c)  # the task's pairs hold their labels
    return torch.where(y[:, 0] > 0, log_qy[1], log_qy[0]) + task.log_prob(data.x.double(), "target", y).double()


def score_model(
    task: TwoGaussianTask,
    model: ScoreModel,
    eval_data: PairedData,
    mmd_reference: Tensor,
    generator: torch.Generator,
    keep: int = 400,
) -> dict[str, Any]:
    """KL(q || q_hat) +- SE on ``eval_data`` (joint in the conditional version), MMD^2 of len(mmd_reference)
    ODE samples against ``mmd_reference`` (n, 2) (x only), the label KL, and the first ``keep`` samples."""
    conditional = model.labels is not None
    log_q = true_log_prob(task, eval_data, conditional)
    est = monte_carlo_kl(log_q, model.log_prob(eval_data.x, eval_data.c if conditional else None).double())
    samples = model.sample(mmd_reference.shape[0], generator)
    finite = bool(torch.isfinite(samples).all())
    value, bandwidth = mmd2(samples, mmd_reference) if finite else (float("nan"), float("nan"))
    out = {
        "kl": est.value,
        "kl_se": est.se,
        "n_eval": est.n,
        "mmd2": value,
        "mmd_bandwidth": bandwidth,
        "n_mmd": int(mmd_reference.shape[0]),
        "samples": samples[:keep].tolist(),
    }
    if model.labels is not None:  # the conditional version
        out["label_kl"] = model.labels.kl_from(task.label_probs("target").float())
        out["label_probs"] = model.labels.probs.tolist()
    return out


def _noised(
    task: TwoGaussianTask, domain: str, schedule: VPSchedule, t: float, n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """x_t (n, 2) from p_t (domain source) or q_t (target), its labels (n, 1) and t (n,)."""
    data = task.sample(n, domain, generator)
    tt = torch.full((n,), t)
    noise = torch.randn(n, 2, generator=generator)
    return schedule.alpha(tt)[:, None] * data.x + schedule.sigma(tt)[:, None] * noise, cast(Tensor, data.c), tt


def guidance_errors(
    task: TwoGaussianTask,
    guidance: Guidance,
    schedule: VPSchedule,
    times: Sequence[float],
    n: int,
    conditional: bool,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Per t: mean (log h_psi - log h_t)^2 and mean |grad log h_psi - grad log h_t|^2 at n points of p_t
    (keys ``log_h_mse``, ``grad_mse``) and of q_t (``*_q``); ``*_mean``: the averages over ``times``."""
    out: dict[str, Any] = {}
    for domain, suffix in (("source", ""), ("target", "_q")):
        lh, gr = {}, {}
        for t in times:
            x, y, tt = _noised(task, domain, schedule, float(t), n, generator)
            ctx = y if conditional else None
            a, s = schedule.alpha(tt), schedule.sigma(tt)
            with torch.no_grad():
                exact = task.log_guidance(x, a, s, ctx).double()
                exact_grad = task.guidance_grad(x, a, s, ctx).double()
                learned = guidance.log_h(x, tt, ctx).double()
                learned_grad = guidance_grad(guidance, x, tt, ctx).double()
            lh[str(t)] = float((learned - exact).square().mean())
            gr[str(t)] = float((learned_grad - exact_grad).square().sum(-1).mean())
        out[f"log_h_mse{suffix}"], out[f"grad_mse{suffix}"] = lh, gr
        out[f"log_h_mse{suffix}_mean"] = sum(lh.values()) / len(lh)
        out[f"grad_mse{suffix}_mean"] = sum(gr.values()) / len(gr)
    return out


def score_errors(
    task: TwoGaussianTask,
    score: ScoreFn,
    schedule: VPSchedule,
    times: Sequence[float],
    n: int,
    conditional: bool,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Per t: mean |s(x, t) - grad log q_t(x)|^2 at n points of q_t (``score_mse_q``) and its average over
    ``times``: the error of any method's score where the target lives, composite scores included."""
    out = {}
    for t in times:
        x, y, tt = _noised(task, "target", schedule, float(t), n, generator)
        ctx = y if conditional else None
        exact = task.noised_score(x, "target", schedule.alpha(tt), schedule.sigma(tt), ctx).double()
        with torch.no_grad():
            out[str(t)] = float((score(x, tt, ctx).double() - exact).square().sum(-1).mean())
    return {"score_mse_q": out, "score_mse_q_mean": sum(out.values()) / len(out)}


def ratio_errors(
    task: TwoGaussianTask,
    ratio: DensityRatio | QuadraticLogRatio,
    n: int,
    conditional: bool,
    generator: torch.Generator,
) -> dict[str, float]:
    """The classifier's mean (log w_hat - log w)^2 at t = 0 on n source (``ratio_mse``) and target
    (``ratio_mse_q``) draws; with labels, w = q(x, y) / p(x, y) (both label marginals are 1/2)."""
    out = {}
    for domain, key in (("source", "ratio_mse"), ("target", "ratio_mse_q")):
        data = task.sample(n, domain, generator)
        ctx = data.c if conditional else None
        with torch.no_grad():
            err = ratio.log_ratio(data.x, None, ctx).double() - task.log_density_ratio(data.x, ctx).double()
        out[key] = float(err.square().mean())
    return out


def log_h_line(
    task: TwoGaussianTask,
    guidance: Guidance | None,
    schedule: VPSchedule,
    times: Sequence[float],
    conditional: bool,
    points: int = 61,
) -> dict[str, Any]:
    """log h along x = (0.5, s), s in [-1.5, 1.5] (label y = +1 in the conditional version): ``s``, and per t
    the ``exact`` values and, when ``guidance`` is given, the ``learned`` ones."""
    s = torch.linspace(-1.5, 1.5, points)
    x = torch.stack([torch.full_like(s, LINE_X), s], dim=-1)
    y = torch.ones(points, 1) if conditional else None
    exact, learned = {}, {}
    for t in times:
        tt = torch.full((points,), float(t))
        with torch.no_grad():
            exact[str(t)] = task.log_guidance(x, schedule.alpha(tt), schedule.sigma(tt), y).tolist()
            if guidance is not None:
                learned[str(t)] = guidance.log_h(x, tt, y).tolist()
    out: dict[str, Any] = {"s": s.tolist(), "exact": exact}
    if guidance is not None:
        out["learned"] = learned
    return out
