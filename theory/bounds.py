"""The Girsanov bound of a fitted diffusion model against a ground-truth conditional task.

:func:`diffusion.bound.girsanov_bound` needs the learned and the true noised score in ONE space. A fitted
:class:`~shared_embed.model.ConditionalModel` scores z = (x - m) / s (its x scaler) given h = embed(c), so the
truth is carried into that space: x | c is a Gaussian mixture (``task.conditional``), hence z | c is one too,
with means (mu - m) / s and covariances S / (s s^T), and it stays a mixture under the forward process. KL is
invariant under that affine map, so the bound computed on z bounds KL(p_T(x | c) || p_hat(x | c)) averaged
over c ~ p_T(c), the quantity the sweep measures.

The prior term E_c KL(p_1(. | c) || N(0, I)) is a Monte Carlo estimate from the exact noised log-density.

Example:
    >>> b = girsanov_bound_for(task, fitted_diffusion_model, n=1000, generator=torch.Generator().manual_seed(0))
    >>> print(f"bound {b.value:.3f} +- {b.se:.3f} nats")
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from diffusion.bound import GirsanovBound, girsanov_bound
from diffusion.head import DiffusionHead
from shared_embed.data import PairedData
from shared_embed.errors import ConfigError
from shared_embed.model import ConditionalModel
from shared_embed.standardize import Standardizer
from shared_embed.validation import check_positive_int

from .mixture import GaussianMixture


class MixtureTask(Protocol):
    """A conditional task whose law of x given each row of c is a :class:`GaussianMixture`."""

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData: ...
    def conditional(self, c: Tensor, domain: str) -> GaussianMixture: ...


def standardized_law(law: GaussianMixture, scaler: Standardizer) -> GaussianMixture:
    """The law of z = (x - mean) / std when x ~ ``law`` (a batch of mixtures), in float64."""
    m, s = scaler.mean.double().cpu(), scaler.std.double().cpu()
    return GaussianMixture(law.weights.double(), (law.means.double() - m) / s,
                           law.covs.double() / (s[:, None] * s[None, :]))


def _rows(law: GaussianMixture, index: Tensor) -> GaussianMixture:
    return GaussianMixture(law.weights[index], law.means[index], law.covs[index])


def girsanov_bound_for(
    task: MixtureTask, model: ConditionalModel, n: int, generator: torch.Generator | None = None,
    domain: str = "target",
) -> GirsanovBound:
    """The Girsanov bound (nats, with SE) on the KL of ``model``, a fitted diffusion head, on ``domain`` of ``task``.

    Draws n fresh pairs (c, x) from the task; each row is used once for the score term and once for the prior
    term (see :func:`diffusion.bound.girsanov_bound`). Raises ConfigError for a model without a diffusion head.
    """
    head = model.head
    if not isinstance(head, DiffusionHead):
        raise ConfigError(f"the Girsanov bound needs a diffusion head, got {type(head).__name__}")
    check_positive_int("n", n, minimum=4)
    data = task.sample(n, domain, generator)
    law = standardized_law(task.conditional(data.c.double(), domain), model.x_scaler)
    device = model.x_scaler.mean.device
    with torch.no_grad():
        z = model.x_scaler(data.x.to(device))
        h = model.embed(data.c.to(device))
    # The bound shuffles and strata-splits its rows: a last context column carries each row's index, so the
    # true score finds that row's mixture; the learned score reads the embedding columns only.
    index = torch.arange(n, dtype=z.dtype, device=device)[:, None]
    context = index if h is None else torch.cat([h, index], dim=1)

    def learned(z_t: Tensor, t: Tensor, ctx: Tensor | None) -> Tensor:
        return head.score(z_t, t, None if h is None else ctx[:, :-1])

    def law_at(t: Tensor, ctx: Tensor) -> GaussianMixture:
        rows = _rows(law, ctx[:, -1].long().cpu())
        return rows.noised(head.schedule.alpha(t).double().cpu(), head.schedule.sigma(t).double().cpu())

    def true(z_t: Tensor, t: Tensor, ctx: Tensor | None) -> Tensor:
        return law_at(t, ctx).score(z_t.double().cpu()).to(z_t)

    def log_prob_1(z_1: Tensor, ctx: Tensor | None) -> Tensor:
        one = torch.ones(z_1.shape[0], dtype=z_1.dtype, device=z_1.device)
        return law_at(one, ctx).log_prob(z_1.double().cpu()).to(z_1)

    return girsanov_bound(learned, true, z, head.schedule, context=context, log_prob_1=log_prob_1, t_eps=head.t_eps,
                          generator=generator)
