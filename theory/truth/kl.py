"""KL(p || p_hat) by Monte Carlo against a ground-truth task, the Gaussian closed form, and the KL split.

Accuracy in gentransfer is KL(p_T || p_hat_T) = E_{c, x ~ p_T} [log p_T(x | c) - log p_hat_T(x | c)], estimated
on fresh samples with its standard error (docs/theory.md, 'The setting'). The split of that section, for a model
whose head g reads a frozen embedding h_hat,

    KL_total = KL( p(x|c) || p(x | h_hat(c)) )  +  KL( p(x | h_hat) || g(x | h_hat) )
               [embedding floor]                   [head term]

is estimated with a *floor model*: a head trained on a very large target sample with h_hat frozen
(:func:`fit_floor_model`). :func:`kl_split` scores model and floor model on ONE fresh sample, so that
total = floor + head holds exactly and the head term gets a paired standard error.

Example:
    >>> task = ConditionalGaussianTask()
    >>> est = kl_to_task(task, fitted_model, n=20_000, generator=torch.Generator().manual_seed(0))
    >>> print(est)   # 0.0123 +- 0.0008 nats (n=20000)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from shared_embed.data import PairedData
from shared_embed.encoder import Encoder
from shared_embed.errors import ConfigError, DataError, ShapeError
from shared_embed.head import Head
from shared_embed.model import ConditionalModel
from shared_embed.train import TrainConfig
from shared_embed.transfer import fit_target_head
from shared_embed.validation import check_positive_int, check_tensor


class DensityModel(Protocol):
    """Anything with ``log_prob(x (n, d_x), c (n, d_c)) -> (n,)``, e.g. a ConditionalModel."""

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor: ...


class GroundTruthTask(Protocol):
    """A task with fresh samples and an exact conditional log-density (``theory.truth.tasks`` conditional tasks)."""

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData: ...
    def log_prob(self, x: Tensor, c: Tensor, domain: str) -> Tensor: ...


@dataclass(frozen=True)
class KLEstimate:
    """A Monte Carlo KL in nats: the mean ``value``, its standard error ``se`` and the sample size ``n``."""

    value: float
    se: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.4g} +- {self.se:.2g} nats (n={self.n})"


@dataclass(frozen=True)
class KLSplit:
    """KL_total = floor (embedding term) + head (target-head term), each with its standard error."""

    total: KLEstimate
    floor: KLEstimate
    head: KLEstimate

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total.to_dict(), "floor": self.floor.to_dict(), "head": self.head.to_dict()}


@dataclass
class FloorEstimate:
    """The embedding floor: its KL and the floor model (a big-sample head on the frozen embedding)."""

    kl: KLEstimate
    model: ConditionalModel


def monte_carlo_kl(log_p: Tensor, log_q: Tensor) -> KLEstimate:
    """KL(p || q) from log-densities (n,) of both at the same n >= 2 draws from p; SE = std / sqrt(n)."""
    check_tensor("log_p", log_p, ndim=1, min_rows=2)
    check_tensor("log_q", log_q, ndim=1, rows=log_p.shape[0])
    diff = log_p.double() - log_q.double()
    n = diff.shape[0]
    return KLEstimate(float(diff.mean()), float(diff.std(unbiased=True)) / math.sqrt(n), n)


def gaussian_kl(m0: Tensor, s0: Tensor, m1: Tensor, s1: Tensor) -> Tensor:
    """Closed-form KL( N(m0, S0) || N(m1, S1) ) for means (..., d) and covariances (..., d, d); shape (...)."""
    check_tensor("m0", m0, min_rows=1)
    d = m0.shape[-1]
    check_tensor("m1", m1, last_dim=d)
    for name, s in (("s0", s0), ("s1", s1)):
        check_tensor(name, s, last_dim=d)
        if s.dim() < 2 or s.shape[-2] != d:
            raise ShapeError(f"{name} must be (..., {d}, {d}), got {tuple(s.shape)}")
    l1 = torch.linalg.cholesky(s1)
    diff = (m1 - m0).unsqueeze(-1)
    z = torch.linalg.solve_triangular(l1, diff, upper=False).squeeze(-1)
    trace = torch.cholesky_solve(s0, l1).diagonal(dim1=-2, dim2=-1).sum(-1)
    logdet1 = 2 * l1.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet0 = torch.linalg.slogdet(s0)[1]
    return 0.5 * (trace + z.square().sum(-1) - d + logdet1 - logdet0)


def _dtype_device(model: object) -> tuple[torch.dtype, torch.device]:
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def model_log_prob(model: DensityModel, x: Tensor, c: Tensor | None, batch_size: int = 4096) -> Tensor:
    """``model.log_prob(x, c)`` in chunks of ``batch_size`` rows, without gradients; float64 (n,)."""
    check_positive_int("batch_size", batch_size)
    dtype, device = _dtype_device(model)
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            cb = None if c is None else c[start : start + batch_size].to(device=device, dtype=dtype)
            lp = model.log_prob(xb, cb)
            if lp.shape != (xb.shape[0],):
                raise ShapeError(f"model.log_prob must return ({xb.shape[0]},), got {tuple(lp.shape)}")
            out.append(lp.detach().to("cpu", torch.float64))
    return torch.cat(out)


def log_densities(
    task: GroundTruthTask,
    models: Mapping[str, DensityModel],
    *,
    domain: str = "target",
    n: int = 20_000,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One fresh sample of n pairs from ``task``: the exact log p (n,) and each model's log p_hat (n,)."""
    check_positive_int("n", n, minimum=2)
    data = task.sample(n, domain, generator)
    log_p = task.log_prob(data.x.double(), cast(Tensor, data.c), domain).double()
    return log_p, {name: model_log_prob(m, data.x, data.c, batch_size) for name, m in models.items()}


def kl_to_task(
    task: GroundTruthTask,
    model: DensityModel,
    domain: str = "target",
    n: int = 20_000,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> KLEstimate:
    """Monte Carlo KL(p_domain || model) on n fresh pairs (c, x) from the task, with its standard error."""
    log_p, log_q = log_densities(task, {"model": model}, domain=domain, n=n, generator=generator, batch_size=batch_size)
    return monte_carlo_kl(log_p, log_q["model"])


def fit_floor_model(
    task: GroundTruthTask,
    model: ConditionalModel,
    head_factory: Callable[[int | None], Head],
    *,
    n: int = 50_000,
    train: TrainConfig | None = None,
    domain: str = "target",
    generator: torch.Generator | None = None,
    val_fraction: float = 0.1,
) -> ConditionalModel:
    """A new head trained on n fresh ``domain`` pairs with ``model``'s embedding (and c-scaler) frozen.

    Its KL approximates the embedding floor KL(p(x|c) || p(x|h_hat(c))) from above (plus the head error
    at sample size n, which vanishes as n grows).
    """
    if model.encoder is None:
        raise ConfigError("model has no embedding (encoder=None): there is no embedding floor to estimate")
    embedding = copy.deepcopy(model.encoder)
    if isinstance(embedding, Encoder):
        embedding.freeze()
    else:
        cast(nn.Module, embedding).requires_grad_(False)  # every embedding is a module at run time
    data = task.sample(check_positive_int("n", n, minimum=2), domain, generator)
    dtype, device = _dtype_device(model)
    data = data.to(device, dtype)
    head = head_factory(embedding.out_features).to(device, dtype)
    config = train or TrainConfig(steps=3000, batch_size=512, lr=1e-3, eval_every=100, patience=10, description="floor")
    return fit_target_head(
        embedding, head, data, config, c_scaler=copy.deepcopy(model.c_scaler), val_fraction=val_fraction
    )


def estimate_floor(
    task: GroundTruthTask,
    model: ConditionalModel,
    head_factory: Callable[[int | None], Head],
    *,
    n_train: int = 50_000,
    train: TrainConfig | None = None,
    n_eval: int = 20_000,
    domain: str = "target",
    generator: torch.Generator | None = None,
) -> FloorEstimate:
    """The embedding floor of ``model``: fit :func:`fit_floor_model` and score it on n_eval fresh pairs."""
    floor_model = fit_floor_model(task, model, head_factory, n=n_train, train=train, domain=domain, generator=generator)
    return FloorEstimate(kl_to_task(task, floor_model, domain, n_eval, generator), floor_model)


def kl_split(
    task: GroundTruthTask,
    model: DensityModel,
    floor_model: DensityModel,
    *,
    domain: str = "target",
    n: int = 20_000,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> KLSplit:
    """Split KL(p || model) into the embedding floor (``floor_model``'s KL) and the head term.

    Both are scored on one fresh sample, so total = floor + head exactly; the head term
    E[log p_floor - log p_model] has its own (paired) standard error. A negative head term within a few
    standard errors means the target head is as good as the big-sample head.
    """
    log_p, log_q = log_densities(
        task, {"model": model, "floor": floor_model}, domain=domain, n=n, generator=generator, batch_size=batch_size
    )
    if not bool(torch.isfinite(log_q["model"]).all() and torch.isfinite(log_q["floor"]).all()):
        raise DataError("a model returned a non-finite log-density on the evaluation sample")
    return KLSplit(
        total=monte_carlo_kl(log_p, log_q["model"]),
        floor=monte_carlo_kl(log_p, log_q["floor"]),
        head=monte_carlo_kl(log_q["floor"], log_q["model"]),
    )
