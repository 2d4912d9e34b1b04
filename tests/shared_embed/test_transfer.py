"""The four-variant workflow with the baseline Gaussian head on the linear-Gaussian task (exact KL known)."""

import pytest
import torch

from shared_embed import (
    ConditionalModel,
    ConfigError,
    DTypeError,
    Encoder,
    GaussianHead,
    PairedData,
    ShapeError,
    Standardizer,
    TrainConfig,
    TransferConfig,
    fit_source,
    fit_target_head,
    fit_variants,
)
from theory.truth.tasks import ConditionalGaussianTask


def kl(task, model, n=4000, seed=99):
    data = task.sample(n, "target", torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((task.log_prob(data.x, data.c, "target") - model.log_prob(data.x, data.c)).mean())


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    task = ConditionalGaussianTask()
    gen = torch.Generator().manual_seed(0)
    source, target = task.sample(3000, "source", gen), task.sample(40, "target", gen)
    # Small heads with weight decay and early stopping: a heteroscedastic Gaussian overfits 32 rows fast.
    cfg = TransferConfig(
        source_train=TrainConfig(steps=800, lr=3e-3),
        target_train=TrainConfig(steps=1000, lr=1e-3, eval_every=10, patience=10, optimizer="adamw", weight_decay=1e-2),
    )
    factory = lambda k: GaussianHead(2, k, hidden=(16,))  # noqa: E731
    res = fit_variants(
        factory,
        source,
        target,
        cfg,
        ["transfer", "no_transfer", "fine_tune", "oracle"],
        oracle_embedding=task.embedding,
    )
    return task, res


def test_all_variants_are_comparable_models(fitted):
    task, res = fitted
    assert set(res) == {"source", "transfer", "no_transfer", "fine_tune", "oracle"}
    for r in res.values():
        assert isinstance(r.model, ConditionalModel) and r.seconds > 0


def test_transfer_beats_no_transfer_with_few_target_samples(fitted):
    task, res = fitted
    kls = {k: kl(task, r.model) for k, r in res.items() if k != "source"}
    assert kls["transfer"] < 0.7 * kls["no_transfer"], kls
    assert kls["oracle"] < kls["no_transfer"], kls


def test_transfer_keeps_the_source_encoder_frozen(fitted):
    _, res = fitted
    enc_src, enc_t = res["source"].model.encoder, res["transfer"].model.encoder
    assert enc_t.frozen
    for a, b in zip(enc_src.parameters(), enc_t.parameters()):
        assert torch.equal(a, b)


def test_log_prob_includes_the_standardisation_jacobian():
    head = GaussianHead(2)  # N(0, I) in standardised space
    scaler = Standardizer.fit(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    model = ConditionalModel(head, x_scaler=scaler)
    x = torch.randn(5, 2)
    ref = torch.distributions.Normal(scaler.mean, scaler.std).log_prob(x).sum(-1)
    assert torch.allclose(model.log_prob(x).detach(), ref, atol=1e-5)
    dist = model()
    assert dist.sample((7,)).shape == (7, 2) and torch.allclose(dist.log_prob(x), model.log_prob(x))


def test_conditional_distribution_view():
    model = ConditionalModel(GaussianHead(2, 3), Encoder(4, 3))
    c = torch.randn(5, 4)
    d = model(c)
    assert d.batch_shape == (5,) and d.event_shape == (2,)
    assert d.sample().shape == (5, 2) and d.sample((3,)).shape == (3, 5, 2)
    assert d.log_prob(torch.randn(3, 5, 2)).shape == (3, 5)


def test_workflow_errors():
    src = PairedData(torch.randn(20, 4), torch.randn(20, 2))
    with pytest.raises(ShapeError, match="share dimensions"):
        fit_variants(lambda k: GaussianHead(2, k), src, PairedData(torch.randn(20, 5), torch.randn(20, 2)))
    with pytest.raises(ConfigError, match="unknown variant 'transferr'"):
        fit_variants(lambda k: GaussianHead(2, k), src, src, variants=["transferr"])
    with pytest.raises(ConfigError, match="oracle_embedding"):
        fit_variants(
            lambda k: GaussianHead(2, k),
            src,
            src,
            TransferConfig(target_train=TrainConfig(steps=2)),
            variants=["oracle"],
        )
    with pytest.raises(ShapeError, match="head.context_features"):
        fit_source(Encoder(4, 3), GaussianHead(2, 2), src)


def test_errors_name_what_was_expected():
    src = PairedData(torch.randn(20, 4), torch.randn(20, 2))
    with pytest.raises(DTypeError, match="head_factory must build a new head.*GaussianHead instance"):
        fit_variants(GaussianHead(2, 2), src, src)
    with pytest.raises(DTypeError, match=r"source must be \(c, x\) data: as_paired_data\(c, x\).*got dict"):
        fit_source(Encoder(4, 2), GaussianHead(2, 2), {"c": src.c, "x": src.x})
    with pytest.raises(ConfigError, match=r"variants must be a sequence.*\('transfer',\), got the string"):
        fit_variants(lambda k: GaussianHead(2, k), src, src, variants="transfer")
    with pytest.raises(DTypeError, match="head must be a Head"):
        fit_source(Encoder(4, 2), lambda k: GaussianHead(2, k), src)


def test_transfer_takes_the_fitted_source_model_and_keeps_its_scaler():
    """Conditions in other units (10 c + 5): the target model must see c through the source's scaler."""
    task = ConditionalGaussianTask(d_c=6, d_h=2, d_x=2)
    gen = torch.Generator().manual_seed(0)
    source, target = task.sample(400, "source", gen), task.sample(60, "target", gen)
    source, target = PairedData(10 * source.c + 5, source.x), PairedData(10 * target.c + 5, target.x)
    src = fit_source(Encoder(6, 2, hidden=(16,)), GaussianHead(2, 2, hidden=(8,)), source, TrainConfig(steps=30))
    cfg = TrainConfig(steps=20)
    tgt = fit_target_head(src, GaussianHead(2, 2, hidden=(8,)), target, cfg)
    assert torch.equal(tgt.c_scaler.mean, src.c_scaler.mean) and torch.equal(tgt.c_scaler.std, src.c_scaler.std)
    assert tgt.encoder is not src.encoder and tgt.encoder.frozen  # a frozen copy: src stays as it was
    for a, b in zip(src.encoder.parameters(), tgt.encoder.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(tgt.embed(target.c[:3]), tgt.h_scaler(src.encoder(src.c_scaler(target.c[:3]))))
    # the old form works when the scaler is said, and refuses to guess when it is not
    old = fit_target_head(src.encoder, GaussianHead(2, 2, hidden=(8,)), target, cfg, c_scaler=src.c_scaler)
    assert torch.equal(old.c_scaler.mean, src.c_scaler.mean)
    with pytest.raises(ConfigError, match=r"pass the fitted source model itself.*c_scaler=source_model.c_scaler"):
        fit_target_head(src.encoder, GaussianHead(2, 2), target, cfg)
    with pytest.raises(ConfigError, match="carries its own"):
        fit_target_head(src, GaussianHead(2, 2), target, cfg, c_scaler=src.c_scaler)
