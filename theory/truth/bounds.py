"""The Girsanov bound of a fitted diffusion model against a ground-truth conditional task.

:func:`diffusion.bound.girsanov_bound` needs the learned and the true noised score in ONE space. A fitted
:class:`~shared_embed.model.ConditionalModel` scores z = (x - m) / s (its x scaler) given h = embed(c), so the
truth is carried into that space: x | c is a Gaussian mixture (``task.conditional``), hence z | c is one too,
with means (mu - m) / s and covariances S / (s s^T), and it stays a mixture under the forward process. KL is
invariant under that affine map, so the bound computed on z bounds KL(p_T(x | c) || p_hat(x | c)) averaged
over c ~ p_T(c), the quantity the sweep measures.

The prior term E_c KL(p_1(. | c) || N(0, I)) is a Monte Carlo estimate from the exact noised log-density.

What the bound bounds is the law of the model's reverse-SDE sampler, not the probability-flow density that
``log_prob`` (hence the sweep's "kl") evaluates. :func:`sde_kl_for` measures that law: for a few contexts
c_j ~ p(c) it draws exact samples of p_{t_eps}(z | c_j) and reverse-SDE samples of the model given c_j, and
estimates KL(p_{t_eps}(. | c_j) || p_hat^SDE(. | c_j)) with the kNN estimator that uses the exact log-density
(:func:`theory.truth.knn_kl.knn_cross_kl`); the mean over contexts estimates E_c KL, its SE is the spread across
contexts / sqrt(contexts) (contexts are i.i.d., so this SE covers both the context and the kNN noise).

Example:
    >>> b = girsanov_bound_for(task, fitted_diffusion_model, n=1000, generator=torch.Generator().manual_seed(0))
    >>> print(f"bound {b.value:.3f} +- {b.se:.3f} nats")
    >>> kl = sde_kl_for(task, fitted_diffusion_model, n=4000, generator=torch.Generator().manual_seed(1))
    >>> kl.value <= b.value + 2 * (kl.se**2 + b.se**2) ** 0.5   # what theory.verdicts.bound_check tests
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import Tensor

from diffusion.bound import GirsanovBound, girsanov_bound
from diffusion.head import DiffusionHead
from diffusion.sampling import SDE_METHODS, sample_sde
from shared_embed.data import PairedData
from shared_embed.errors import ConfigError
from shared_embed.model import ConditionalModel
from shared_embed.standardize import Standardizer
from shared_embed.validation import check_choice, check_positive_int
from theory.truth.kl import KLEstimate
from theory.truth.knn_kl import knn_cross_kl
from theory.truth.mixture import GaussianMixture


class MixtureTask(Protocol):
    """A conditional task whose law of x given each row of c is a :class:`GaussianMixture`."""

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData: ...
    def conditional(self, c: Tensor, domain: str) -> GaussianMixture: ...


def standardized_law(law: GaussianMixture, scaler: Standardizer) -> GaussianMixture:
    """The law of z = (x - mean) / std when x ~ ``law`` (a batch of mixtures), in float64."""
    m, s = scaler.mean.double().cpu(), scaler.std.double().cpu()
    return GaussianMixture(
        law.weights.double(), (law.means.double() - m) / s, law.covs.double() / (s[:, None] * s[None, :])
    )


def _rows(law: GaussianMixture, index: Tensor) -> GaussianMixture:
    return GaussianMixture(law.weights[index], law.means[index], law.covs[index])


def _diffusion_head(model: ConditionalModel, what: str) -> DiffusionHead:
    if not isinstance(model.head, DiffusionHead):
        raise ConfigError(f"{what} needs a diffusion head, got {type(model.head).__name__}")
    return model.head


def girsanov_bound_for(
    task: MixtureTask,
    model: ConditionalModel,
    n: int,
    generator: torch.Generator | None = None,
    domain: str = "target",
) -> GirsanovBound:
    """The Girsanov bound (nats, with SE) on the KL of ``model``, a fitted diffusion head, on ``domain`` of ``task``.

    Draws n fresh pairs (c, x) from the task; each row is used once for the score term and once for the prior
    term (see :func:`diffusion.bound.girsanov_bound`). Raises ConfigError for a model without a diffusion head.
    """
    head = _diffusion_head(model, "the Girsanov bound")
    check_positive_int("n", n, minimum=4)
    data = task.sample(n, domain, generator)
    c = cast(Tensor, data.c)  # a conditional task's pairs hold conditions
    law = standardized_law(task.conditional(c.double(), domain), model.x_scaler)
    device = model.x_scaler.mean.device
    with torch.no_grad():
        z = model.x_scaler(data.x.to(device))
        h = model.embed(c.to(device))
    # The bound shuffles and strata-splits its rows: a last context column carries each row's index, so the
    # true score finds that row's mixture; the learned score reads the embedding columns only.
    index = torch.arange(n, dtype=z.dtype, device=device)[:, None]
    context = index if h is None else torch.cat([h, index], dim=1)

    def learned(z_t: Tensor, t: Tensor, ctx: Tensor | None) -> Tensor:
        return head.score(z_t, t, None if h is None else cast(Tensor, ctx)[:, :-1])

    def law_at(t: Tensor, ctx: Tensor | None) -> GaussianMixture:
        rows = _rows(law, cast(Tensor, ctx)[:, -1].long().cpu())  # girsanov_bound passes the context it is given
        return rows.noised(head.schedule.alpha(t).double().cpu(), head.schedule.sigma(t).double().cpu())

    def true(z_t: Tensor, t: Tensor, ctx: Tensor | None) -> Tensor:
        return law_at(t, ctx).score(z_t.double().cpu()).to(z_t)

    def log_prob_1(z_1: Tensor, ctx: Tensor | None) -> Tensor:
        one = torch.ones(z_1.shape[0], dtype=z_1.dtype, device=z_1.device)
        return law_at(one, ctx).log_prob(z_1.double().cpu()).to(z_1)

    return girsanov_bound(
        learned, true, z, head.schedule, context=context, log_prob_1=log_prob_1, t_eps=head.t_eps, generator=generator
    )


def _repeat(law: GaussianMixture, m: int) -> GaussianMixture:
    """m copies of a one-row batch of mixtures (to draw m samples of it and score them)."""
    return GaussianMixture(law.weights.expand(m, -1), law.means.expand(m, -1, -1), law.covs.expand(m, -1, -1, -1))


def sde_kl_for(
    task: MixtureTask,
    model: ConditionalModel,
    n: int = 4000,
    generator: torch.Generator | None = None,
    domain: str = "target",
    *,
    contexts: int = 8,
    steps: int = 200,
    method: str = "heun",
    k: int = 3,
) -> KLEstimate:
    """E_c KL(p_{t_eps}(. | c) || law of the model's reverse-SDE sampler given c), nats, by kNN; what the
    Girsanov bound of :func:`girsanov_bound_for` bounds.

    ``contexts`` conditions c_j ~ p(c), n // contexts exact draws and as many SDE draws (``steps`` uniform
    steps of ``method``, from N(0, I) at t = 1 down to the head's t_eps) for each, in the model's standardised
    space. Both samples of a context are whitened by the exact mean and covariance of p_{t_eps}(. | c_j) (KL is
    invariant under a common affine map; isotropic neighbourhoods then suit p, which lowers the kNN bias on
    narrow conditional laws) and scored by :func:`theory.truth.knn_kl.knn_cross_kl` with neighbour rank ``k``.
    Returns the mean over contexts with SE = sd / sqrt(contexts), and n = the draws of each side in all.
    The kNN bias is downward where the SDE law is narrower than or shifted against the target (-15 to -30% of
    the KL measured on a shifted conditional Gaussian at the defaults; docs/theory.md).
    """
    head = _diffusion_head(model, "the SDE law's KL")
    check_positive_int("contexts", contexts, minimum=2)
    check_positive_int("steps", steps)
    check_choice("method", method, SDE_METHODS)
    per = check_positive_int("n", n, minimum=2 * contexts) // contexts
    if per <= k:
        raise ConfigError(f"n // contexts = {per} draws per context must exceed k = {k}: raise n or lower contexts")
    c = cast(Tensor, task.sample(contexts, domain, generator).c)  # a conditional task's pairs hold conditions
    law = standardized_law(task.conditional(c.double(), domain), model.x_scaler)
    t_eps = torch.tensor(head.t_eps, dtype=torch.float64)
    law = law.noised(head.schedule.alpha(t_eps).double(), head.schedule.sigma(t_eps).double())
    chol = torch.linalg.cholesky(law.covariance())  # (contexts, d, d)
    like = model.x_scaler.mean  # the model's dtype and device
    values = []
    with torch.no_grad():
        h = model.embed(c.to(like))
        for j in range(contexts):
            target = _repeat(_rows(law, torch.tensor([j])), per)
            z = target.sample(generator)
            ctx = None if h is None else h[j : j + 1].expand(per, -1)
            z1 = torch.randn(per, head.features, generator=generator, dtype=torch.float64).to(like)
            z_hat = (
                sample_sde(
                    head.score,
                    z1,
                    head.schedule,
                    context=ctx,
                    steps=steps,
                    method=method,
                    t_eps=head.t_eps,
                    generator=generator,
                )
                .double()
                .cpu()
            )
            mean = law.mean()[j]

            def whiten(v: Tensor, j: int = j, mean: Tensor = mean) -> Tensor:
                return torch.linalg.solve_triangular(chol[j], (v - mean).T, upper=False).T

            log_p = target.log_prob(z) + chol[j].diagonal().log().sum()
            values.append(knn_cross_kl(whiten(z), log_p, whiten(z_hat), k=k, batches=1).value)
    v = torch.tensor(values, dtype=torch.float64)
    return KLEstimate(float(v.mean()), float(v.std(unbiased=True)) / contexts**0.5, per * contexts)
