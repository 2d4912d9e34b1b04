"""gentransfer: transfer learning for generative models, one name to import.

Re-exports the public API of the four packages, which stay where they are: :mod:`shared_embed` (data,
encoder, training loop, transfer workflow, checkpoints, Gaussian heads), :mod:`flows` (normalizing-flow
heads), :mod:`diffusion` and :mod:`diffusion.tgdp` (diffusion heads, samplers, likelihoods, TGDP) and the
ground truth of :mod:`theory` (tasks with exact densities, KL estimators, experiment configs).

Every name loads on first use (PEP 562), so ``import gentransfer`` imports neither torch nor any of the four
packages; ``from gentransfer import FlowHead`` imports :mod:`flows` then.

Example:
    >>> from gentransfer import Encoder, FlowHead, PairedData, TrainConfig, fit_source, fit_target_head
    >>> import gentransfer
    >>> gentransfer.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusion import *  # noqa: F403
    from diffusion.tgdp import *  # noqa: F403
    from flows import *  # noqa: F403
    from shared_embed import *  # noqa: F403
    from theory.engine.config import ExperimentConfig, load_config
    from theory.engine.results import read_results
    from theory.engine.study import register_study
    from theory.truth.kl import KLEstimate, kl_to_task, monte_carlo_kl
    from theory.truth.tasks import (
        TASKS,
        ConditionalGaussianTask,
        ConditionalMixtureTask,
        TwoGaussianTask,
        make_task,
        register_task,
    )

_SHARED_EMBED = (
    "HEADS",
    "VARIANTS",
    "BatchedConditional",
    "Callback",
    "CheckpointError",
    "ConditionalDistribution",
    "ConditionalModel",
    "ConfigError",
    "DTypeError",
    "DataError",
    "Encoder",
    "FitResult",
    "FixedEmbedding",
    "GaussianHead",
    "GentransferError",
    "Head",
    "LinearGaussianHead",
    "PairedData",
    "ShapeError",
    "Standardizer",
    "TrainConfig",
    "TrainHistory",
    "TensorBoardCallback",
    "TrainingDivergedError",
    "TransferConfig",
    "as_paired_data",
    "build_head",
    "evaluate_loss",
    "fit",
    "fit_source",
    "fit_target_head",
    "fit_variants",
    "load_checkpoint",
    "register_head",
    "resolve_device",
    "save_checkpoint",
    "train_model",
)
_FLOWS = (
    "BACKENDS",
    "DEFAULT_TRANSFORM",
    "SPLINE_TRANSFORMS",
    "TRANSFORMS",
    "FlowDistribution",
    "FlowHead",
    "FlowModule",
    "FlowSpec",
    "build_flow",
    "check_backend",
    "make_flow_head",
)
_DIFFUSION = (
    "DIVERGENCES",
    "ODE_METHODS",
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "SCHEDULES",
    "SDE_METHODS",
    "CountedScore",
    "DiffusionHead",
    "GirsanovBound",
    "ProbabilityFlowResult",
    "ScoreFn",
    "ScoreNetwork",
    "SinusoidalEmbedding",
    "VPSchedule",
    "exact_divergence",
    "girsanov_bound",
    "hutchinson_divergence",
    "jacobian_trace",
    "make_diffusion_head",
    "mixture_prior_kl_bound",
    "probability_flow",
    "probability_flow_log_prob",
    "sample_ode",
    "sample_sde",
    "standard_normal_log_prob",
)
_TGDP = (
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
)

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(_SHARED_EMBED, "shared_embed"),
    **dict.fromkeys(_FLOWS, "flows"),
    **dict.fromkeys(_DIFFUSION, "diffusion"),
    **dict.fromkeys(_TGDP, "diffusion.tgdp"),
    **dict.fromkeys(
        ("TASKS", "ConditionalGaussianTask", "ConditionalMixtureTask", "TwoGaussianTask", "make_task"),
        "theory.truth.tasks",
    ),
    **dict.fromkeys(("KLEstimate", "kl_to_task", "monte_carlo_kl"), "theory.truth.kl"),
    **dict.fromkeys(("ExperimentConfig", "load_config"), "theory.engine.config"),
    "register_task": "theory.truth.tasks",
    "read_results": "theory.engine.results",
    "register_study": "theory.engine.study",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def _version() -> str:
    """The installed distribution's version ("unknown" in a source tree that was never installed)."""
    try:
        return importlib.metadata.version("gentransfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access; AttributeError for any other name."""
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
