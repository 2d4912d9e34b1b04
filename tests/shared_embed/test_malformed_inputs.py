"""Property-based: malformed inputs at the ground floor's entry points raise only documented errors."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_embed import ConditionalModel, Encoder, GaussianHead, PairedData, Standardizer, TrainConfig
from shared_embed.checkpoint import load_checkpoint
from tests.malformed import only_documented_errors, tensors
from theory.truth.tasks import ConditionalGaussianTask, TwoGaussianTask

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL = ConditionalModel(
    GaussianHead(2, 3, hidden=(8,)), Encoder(4, 3, hidden=(8,)).freeze(), Standardizer(2), Standardizer(4)
)
UNCOND = ConditionalModel(GaussianHead(2, None))
TASK = ConditionalGaussianTask(d_c=4, d_h=2, d_x=2)


@SETTINGS
@given(c=tensors(), x=tensors())
def test_paired_data(c, x):
    only_documented_errors(PairedData, c, x)


@SETTINGS
@given(x=tensors(), c=tensors())
def test_model_log_prob_and_loss(x, c):
    only_documented_errors(MODEL.log_prob, x, c)
    only_documented_errors(MODEL.loss, x, c)
    only_documented_errors(UNCOND.log_prob, x, c)


@SETTINGS
@given(n=st.integers(-3, 6), c=tensors())
def test_model_sample(n, c):
    only_documented_errors(MODEL.sample, n, c)
    only_documented_errors(UNCOND.sample, n, c)


@SETTINGS
@given(c=tensors())
def test_encoder(c):
    only_documented_errors(MODEL.encoder, c)


@SETTINGS
@given(
    steps=st.integers(-2, 3),
    batch=st.integers(-2, 3),
    lr=st.floats(allow_nan=True, allow_infinity=True),
    optimizer=st.sampled_from(["adam", "adamw", "sgd", ""]),
    schedule=st.sampled_from(["cosine", "constant", "x"]),
)
def test_train_config(steps, batch, lr, optimizer, schedule):
    only_documented_errors(TrainConfig, steps=steps, batch_size=batch, lr=lr, optimizer=optimizer, schedule=schedule)


@SETTINGS
@given(x=tensors(), c=tensors(), domain=st.sampled_from(["source", "target", "sauce"]))
def test_task_densities_and_scores(x, c, domain):
    only_documented_errors(TASK.log_prob, x, c, domain)
    only_documented_errors(TASK.noised_score, x, c, domain, 0.5, 0.8)
    only_documented_errors(TwoGaussianTask().log_prob, x, domain)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_checkpoint_loading_of_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ck") / "f.safetensors"
    path.write_bytes(data)
    only_documented_errors(load_checkpoint, path)


@SETTINGS
@given(n=st.integers(1, 4), x_double=st.booleans(), c_double=st.booleans())
def test_mixed_dtypes_are_named(n, x_double, c_double):
    x = torch.randn(n, 2, dtype=torch.float64 if x_double else torch.float32)
    c = torch.randn(n, 4, dtype=torch.float64 if c_double else torch.float32)
    only_documented_errors(MODEL.log_prob, x, c)
    only_documented_errors(MODEL.sample, n, c)
    only_documented_errors(MODEL.head.log_prob, x, c[:, :3])
