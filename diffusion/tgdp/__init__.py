"""TGDP, transfer-guided diffusion (Ouyang et al. 2024; docs/theory.md, 'TGDP'), and its baselines.

The target score is the frozen source score plus grad log h_t, h_t = q_t / p_t, learned from a domain
classifier's density ratio:

- :mod:`.classifier`: c(x[, t][, y]) by BCE, ``DensityRatio`` with the explicit class-prior factor;
- :mod:`.guidance`: h_psi(x_t, t[, y]) > 0 and L_guide (regression onto w, not log w);
- :mod:`.regularizers`: L_cycle (time-dependent classifier) and L_cons (DSM of the composed score);
- :mod:`.compose`: ``GuidedScore`` (s_src + grad log h) and Domain Guidance as plain ScoreFns;
- :mod:`.fit`: ``fit_tgdp`` through ``shared_embed.train.fit``; :mod:`.premise`: the premise check every fit
  runs before its guidance (classifier AUC, ESS / n_s, E_p[w] against stated thresholds, a warning naming what
  fails); :mod:`.labels`: q(y) for conditional TGDP;
- :mod:`.baselines`: target-only training and fine-tuning of a ``DiffusionHead``;
- network-free guidance: :mod:`.quadratic_ratio` (a cross-validated quadratic log-ratio classifier for tiny
  n_t), :mod:`.kernel_guidance` (E_{p_hat}[w | x_t] from the source rows, KDE-smoothed in closed form),
  :mod:`.noisy_guidance` (a time-dependent classifier as log h_t; a switch to another score at small t),
  :mod:`.switch_time` (the switch time chosen by a held-out denoising loss); :mod:`.recipes` fits the first two
  in one call each (``fit_kernel_guidance``, ``fit_classifier_guidance``);
- :mod:`.guard`: guidance that explodes (|grad log h_t| far above |s_src|) detected, clipped or refused;
  :mod:`.guided_model`: ``GuidedDiffusionModel``, a frozen conditional source model plus a guidance with
  ``log_prob(x, c)`` / ``sample(n, c)``, which refuses a failed premise or an exploding guidance out loud.

Example:
    >>> from diffusion.tgdp import TGDPConfig, fit_tgdp
    >>> tgdp = fit_tgdp(source_head.score, source_x, target_x, config=TGDPConfig(eta_consistency=1.0))
    >>> x0 = sample_ode(tgdp.score, torch.randn(1000, 2), VPSchedule())

Reference: Y. Ouyang, L. Xie, H. Zha, G. Cheng, "Transfer Learning for Diffusion Models", NeurIPS 2024,
https://arxiv.org/abs/2405.16876.
"""

from .baselines import fine_tune, train_head
from .classifier import DensityRatio, DomainClassifier, class_weights, fit_domain_classifier
from .compose import DomainGuidanceScore, GuidedScore, domain_guidance_score, guidance_grad
from .fit import TGDPConfig, TGDPFit, fit_tgdp
from .gain_prediction import (
    REALISED_REL,
    REALISED_Z,
    GainPrediction,
    group_conditions,
    predict_gain,
    realised,
    reweighting_gain,
)
from .guard import (
    GUARD_ACTIONS,
    GuardCounts,
    GuardedScore,
    GuidanceExplosionError,
    GuidanceLimit,
    GuidanceProbe,
    guidance_ratio,
    probe_guidance,
)
from .guidance import DAMPING, POSITIVITY, FunctionGuidance, Guidance, GuidanceNetwork, SourcePosterior, guidance_loss
from .guided_model import GuidedDiffusionModel
from .kernel_guidance import KernelGuidance
from .labels import LabelMarginal
from .narrow_tilt import NARROW_FITS, Feature, Narrowing, NarrowTiltGuidance, fit_narrowing
from .noisy_guidance import ClassifierGuidance, SwitchedScore
from .premise import PremiseReport, PremiseThresholds, check_premise
from .quadratic_ratio import QuadraticLogRatio, fit_quadratic_log_ratio
from .recipes import GuidanceFit, fit_classifier_guidance, fit_kernel_guidance
from .regularizers import consistency_loss, cycle_loss
from .switch_time import SwitchChoice, select_switch
from .tilt_guidance import TiltGuidance

__all__ = [
    "DAMPING",
    "GUARD_ACTIONS",
    "NARROW_FITS",
    "POSITIVITY",
    "REALISED_REL",
    "REALISED_Z",
    "ClassifierGuidance",
    "DensityRatio",
    "DomainClassifier",
    "DomainGuidanceScore",
    "Feature",
    "FunctionGuidance",
    "GainPrediction",
    "GuardCounts",
    "GuardedScore",
    "Guidance",
    "GuidanceExplosionError",
    "GuidanceFit",
    "GuidanceLimit",
    "GuidanceNetwork",
    "GuidanceProbe",
    "GuidedDiffusionModel",
    "GuidedScore",
    "KernelGuidance",
    "LabelMarginal",
    "NarrowTiltGuidance",
    "Narrowing",
    "PremiseReport",
    "PremiseThresholds",
    "QuadraticLogRatio",
    "SourcePosterior",
    "SwitchChoice",
    "SwitchedScore",
    "TGDPConfig",
    "TGDPFit",
    "TiltGuidance",
    "class_weights",
    "consistency_loss",
    "check_premise",
    "cycle_loss",
    "domain_guidance_score",
    "fine_tune",
    "fit_classifier_guidance",
    "fit_domain_classifier",
    "fit_kernel_guidance",
    "fit_narrowing",
    "fit_quadratic_log_ratio",
    "fit_tgdp",
    "group_conditions",
    "guidance_grad",
    "guidance_loss",
    "guidance_ratio",
    "predict_gain",
    "probe_guidance",
    "realised",
    "reweighting_gain",
    "select_switch",
    "train_head",
]
