"""A fitted conditional generative model: standardise, embed with a (frozen) encoder, hand to a head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from .checkpoint import load_checkpoint, load_module_state, save_checkpoint
from .encoder import Encoder
from .errors import CheckpointError, ShapeError
from .head import Head, build_head
from .standardize import Standardizer
from .validation import check_matches, check_positive_int, check_tensor


class ConditionalModel(nn.Module):
    """p_hat(x | c) = head( (x - m_x)/s_x | H(h((c - m_c)/s_c)) ) / prod(s_x).

    The head sees standardised outcomes and the (optionally standardised, H) embedding of standardised
    conditions; a frozen embedding is standardised so a new head sees contexts of unit scale. ``log_prob`` is
    the exact density of the original x (the Jacobian of the scaling is added back). Calling the model
    on conditions returns a ``torch.distributions.Distribution``, as a zuko conditional flow does.

    Args:
        head: any :class:`~shared_embed.head.Head`.
        encoder: the embedding h (None: the head reads the standardised c itself, or no c at all).
        x_scaler / c_scaler / h_scaler: standardisers of x, c and the embedding h(c); None means identity.

    Example:
        >>> model = ConditionalModel(GaussianHead(2, 2), Encoder(16, 2))
        >>> model(torch.randn(5, 16)).log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        head: Head,
        encoder: nn.Module | None = None,
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
        """The head's context for conditions c (n, d_c): h(standardised c); None when unconditional."""
        if not self.conditional:
            if c is not None:
                raise ShapeError("c must be None: this model is unconditional")
            return None
        if c is None:
            raise ShapeError(f"c is required: this model is conditional on {self.c_features} features")
        check_tensor("c", c, ndim=2, last_dim=self.c_features)
        check_matches("c", c, self.x_scaler.mean, "this model")
        if self.c_scaler is not None:
            c = self.c_scaler(c)
        h = c if self.encoder is None else self.encoder(c)
        return h if self.h_scaler is None else self.h_scaler(h)

    def _check_x(self, x: Tensor) -> Tensor:
        check_tensor("x", x, ndim=2, last_dim=self.x_features, min_rows=1)
        return check_matches("x", x, self.x_scaler.mean, "this model")

    def loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The head's training loss on standardised x (what the shared loop minimises)."""
        self._check_x(x)
        return self.head.loss(self.x_scaler(x), self.embed(c))

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """log p_hat(x | c), (n,), in nats, in the original units of x."""
        self._check_x(x)
        if c is not None and c.dim() == 2 and c.shape[0] != x.shape[0]:
            raise ShapeError(f"c and x must have the same number of rows, got {c.shape[0]} and {x.shape[0]}")
        return self.head.log_prob(self.x_scaler(x), self.embed(c)) + self.x_scaler.log_abs_det()

    def sample(self, n: int, c: Tensor | None = None) -> Tensor:
        """(n, d_x) draws; c is None (unconditional), (d_c,) shared, or (n, d_c) one per row."""
        check_positive_int("n", n)
        if c is not None:
            check_tensor("c", c)
        if c is not None and c.dim() == 1:
            c = c.unsqueeze(0)
        if c is not None and c.dim() == 2 and c.shape[0] == 1 and n > 1:
            c = c.expand(n, -1)
        return self.x_scaler.inverse(self.head.sample(n, self.embed(c)))

    def forward(self, c: Tensor | None = None) -> ConditionalDistribution:
        """The distribution p_hat(x | c) for each row of c (or the unconditional one)."""
        return ConditionalDistribution(self, c)

    # -- persistence -------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        if self.encoder is not None and not isinstance(self.encoder, Encoder):
            enc: dict[str, Any] | None = {"fixed": True, "in_features": self.encoder.in_features,
                                          "out_features": self.encoder.out_features}
        else:
            enc = None if self.encoder is None else self.encoder.config
        return {
            "head_kind": self.head.kind,
            "head": self.head.config,
            "encoder": enc,
            "c_scaler": None if self.c_scaler is None else self.c_scaler.features,
            "h_scaler": None if self.h_scaler is None else self.h_scaler.features,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors + embedded config) and a readable ``.json`` beside it."""
        return save_checkpoint(path, self, {"model": "ConditionalModel", **self.config})

    def load_weights(self, path: str | os.PathLike[str]) -> ConditionalModel:
        """Load weights saved by :meth:`save`; refuses a checkpoint of a different configuration."""
        load_module_state(path, self, {"model": "ConditionalModel", **self.config})
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConditionalModel:
        """Rebuild a model from its checkpoint alone (the head's package must be imported)."""
        _, config, _ = load_checkpoint(path)
        if config.get("model") != "ConditionalModel":
            raise CheckpointError(f"{path} does not hold a ConditionalModel (config 'model'={config.get('model')!r})")
        enc_cfg = config.get("encoder")
        if enc_cfg is not None and enc_cfg.get("fixed"):
            raise CheckpointError(f"{path} wraps a fixed (oracle) embedding: rebuild it from its task, then load_weights")
        head = build_head(config["head_kind"], config["head"])
        encoder = None if enc_cfg is None else Encoder(**enc_cfg)
        scaler = lambda key: None if config.get(key) is None else Standardizer(int(config[key]))  # noqa: E731
        model = cls(head, encoder, Standardizer(head.features), scaler("c_scaler"), scaler("h_scaler"))
        if encoder is not None:
            encoder.freeze()
        return model.load_weights(path)


class ConditionalDistribution(Distribution):
    """``torch.distributions`` view of p_hat(x | c) for a batch of conditions (batch_shape = (n,))."""

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, model: ConditionalModel, c: Tensor | None) -> None:
        self.model = model
        self.c = c
        batch = torch.Size(()) if c is None else torch.Size((c.shape[0],))
        super().__init__(batch, torch.Size((model.x_features,)), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if self.c is None:
            flat = value.reshape(-1, self.model.x_features)
            return self.model.log_prob(flat).reshape(value.shape[:-1])
        n = self.c.shape[0]
        flat = value.reshape(-1, n, self.model.x_features)
        out = torch.stack([self.model.log_prob(v, self.c) for v in flat])
        return out.reshape(value.shape[:-1])

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        k = int(torch.Size(sample_shape).numel())
        with torch.no_grad():
            if self.c is None:
                out = self.model.sample(k)
            else:
                out = torch.stack([self.model.sample(self.c.shape[0], self.c) for _ in range(k)])
        return out.reshape(*sample_shape, *self.batch_shape, self.model.x_features)
