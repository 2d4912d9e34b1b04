"""A fitted conditional generative model: standardise, embed with a (frozen) encoder, hand to a head."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, load_module_state, save_checkpoint
from .device import resolve_device
from .distribution import BatchedConditional, broadcast_batch, flatten_rows
from .encoder import Embedding, Encoder
from .errors import CheckpointError, ConfigError, ShapeError
from .head import Head, build_head
from .rng import check_generator
from .standardize import Standardizer
from .train import TrainHistory
from .validation import check_matches, check_positive_int, check_tensor

__all__ = ["ConditionalDistribution", "ConditionalModel"]


class ConditionalModel(nn.Module):
    """p_hat(x | c) = head( (x - m_x)/s_x | H(h((c - m_c)/s_c)) ) / prod(s_x).

    The head sees standardised outcomes and the (optionally standardised, H) embedding of standardised
    conditions; a frozen embedding is standardised so a new head sees contexts of unit scale. ``log_prob`` is
    the exact density of the original x (the Jacobian of the scaling is added back). Calling the model
    on conditions returns a ``torch.distributions.Distribution``, as a zuko conditional flow does, with torch's
    batching rules: ``model(c).sample((n,))`` is (n, k, d_x) for c (k, d_c), and ``model(c[:1]).log_prob(x)``
    scores every row of x under one condition in one vectorised call.

    Args:
        head: any :class:`~shared_embed.head.Head`.
        encoder: the embedding h (None: the head reads the standardised c itself, or no c at all).
        x_scaler / c_scaler / h_scaler: standardisers of x, c and the embedding h(c); None means identity.

    Example:
        >>> model = ConditionalModel(GaussianHead(2, 2), Encoder(16, 2))
        >>> model(torch.randn(5, 16)).log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> model(torch.randn(5, 16)).sample((3,), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(
        self,
        head: Head,
        encoder: Embedding | None = None,
        x_scaler: Standardizer | None = None,
        c_scaler: Standardizer | None = None,
        h_scaler: Standardizer | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.x_scaler = x_scaler if x_scaler is not None else Standardizer(head.features)
        self.c_scaler = c_scaler
        self.h_scaler = h_scaler
        #: the training history of the last fit (set by the workflow; saved and loaded with the checkpoint).
        self.history: TrainHistory | None = None
        if encoder is not None and head.context_features != encoder.out_features:
            raise ShapeError(
                f"head.context_features ({head.context_features}) must equal encoder.out_features "
                f"({encoder.out_features})"
            )
        if self.x_scaler.features != head.features:
            raise ShapeError(f"x_scaler has {self.x_scaler.features} features, the head {head.features}")

    # -- dimensions --------------------------------------------------------------------------------
    @property
    def x_features(self) -> int:
        return self.head.features

    @property
    def c_features(self) -> int | None:
        if self.encoder is not None:
            return self.encoder.in_features
        return self.head.context_features

    @property
    def conditional(self) -> bool:
        return self.head.context_features is not None

    # -- the model ---------------------------------------------------------------------------------
    def embed(self, c: Tensor | None) -> Tensor | None:
        """The head's context for conditions c (*B, d_c): h(standardised c), (*B, d_h); None when unconditional."""
        if not self.conditional:
            if c is not None:
                raise ShapeError("c must be None: this model is unconditional")
            return None
        if c is None:
            raise ShapeError(f"c is required: this model is conditional on {self.c_features} features")
        check_tensor("c", c, last_dim=self.c_features)
        if c.dim() == 0:
            raise ShapeError(f"c must have shape (..., {self.c_features}), got a scalar")
        check_matches("c", c, self.x_scaler.mean, "this model")
        batch, flat = c.shape[:-1], c.reshape(-1, c.shape[-1])
        if self.c_scaler is not None:
            flat = self.c_scaler(flat)
        h = flat if self.encoder is None else self.encoder(flat)
        h = h if self.h_scaler is None else self.h_scaler(h)
        return h.reshape(*batch, h.shape[-1])

    def _check_x(self, x: Tensor) -> Tensor:
        check_tensor("x", x, ndim=2, last_dim=self.x_features, min_rows=1)
        return check_matches("x", x, self.x_scaler.mean, "this model")

    def loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The head's training loss on standardised x (what the shared loop minimises)."""
        self._check_x(x)
        return self.head.loss(self.x_scaler(x), self.embed(c))

    # the model on rows of (x, embedding): what log_prob, sample and the distribution view share
    def _log_prob_rows(self, x: Tensor, h: Tensor | None, options: dict[str, Any]) -> Tensor:
        return self.head.log_prob(self.x_scaler(x), h, **options) + self.x_scaler.log_abs_det()

    def _sample_rows(
        self,
        n: int,
        h: Tensor | None,
        generator: torch.Generator | None,
        reparameterized: bool,
        options: dict[str, Any],
    ) -> Tensor:
        draw = self.head.rsample if reparameterized else self.head.sample
        return self.x_scaler.inverse(draw(n, h, generator=generator, **options))

    def log_prob(self, x: Tensor, c: Tensor | None = None, **options: Any) -> Tensor:
        """log p_hat(x | c) in nats, in the original units of x, with torch's broadcasting.

        x (*B1, d_x) and c (*B2, d_c) broadcast in their leading dims: (n, d_x) with (n, d_c) row by row, or
        with one condition (d_c,) / (1, d_c) for all n points (the embedding is computed once). Returns
        broadcast(B1, B2). ``options``: the head's call-time settings (``head.LOG_PROB_OPTIONS``).
        """
        check_tensor("x", x, last_dim=self.x_features)
        check_matches("x", x, self.x_scaler.mean, "this model")
        _, log_prob_kw = self.head.split_options(options)
        h = self.embed(c)
        shape = broadcast_batch("x", x, torch.Size(()) if h is None else h.shape[:-1], self.x_features)
        if shape.numel() == 0:
            return x.new_zeros(shape)
        rows = None if h is None else flatten_rows(h, shape)
        return self._log_prob_rows(flatten_rows(x, shape), rows, log_prob_kw).reshape(shape)

    def _shared_context(self, n: int, c: Tensor | None) -> Tensor | None:
        """The head's context for n draws: c None, one condition (d_c,) / (1, d_c) shared, or (n, d_c)."""
        check_positive_int("n", n)
        if c is not None:
            check_tensor("c", c)
            if c.dim() == 1:
                c = c.unsqueeze(0)
            if c.dim() != 2 or c.shape[0] not in (1, n):
                raise ShapeError(
                    f"sample(n, c) draws n={n} points: c must be one condition ({self.c_features},) or "
                    f"(1, {self.c_features}) shared by all of them, or (n={n}, {self.c_features}), one per draw; "
                    f"got shape {tuple(c.shape)}. For n draws from each of k conditions use "
                    f"model(c).sample((n,)), which returns (n, k, {self.x_features})"
                )
        h = self.embed(c)
        return None if h is None else h.expand(n, -1)

    def sample(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """n draws (n, d_x): c None (unconditional), one condition (d_c,) or (1, d_c) shared by all n draws, or
        (n, d_c), one condition per draw. n draws from each of k conditions: ``model(c).sample((n,))`` -> (n, k, d_x).

        ``generator`` makes the draws reproducible; ``options``: the head's call-time settings
        (``head.SAMPLE_OPTIONS``, e.g. a diffusion head's ``sampler="heun", steps=200``).
        """
        sample_kw, _ = self.head.split_options(options)
        check_generator(generator)
        with torch.no_grad():
            return self._sample_rows(n, self._shared_context(n, c), generator, False, sample_kw)

    def rsample(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """Like :meth:`sample`, with gradients to the parameters (heads with ``has_rsample``, e.g. flows)."""
        if not self.head.has_rsample:
            raise NotImplementedError(f"{type(self.head).__name__} has no reparameterised sampler; use sample()")
        sample_kw, _ = self.head.split_options(options)
        return self._sample_rows(n, self._shared_context(n, c), check_generator(generator), True, sample_kw)

    def forward(self, c: Tensor | None = None, **options: Any) -> ConditionalDistribution:
        """The distribution p_hat(x | c) for each condition of c (*B, d_c) (batch_shape B), or the unconditional one.

        ``options``: the head's call-time settings, used by the distribution's ``sample`` and ``log_prob``.
        """
        return ConditionalDistribution(self, c, **options)

    # -- persistence -------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        if self.encoder is not None and not isinstance(self.encoder, Encoder):
            enc: dict[str, Any] | None = {
                "fixed": True,
                "in_features": self.encoder.in_features,
                "out_features": self.encoder.out_features,
            }
        else:
            enc = None if self.encoder is None else self.encoder.config
        return {
            "head_kind": self.head.kind,
            "head": self.head.config,
            "encoder": enc,
            "c_scaler": None if self.c_scaler is None else self.c_scaler.features,
            "h_scaler": None if self.h_scaler is None else self.h_scaler.features,
        }

    def save(self, path: str | os.PathLike[str], identity: dict[str, Any] | None = None) -> Path:
        """Write ``path`` (safetensors + embedded config and training history) and a readable ``.json`` beside it.

        ``identity``: what the model was fitted for (e.g. its group and settings digest), JSON-able; stored, and
        checked by :meth:`load` when asked for."""
        extra = {} if self.history is None else {"history": self.history.to_dict()}
        if identity is not None:
            extra["identity"] = json.loads(json.dumps(identity))
        return save_checkpoint(path, self, {"model": "ConditionalModel", **self.config}, extra=extra)

    def load_weights(self, path: str | os.PathLike[str]) -> ConditionalModel:
        """Load weights (and the training history) saved by :meth:`save`; refuses another configuration."""
        extra = load_module_state(path, self, {"model": "ConditionalModel", **self.config})
        if "history" in extra:
            self.history = TrainHistory(**extra["history"])
        return self

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        identity: dict[str, Any] | None = None,
    ) -> ConditionalModel:
        """Rebuild a model from its checkpoint alone, in eval mode with its training history, on ``device``
        (default: CPU). The head's package must be imported (``flows``, ``diffusion``).

        ``identity``: what the model must have been fitted for (as given to :meth:`save`); a checkpoint of
        another fit (or of none stated) is a CheckpointError, never used. Tensors of the wrong dtype or with
        NaN or inf values are refused, naming the tensor; so is a config asking for more layers than stored."""
        target = resolve_device("cpu" if device is None else device)
        tensors, config, extra = load_checkpoint(path)
        if identity is not None and extra.get("identity") != json.loads(json.dumps(identity)):
            raise CheckpointError(
                f"{path} was fitted for {extra.get('identity')}, not for {identity}: a model of "
                "another fit is never used"
            )
        if config.get("model") != "ConditionalModel":
            raise CheckpointError(f"{path} does not hold a ConditionalModel (config 'model'={config.get('model')!r})")
        enc_cfg = config.get("encoder")
        if enc_cfg is not None and not isinstance(enc_cfg, dict):
            raise CheckpointError(f"{path} has a malformed model config: 'encoder' is {type(enc_cfg).__name__}")
        if enc_cfg is not None and enc_cfg.get("fixed"):
            raise CheckpointError(
                f"{path} wraps a fixed (oracle) embedding: rebuild it from its task, then load_weights"
            )
        _check_encoder_size(path, enc_cfg, tensors)
        try:
            with torch.device("meta"):  # sizes first: a config asking for huge modules allocates nothing
                _check_shapes(path, cls._build(path, config).state_dict(), tensors)
        except (NotImplementedError, RuntimeError):  # a head whose constructor needs real values (zuko's flows)
            _check_sizes(path, config, tensors)
        model = cls._build(path, config)
        if isinstance(model.encoder, Encoder):  # the only embedding _build makes
            model.encoder.freeze()
        return model.load_weights(path).to(target).eval()

    @classmethod
    def _build(cls, path: str | os.PathLike[str], config: dict[str, Any]) -> ConditionalModel:
        """The untrained model a checkpoint's config describes; CheckpointError for malformed fields."""
        enc_cfg = config.get("encoder")
        try:
            head = build_head(config["head_kind"], config["head"])
            encoder = None if enc_cfg is None else Encoder(**enc_cfg)

            def scaler(key: str) -> Standardizer | None:
                return None if config.get(key) is None else Standardizer(int(config[key]))

            return cls(head, encoder, Standardizer(head.features), scaler("c_scaler"), scaler("h_scaler"))
        except (ConfigError, KeyError, TypeError, ValueError, OverflowError) as err:
            raise CheckpointError(f"{path} has a malformed model config: {type(err).__name__}: {err}") from err


def _check_encoder_size(
    path: str | os.PathLike[str], enc_cfg: dict[str, Any] | None, stored: dict[str, Tensor]
) -> None:
    """An encoder config must not ask for more hidden layers than there are stored tensors, nor for a width larger
    than every stored dimension: refused in microseconds, before any module (even on the meta device) is built."""
    hidden = (enc_cfg or {}).get("hidden")
    if not isinstance(hidden, (list, tuple)):
        return
    limit = max([1, *(max(t.shape, default=1) for t in stored.values())])
    if len(hidden) > len(stored):
        raise CheckpointError(
            f"{path}: config field encoder.hidden lists {len(hidden)} layers, more than the "
            f"{len(stored)} stored tensors: the config does not describe these weights"
        )
    for i, width in enumerate(hidden):
        if isinstance(width, int) and not isinstance(width, bool) and width > limit:
            raise CheckpointError(
                f"{path}: config field encoder.hidden[{i}] = {width} exceeds every stored tensor "
                f"dimension ({limit}): the config does not describe these weights"
            )


def _check_shapes(path: str | os.PathLike[str], wanted: dict[str, Tensor], stored: dict[str, Tensor]) -> None:
    """The module a config describes (built on the meta device) must have exactly the stored tensors' shapes."""
    diff = sorted(
        k
        for k in set(wanted) | set(stored)
        if k not in wanted or k not in stored or tuple(wanted[k].shape) != tuple(stored[k].shape)
    )
    if diff:
        size = sum(t.numel() for t in wanted.values())
        raise CheckpointError(
            f"{path}: its config describes a model of {size} numbers whose tensors do not match "
            f"the {len(stored)} stored ones (first differences: {diff[:3]})"
        )


def _check_sizes(path: str | os.PathLike[str], config: Any, stored: dict[str, Tensor]) -> None:
    """Where a head cannot be built on the meta device: every integer of the config (a width, a count of
    layers or bins) must be at most the largest stored dimension or the number of stored tensors; a config
    asking for more cannot describe these weights and is refused before anything is allocated."""
    limit = max([len(stored), *(max(t.shape, default=1) for t in stored.values())])

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, int) and not isinstance(node, bool) and node > limit:
            raise CheckpointError(
                f"{path}: config field {key} = {node} exceeds every stored tensor dimension "
                f"({limit}): the config does not describe these weights"
            )

    walk(config, "")


class ConditionalDistribution(BatchedConditional):
    """``torch.distributions`` view of p_hat(x | c) for conditions c (*B, d_c): batch_shape B, event_shape (d_x,).

    The embedding of c is computed once; ``log_prob(x)`` broadcasts x (..., d_x) against B and ``sample((n,))``
    returns (n, *B, d_x), each in one vectorised call (see ``shared_embed.distribution``).
    """

    def __init__(self, model: ConditionalModel, c: Tensor | None, **options: Any) -> None:
        self.model = model
        self.c = c
        sample_kw, log_prob_kw = model.head.split_options(options)
        h = model.embed(c)

        def log_prob_rows(x: Tensor, rows: Tensor | None) -> Tensor:
            check_matches("value", x, model.x_scaler.mean, "this model")
            return model._log_prob_rows(x, rows, log_prob_kw)

        def sample_rows(m: int, rows: Tensor | None, generator: torch.Generator | None, reparam: bool) -> Tensor:
            return model._sample_rows(m, rows, generator, reparam, sample_kw)

        super().__init__(model.x_features, h, log_prob_rows, sample_rows, model.head.has_rsample)
