"""Ground-truth tasks with exact densities: the known answers every check in gentransfer is held against.

Conditional tasks share an embedding h*: R^{d_c} -> R^{d_h} between domains and differ in the head:
``x | c ~ f_k(x | h*(c))`` for k in {source, target}, c ~ N(0, I_{d_c}). Each task gives samples in the
data contract, the exact log-density, the conditional law as a :class:`GaussianMixture` and the exact
noised score grad_x log p_t(x_t | c) under the VP process.

:class:`TwoGaussianTask` is the unconditional simulation of the TGDP paper, with labels, exact noised
scores and the exact guidance h_t = q_t / p_t.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from shared_embed.data import PairedData
from shared_embed.errors import ConfigError, DataError, ShapeError
from shared_embed.validation import check_choice, check_positive_float, check_positive_int, check_tensor
from theory.truth.mixture import GaussianMixture

DOMAINS = ("source", "target")
ScoreFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class Schedule(Protocol):
    """What a task needs of a forward process: the signal and noise scales (e.g. ``diffusion.VPSchedule``)."""

    def alpha(self, t: Tensor) -> Tensor: ...
    def sigma(self, t: Tensor) -> Tensor: ...


class TrueEmbedding(nn.Module):
    """h*(c) = W c (linear) or tanh(W c) * 1.5 (nonlinear); W has orthonormal rows. (n, d_c) -> (n, d_h)."""

    weight: Tensor  # buffer (d_h, d_c)

    def __init__(self, weight: Tensor, nonlinear: bool) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.nonlinear = nonlinear
        self.out_features, self.in_features = weight.shape

    def forward(self, c: Tensor) -> Tensor:
        z = c @ self.weight.T.to(c)
        return 1.5 * torch.tanh(z) if self.nonlinear else z


def _per_row(v: Tensor | float, n: int, dtype: torch.dtype) -> Tensor:
    v = torch.as_tensor(v, dtype=dtype)
    return v.expand(n) if v.dim() == 0 else v.reshape(n)


def check_covariance(what: str, cov: Tensor) -> None:
    """DataError (``what`` ``is not positive definite``) unless ``cov`` is a finite positive-definite matrix in
    float64: the exact densities of a task factor it (a noise of 0, or one so small its square underflows)."""
    if not bool(torch.isfinite(cov).all()) or int(torch.linalg.cholesky_ex(cov).info) != 0:
        raise DataError(
            f"{what} is not positive definite (a task's noise must be a finite number > 0 whose "
            "square is a normal float64)"
        )


class Task(Protocol):
    """What the transfer study and its checks read of a conditional task (:data:`TASK_MEMBERS`; a
    :class:`ConditionalTask`, or a user's own class: docs/bring_your_own_task.md).

    Its dimensions (conditions c (d_c,), true embedding h*(c) (d_h,), outcomes x (d_x,)), seed and config, draws
    of (c, x) per domain ('source' or 'target') and exact log-densities log p_domain(x | c) (n,). Optional members
    are read with ``getattr``: ``embedding`` (h*, the oracle variant), ``conditional(c, domain)`` (the exact law
    as a :class:`GaussianMixture`: diffusion bounds, sample plots), ``sample_x(c, domain, generator)``,
    ``analytic`` and ``embedding_kind``.
    """

    seed: int
    d_c: int
    d_h: int
    d_x: int

    @property
    def config(self) -> dict[str, Any]: ...

    def sample_c(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData: ...

    def log_prob(self, x: Tensor, c: Tensor, domain: str) -> Tensor: ...


class ConditionalTask(ABC):
    """Base class of conditional ground-truth tasks; subclasses define :meth:`conditional`."""

    name = "conditional"
    #: The true conditional is analytic and finite-dimensional given h*(c) (Gaussian or Gaussian-mixture heads):
    #: heads on a fixed context get the parametric-like rate prediction (``theory.truth.rates.analytic_rates``).
    analytic = True

    def __init__(self, d_c: int = 16, d_h: int = 2, d_x: int = 2, embedding: str = "linear", seed: int = 0) -> None:
        self.d_c = check_positive_int("d_c", d_c)
        self.d_h = check_positive_int("d_h", d_h)
        self.d_x = check_positive_int("d_x", d_x)
        if d_h > d_c:
            raise ShapeError(f"d_h must be <= d_c, got d_h={d_h} > d_c={d_c}")
        self.embedding_kind = check_choice("embedding", embedding, ("linear", "nonlinear"))
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d_c, d_h, generator=self._gen, dtype=torch.float64))
        self.embedding = TrueEmbedding(q.T.contiguous().float(), embedding == "nonlinear")

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "d_c": self.d_c,
            "d_h": self.d_h,
            "d_x": self.d_x,
            "embedding": self.embedding_kind,
            "seed": self.seed,
        }

    @abstractmethod
    def conditional(self, c: Tensor, domain: str) -> GaussianMixture:
        """The exact law of x given each row of c (n, d_c), as a batch of n mixtures."""

    def _check_c(self, c: Tensor) -> Tensor:
        return check_tensor("c", c, ndim=2, last_dim=self.d_c, min_rows=1)

    def sample_c(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(check_positive_int("n", n), self.d_c, generator=generator)

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData:
        """n pairs (c, x) of ``domain`` ('source' or 'target')."""
        check_choice("domain", domain, DOMAINS)
        c = self.sample_c(n, generator)
        x = self.conditional(c, domain).sample(generator).float()
        return PairedData(c, x)

    def log_prob(self, x: Tensor, c: Tensor, domain: str) -> Tensor:
        """Exact log p_domain(x | c), (n,)."""
        check_tensor("x", x, ndim=2, last_dim=self.d_x, rows=self._check_c(c).shape[0])
        return self.conditional(c, domain).log_prob(x.to(torch.float64)).to(x.dtype)

    def noised_log_prob(
        self, x_t: Tensor, c: Tensor, domain: str, alpha: Tensor | float, sigma: Tensor | float
    ) -> Tensor:
        """Exact log p_t(x_t | c) for x_t = alpha x_0 + sigma e; alpha/sigma scalars or (n,)."""
        n = self._check_c(c).shape[0]
        check_tensor("x_t", x_t, ndim=2, last_dim=self.d_x, rows=n)
        law = self.conditional(c, domain).noised(_per_row(alpha, n, torch.float64), _per_row(sigma, n, torch.float64))
        return law.log_prob(x_t.to(torch.float64)).to(x_t.dtype)

    def noised_score(self, x_t: Tensor, c: Tensor, domain: str, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Exact grad_x log p_t(x_t | c), (n, d_x)."""
        n = self._check_c(c).shape[0]
        check_tensor("x_t", x_t, ndim=2, last_dim=self.d_x, rows=n)
        law = self.conditional(c, domain).noised(_per_row(alpha, n, torch.float64), _per_row(sigma, n, torch.float64))
        return law.score(x_t.to(torch.float64)).to(x_t.dtype)

    def score_fn(self, domain: str, schedule: Schedule) -> ScoreFn:
        """A plain ``score(x, t, context)`` of the exact noised law; ``context`` is the raw condition c."""

        def score(x: Tensor, t: Tensor, context: Tensor | None) -> Tensor:
            if context is None:
                raise ShapeError("context (the condition c) is required by a conditional task's score")
            t = _per_row(t, x.shape[0], x.dtype)
            return self.noised_score(x, context, domain, schedule.alpha(t), schedule.sigma(t))

        return score


class ConditionalGaussianTask(ConditionalTask):
    """x | c ~ N(A_k h*(c) + b_k, Sigma_k): a linear-Gaussian head per domain on a shared h*.

    The target head is the source head rotated by 90 degrees in the first plane, shifted and with a
    different covariance, so a source head cannot be reused as is but the embedding can.
    """

    name = "conditional_gaussian"

    def __init__(
        self, d_c: int = 16, d_h: int = 2, d_x: int = 2, embedding: str = "linear", seed: int = 0, noise: float = 0.3
    ) -> None:
        super().__init__(d_c, d_h, d_x, embedding, seed)
        self.noise = check_positive_float("noise", noise)
        g = self._gen
        a_src = torch.randn(d_x, d_h, generator=g, dtype=torch.float64)
        a_src = a_src / a_src.norm(dim=1, keepdim=True).clamp_min(1e-3)
        rot = torch.eye(d_x, dtype=torch.float64)
        if d_x >= 2:
            rot[:2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        l_src = noise * torch.eye(d_x, dtype=torch.float64)
        l_tgt = noise * torch.diag(torch.linspace(0.6, 1.4, d_x, dtype=torch.float64))
        l_tgt = l_tgt + 0.3 * noise * torch.tril(torch.ones(d_x, d_x, dtype=torch.float64), -1)
        self.params = {
            "source": (a_src, torch.zeros(d_x, dtype=torch.float64), l_src @ l_src.T),
            "target": (rot @ a_src * 1.3, 0.5 * torch.ones(d_x, dtype=torch.float64), l_tgt @ l_tgt.T),
        }
        for domain, (_, _, cov) in self.params.items():
            check_covariance(f"noise = {noise!r} gives the {domain} covariance that", cov)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "noise": self.noise}

    def conditional(self, c: Tensor, domain: str) -> GaussianMixture:
        check_choice("domain", domain, DOMAINS)
        h = self.embedding(self._check_c(c).to(torch.float32)).to(torch.float64)
        a, b, cov = self.params[domain]
        n = h.shape[0]
        means = (h @ a.T + b).unsqueeze(1)
        return GaussianMixture(torch.ones(n, 1, dtype=torch.float64), means, cov.expand(n, 1, -1, -1))


class ConditionalMixtureTask(ConditionalTask):
    """x | c ~ sum_j pi_j(h) N(A_kj h + b_kj, s_kj^2 I) with pi(h) = softmax(G_k h): a bimodal head per domain."""

    name = "conditional_mixture"

    def __init__(
        self,
        d_c: int = 16,
        d_h: int = 2,
        d_x: int = 2,
        embedding: str = "linear",
        seed: int = 0,
        components: int = 2,
        noise: float = 0.25,
    ) -> None:
        super().__init__(d_c, d_h, d_x, embedding, seed)
        self.components = check_positive_int("components", components)
        self.noise = check_positive_float("noise", noise)
        g = self._gen
        self.params = {}
        for k, domain in enumerate(DOMAINS):
            a = torch.randn(components, d_x, d_h, generator=g, dtype=torch.float64) * 0.8
            b = torch.randn(components, d_x, generator=g, dtype=torch.float64) * 1.5
            gate = torch.randn(components, d_h, generator=g, dtype=torch.float64)
            scale = noise * (1.0 + 0.5 * k) * torch.ones(components, dtype=torch.float64)
            check_covariance(
                f"noise = {noise!r} gives the {domain} covariance that",
                (scale[0] ** 2) * torch.eye(d_x, dtype=torch.float64),
            )
            self.params[domain] = (a, b, gate, scale)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "components": self.components, "noise": self.noise}

    def conditional(self, c: Tensor, domain: str) -> GaussianMixture:
        check_choice("domain", domain, DOMAINS)
        h = self.embedding(self._check_c(c).to(torch.float32)).to(torch.float64)
        a, b, gate, scale = self.params[domain]
        means = torch.einsum("kxh,nh->nkx", a, h) + b
        weights = torch.softmax(h @ gate.T, dim=-1)
        eye = torch.eye(self.d_x, dtype=torch.float64)
        covs = (scale**2)[:, None, None] * eye
        return GaussianMixture(weights, means, covs.expand(h.shape[0], -1, -1, -1))


class TwoGaussianTask:
    """The TGDP paper's simulation: 1/2 N(mu, v I) + 1/2 N(-mu, v I), labels y = +1 / -1 by component.

    ``weight_source`` / ``weight_target``: the weight of the +mu component of each domain (1/2 in the paper;
    :func:`inside_support_task` moves only the target's weights).

    Source mu_S = (0.5, 0.5), target mu_T = (0.5, -0.5), v = 0.1, d = 2. Label y = +1 is the component
    at +mu. Data come as :class:`PairedData` with c = y (n, 1) as a float, so the conditional version uses the
    label as its context.
    """

    name = "two_gaussian"

    def __init__(
        self,
        mu_source: tuple[float, ...] = (0.5, 0.5),
        mu_target: tuple[float, ...] = (0.5, -0.5),
        variance: float = 0.1,
        weight_source: float = 0.5,
        weight_target: float = 0.5,
    ) -> None:
        if len(mu_source) != len(mu_target):
            raise ShapeError(f"mu_source and mu_target must have one length, got {len(mu_source)} and {len(mu_target)}")
        for name, w in (("weight_source", weight_source), ("weight_target", weight_target)):
            if not 0 < w < 1:
                raise ShapeError(f"{name} (the weight of the +mu component) must lie in (0, 1), got {w!r}")
        self.d_x = len(mu_source)
        self.variance = check_positive_float("variance", variance)
        check_covariance(
            f"variance = {variance!r} gives a covariance that", self.variance * torch.eye(self.d_x, dtype=torch.float64)
        )
        self.mu = {
            "source": torch.tensor(mu_source, dtype=torch.float64),
            "target": torch.tensor(mu_target, dtype=torch.float64),
        }
        self.weight = {"source": float(weight_source), "target": float(weight_target)}

    @property
    def config(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "mu_source": self.mu["source"].tolist(),
            "mu_target": self.mu["target"].tolist(),
            "variance": self.variance,
        }
        if self.weight != {"source": 0.5, "target": 0.5}:
            out.update(weight_source=self.weight["source"], weight_target=self.weight["target"])
        return out

    def label_probs(self, domain: str) -> Tensor:
        """(P(y = -1), P(y = +1)) of ``domain``, (2,) float64."""
        w = self.weight[check_choice("domain", domain, DOMAINS)]
        return torch.tensor([1.0 - w, w], dtype=torch.float64)

    def mixture(self, domain: str, y: Tensor | None = None) -> GaussianMixture:
        """The law of x (a batch of one), or of x | y for each label in y (n,) or (n, 1)."""
        check_choice("domain", domain, DOMAINS)
        mu = self.mu[domain]
        cov = self.variance * torch.eye(self.d_x, dtype=torch.float64)
        if y is None:
            w = self.weight[domain]
            return GaussianMixture(
                torch.tensor([[w, 1.0 - w]], dtype=torch.float64),
                torch.stack([mu, -mu])[None],
                cov.expand(1, 2, -1, -1),
            )
        sign = self._labels(y)
        n = sign.shape[0]
        return GaussianMixture(
            torch.ones(n, 1, dtype=torch.float64), (sign[:, None] * mu)[:, None], cov.expand(n, 1, -1, -1)
        )

    def _labels(self, y: Tensor) -> Tensor:
        y = y.reshape(-1).to(torch.float64)
        if not bool(((y == 1) | (y == -1)).all()):
            raise ShapeError("y must hold labels +1 or -1")
        return y

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData:
        """n labelled samples: PairedData(c = y (n, 1), x (n, d))."""
        check_positive_int("n", n)
        check_choice("domain", domain, DOMAINS)
        y = torch.where(torch.rand(n, generator=generator) < self.weight[domain], 1.0, -1.0).double()
        e = torch.randn(n, self.d_x, generator=generator, dtype=torch.float64)
        x = y[:, None] * self.mu[domain] + math.sqrt(self.variance) * e
        return PairedData(y[:, None].float(), x.float())

    def _law(
        self, x: Tensor, domain: str, y: Tensor | None, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0
    ) -> GaussianMixture:
        check_tensor("x", x, ndim=2, last_dim=self.d_x, min_rows=1)
        n = x.shape[0]
        law = self.mixture(domain, y)
        if y is None:
            law = GaussianMixture(
                law.weights.expand(n, -1), law.means.expand(n, -1, -1), law.covs.expand(n, -1, -1, -1)
            )
        return law.noised(_per_row(alpha, n, torch.float64), _per_row(sigma, n, torch.float64))

    def log_prob(self, x: Tensor, domain: str, y: Tensor | None = None) -> Tensor:
        """Exact log p(x) (or log p(x | y)), (n,)."""
        return self._law(x, domain, y).log_prob(x.double()).to(x.dtype)

    def noised_log_prob(
        self, x: Tensor, domain: str, alpha: Tensor | float, sigma: Tensor | float, y: Tensor | None = None
    ) -> Tensor:
        return self._law(x, domain, y, alpha, sigma).log_prob(x.double()).to(x.dtype)

    def noised_score(
        self, x: Tensor, domain: str, alpha: Tensor | float, sigma: Tensor | float, y: Tensor | None = None
    ) -> Tensor:
        """Exact grad_x log p_t(x) (or of p_t(x | y)), (n, d)."""
        return self._law(x, domain, y, alpha, sigma).score(x.double()).to(x.dtype)

    def log_density_ratio(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log w(x) = log q(x)/p(x) at t = 0 (with labels: log q(x, y)/p(x, y), label priors included)."""
        return self.log_prob(x, "target", y) - self.log_prob(x, "source", y) + self._log_label_ratio(y, x)

    def _log_label_ratio(self, y: Tensor | None, x: Tensor) -> Tensor | float:
        """log q(y) / p(y) per row (0 without labels): constant in x, so it leaves grad log h_t unchanged."""
        if y is None:
            return 0.0
        plus = self._labels(y) > 0
        log_q, log_p = self.label_probs("target").log(), self.label_probs("source").log()
        return torch.where(plus, log_q[1] - log_p[1], log_q[0] - log_p[0]).to(x.dtype)

    def log_guidance(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float, y: Tensor | None = None) -> Tensor:
        """log h_t(x) = log q_t(x) / p_t(x), the exact TGDP guidance, (n,)."""
        return (
            self.noised_log_prob(x, "target", alpha, sigma, y)
            - self.noised_log_prob(x, "source", alpha, sigma, y)
            + self._log_label_ratio(y, x)
        )

    def guidance_grad(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float, y: Tensor | None = None) -> Tensor:
        """grad_x log h_t(x) = target score - source score, (n, d)."""
        return self.noised_score(x, "target", alpha, sigma, y) - self.noised_score(x, "source", alpha, sigma, y)

    def score_fn(self, domain: str, schedule: Schedule, conditional: bool = False) -> ScoreFn:
        """A plain ``score(x, t, context)``; with ``conditional`` the context is the label y (n, 1)."""

        def score(x: Tensor, t: Tensor, context: Tensor | None) -> Tensor:
            t = _per_row(t, x.shape[0], x.dtype)
            y = context if conditional else None
            if conditional and context is None:
                raise ShapeError("context (the label y) is required by the conditional score")
            return self.noised_score(x, domain, schedule.alpha(t), schedule.sigma(t), y)

        return score


def inside_support_task(conditional_weight: float = 0.9) -> TwoGaussianTask:
    """The target INSIDE the source's support: the source modes +-(0.5, 0.5) with weights 0.5 / 0.5, the
    target the same modes with weights ``conditional_weight`` / 1 - it (0.9 / 0.1). w = q / p is bounded
    (0.2 to 1.8), h_t is smooth at every t, and given the label the two domains agree (h_t(x, y) = q(y) / p(y)
    is constant in x): the conditional transfer is all in the label marginal."""
    return TwoGaussianTask(mu_source=(0.5, 0.5), mu_target=(0.5, 0.5), weight_target=conditional_weight)


TASKS: dict[str, type] = {
    "conditional_gaussian": ConditionalGaussianTask,
    "conditional_mixture": ConditionalMixtureTask,
    "two_gaussian": TwoGaussianTask,
}


def make_task(name: str, **kwargs: Any) -> Any:
    """Build a task by name (see ``TASKS``)."""
    return TASKS[check_choice("task", name, TASKS)](**kwargs)


# -- a user's own task -----------------------------------------------------------------------------
#: What the transfer study reads of a conditional task instance (docs/bring_your_own_task.md): its dimensions,
#: its seed and ``config`` (a JSON-able dict for the records and the report), ``sample(n, domain, generator) ->
#: PairedData``, ``sample_c(n, generator) -> (n, d_c)`` and the exact ``log_prob(x, c, domain) -> (n,)``.
#: Optional: ``embedding`` (h*, a module (n, d_c) -> (n, d_h): the ``oracle`` variant needs it), ``analytic``
#: (True: heads on a fixed context get the parametric-like rate), ``sample_x(c, domain, generator) -> (n, d_x)``
#: (draws of x at given c: the report's sample plot) and ``embedding_kind`` (a word for the records).
TASK_MEMBERS = ("d_c", "d_h", "d_x", "seed", "config", "sample", "sample_c", "log_prob")

_USER_TASKS: dict[str, type] = {}


def register_task(name: str, cls: type) -> None:
    """Make ``[task] name = NAME`` build ``cls(**options)`` in this process (a config may also name a class as
    ``"package.module:Class"``, which worker processes and ``gentransfer report --task`` can import)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"name must be a word (letters, digits, _), got {name!r}")
    if name in TASKS:
        raise ConfigError(f"task {name!r} is shipped; register yours under another name")
    if not isinstance(cls, type):
        raise ConfigError(f"cls must be a class, got {type(cls).__name__}")
    _USER_TASKS[name] = cls


def is_user_task(name: str) -> bool:
    """Whether ``name`` is a task of the user's (registered in this process, or ``package.module:Class``)."""
    return name in _USER_TASKS or ":" in name


def task_class(name: str, shipped: tuple[str, ...]) -> type:
    """The class of task ``name``: one of ``shipped``, one registered with :func:`register_task`, or the class a
    ``"package.module:Class"`` path names (imported here). ConfigError naming what is wrong."""
    if name in shipped:
        return TASKS[name]
    if name in _USER_TASKS:
        return _USER_TASKS[name]
    module_name, sep, attr = name.partition(":")
    if not (sep and attr.isidentifier() and all(p.isidentifier() for p in module_name.split("."))):
        valid = ", ".join([*shipped, *_USER_TASKS])
        raise ConfigError(f"task.name must be one of {valid}, or a class given as 'package.module:Class'; got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"task.name = {name!r}: cannot import {module_name!r} ({err}); is it on sys.path?") from err
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"task.name = {name!r}: {module_name!r} has no class {attr!r}")
    return cls


def check_task(task: object, name: str) -> object:
    """``task`` if it has every member of :data:`TASK_MEMBERS` and sane dimensions; else a ConfigError naming
    what is missing."""
    missing = [m for m in TASK_MEMBERS if not hasattr(task, m)]
    if missing:
        raise ConfigError(
            f"task {name!r} lacks {', '.join(missing)}: a conditional task needs {', '.join(TASK_MEMBERS)} "
            "(see docs/bring_your_own_task.md)"
        )
    for dim in ("d_c", "d_h", "d_x"):
        value = getattr(task, dim)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"task {name!r}: {dim} must be a whole number >= 1, got {value!r}")
    return task
