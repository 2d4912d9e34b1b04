"""Conditional TGDP on the digits: the frozen source diffusion model plus a guidance, through the library's
:class:`~diffusion.tgdp.guided_model.GuidedDiffusionModel`.

TGDP (``diffusion.tgdp``, docs/theory.md, 'TGDP') needs every piece in ONE space: the source score was learned on
source-standardised logits x_s = (z - m_src) / s_src with context h(c), the frozen embedding of the label. So the
target images are standardised with the SOURCE scaler. Two estimators of the guidance (option ``estimator``):

- ``"network"``: ``diffusion.tgdp.fit_tgdp`` with contexts h(c): the domain classifier c(x, h(y)), the ratio
  w = ((1 - c) / c) (n_s / n_t) at every source pair, the guidance network h_psi(x_t, t, h(y)) regressed onto w
  (its options: the fields of ``TGDPConfig``);
- ``"kernel"``: no guidance network: ``diffusion.tgdp.KernelGuidance`` computes h_t(x, y) = E[w(x_0) | x_t = x]
  over the source rows of label y in closed form. Option ``ratio``: ``"classifier"`` (default) trains the same
  domain classifier (on x and the one-hot label; ``classifier_hidden``, ``classifier_train``, ``balanced``) and
  uses the plain estimate (bandwidth 0); ``"linear"`` / ``"quadratic"`` fit log w by cross-validated logistic
  regression on x (or its degree-2 features) with per-label deviations (``diffusion.tgdp.fit_quadratic_log_ratio``;
  ``per_label = false``: one ratio shared by every label), and the kernel density estimate of the source rows
  with ``bandwidth`` (default ``"scott"``) integrates it in closed form, so h_0 = w exactly. ``max_rows`` caps
  the source rows the sums run over;
- ``"tilt"``: the same cross-validated LINEAR log ratio (``per_label`` as above), and the exact guidance of that
  exponential tilt through the frozen source score itself (``diffusion.tgdp.TiltGuidance``: grad log h_t(x) =
  s_src(x + (s_t^2 / a_t) beta, t) - s_src(x, t) + beta / a_t; the Gaussian form where the shift exceeds
  ``max_shift``, default 1): the target model is the tilt of the source MODEL, not of a kernel density estimate
  of its rows, and there is no bandwidth to choose. Its guidance context is [h(c), label].
- ``"narrow"``: the tilt's linear log ratio fixes the direction u = beta / |beta| (the label-average beta with
  ``per_label``); along f = u^T x a log ratio QUADRATIC in f, fitted after standardising f within each label by the
  source rows' mean and sd (``diffusion.tgdp.fit_narrowing``; ``narrow_fit``: ``"cv"`` (default), logistic
  regression on [z, z^2] with CV, or ``"moments"``), so the target can be narrower along f than the source, not
  only shifted; guided by ``diffusion.tgdp.NarrowTiltGuidance`` (the linear part exactly as the tilt, the Gaussian
  factor through a Gaussian posterior of f). ``split``: the linear part kept exact, ``"tilt"`` (default: the
  tilt's own slope along u) or ``"none"`` (the whole quadratic as the Gaussian factor). The premise check is that
  of the composed ratio that guides: the tilt's part across u (normalised over the reference rows) plus the
  quadratic along f with the fit's own constant, so E_p[w] checks the fit. ``feature``: ``"direction"``
  (default, f = u^T x as above) or ``"intensity"``: f the image's total pixel intensity in pixel space, sum_i y_i
  (:class:`PixelIntensity`, the ink of a digit before quantisation), a nonlinear function of the logits the model
  works in, so the Gaussian factor is guided through its linearisation at the posterior mean
  (``NarrowTiltGuidance`` with a ``Feature``); the whole quadratic in f is the factor (no linear part, no
  ``split``). A target that selects on the ink is then modelled along the ink itself, not along the logits' sum,
  which saturated pixels bend away from it.

Every estimator fits its ratio against ``reference`` (:func:`ratio_reference`): the source rows (``"rows"``,
default) or the frozen source model's own draws, one per source row with its label (``"draws"``). TGDP composes the
source MODEL with w, so the ratio that makes p_model w / E[w] the target is q / p_model; where the model holds more
(or less) of the target's region than its rows, a ratio to the rows over- (or under-) states what reweighting the
model gains. The gain prediction uses the same reference.

Either way the premise check (``diffusion.tgdp.premise``: classifier AUC, ESS / n_s, E_p[w] against the stated
``PremiseThresholds``) runs before any guidance is used, and warns naming what fails; with ``refuse_on_premise``
(default on) a failed premise refuses the guidance, so the model is the source model. Then
``GuidedDiffusionModel.check_guidance`` probes |grad log h_t| / |s_src| on the noised target rows and refuses a
guidance that explodes (``GuidanceLimit``: ``max_ratio``, ``refuse_fraction``; ``action`` clips or drops exploding
rows during the solves). ``switch``: a switch time tau (the source score alone below it), a number in [0, 1) or
``"select"``: chosen by ``diffusion.tgdp.select_switch`` on the held-out part of the target rows (the
``val_fraction`` of the transfer config, the rows the baselines use for early stopping); tau = 1 (the source
alone is better on them) refuses the guidance. The record's ``tgdp`` entry says which of these happened.

q(y) is not needed: every metric conditions on the label.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from diffusion.head import DiffusionHead
from diffusion.tgdp import (
    Feature,
    GuidanceLimit,
    GuidedDiffusionModel,
    KernelGuidance,
    NarrowTiltGuidance,
    PremiseReport,
    QuadraticLogRatio,
    TGDPConfig,
    TiltGuidance,
    check_premise,
    fit_domain_classifier,
    fit_narrowing,
    fit_quadratic_log_ratio,
    fit_tgdp,
    select_switch,
)
from shared_embed.data import PairedData
from shared_embed.errors import ConfigError, PremiseWarning
from shared_embed.model import ConditionalModel
from shared_embed.transfer import Augment, TransferConfig
from shared_embed.validation import check_choice, check_tensor
from theory.studies.digits.pixels import LogitPixels

ESTIMATORS = ("network", "kernel", "tilt", "narrow")
#: options read here; the rest go to TGDPConfig (network) or are rejected (kernel)
_OWN = (
    "estimator",
    "max_ratio",
    "guard_action",
    "refuse_fraction",
    "refuse_on_premise",
    "switch",
    "max_rows",
    "reference",
)
#: what the ratio is fitted against (option ``reference``): the source rows, or the source model's own draws
REFERENCES = ("rows", "draws")
_KERNEL = (
    "classifier_hidden",
    "classifier_train",
    "balanced",
    "ratio",
    "bandwidth",
    "per_label",
    "basis",
    "components",
)
RATIOS = ("classifier", "linear", "quadratic")
_TILT = ("per_label", "max_shift", "basis", "components")
_NARROW = (*_TILT, "narrow_fit", "split", "feature")
SPLITS = ("tilt", "none")
#: the narrow estimator's feature f: the tilt's direction u^T x, or the total pixel intensity
FEATURES = ("direction", "intensity")
N_LABELS = 10


def _labels(c: Tensor) -> Tensor:
    """The label column (n, 1) float of one-hot conditions c (n, 10): the kernel guidance's context."""
    return c.argmax(-1, keepdim=True).to(c.dtype)


def _one_hot(labels: Tensor) -> Tensor:
    """One-hot (n, 10) of a label column (n, 1)."""
    return torch.nn.functional.one_hot(labels[:, 0].round().long(), N_LABELS).to(labels.dtype)


def dct_basis(x_std: Tensor | None = None) -> Tensor:
    """The 64 orthonormal 2-D DCT-II images of 8x8 pixels as columns (64, 64), lowest frequency first (by u + v,
    then u): column 0 is the constant image. With ``x_std`` (64,), the per-pixel scale of the source scaler, the
    columns are mapped into the standardised space (diag(x_std) B), where a log ratio linear in the logits' DCT
    coefficients is linear in the standardised x with these slopes."""
    side = 8
    k = torch.arange(side, dtype=torch.float64)
    rows = torch.stack([torch.cos(math.pi * (k + 0.5) * u / side) for u in range(side)])
    rows = rows / rows.norm(dim=1, keepdim=True)
    order = sorted(((u, v) for u in range(side) for v in range(side)), key=lambda uv: (uv[0] + uv[1], uv[0]))
    basis = torch.stack([torch.outer(rows[u], rows[v]).reshape(-1) for u, v in order], dim=1)
    return basis if x_std is None else x_std.double()[:, None] * basis


#: the number of DCT columns of the first frequency bands u + v < m, m = 1..8, and all 64
DCT_BANDS = (1, 3, 6, 10, 15, 21, 28, 36, 64)


class PixelIntensity:
    """The total pixel intensity f(x) = sum_i y_i (n,) of source-standardised logits x (n, 64): z = m + s x (the
    source scaler's mean m and sd s), y = levels (sigmoid(z) - alpha) / (1 - 2 alpha) (the inverse of
    :class:`LogitPixels`' map), so f is the ink of the dequantised image; a :class:`~diffusion.tgdp.Feature`, with
    grad f (n, 64) = levels / (1 - 2 alpha) sigmoid'(z) s."""

    def __init__(self, mean: Tensor, std: Tensor, pixels: LogitPixels) -> None:
        check_tensor("mean", mean, ndim=1)
        check_tensor("std", std, ndim=1, rows=mean.shape[0])
        self.mean, self.std, self.pixels = mean.detach().double(), std.detach().double(), pixels
        self.scale = pixels.levels / (1.0 - 2.0 * pixels.alpha)

    def _sigmoid(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.mean.to(x) + self.std.to(x) * x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.scale * (self._sigmoid(x) - self.pixels.alpha).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        sig = self._sigmoid(x)
        return self.scale * sig * (1 - sig) * self.std.to(x)


def _fit_ratio(
    xs: Tensor,
    cs: Tensor,
    xt: Tensor,
    ct: Tensor,
    degree: int,
    options: dict[str, Any],
    seed: int,
    x_std: Tensor | None = None,
) -> tuple[QuadraticLogRatio, PremiseReport]:
    """The cross-validated linear (degree 1) or quadratic log ratio, per label or shared (``per_label``), with
    one set of parameters per label either way, and its premise check (:func:`_premise_of`). ``basis = "dct"``:
    linear in the lowest ``components`` DCT coefficients of the logit image (the number chosen by cross-validation
    among ``components``, default ``DCT_BANDS``)."""
    ls, lt = _labels(cs), _labels(ct)
    extra: dict[str, Any] = {}
    if options.get("basis") is not None:
        check_choice("basis", options["basis"], ("dct",))
        if degree != 1 or x_std is None:
            raise ConfigError("basis = 'dct' needs a linear ratio (ratio = 'linear' or estimator = 'tilt')")
        extra = {"basis": dct_basis(x_std), "components": list(options.get("components", DCT_BANDS))}
    if bool(options.get("per_label", True)):
        fitted = fit_quadratic_log_ratio(
            xs, xt, source_context=ls, target_context=lt, seed=seed, degree=degree, **extra
        )
    else:  # one log ratio for every label (fewer parameters), repeated per label for the per-label sums
        shared = fit_quadratic_log_ratio(xs, xt, seed=seed, degree=degree, **extra)
        fitted = QuadraticLogRatio(
            shared.quad.expand(N_LABELS, -1, -1),
            shared.linear.expand(N_LABELS, -1),
            shared.const.expand(N_LABELS),
            shared.prior_factor,
            labels=torch.arange(N_LABELS, dtype=torch.float64),
        )
        fitted.strength, fitted.components = shared.strength, shared.components
    with torch.no_grad():
        return fitted, _premise_of(fitted.log_ratio(xs, None, ls), fitted.log_ratio(xt, None, lt))


def _premise_of(log_w_source: Tensor, log_w_target: Tensor) -> PremiseReport:
    """The premise check (classifier AUC, ESS / n_s, E_p[w]) of the log ratio that guides, at the reference rows
    (n_s,) and the target rows (n_t,)."""
    return check_premise(log_w_source.double().exp(), log_w_target.double().exp())


def _check_options(options: dict[str, Any], valid: tuple[str, ...], estimator: str) -> None:
    """ConfigError naming the tgdp options that neither ``estimator`` nor the study itself takes."""
    unknown = sorted(set(options) - set(valid) - set(_OWN))
    if unknown:
        raise ConfigError(
            f"unknown tgdp option(s) {unknown} for estimator '{estimator}'; valid: {sorted(valid + _OWN)}"
        )


def _tilt_guidance(
    head: DiffusionHead,
    xs: Tensor,
    cs: Tensor,
    xt: Tensor,
    ct: Tensor,
    options: dict[str, Any],
    seed: int,
    x_std: Tensor | None = None,
) -> tuple[TiltGuidance, PremiseReport]:
    """The exact guidance of a cross-validated linear log ratio through the source score (``TiltGuidance``)."""
    _check_options(options, _TILT, "tilt")
    fitted, premise = _fit_ratio(xs, cs, xt, ct, 1, options, seed, x_std)
    guidance = TiltGuidance(
        head.score, fitted, head.schedule, xs, _labels(cs), max_shift=float(options.get("max_shift", 1.0))
    )
    return guidance, premise


def _narrow_guidance(
    head: DiffusionHead,
    xs: Tensor,
    cs: Tensor,
    xt: Tensor,
    ct: Tensor,
    options: dict[str, Any],
    seed: int,
    x_std: Tensor | None = None,
    intensity: Feature | None = None,
) -> tuple[NarrowTiltGuidance, PremiseReport]:
    """The tilt's linear log ratio times a Gaussian factor along its direction (``NarrowTiltGuidance``), or with
    ``feature = "intensity"`` the Gaussian factor alone along ``intensity`` (the study's :class:`PixelIntensity`)."""
    _check_options(options, _NARROW, "narrow")
    split = check_choice("split", options.get("split", "tilt"), SPLITS)
    kind = check_choice("feature", options.get("feature", "direction"), FEATURES)
    with warnings.catch_warnings():  # the premise checked is the composed ratio's (below), not the tilt's alone
        warnings.simplefilter("ignore", PremiseWarning)
        fitted, _ = _fit_ratio(xs, cs, xt, ct, 1, options, seed, x_std)
    labels = fitted.labels if fitted.labels is not None else torch.zeros(1, dtype=torch.float64)
    index_s, index_t = fitted.label_index(_labels(cs), len(xs)), fitted.label_index(_labels(ct), len(xt))

    xs64, xt64 = xs.double(), xt.double()
    # f at the reference and target rows, and the composed log ratio's part that is not the quadratic in f (the
    # tilt's part across u, normalised over the reference rows; none with the intensity): the premise reads both
    shape: dict[str, Any]  # the Gaussian factor's feature: direction=u or feature=intensity
    if kind == "intensity":
        if "split" in options:
            raise ConfigError(
                "tgdp option split applies to feature = 'direction' only: the intensity has no linear part"
            )
        if intensity is None:
            raise ConfigError("feature = 'intensity' needs the pixel transform and the source scaler (none given)")
        fs, ft = intensity(xs64), intensity(xt64)
        rest_s, rest_t = torch.zeros_like(fs), torch.zeros_like(ft)
        shape = {"feature": intensity}
    else:
        direction = fitted.linear.mean(0)
        if float(direction.norm()) == 0:
            raise ConfigError(
                "the linear log ratio is 0 (cross-validation found no shift): no direction to narrow along"
            )
        u = direction / direction.norm()
        fs, ft = xs64 @ u, xt64 @ u
        along = fitted.linear @ u  # the tilt's slope along u, per label
        across = fitted.linear - along[:, None] * u[None]
        rest_s, rest_t = (xs64 * across[index_s]).sum(-1), (xt64 * across[index_t]).sum(-1)
        norm = torch.logsumexp(rest_s, 0) - math.log(len(xs))
        rest_s, rest_t = rest_s - norm, rest_t - norm
        shape = {"direction": u}
    narrowing = fit_narrowing(
        fs,
        ft,
        _labels(cs)[:, 0],
        _labels(ct)[:, 0],
        labels,
        method=str(options.get("narrow_fit", "cv")),
        seed=seed,
    )
    if kind == "intensity" and bool((narrowing.gamma <= 0).any()):
        raise ConfigError(
            "feature = 'intensity': the target rows are not narrower than the reference along the pixel "
            "intensity (the fit's Gaussian factor is flat); use feature = 'direction'"
        )
    premise = _premise_of(rest_s + narrowing.log_ratio(fs, index_s), rest_t + narrowing.log_ratio(ft, index_t))
    if kind == "intensity":
        _, gamma, centre = narrowing.split(0.0)
        linear = torch.zeros_like(fitted.linear)
    else:
        b1, gamma, centre = narrowing.split(along if split == "tilt" else 0.0)
        linear = fitted.linear + (b1 - along)[:, None] * u[None]
    guidance = NarrowTiltGuidance(
        head.score,
        QuadraticLogRatio(fitted.quad, linear, fitted.const, fitted.prior_factor, labels=fitted.labels),
        head.schedule,
        xs,
        _labels(cs),
        gamma=gamma,
        centre=centre,
        max_shift=float(options.get("max_shift", 1.0)),
        **shape,
    )
    return guidance, premise


def _kernel_guidance(
    xs: Tensor,
    cs: Tensor,
    xt: Tensor,
    ct: Tensor,
    head: DiffusionHead,
    options: dict[str, Any],
    seed: int,
    x_std: Tensor | None = None,
) -> tuple[KernelGuidance, PremiseReport, int]:
    """(the kernel guidance, the premise report, classifier steps) from standardised source / target rows."""
    _check_options(options, _KERNEL, "kernel")
    kind = check_choice("ratio", options.get("ratio", "classifier"), RATIOS)
    if kind != "classifier":
        ls = _labels(cs)
        fitted, premise = _fit_ratio(xs, cs, xt, ct, 1 if kind == "linear" else 2, options, seed, x_std)
        smooth = KernelGuidance(
            xs,
            fitted,
            head.schedule,
            bandwidth=options.get("bandwidth", "scott"),
            source_context=ls,
            max_rows=options.get("max_rows"),
        )
        return smooth, premise, 0
    base = TGDPConfig()
    train = base.classifier_train.replace(**{**options.get("classifier_train", {}), "seed": seed})
    ratio, history = fit_domain_classifier(
        xs,
        xt,
        source_context=cs,
        target_context=ct,
        hidden=tuple(options.get("classifier_hidden", base.classifier_hidden)),
        balanced=bool(options.get("balanced", False)),
        config=train,
    )
    ratio.requires_grad_(False)
    with torch.no_grad():
        premise = check_premise(ratio.ratio(xs, None, cs), ratio.ratio(xt, None, ct))

    def log_ratio(x: Tensor, t: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        del t
        if labels is None:
            raise ConfigError("the digits kernel guidance needs the label column as context")
        return ratio.log_ratio(x, None, _one_hot(labels))

    guidance = KernelGuidance(
        xs, log_ratio, head.schedule, bandwidth=0.0, source_context=_labels(cs), max_rows=options.get("max_rows")
    )
    return guidance, premise, history.steps_done


def ratio_reference(
    source_model: ConditionalModel, source: PairedData, options: dict[str, Any], seed: int
) -> PairedData:
    """The rows the ratio is fitted against, in raw units (n_s, 64) with the source's conditions (n_s, 10).

    ``reference = "rows"`` (default): the source rows themselves, so w estimates q / p_data. ``"draws"``: one
    draw of the frozen source MODEL per source row, with that row's label (generator seeded by ``seed``, the
    head's own sampler), so w estimates q / p_model: the composed model p_model w / E[w] is q exactly when w is
    the ratio to the model it reweights, and a source model that smooths over a region the rows lack (a target
    cut out of the middle of the source leaves a hole there) holds more of the target than its rows do.

    Raises:
        ConfigError: an unknown ``reference``. DataError: a draw that is not finite.
    """
    kind = check_choice("reference", options.get("reference", "rows"), REFERENCES)
    if kind == "rows":
        return source
    if source.c is None:
        raise ConfigError("reference = 'draws' needs the labels of the source rows (c = None given)")
    draws = source_model.sample(source.x.shape[0], source.c, generator=torch.Generator().manual_seed(seed))
    check_tensor("source model draws", draws, ndim=2, last_dim=source.x.shape[1])
    return PairedData(source.c, draws.to(source.x.dtype))


def fit_digits_tgdp(
    source_model: ConditionalModel,
    source: PairedData,
    target: PairedData,
    cfg: TransferConfig,
    options: dict[str, Any],
    augment: Augment | None = None,
    pixels: LogitPixels | None = None,
) -> tuple[GuidedDiffusionModel, int]:
    """Conditional TGDP from a fitted (frozen-encoder) diffusion source model; returns the model and its steps.

    ``options``: the module docstring's; ``augment`` is not used (the guidance is fitted on fixed tensors);
    ``cfg`` gives the seed and the held-out share of the target rows (for ``switch = "select"``); ``pixels``: the
    task's logit transform, for the narrow estimator's ``feature = "intensity"`` (default ``LogitPixels()``).
    """
    del augment
    if source_model.encoder is None:
        raise ConfigError("TGDP on the digits needs the source model's label embedding (encoder=None given)")
    head = source_model.head
    if not isinstance(head, DiffusionHead):
        raise ConfigError(f"TGDP needs a diffusion source head, got {type(head).__name__}")
    options = dict(options)
    estimator = check_choice("estimator", options.get("estimator", "network"), ESTIMATORS)
    seed = cfg.target_train.seed
    switch = options.get("switch", 0.0)
    source = ratio_reference(source_model, source, options, seed)
    if target.c is None or source.c is None:
        raise ConfigError("TGDP on the digits needs the labels of the source and target images (c = None given)")
    fit_x, fit_c = target.x, target.c
    val_x: Tensor | None = None
    val_c: Tensor | None = None
    if switch == "select":
        if cfg.val_fraction <= 0:
            raise ConfigError(
                "tgdp option switch = 'select' chooses the switch time on held-out target rows: it needs "
                f"heads.diffusion.target_val_fraction > 0, got {cfg.val_fraction}"
            )
        n_val = max(1, math.floor(cfg.val_fraction * target.x.shape[0]))
        perm = torch.randperm(target.x.shape[0], generator=torch.Generator().manual_seed(seed))
        val, keep = perm[:n_val], perm[n_val:]
        fit_x, fit_c, val_x, val_c = target.x[keep], target.c[keep], target.x[val], target.c[val]
    with torch.no_grad():
        xs, xt = source_model.x_scaler(source.x), source_model.x_scaler(fit_x)
    limit = GuidanceLimit(
        max_ratio=float(options.get("max_ratio", 10.0)),
        action=str(options.get("guard_action", "clip")),
        refuse_fraction=float(options.get("refuse_fraction", 0.05)),
    )
    refuse_on_premise = bool(options.get("refuse_on_premise", True))
    if estimator == "kernel":
        guidance, premise, steps = _kernel_guidance(
            xs, source.c, xt, fit_c, head, options, seed, source_model.x_scaler.std
        )
        model = GuidedDiffusionModel(
            source_model,
            guidance,
            guidance_context=_labels,
            limit=limit,
            premise=premise,
            refuse_on_premise=refuse_on_premise,
        )
    elif estimator in ("tilt", "narrow"):
        scaler = source_model.x_scaler
        if estimator == "tilt":
            tilt, premise = _tilt_guidance(head, xs, source.c, xt, fit_c, options, seed, scaler.std)
        else:
            intensity = PixelIntensity(scaler.mean, scaler.std, pixels if pixels is not None else LogitPixels())
            tilt, premise = _narrow_guidance(head, xs, source.c, xt, fit_c, options, seed, scaler.std, intensity)

        def tilt_context(c: Tensor) -> Tensor:
            h = source_model.embed(c)
            return _labels(c) if h is None else torch.cat([h, _labels(c).to(h)], dim=1)

        model = GuidedDiffusionModel(
            source_model,
            tilt,
            guidance_context=tilt_context,
            limit=limit,
            premise=premise,
            refuse_on_premise=refuse_on_premise,
        )
        steps = 0
    else:
        tgdp_options = {k: v for k, v in options.items() if k not in _OWN}
        config = TGDPConfig.from_options(tgdp_options, seed)
        with torch.no_grad():
            hs, ht = source_model.embed(source.c), source_model.embed(fit_c)
        fitted = fit_tgdp(
            head.score, xs, xt, source_context=hs, target_context=ht, schedule=head.schedule, config=config
        )
        steps = sum(h.steps_done for h in fitted.histories.values())
        model = GuidedDiffusionModel(
            source_model, fitted.guidance, limit=limit, premise=fitted.premise, refuse_on_premise=refuse_on_premise
        )
    model.eval()
    model.check_guidance(fit_x, fit_c, seed=seed)
    if switch == "select" and model.status != "refused" and val_x is not None and val_c is not None:
        with torch.no_grad():
            xv, ctx = source_model.x_scaler(val_x), model.context(val_c)
        low_width = head.context_features or 0
        choice = select_switch(
            model.score,
            lambda x, t, c: head.score(x, t, None if c is None else c[:, :low_width]),
            xv,
            ctx,
            head.schedule,
            seed=seed,
        )
        model.choose_switch(choice.switch, f"select_switch on {xv.shape[0]} held-out target rows: {choice.losses}")
    elif switch != "select":
        model.choose_switch(float(switch), "fixed in the config")
    return model, steps
