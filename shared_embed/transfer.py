"""The transfer workflow for any head: fit the encoder with a source head, freeze it, fit a target head.

The variants of ``VARIANTS``, each returning a :class:`~shared_embed.model.ConditionalModel` scored the same way:

- ``transfer``: encoder + source head on the source; encoder frozen; a new head on the target;
- ``no_transfer``: encoder + head from scratch on the target only;
- ``fine_tune``: start from the source encoder and head, train everything on the target;
- ``oracle``: the task's true embedding h* frozen, a head on the target (ground-truth tasks only);
- ``direct``: no transfer and no encoder: a head on the standardised condition c itself, target only (with a
  linear-Gaussian head this is Gaussian linear regression on c, whose expected KL is known exactly).

A head comes from a factory ``head_factory(context_features) -> Head``, which ``flows`` and
``diffusion`` provide; this module never asks what kind of head it holds.

Data: every entry point takes what :func:`shared_embed.convert.as_paired_data` takes as one argument (a
PairedData, a ``(c, x)`` pair of numpy arrays or tensors of any real dtype, a TensorDataset, a DataLoader) and
converts it to the model's dtype up front. Each fit holds out ``val_fraction`` of its rows (default 0.2) for early
stopping and says how many rows trained and how many were held out (``history.n_train`` / ``history.n_val``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from .callbacks import Callback, check_callbacks
from .convert import as_paired_data
from .data import PairedData
from .device import resolve_device
from .encoder import Embedding, Encoder, FixedEmbedding
from .errors import ConfigError, DataError, DTypeError, ShapeError
from .head import ExactFit, Head
from .model import ConditionalModel
from .reduced_rank import canonical_row_space
from .standardize import Standardizer
from .train import TrainConfig, TrainHistory, fit
from .validation import check_choice, check_fraction, check_positive_int

__all__ = [
    "MIN_VAL_ROWS",
    "VARIANTS",
    "Augment",
    "FitResult",
    "HeadFactory",
    "TransferConfig",
    "check_fit_data",
    "constant_columns",
    "fit_source",
    "fit_target_head",
    "fit_variants",
    "min_fit_rows",
    "new_encoder",
    "train_model",
]

VARIANTS = ("transfer", "no_transfer", "fine_tune", "oracle", "direct")
MIN_VAL_ROWS = 4
HeadFactory = Callable[[int | None], Head]
#: ``augment(x) -> x'``: a fresh random version of a training batch's outcomes x (n, d_x), in the model's
#: original units (e.g. re-dequantised pixels); applied to training batches only, never to validation ones.
Augment = Callable[[Tensor], Tensor]


@dataclass
class TransferConfig:
    """Settings of the workflow: encoder shape and the two training phases.

    ``val_fraction`` of each data set is held out for early stopping when that leaves at least
    ``MIN_VAL_ROWS`` rows; smaller sets, and ``val_fraction = 0``, train on every row for the configured number
    of steps. Each fit's history says how many rows trained and how many were held out.
    """

    embed_dim: int = 2
    encoder_hidden: Sequence[int] = (64, 64)
    encoder_activation: str = "silu"
    source_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, description="source"))
    target_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, description="target"))
    val_fraction: float = 0.2
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_positive_int("embed_dim", self.embed_dim)
        check_fraction("val_fraction", self.val_fraction, closed=True, high=0.9)
        resolve_device(self.device)  # fail at configuration time, not after the source fit


@dataclass
class FitResult:
    """A fitted variant: the model, its training histories (phase -> history) and wall time."""

    variant: str
    model: ConditionalModel
    histories: dict[str, TrainHistory]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "seconds": self.seconds,
            "steps": {k: h.steps_done for k, h in self.histories.items()},
            "best_val": {k: h.best_val for k, h in self.histories.items()},
            "rows": {k: {"train": h.n_train, "val": h.n_val} for k, h in self.histories.items()},
            "warnings": [f"{k}: {w}" for k, h in self.histories.items() for w in h.warnings],
        }


def _model_loss(model: ConditionalModel, augment: Augment | None = None) -> Callable[[Sequence[Tensor]], Tensor]:
    def loss(batch: Sequence[Tensor]) -> Tensor:
        x = batch[-1]
        if augment is not None and model.training:  # the loop evaluates validation batches in eval mode
            x = augment(x)
        return model.loss(x, batch[0] if len(batch) == 2 else None)

    return loss


def train_model(
    model: ConditionalModel,
    data: PairedData,
    config: TrainConfig,
    val_fraction: float = 0.2,
    *,
    augment: Augment | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainHistory:
    """Train every trainable parameter of ``model`` on ``data`` with the shared loop.

    Holds out ``val_fraction`` (in [0, 0.9]) of the rows for early stopping when that leaves ``MIN_VAL_ROWS``
    rows; ``history.n_train`` / ``history.n_val`` say how many trained and how many were held out. ``augment``
    (optional) redraws each training batch's x (see :data:`Augment`); ``callbacks`` go to :func:`fit`.
    """
    check_fraction("val_fraction", val_fraction, closed=True, high=0.9)
    if model.conditional != data.conditional:
        want = "paired (c, x)" if model.conditional else "unconditional (c=None)"
        raise ShapeError(f"data must be {want} for this model")
    if data.d_x != model.x_features:
        raise ShapeError(f"data.x has {data.d_x} features, the model expects {model.x_features}")
    if data.conditional and data.d_c != model.c_features:
        raise ShapeError(f"data.c has {data.d_c} features, the model expects {model.c_features}")
    if _has_joint_closed_form(model):
        return _fit_joint_closed_form(model, data)
    if _has_closed_form(model):
        return _fit_closed_form(model, data)
    n_val = int(round(len(data) * val_fraction))
    if val_fraction > 0 and n_val >= MIN_VAL_ROWS and len(data) - n_val >= 1:
        train, val = data.split(val_fraction, torch.Generator().manual_seed(config.seed))
        return fit(model, _model_loss(model, augment), train.tensors(), val.tensors(), config, callbacks=callbacks)
    return fit(model, _model_loss(model, augment), data.tensors(), None, config, callbacks=callbacks)


def _has_closed_form(model: ConditionalModel) -> bool:
    """A head with an exact maximum-likelihood solver on a context that nothing else trains."""
    frozen = model.encoder is None or not any(p.requires_grad for p in model.encoder.parameters())
    return frozen and callable(getattr(model.head, "fit_closed_form", None))


def _has_joint_closed_form(model: ConditionalModel) -> bool:
    """A trainable linear encoder under a head whose joint fit with it is exact (reduced-rank regression)."""
    enc = model.encoder
    return (
        isinstance(enc, Encoder)
        and enc.is_linear
        and any(p.requires_grad for p in enc.parameters())
        and getattr(model.head, "exact_with_linear_encoder", False)
    )


def _fit_joint_closed_form(model: ConditionalModel, data: PairedData) -> TrainHistory:
    """The exact joint maximum-likelihood fit of a linear encoder and its head on every row: the encoder's
    row space by reduced-rank regression (:func:`shared_embed.reduced_rank.canonical_row_space`), then the
    head's own exact fit on the embedding."""
    start = time.perf_counter()
    encoder = model.encoder
    assert isinstance(encoder, Encoder) and data.c is not None
    with torch.no_grad():
        x = model.x_scaler(data.x)
        c = data.c if model.c_scaler is None else model.c_scaler(data.c)
        layer = cast(nn.Linear, encoder.net[0])
        layer.weight.copy_(canonical_row_space(c, x, encoder.out_features).to(layer.weight))
        layer.bias.zero_()
        context = model.embed(data.c)
        cast(ExactFit, model.head).fit_closed_form(x, context)
        nll = float(model.head.loss(x, context))
    return TrainHistory(train_loss=[nll], best_val=nll, seconds=time.perf_counter() - start, n_train=len(data), n_val=0)


def _fit_closed_form(model: ConditionalModel, data: PairedData) -> TrainHistory:
    """Solve the head's maximum-likelihood fit exactly on every row (no validation split, no steps)."""
    start = time.perf_counter()
    with torch.no_grad():
        x, context = model.x_scaler(data.x), model.embed(data.c if data.conditional else None)
        cast(ExactFit, model.head).fit_closed_form(x, context)
        nll = float(model.head.loss(x, context))
    return TrainHistory(train_loss=[nll], best_val=nll, seconds=time.perf_counter() - start, n_train=len(data), n_val=0)


def min_fit_rows(context_features: int) -> int:
    """The fewest rows a fit may have: ``context_features + 2``. The simplest head on a context of that many
    features, a Gaussian linear in it with one variance per outcome, has ``context_features + 1`` coefficients
    and a variance per outcome: fewer rows leave a variance unidentified (a fitted log-density then grows
    without bound). Independent of d_x, so few-shot fits of many outcomes (8x8 digits) stay possible."""
    return context_features + 2


def constant_columns(values: Tensor) -> list[int]:
    """The columns of ``values`` (n, k) that do not vary: their standard deviation is 0, or below 1e-6 of their
    scale (a density of such a column, or a condition made of it, is degenerate)."""
    if values.shape[0] < 2:
        return list(range(values.shape[1]))
    std = values.double().std(0)
    scale = values.double().abs().amax(0).clamp_min(1.0)
    return [int(i) for i in torch.nonzero(std <= 1e-6 * scale).flatten()]


def _exact_solver(head: Head) -> bool:
    """A head with an exact maximum-likelihood solver, whose parameters its rows must identify."""
    return callable(getattr(head, "fit_closed_form", None))


def check_fit_data(name: str, data: PairedData, context_features: int | None) -> PairedData:
    """``data`` when a model can be fitted to it: at least :func:`min_fit_rows` rows, no constant column of x and
    a c that is not constant in every column; else a DataError naming the argument (and the column)."""
    need = min_fit_rows(context_features or 0)
    if len(data) < need:
        what = f"a {context_features}-feature context" if context_features else "no context"
        raise DataError(
            f"{name} has {len(data)} row(s); a fit on {what} needs at least {need} (context features "
            "+ 2: the simplest such model, Gaussian linear in the context, has context features + 1 "
            "coefficients and a variance per outcome)"
        )
    flat = constant_columns(data.x)
    if flat:
        more = f" (and {len(flat) - 1} more)" if len(flat) > 1 else ""
        raise DataError(
            f"{name}.x column {flat[0]}{more} is constant (zero variance over {len(data)} rows): its "
            "density is degenerate; drop the column or give data in which it varies"
        )
    if data.c is not None and data.c.shape[1] and len(constant_columns(data.c)) == data.c.shape[1]:
        raise DataError(
            f"{name}.c is constant in every column ({len(data)} rows): there is no condition to learn "
            "an embedding of; give data in which c varies (single constant columns, such as an image's "
            "blank corner pixels, are fine: they carry no information and are left as they are)"
        )
    return data


def new_encoder(d_c: int, config: TransferConfig) -> Encoder:
    return Encoder(d_c, config.embed_dim, config.encoder_hidden, config.encoder_activation)


def _as_data(name: str, data: object, dtype: torch.dtype) -> PairedData:
    """``data`` through :func:`as_paired_data`, cast to ``dtype`` (the model's)."""
    return as_paired_data(data, dtype=dtype, name=name)


def _named(config: TrainConfig | None, phase: str) -> TrainConfig:
    """``config`` (default: ``TrainConfig()``) with the description ``phase`` when it kept the default one, so
    progress bars, warnings and callbacks name the phase."""
    config = config or TrainConfig()
    return config.replace(description=phase) if config.description == TrainConfig.description else config


def _dtype_of(*modules: nn.Module) -> torch.dtype:
    """The dtype of the first floating parameter of ``modules`` (torch's default dtype when they have none)."""
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def _check_head(name: str, head: object) -> Head:
    if not isinstance(head, Head):
        raise DTypeError(f"{name} must be a Head (e.g. FlowHead(2, 2)), got {type(head).__name__}")
    return head


def fit_source(
    encoder: Encoder,
    head: Head,
    source: PairedData | Any,
    config: TrainConfig | None = None,
    *,
    val_fraction: float = 0.2,
    augment: Augment | None = None,
    callbacks: Sequence[Callback] = (),
) -> ConditionalModel:
    """Train ``encoder`` and a source ``head`` jointly on the source pairs; return the (unfrozen) model.

    ``source``: a PairedData or anything :func:`as_paired_data` takes as one argument (e.g. a ``(c, x)`` pair of
    float64 numpy arrays), cast to the model's dtype. ``val_fraction`` of the rows are held out for early
    stopping (``model.history.n_train`` / ``n_val`` say how many). Scalers are fitted on the source data.
    Transfer with ``fit_target_head(model, new_head, target)``.
    """
    _check_head("head", head)
    if not isinstance(encoder, Encoder):
        raise DTypeError(f"encoder must be a shared_embed.Encoder, got {type(encoder).__name__}")
    source = _as_data("source", source, _dtype_of(head, encoder))
    if not source.conditional:
        raise DataError("source must hold conditions c: the shared embedding is a function of c")
    check_fit_data("source", source, encoder.out_features)
    model = ConditionalModel(head, encoder, Standardizer.fit(source.x), Standardizer.fit(cast(Tensor, source.c)))
    model.to(source.x.device)
    model.history = train_model(
        model, source, _named(config, "source"), val_fraction, augment=augment, callbacks=callbacks
    )
    return model


_UNSET: Any = object()


def fit_target_head(
    source: ConditionalModel | Embedding,
    head: Head,
    target: PairedData | Any,
    config: TrainConfig | None = None,
    *,
    c_scaler: Standardizer | None = _UNSET,
    val_fraction: float = 0.2,
    augment: Augment | None = None,
    callbacks: Sequence[Callback] = (),
) -> ConditionalModel:
    """Train only a new target ``head`` on the target pairs, on the frozen embedding of a fitted source model.

    Args:
        source: the fitted source model (``fit_source``'s result): its encoder is copied and frozen, and the
            condition scaler it was trained with comes along, so the target model sees c exactly as the source
            did. Also accepted: a frozen embedding module (e.g. the task's true h*, which reads raw c); a bare
            learned ``Encoder`` needs ``c_scaler`` said explicitly (the source model's ``c_scaler``, or None
            if it was trained on raw c), since a forgotten scaler silently changes what the embedding sees.
        head / target / config: the new head, the target pairs (anything :func:`as_paired_data` takes as one
            argument, cast to the head's dtype), the training settings.
        val_fraction: the share of target rows held out for early stopping (``model.history.n_val``).
        callbacks: :class:`~shared_embed.callbacks.Callback` objects for the target fit.

    The embedding's outputs on the target conditions are standardised, so the new head sees unit-scale contexts.

    Example:
        >>> src = fit_source(Encoder(16, 2), FlowHead(2, 2), source)
        >>> tgt = fit_target_head(src, FlowHead(2, 2), target)
    """
    _check_head("head", head)
    target = _as_data("target", target, _dtype_of(head))
    if isinstance(source, ConditionalModel):
        if c_scaler is not _UNSET:
            raise ConfigError("c_scaler must not be given with a source model: the model carries its own")
        if source.encoder is None:
            raise ConfigError("source model has no encoder to transfer (it reads c directly)")
        embedding: Embedding = copy.deepcopy(source.encoder)
        c_scaler = copy.deepcopy(source.c_scaler)
    elif isinstance(source, nn.Module):
        embedding = source
        if c_scaler is _UNSET:
            if isinstance(source, Encoder):
                raise ConfigError(
                    "pass the fitted source model itself, fit_target_head(source_model, head, target): it carries "
                    "the encoder and the condition scaler the encoder was trained with; with a bare Encoder, "
                    "say c_scaler=source_model.c_scaler (or c_scaler=None if it was trained on raw c)"
                )
            c_scaler = None
    else:
        raise DTypeError(
            f"source must be the fitted source ConditionalModel (or a frozen embedding module), "
            f"got {type(source).__name__}"
        )
    if isinstance(embedding, Encoder):
        embedding.freeze()
    elif any(p.requires_grad for p in embedding.parameters()):
        raise ConfigError("embedding must be frozen: it has parameters with requires_grad=True")
    with torch.no_grad():
        h = embedding(cast(Tensor, target.c) if c_scaler is None else c_scaler(target.c))
    check_fit_data("target", target, h.shape[-1])
    model = ConditionalModel(head, embedding, Standardizer.fit(target.x), c_scaler, Standardizer.fit(h))
    model.to(target.x.device)
    model.history = train_model(
        model, target, _named(config, "target"), val_fraction, augment=augment, callbacks=callbacks
    )
    return model


def _check_variants(variants: object) -> list[str]:
    if isinstance(variants, str):
        raise ConfigError(
            f"variants must be a sequence of variant names, e.g. ({variants!r},), got the string "
            f"{variants!r}; valid names: {', '.join(VARIANTS)}"
        )
    try:
        names = list(variants)  # type: ignore[call-overload]
    except TypeError as err:
        raise ConfigError(
            f"variants must be a sequence of names from {VARIANTS}, got {type(variants).__name__}"
        ) from err
    return [check_choice("variant", v, VARIANTS) for v in names]


def _check_factory(head_factory: object) -> HeadFactory:
    if isinstance(head_factory, Head):
        raise DTypeError(
            f"head_factory must build a new head per variant, factory(context_features) -> Head, got a "
            f"{type(head_factory).__name__} instance; pass e.g. make_flow_head(2, ...) or "
            f"lambda k: {type(head_factory).__name__}(..., k)"
        )
    if not callable(head_factory):
        raise DTypeError(
            f"head_factory must be callable as factory(context_features) -> Head, got {type(head_factory).__name__}"
        )
    return head_factory


def fit_variants(
    head_factory: HeadFactory,
    source: PairedData | Any,
    target: PairedData | Any,
    config: TransferConfig | None = None,
    variants: Iterable[str] = ("transfer", "no_transfer", "fine_tune"),
    *,
    oracle_embedding: Embedding | None = None,
    source_model: ConditionalModel | None = None,
    augment: Augment | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, FitResult]:
    """Fit the requested variants on one (source, target) pair of data sets.

    Args:
        head_factory: ``head_factory(context_features)`` returns a new untrained head.
        source / target: paired data with the same d_c and d_x: PairedData or anything :func:`as_paired_data`
            takes as one argument, cast to torch's default dtype (the heads'). Each fit holds out
            ``config.val_fraction`` of its rows for early stopping (``TransferConfig(val_fraction=...)``; each
            history's ``n_train`` / ``n_val`` and the :meth:`FitResult.summary` say how many).
        variants: any of ``VARIANTS``; ``oracle`` needs ``oracle_embedding`` (the task's true h*).
        source_model: reuse an already fitted source model (e.g. shared across n_t in a sweep).
        augment: optional redraw of each training batch's x, every phase (see :data:`Augment`).
        callbacks: :class:`~shared_embed.callbacks.Callback` objects, called by every fit (``on_start`` names
            each).

    Returns:
        variant name -> :class:`FitResult`, plus ``"source"`` when a source model was fitted here.
    """
    head_factory = _check_factory(head_factory)
    source = _as_data("source", source, torch.get_default_dtype())
    target = _as_data("target", target, torch.get_default_dtype())
    callbacks = check_callbacks(callbacks)
    config = config or TransferConfig()
    variants = _check_variants(variants)
    if source.d_c != target.d_c or source.d_x != target.d_x:
        raise ShapeError(
            f"source and target must share dimensions, got (d_c, d_x) = ({source.d_c}, {source.d_x}) "
            f"and ({target.d_c}, {target.d_x})"
        )
    if any(v in ("transfer", "no_transfer", "fine_tune") for v in variants):  # oracle, direct: checked below
        check_fit_data("target", target, config.embed_dim)
    if source_model is None and any(v in ("transfer", "fine_tune") for v in variants):
        check_fit_data("source", source, config.embed_dim)
    device = resolve_device(config.device)
    source, target = source.to(device), target.to(device)
    results: dict[str, FitResult] = {}
    vf = config.val_fraction
    source_train, target_train = _named(config.source_train, "source"), _named(config.target_train, "target")

    def needs_source() -> ConditionalModel:
        nonlocal source_model
        if source_model is None:
            start = time.perf_counter()
            source_model = fit_source(
                new_encoder(cast(int, source.d_c), config),
                head_factory(config.embed_dim).to(device),
                source,
                source_train,
                val_fraction=vf,
                augment=augment,
                callbacks=callbacks,
            )
            results["source"] = FitResult(
                "source",
                source_model,
                {"source": cast(TrainHistory, source_model.history)},
                time.perf_counter() - start,
            )
        return source_model

    for variant in variants:
        start = time.perf_counter()
        if variant == "transfer":
            model = fit_target_head(
                needs_source(),
                head_factory(config.embed_dim).to(device),
                target,
                target_train,
                val_fraction=vf,
                augment=augment,
                callbacks=callbacks,
            )
        elif variant == "no_transfer":
            model = fit_source(
                new_encoder(cast(int, target.d_c), config),
                head_factory(config.embed_dim).to(device),
                target,
                target_train,
                val_fraction=vf,
                augment=augment,
                callbacks=callbacks,
            )
        elif variant == "fine_tune":
            model = copy.deepcopy(needs_source())
            cast(Encoder, model.encoder).unfreeze()
            model.history = train_model(model, target, target_train, vf, augment=augment, callbacks=callbacks)
        elif variant == "direct":
            head = head_factory(target.d_c).to(device)
            # an exact (closed-form) head on c needs its d_c + 2 rows to be identified; a trained head on c is
            # early-stopped like any other and needs only rows to fit (few-shot on images: 20 rows, 32 pixels)
            check_fit_data("target", target, target.d_c if _exact_solver(head) else None)
            model = ConditionalModel(head, None, Standardizer.fit(target.x), Standardizer.fit(cast(Tensor, target.c)))
            model.history = train_model(model, target, target_train, vf, augment=augment, callbacks=callbacks)
        else:
            if oracle_embedding is None:
                raise ConfigError("variant 'oracle' needs oracle_embedding (the task's true h*)")
            d_h = oracle_embedding.out_features
            embedding = FixedEmbedding(oracle_embedding, cast(int, target.d_c), d_h).to(device)
            model = fit_target_head(
                embedding,
                head_factory(d_h).to(device),
                target,
                target_train,
                val_fraction=vf,
                augment=augment,
                callbacks=callbacks,
            )
        if isinstance(model.encoder, Encoder):
            model.encoder.freeze()  # every fitted model is evaluated as a fixed density
        results[variant] = FitResult(
            variant, model, {"target": cast(TrainHistory, model.history)}, time.perf_counter() - start
        )
    return results
