"""The API a PyTorch user expects, over every head kind (Gaussian, zuko and nflows flows, diffusion):
torch.distributions batching and broadcasting, ``generator=`` on every sampling call, ``rsample`` where the head
has one, a distribution from a head called on a context, and a loaded model ready to use."""

from __future__ import annotations

import pytest
import torch

from diffusion import DiffusionHead
from flows import FlowHead
from shared_embed import (
    ConditionalModel,
    ConfigError,
    DTypeError,
    Encoder,
    GaussianHead,
    Head,
    ShapeError,
    Standardizer,
    TrainConfig,
    fit_source,
)
from shared_embed.distribution import BatchedConditional
from theory.truth.tasks import ConditionalGaussianTask

# fast inference settings for the diffusion head: loose tolerances, few SDE steps
FAST_DIFFUSION = {"rtol": 1e-3, "atol": 1e-3, "sample_steps": 10}
HEADS = {
    "gaussian": lambda k: GaussianHead(2, k, hidden=(8,)),
    "zuko": lambda k: FlowHead(2, k, transforms=1, hidden=(8, 8), bins=4),
    "nflows": lambda k: FlowHead(2, k, backend="nflows", transforms=1, hidden=(8, 8), bins=4),
    "diffusion": lambda k: DiffusionHead(2, k, width=8, blocks=1, time_features=4, **FAST_DIFFUSION),
}


def model_of(kind: str, seed: int = 0) -> ConditionalModel:
    torch.manual_seed(seed)
    head = HEADS[kind](3)
    with torch.no_grad():  # away from the (near-identity) initialisation
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x_scaler = Standardizer.fit(torch.randn(50, 2) * 2 + 1)
    return ConditionalModel(head, Encoder(5, 3, hidden=(8,)).freeze(), x_scaler, Standardizer.fit(torch.randn(50, 5)))


class CountingHead(GaussianHead):
    """A Gaussian head that counts its log_prob and sample calls (to check calls are vectorised)."""

    calls = 0

    def log_prob(self, x, context=None):
        CountingHead.calls += 1
        return super().log_prob(x, context)

    def sample(self, n, context=None, *, generator=None):
        CountingHead.calls += 1
        return super().sample(n, context, generator=generator)


@pytest.mark.parametrize("kind", list(HEADS))
def test_model_distribution_follows_torch_batching_rules(kind: str) -> None:
    model = model_of(kind)
    c, x = torch.randn(4, 5), torch.randn(4, 2)
    with torch.no_grad():
        dist = model(c)
        assert dist.batch_shape == (4,) and dist.event_shape == (2,)
        assert dist.sample((3,)).shape == (3, 4, 2)  # (n, k, d), as torch does
        assert dist.sample().shape == (4, 2)
        row_by_row = model.log_prob(x, c)
        torch.testing.assert_close(dist.log_prob(x), row_by_row, rtol=1e-4, atol=1e-4)
        assert dist.log_prob(x.expand(3, 4, 2)).shape == (3, 4)
        # one condition, many points: (1, d_c), (d_c,) and a batch-(1,) distribution all broadcast
        one = model.log_prob(x, c[:1])
        torch.testing.assert_close(one, model.log_prob(x, c[:1].expand(4, -1)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.log_prob(x, c[0]), one)
        torch.testing.assert_close(model(c[:1]).log_prob(x), one)
        with pytest.raises(ShapeError, match="does not broadcast"):
            model.log_prob(torch.randn(3, 2), c)


@pytest.mark.parametrize("kind", list(HEADS))
def test_every_sampling_call_takes_a_generator(kind: str) -> None:
    model = model_of(kind)
    c = torch.randn(3, 5)
    draw = {
        "model.sample": lambda g: model.sample(4, c[0], generator=g),
        "model(c).sample": lambda g: model(c).sample((2,), generator=g),
        "head.sample": lambda g: model.head.sample(4, torch.randn(4, 3, generator=torch.Generator()), generator=g),
        "head(c).sample": lambda g: model.head(torch.zeros(3, 3)).sample((2,), generator=g),
    }
    for name, fn in draw.items():
        a, b = fn(torch.Generator().manual_seed(5)), fn(torch.Generator().manual_seed(5))
        other = fn(torch.Generator().manual_seed(6))
        assert torch.equal(a, b), name
        assert not torch.allclose(a, other), name
    with pytest.raises(DTypeError, match="generator"):
        model.sample(2, c[0], generator=5)


def test_one_condition_many_points_is_one_vectorised_call() -> None:
    head = CountingHead(2, 3, hidden=(8,))
    model = ConditionalModel(head, Encoder(5, 3, hidden=(8,)).freeze())
    c, x = torch.randn(1, 5), torch.randn(2000, 2)
    CountingHead.calls = 0
    with torch.no_grad():
        assert model(c).log_prob(x).shape == (2000,)
        assert model(torch.randn(7, 5)).sample((50,)).shape == (50, 7, 2)
    assert CountingHead.calls == 2  # no Python loop over rows or draws


def test_sample_says_what_n_and_c_mean() -> None:
    model = model_of("gaussian")
    assert model.sample(6, torch.randn(5)).shape == (6, 2)  # one condition shared by all draws
    assert model.sample(6, torch.randn(1, 5)).shape == (6, 2)
    assert model.sample(6, torch.randn(6, 5)).shape == (6, 2)  # one condition per draw
    with pytest.raises(ShapeError, match=r"model\(c\)\.sample\(\(n,\)\)"):
        model.sample(6, torch.randn(3, 5))


@pytest.mark.parametrize("kind", ["gaussian", "zuko", "nflows"])
def test_rsample_carries_gradients_at_the_model_level(kind: str) -> None:
    model = model_of(kind)
    assert model(torch.randn(2, 5)).has_rsample
    model.head.requires_grad_(True)
    draws = model.rsample(8, torch.randn(5), generator=torch.Generator().manual_seed(0))
    draws.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    dist_draws = model(torch.randn(2, 5)).rsample((3,))
    assert dist_draws.shape == (3, 2, 2) and dist_draws.requires_grad


def test_rsample_is_refused_where_the_head_has_none() -> None:
    model = model_of("diffusion")
    assert not model(torch.randn(2, 5)).has_rsample
    with pytest.raises(NotImplementedError, match="DiffusionHead"):
        model.rsample(2, torch.randn(5))


@pytest.mark.parametrize("kind", list(HEADS))
def test_a_head_called_on_a_context_returns_a_distribution(kind: str) -> None:
    head = HEADS[kind](3).double()
    context = torch.randn(4, 3, dtype=torch.float64)
    dist = head(context)
    assert isinstance(dist, torch.distributions.Distribution) and isinstance(dist, BatchedConditional)
    with torch.no_grad():
        x = dist.sample((2,))
        assert x.shape == (2, 4, 2)
        torch.testing.assert_close(dist.log_prob(x[0]), head.log_prob(x[0], context))
    unconditional = HEADS[kind](None).double()
    assert unconditional().sample((5,)).shape == (5, 2)


def test_head_options_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown option.*valid options: atol, divergence"):
        HEADS["diffusion"](3)(torch.randn(2, 3), solver="euler")
    with pytest.raises(ConfigError, match="valid options: none"):
        HEADS["gaussian"](3)(torch.randn(2, 3), steps=3)
    with pytest.raises(ConfigError, match="valid options: temperature"):
        HEADS["zuko"](3)(torch.randn(2, 3), steps=3)


def test_each_flow_backend_has_its_own_default_transform() -> None:
    assert FlowHead(2, None, backend="nflows").transform == "spline_ar"
    assert FlowHead(2, None).transform == "nsf"
    assert FlowHead(2, 2, backend="nflows", transform="affine_ar").transform == "affine_ar"


@pytest.mark.parametrize("kind", ["zuko", "diffusion"])
def test_a_loaded_model_is_ready_to_use(kind: str, tmp_path) -> None:
    task = ConditionalGaussianTask(d_c=5, d_h=2, d_x=2)
    data = task.sample(200, "source", torch.Generator().manual_seed(0))
    head = HEADS[kind](3)
    model = fit_source(Encoder(5, 3, hidden=(8,)), head, data, TrainConfig(steps=20, eval_every=10))
    path = model.save(tmp_path / "m.safetensors")
    loaded = ConditionalModel.load(path, device="cpu")
    assert not loaded.training and all(not m.training for m in loaded.modules())
    assert loaded.history is not None and loaded.history.steps_done == model.history.steps_done
    assert loaded.history.val_loss == pytest.approx(model.history.val_loss)
    assert next(loaded.parameters()).device == torch.device("cpu")
    with pytest.raises(ConfigError, match="device"):
        ConditionalModel.load(path, device="tpu")


def test_head_subclasses_declare_their_sampling_capabilities() -> None:
    assert GaussianHead.has_rsample and FlowHead.has_rsample and not DiffusionHead.has_rsample
    assert Head.split_options({}) == ({}, {})
