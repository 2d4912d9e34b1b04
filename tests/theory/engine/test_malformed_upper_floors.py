"""Property-based: malformed inputs at the upper floors' entry points raise only documented errors.

Covers the flow heads (both backends), the diffusion head, the samplers, the probability-flow likelihood,
TGDP, the transfer pipeline and the CLI configs. ``only_documented_errors`` lets a call succeed (its
floating result must then be finite) or raise a :class:`~shared_embed.errors.GentransferError` with a
message; a raw torch shape error, an IndexError or a silent NaN fails the test.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion import DiffusionHead, VPSchedule, probability_flow_log_prob, sample_ode, sample_sde
from diffusion.tgdp import GuidedScore, TGDPConfig, fit_tgdp
from flows import FlowHead
from shared_embed import PairedData, TrainConfig
from shared_embed.transfer import TransferConfig, fit_variants
from tests.malformed import matrices, only_documented_errors, tensors
from theory.engine.config import ExperimentConfig, apply_override, read_toml
from theory.truth.tasks import TwoGaussianTask

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCHEDULE = VPSchedule()
TASK = TwoGaussianTask()
SOURCE_SCORE = TASK.score_fn("source", SCHEDULE)
# Loose tolerances: these tests are about what comes out for bad input, not about accuracy.
FAST_ODE = {"rtol": 1e-2, "atol": 1e-2}
FLOWS = [
    FlowHead(2, 3, backend="zuko", transform="nsf", transforms=1, hidden=(8,)),
    FlowHead(2, 3, backend="nflows", transform="spline_ar", transforms=1, hidden=(8,)),
    FlowHead(2, None, backend="zuko", transform="maf", transforms=1, hidden=(8,)),
]
DIFFUSION = DiffusionHead(2, 3, width=8, blocks=1, time_features=4, rtol=1e-2, atol=1e-2).eval()
TINY = TrainConfig(steps=2, batch_size=8, progress=False)


class _Exact:
    """The exact guidance of the two-Gaussian task, as GuidedScore expects it."""

    def log_h(self, x, t, context=None):
        return TASK.log_guidance(x, SCHEDULE.alpha(t), SCHEDULE.sigma(t))


@SETTINGS
@given(x=matrices(2), c=st.one_of(st.none(), matrices(3)), which=st.integers(0, len(FLOWS) - 1))
def test_flow_head_log_prob_and_loss(x, c, which):
    only_documented_errors(FLOWS[which].log_prob, x, c)
    only_documented_errors(FLOWS[which].loss, x, c)


@SETTINGS
@given(n=st.integers(-2, 4), c=st.one_of(st.none(), matrices(3)), which=st.integers(0, len(FLOWS) - 1))
def test_flow_head_sample(n, c, which):
    only_documented_errors(FLOWS[which].sample, n, c)


@SETTINGS
@given(
    features=st.integers(-1, 3),
    context=st.one_of(st.none(), st.integers(-1, 3)),
    backend=st.sampled_from(["zuko", "nflows", "pyro", ""]),
    transform=st.sampled_from(["nsf", "maf", "cnf", "spline_ar", "affine_ar", "glow"]),
    transforms=st.integers(-1, 2),
    bins=st.integers(0, 3),
)
def test_flow_head_construction(features, context, backend, transform, transforms, bins):
    only_documented_errors(
        FlowHead, features, context, backend=backend, transform=transform, transforms=transforms, hidden=(4,), bins=bins
    )


@SETTINGS
@given(x=matrices(2), c=matrices(3), t=st.one_of(st.floats(allow_nan=True, allow_infinity=True), tensors(max_rank=2)))
def test_diffusion_head_score_and_loss(x, c, t):
    only_documented_errors(DIFFUSION.score, x, t, c)
    only_documented_errors(DIFFUSION.loss, x, c)


@FEW
@given(x=matrices(2, max_rows=3), c=matrices(3, max_rows=3))
def test_diffusion_head_log_prob(x, c):
    only_documented_errors(DIFFUSION.log_prob, x, c)


@FEW
@given(n=st.integers(-2, 3), c=st.one_of(st.none(), matrices(3, max_rows=3)))
def test_diffusion_head_sample(n, c):
    only_documented_errors(DIFFUSION.sample, n, c)


@SETTINGS
@given(
    parameterization=st.sampled_from(["residual", "epsilon", "v"]),
    schedule=st.sampled_from(["linear", "cosine", "x"]),
    sampler=st.sampled_from(["ode", "euler_maruyama", "heun", "ddim"]),
    divergence=st.sampled_from(["auto", "exact", "hutchinson", "trace"]),
    t_eps=st.floats(-1.0, 2.0),
    probes=st.integers(-1, 2),
)
def test_diffusion_head_construction(parameterization, schedule, sampler, divergence, t_eps, probes):
    only_documented_errors(
        DiffusionHead,
        2,
        None,
        width=4,
        blocks=1,
        time_features=4,
        parameterization=parameterization,
        schedule=schedule,
        sampler=sampler,
        divergence=divergence,
        t_eps=t_eps,
        probes=probes,
    )


@SETTINGS
@given(
    x1=matrices(2),
    c=st.one_of(st.none(), matrices(1)),
    steps=st.integers(-1, 3),
    t_eps=st.floats(-0.5, 1.5),
    method=st.sampled_from(["euler_maruyama", "heun", "rk4"]),
)
def test_sde_sampler(x1, c, steps, t_eps, method):
    only_documented_errors(sample_sde, SOURCE_SCORE, x1, SCHEDULE, context=c, steps=steps, t_eps=t_eps, method=method)


@FEW
@given(x1=matrices(2, max_rows=3), t_eps=st.floats(-0.5, 1.5), method=st.sampled_from(["dopri5", "rk4", "leapfrog"]))
def test_ode_sampler(x1, t_eps, method):
    only_documented_errors(sample_ode, SOURCE_SCORE, x1, SCHEDULE, t_eps=t_eps, method=method, **FAST_ODE)


@FEW
@given(
    x0=matrices(2, max_rows=3),
    divergence=st.sampled_from(["exact", "hutchinson", "trace"]),
    probes=st.integers(-1, 2),
    t_eps=st.floats(-0.5, 1.5),
)
def test_probability_flow_likelihood(x0, divergence, probes, t_eps):
    only_documented_errors(
        probability_flow_log_prob,
        SOURCE_SCORE,
        x0,
        SCHEDULE,
        divergence=divergence,
        probes=probes,
        t_eps=t_eps,
        **FAST_ODE,
    )


@SETTINGS
@given(x=matrices(2), t=st.one_of(st.floats(0.01, 1.0), tensors(max_rank=2)))
def test_guided_score(x, t):
    only_documented_errors(GuidedScore(SOURCE_SCORE, _Exact()), x, t)


@FEW
@given(source_x=matrices(2, max_rows=6), target_x=matrices(2, max_rows=3), with_context=st.booleans())
def test_fit_tgdp(source_x, target_x, with_context):
    config = TGDPConfig(classifier_train=TINY, guidance_train=TINY, classifier_hidden=(4,), guidance_hidden=(4,))
    ctx = {}
    if with_context and isinstance(source_x, torch.Tensor) and source_x.dim() == 2:
        ctx = {"source_context": torch.ones(source_x.shape[0], 1)}  # target_context missing on purpose
    only_documented_errors(fit_tgdp, SOURCE_SCORE, source_x, target_x, config=config, **ctx)


@SETTINGS
@given(embed_dim=st.integers(-1, 3), val_fraction=st.floats(-0.5, 1.5), device=st.sampled_from(["cpu", "auto", "tpu"]))
def test_transfer_config(embed_dim, val_fraction, device):
    only_documented_errors(TransferConfig, embed_dim=embed_dim, val_fraction=val_fraction, device=device)


@FEW
@given(
    n_s=st.integers(1, 12),
    n_t=st.integers(1, 6),
    d_c_t=st.integers(1, 3),
    d_x_t=st.integers(1, 3),
    variants=st.lists(
        st.sampled_from(["transfer", "no_transfer", "fine_tune", "oracle", "zero_shot"]), min_size=0, max_size=3
    ),
)
def test_transfer_pipeline(n_s, n_t, d_c_t, d_x_t, variants):
    """Source (c in R^2, x in R^2) against targets whose dimensions may differ; odd variant lists."""
    from shared_embed import GaussianHead

    source = PairedData(torch.randn(n_s, 2), torch.randn(n_s, 2))
    target = PairedData(torch.randn(n_t, d_c_t), torch.randn(n_t, d_x_t))
    config = TransferConfig(encoder_hidden=(4,), source_train=TINY, target_train=TINY)
    only_documented_errors(fit_variants, lambda k: GaussianHead(2, k, hidden=(4,)), source, target, config, variants)


_KEYS = [
    "grid.n_t",
    "grid.n_s",
    "grid.seeds",
    "grid.heads",
    "grid.variants",
    "task.d_c",
    "task.name",
    "train.target.steps",
    "train.target.lr",
    "evaluation.n_eval",
    "run.workers",
    "encoder.hidden",
    "nope.key",
    "grid",
    "experiment.name",
]
_VALUES = [
    "[20, 40]",
    "[]",
    "[-5]",
    "0",
    "-1",
    "3.5",
    '"x"',
    "true",
    '[1, "a"]',
    "nan",
    "1e-3",
    '["flow"]',
    '["teleport"]',
    "{ a = 1 }",
    "",
]


@SETTINGS
@given(assignments=st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)), min_size=1, max_size=3))
def test_cli_config_overrides(assignments):
    """configs/smoke.toml with random ``--set key=value`` overrides: valid or a ConfigError, nothing else."""
    raw = read_toml("configs/smoke.toml")

    def load():
        for key, value in assignments:
            apply_override(raw, f"{key}={value}")
        return ExperimentConfig.from_dict(raw)

    only_documented_errors(load)
