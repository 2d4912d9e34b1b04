"""DiffusionHead: the head contract (shapes, conditional and unconditional), known answers of the untrained
head, gradients through log_prob to every parameter, checkpoints through ConditionalModel, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import diffusion  # noqa: F401  (registers the "diffusion" head)
from diffusion import DiffusionHead, make_diffusion_head, sample_ode
from diffusion.likelihood import standard_normal_log_prob
from shared_embed import (
    HEADS,
    CheckpointError,
    ConditionalModel,
    ConfigError,
    DataError,
    DTypeError,
    Encoder,
    ShapeError,
    Standardizer,
    TrainConfig,
    build_head,
    fit,
)

SMALL = {"width": 16, "blocks": 2, "time_features": 8}


def randomise(head: DiffusionHead, seed: int = 0) -> DiffusionHead:
    """Give every weight (the zero-initialised output layer included) a random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return head


@pytest.mark.parametrize("context_features", [None, 3])
@pytest.mark.parametrize("sampler", ["ode", "heun", "euler_maruyama"])
def test_shapes(context_features: int | None, sampler: str) -> None:
    head = randomise(DiffusionHead(2, context_features, sampler=sampler, sample_steps=5, **SMALL))
    ctx = None if context_features is None else torch.randn(6, context_features)
    x = torch.randn(6, 2)
    assert head.loss(x, ctx).shape == () and head.log_prob(x, ctx).shape == (6,)
    assert head.sample(6, ctx).shape == (6, 2)
    assert head.epsilon(x, 0.5, ctx).shape == (6, 2) and head.score(x, torch.rand(6), ctx).shape == (6, 2)
    if context_features is not None:
        assert head.sample(4, torch.randn(3)).shape == (4, 2)  # a shared context


@pytest.mark.parametrize("parameterization", ["residual", "epsilon"])
def test_score_is_minus_epsilon_over_sigma(parameterization: str) -> None:
    head = randomise(DiffusionHead(2, 3, parameterization=parameterization, **SMALL)).double()
    x, c, t = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64), torch.rand(7).double()
    sigma = head.schedule.sigma(t)[:, None]
    assert torch.allclose(head.score(x, t, c), -head.epsilon(x, t, c) / sigma, rtol=1e-10)


def test_untrained_residual_head_is_the_standard_normal() -> None:
    """Zero output layer: score = -x, the flow stands still, log_prob = log N(x; 0, I) exactly."""
    head = DiffusionHead(2, **SMALL).double()
    x = 2 * torch.randn(10, 2, dtype=torch.float64)
    assert torch.allclose(head.log_prob(x), standard_normal_log_prob(x), atol=1e-10)


def test_untrained_epsilon_head_is_a_wide_gaussian() -> None:
    """Zero epsilon: score = 0, x_1 = (a_1 / a_eps) x_0, and log p = log N(a_1/a_eps x; 0, I) + d log(a_1/a_eps)."""
    head = DiffusionHead(2, parameterization="epsilon", **SMALL).double()
    x = torch.randn(10, 2, dtype=torch.float64)
    ratio = float(head.schedule.alpha(1.0) / head.schedule.alpha(head.t_eps))
    want = standard_normal_log_prob(ratio * x) + 2 * math.log(ratio)
    assert torch.allclose(head.log_prob(x), want, atol=1e-6)


@pytest.mark.parametrize("context_features", [None, 3])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_gradients_flow_through_log_prob_to_every_parameter(context_features: int | None, divergence: str) -> None:
    head = randomise(DiffusionHead(2, context_features, divergence=divergence, rtol=1e-3, atol=1e-3, **SMALL))
    ctx = None if context_features is None else torch.randn(5, context_features)
    head.log_prob(torch.randn(5, 2), ctx).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name


def test_gradients_flow_through_the_loss_and_training_lowers_it() -> None:
    head = DiffusionHead(1, **SMALL)
    x = 0.3 * torch.randn(512, 1) + 1.0

    def loss_at_fixed_noise() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return float(head.loss(x))

    before = loss_at_fixed_noise()
    fit(head, lambda b: head.loss(b[0]), (x,), config=TrainConfig(steps=150, batch_size=128, lr=3e-3))
    assert loss_at_fixed_noise() < 0.9 * before


def test_train_and_eval_mode_agree() -> None:
    head = randomise(DiffusionHead(2, 3, **SMALL))
    x, c = torch.randn(4, 2), torch.randn(4, 3)
    with torch.no_grad():
        a = head.train().log_prob(x, c)
        b = head.eval().log_prob(x, c)
    assert torch.equal(a, b)


def test_the_score_is_a_score_function_for_any_sampler() -> None:
    head = randomise(DiffusionHead(2, 3, **SMALL))
    c = torch.randn(6, 3)
    with torch.no_grad():
        x = sample_ode(head.score, torch.randn(6, 2), head.schedule, context=c, t_eps=head.t_eps)
    assert x.shape == (6, 2) and bool(torch.isfinite(x).all())


def test_divergence_auto_follows_the_dimension() -> None:
    assert DiffusionHead(2, **SMALL).divergence_method == "exact"
    assert DiffusionHead(16, **SMALL).divergence_method == "exact"
    assert DiffusionHead(17, **SMALL).divergence_method == "hutchinson"
    assert DiffusionHead(2, divergence="hutchinson", **SMALL).divergence_method == "hutchinson"


def test_registered_and_rebuilt_from_config() -> None:
    head = DiffusionHead(2, 3, parameterization="epsilon", sampler="heun", **SMALL)
    assert HEADS["diffusion"] is DiffusionHead and head.kind == "diffusion"
    assert build_head("diffusion", head.config).config == head.config
    factory = make_diffusion_head(2, **SMALL)
    assert factory(4).context_features == 4 and factory.config["kind"] == "diffusion"


def test_checkpoint_round_trip_and_mismatch(tmp_path) -> None:
    encoder = Encoder(5, 3, hidden=(8,))
    model = ConditionalModel(
        randomise(DiffusionHead(2, 3, **SMALL)),
        encoder.freeze(),
        Standardizer.fit(torch.randn(50, 2) * 2 + 1),
        Standardizer.fit(torch.randn(50, 5)),
    )
    path = model.save(tmp_path / "model.safetensors")
    loaded = ConditionalModel.load(path)
    x, c = torch.randn(4, 2), torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, c), model.log_prob(x, c))
    assert isinstance(loaded.head, DiffusionHead) and loaded.head.config == model.head.config
    other = ConditionalModel(
        DiffusionHead(2, 3, **{**SMALL, "width": 32}),
        Encoder(5, 3, hidden=(8,)).freeze(),
        Standardizer(2),
        Standardizer(5),
    )
    with pytest.raises(CheckpointError, match="width"):
        other.load_weights(path)


def test_bad_inputs_are_refused() -> None:
    head = DiffusionHead(2, 3, **SMALL)
    x, c = torch.randn(4, 2), torch.randn(4, 3)
    with pytest.raises(ConfigError, match="sampler"):
        DiffusionHead(2, sampler="ddim")
    with pytest.raises(ConfigError, match="parameterization"):
        DiffusionHead(2, parameterization="v")
    with pytest.raises(ConfigError, match="divergence"):
        DiffusionHead(2, divergence="skilling")
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionHead(2, schedule="sigmoid")
    with pytest.raises(DataError, match="t_eps"):
        DiffusionHead(2, t_eps=0.0)
    with pytest.raises(DataError, match="width"):
        DiffusionHead(2, width=0)
    with pytest.raises(ShapeError, match="x"):
        head.log_prob(torch.randn(4, 3), c)
    with pytest.raises(ShapeError, match="context is required"):
        head.loss(x)
    with pytest.raises(ShapeError, match="unconditional"):
        DiffusionHead(2, **SMALL).log_prob(x, c)
    with pytest.raises(ShapeError, match="context"):
        head.sample(4, torch.randn(3, 3))
    with pytest.raises(DataError, match="t must lie"):
        head.score(x, 0.0, c)
    with pytest.raises(ShapeError, match="t"):
        head.epsilon(x, torch.rand(3), c)
    with pytest.raises(DTypeError, match="dtype"):
        head.log_prob(x.double(), c.double())
    with pytest.raises(DataError, match="x"):
        head.loss(torch.full((4, 2), math.nan), c)
    with pytest.raises(DataError, match="n"):
        head.sample(0, c)


def test_inference_settings_are_chosen_at_call_time() -> None:
    head = randomise(DiffusionHead(2, 3, **SMALL))
    c = torch.randn(3)
    config = head.config
    for key in ("sampler", "sample_steps", "divergence", "probes", "rtol", "atol"):
        assert key not in config  # not part of what the weights are
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    heun = head.sample(4, c, generator=gen(), sampler="heun", steps=5)
    assert torch.equal(heun, head.sample(4, c, generator=gen(), sampler="heun", steps=5))
    assert not torch.allclose(heun, head.sample(4, c, generator=gen(), sampler="heun", steps=6))
    ode = head.sample(4, c, generator=gen(), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(heun, ode)
    dist = head(c.expand(2, 3), sampler="euler_maruyama", steps=3, divergence="hutchinson", probes=2)
    assert dist.sample((3,)).shape == (3, 2, 2)
    x = torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            dist.log_prob(x), head.log_prob(x, c.expand(2, 3), divergence="hutchinson", probes=2)
        )
    with pytest.raises(ConfigError, match="sampler"):
        head.sample(2, c, sampler="ddim")
    with pytest.raises(ConfigError, match="divergence"):
        head.log_prob(x, c.expand(2, 3), divergence="trace")


def test_weights_load_into_a_head_built_with_other_inference_settings(tmp_path) -> None:
    encoder = Encoder(5, 3, hidden=(8,)).freeze()
    model = ConditionalModel(randomise(DiffusionHead(2, 3, sampler="ode", **SMALL)), encoder)
    path = model.save(tmp_path / "model.safetensors")
    other = ConditionalModel(
        DiffusionHead(2, 3, sampler="heun", sample_steps=7, rtol=1e-3, **SMALL), Encoder(5, 3, hidden=(8,)).freeze()
    )
    other.load_weights(path)
    assert other.head.sampler == "heun" and other.head.sample_steps == 7  # its own call-time defaults
    # a config that holds inference settings is not this version's: refused, naming the keys
    from shared_embed.checkpoint import save_checkpoint
    from shared_embed.errors import CheckpointError

    foreign = {"model": "ConditionalModel", **model.config}
    foreign["head"] = {**foreign["head"], "sampler": "euler_maruyama", "sample_steps": 9}
    path = save_checkpoint(tmp_path / "foreign.safetensors", model, foreign)
    with pytest.raises(CheckpointError, match="sampler"):
        other.load_weights(path)


def test_ema_of_the_weights_follows_the_decay_rule_and_drives_inference(tmp_path) -> None:
    decay = 0.9
    head = DiffusionHead(2, None, ema_decay=decay, **SMALL)
    weights = [randomise(DiffusionHead(2, None, **SMALL), seed=s).net.state_dict() for s in (1, 2)]
    head.net.load_state_dict(weights[0])
    head.after_optimizer_step()
    head.net.load_state_dict(weights[1])
    head.after_optimizer_step()
    for name, w in head.ema.module.state_dict().items():  # first update copies, then ema = d ema + (1 - d) w
        torch.testing.assert_close(w, decay * weights[0][name] + (1 - decay) * weights[1][name])
    # the score (so sampling and likelihood) uses the average; the loss trains the live weights
    averaged = DiffusionHead(2, None, **SMALL)
    averaged.net.load_state_dict(head.ema.module.state_dict())
    x, t = torch.randn(5, 2), torch.rand(5) * 0.9 + 0.05
    with torch.no_grad():
        torch.testing.assert_close(head.score(x, t), averaged.score(x, t))
    # saved with the checkpoint
    model = ConditionalModel(head)
    loaded = ConditionalModel.load(model.save(tmp_path / "ema.safetensors"))
    assert int(loaded.head.ema.n_averaged) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded.head.score(x, t), averaged.score(x, t))
    # the shared loop updates it after every optimiser step, and a frozen head's EMA stays put
    trained = DiffusionHead(2, None, ema_decay=0.99, **SMALL)
    data = (torch.randn(64, 2),)
    fit(trained, lambda b: trained.loss(b[0]), data, config=TrainConfig(steps=7, batch_size=32))
    assert int(trained.ema.n_averaged) == 7
    trained.net.requires_grad_(False)
    trained.after_optimizer_step()
    assert int(trained.ema.n_averaged) == 7
    with pytest.raises(DataError, match="ema_decay"):
        DiffusionHead(2, ema_decay=1.5)
