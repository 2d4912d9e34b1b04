"""Conditional TGDP on the digits: the frozen source diffusion model plus a learned guidance on (x, y).

TGDP (``diffusion.tgdp``, docs/theory.md, 'TGDP') needs every piece in ONE space: the source score was
learned on source-standardised logits x_s = (z - m_src) / s_src with context h(c), the frozen embedding of
the label. So the target images are standardised with the SOURCE scaler, and the label enters the domain
classifier and the guidance as the same embedding h(c) (an injective code of the 10 labels): the classifier
c(x, y), the ratio w = ((1 - c) / c) (n_s / n_t) on every source pair, the guidance h_psi(x_t, t, y) regressed
onto w on source pairs, and the target score s_src(x, t, y) + grad_x log h_psi(x, t, y)
(``diffusion.tgdp.fit_tgdp`` with source and target contexts). Each image keeps the one dequantisation draw of
its data set here (``fit_tgdp`` batches fixed tensors).

:class:`GuidedDigitsModel` gives that composed score the ``log_prob`` / ``sample`` of a fitted model in the
logit units of the task (probability-flow likelihood and ODE sampler with the source head's settings), so
``theory.studies.digits.evaluation`` scores it like every other variant. q(y) is not needed: every metric conditions on
the label.

TGDP reweights the source law: it can only reach target images that the source already covers. The digits
styles put the target largely outside the source's support (``theory.studies.digits.domain_ratio``), so this variant
shows what guidance can and cannot do under a style shift.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from diffusion.head import DiffusionHead
from diffusion.likelihood import probability_flow_log_prob
from diffusion.sampling import ScoreFn, sample_ode
from diffusion.tgdp import TGDPConfig, TGDPFit, fit_tgdp
from shared_embed.data import PairedData
from shared_embed.errors import ConfigError
from shared_embed.model import ConditionalModel
from shared_embed.transfer import Augment, TransferConfig
from shared_embed.validation import check_positive_int


class GuidedDigitsModel:
    """A composed score in a source model's standardised space, read as a model of the logits z given labels c.

    ``log_prob(z (n, 64), c (n, 10)) -> (n,)`` through the probability-flow ODE (divergence, probes, tolerances
    and t_eps of the source head) plus the scaler's log-Jacobian; ``sample(n, c) -> (n, 64)`` by the ODE sampler.
    """

    def __init__(self, score: ScoreFn, source_model: ConditionalModel, fitted: TGDPFit | None = None) -> None:
        if not isinstance(source_model.head, DiffusionHead):
            raise ConfigError(f"TGDP needs a diffusion source head, got {type(source_model.head).__name__}")
        self.score = score
        self.source = source_model
        self.head: DiffusionHead = source_model.head
        self.fitted = fitted

    def eval(self) -> GuidedDigitsModel:
        self.source.eval()
        if self.fitted is not None:
            self.fitted.guidance.eval()
        return self

    def log_prob(self, z: Tensor, c: Tensor) -> Tensor:
        h = self.head
        lp = probability_flow_log_prob(
            self.score,
            self.source.x_scaler(z),
            h.schedule,
            context=self.source.embed(c),
            divergence=h.divergence_method,
            probes=h.probes,
            rtol=h.rtol,
            atol=h.atol,
            t_eps=h.t_eps,
        )
        return lp + self.source.x_scaler.log_abs_det()

    def sample(self, n: int, c: Tensor) -> Tensor:
        check_positive_int("n", n)
        h = self.head
        ctx = cast(Tensor, self.source.embed(c))  # the source model is conditional
        x1 = torch.randn(n, h.features, dtype=ctx.dtype, device=ctx.device)
        x0 = sample_ode(self.score, x1, h.schedule, context=ctx, rtol=h.rtol, atol=h.atol, t_eps=h.t_eps)
        return self.source.x_scaler.inverse(x0)


def fit_digits_tgdp(
    source_model: ConditionalModel,
    source: PairedData,
    target: PairedData,
    cfg: TransferConfig,
    options: dict[str, Any],
    augment: Augment | None = None,
) -> tuple[GuidedDigitsModel, int]:
    """Conditional TGDP from a fitted (frozen-encoder) diffusion source model; returns the model and its steps.

    ``augment`` is not used (``fit_tgdp`` trains on fixed tensors); ``cfg`` gives the seed.
    """
    del augment
    if source_model.encoder is None:
        raise ConfigError("TGDP on the digits needs the source model's label embedding (encoder=None given)")
    with torch.no_grad():
        xs, xt = source_model.x_scaler(source.x), source_model.x_scaler(target.x)
        hs, ht = source_model.embed(source.c), source_model.embed(target.c)
    config = TGDPConfig.from_options(options, cfg.target_train.seed)
    head = source_model.head
    if not isinstance(head, DiffusionHead):
        raise ConfigError(f"TGDP needs a diffusion source head, got {type(head).__name__}")
    fitted = fit_tgdp(head.score, xs, xt, source_context=hs, target_context=ht, schedule=head.schedule, config=config)
    steps = sum(h.steps_done for h in fitted.histories.values())
    return GuidedDigitsModel(fitted.score, source_model, fitted), steps
