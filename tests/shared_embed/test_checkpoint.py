import json

import pytest
import torch

from shared_embed import CheckpointError, ConditionalModel, Encoder, GaussianHead
from shared_embed.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from shared_embed.standardize import Standardizer


def make_model(hidden=(16,)):
    torch.manual_seed(0)
    return ConditionalModel(
        GaussianHead(2, 3, hidden=hidden),
        Encoder(5, 3, hidden=(8,)),
        Standardizer.fit(torch.randn(20, 2) * 3),
        Standardizer.fit(torch.randn(20, 5)),
    )


def test_round_trip_gives_identical_outputs(tmp_path):
    model = make_model()
    path = model.save(tmp_path / "m.safetensors")
    assert json.loads((tmp_path / "m.json").read_text())["head_kind"] == "gaussian"
    loaded = ConditionalModel.load(path)
    x, c = torch.randn(6, 2), torch.randn(6, 5)
    assert torch.equal(model.log_prob(x, c), loaded.log_prob(x, c))
    assert loaded.encoder.frozen


def test_different_configuration_is_refused(tmp_path):
    path = make_model().save(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"different configuration: head.hidden"):
        make_model(hidden=(32,)).load_weights(path)


def test_truncated_and_corrupted_files_are_refused(tmp_path):
    path = make_model().save(tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "t.safetensors")
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF  # a bit flip inside the tensor data
    (tmp_path / "c.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "c.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_newer_format_and_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a gentransfer checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    path = save_checkpoint(tmp_path / "v.safetensors", {"a": torch.zeros(1)}, {"k": 1})
    raw = path.read_bytes()
    old = f'"format_version":"{FORMAT_VERSION}"'.encode()
    assert old in raw
    path.write_bytes(raw.replace(old, f'"format_version":"{FORMAT_VERSION + 1}"'.encode()))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", {"a": torch.ones(3)}, {"v": 1})
    import shared_embed.checkpoint as ck

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"a": torch.zeros(3)}, {"v": 2})
    tensors, config, _ = load_checkpoint(path)
    assert config == {"v": 1} and torch.equal(tensors["a"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_loading_never_unpickles(tmp_path):
    import pickle

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.safetensors")


@pytest.mark.parametrize("kind", ["gaussian", "flow", "diffusion"])
def test_a_config_asking_for_other_or_huge_modules_is_refused_before_allocating(tmp_path, kind):
    import diffusion  # noqa: F401  (registers its head)
    import flows  # noqa: F401
    from shared_embed.encoder import Encoder
    from shared_embed.head import HEADS
    from shared_embed.model import ConditionalModel

    path = ConditionalModel(HEADS[kind](2, 2), Encoder(3, 2, hidden=(8,))).save(tmp_path / "m.safetensors")
    tensors, config, extra = load_checkpoint(path)
    huge = {**config, "encoder": {**config["encoder"], "hidden": [10**9]}}  # 10^9 x 3 floats if allocated
    save_checkpoint(path, tensors, huge, extra=extra)
    with pytest.raises(CheckpointError, match="encoder|numbers"):
        ConditionalModel.load(path)
    malformed = {**config, "encoder": {**config["encoder"], "hidden": "wide"}}
    save_checkpoint(path, tensors, malformed, extra=extra)
    with pytest.raises(CheckpointError, match="malformed model config"):
        ConditionalModel.load(path)
    save_checkpoint(path, tensors, {**config, "encoder": 3}, extra=extra)
    with pytest.raises(CheckpointError, match="malformed model config"):
        ConditionalModel.load(path)


def _tamper(path, change_tensors=None, change_config=None):
    """Rewrite a checkpoint with changed tensors or config (and a matching checksum, as a careful forger would)."""
    tensors, config, extra = load_checkpoint(path)
    if change_tensors:
        change_tensors(tensors)
    if change_config:
        config = change_config(config)
    save_checkpoint(path, tensors, config, extra=extra)


@pytest.mark.parametrize(
    "name, change, match",
    [
        ("x_scaler.std", lambda t: t.fill_(float("nan")), "tensor 'x_scaler.std' holds 2 NaN or inf value"),
        (
            "head.net.0.weight",
            lambda t: t.flatten().index_fill(0, torch.tensor([0]), float("inf")).view_as(t),
            "tensor 'head.net.0.weight' holds 1 NaN",
        ),
        (
            "encoder.net.0.weight",
            lambda t: t.trunc_().to(torch.int64),
            "tensor 'encoder.net.0.weight' has dtype torch.int64, the model needs torch.float32",
        ),
    ],
)
def test_non_finite_or_wrongly_typed_tensors_are_refused_at_load_naming_the_tensor(tmp_path, name, change, match):
    path = make_model().save(tmp_path / "m.safetensors")

    def edit(tensors):
        tensors[name] = change(tensors[name].clone())

    _tamper(path, change_tensors=edit)
    with pytest.raises(CheckpointError, match=match):
        ConditionalModel.load(path)
    with pytest.raises(CheckpointError, match=match):
        make_model().load_weights(path)


def test_a_model_of_another_fit_is_refused_when_its_identity_is_asked_for(tmp_path):
    mine = {"group": "gaussian/ns64_seed0", "role": "source", "settings_hash": "abc"}
    path = make_model().save(tmp_path / "m.safetensors", identity=mine)
    ConditionalModel.load(path, identity=mine)
    with pytest.raises(CheckpointError, match="was fitted for .*ns64_seed0.*not for .*ns128_seed0.*never used"):
        ConditionalModel.load(path, identity={**mine, "group": "gaussian/ns128_seed0"})
    unnamed = make_model().save(tmp_path / "u.safetensors")
    with pytest.raises(CheckpointError, match="was fitted for None"):
        ConditionalModel.load(unnamed, identity=mine)


def test_a_config_of_20000_encoder_layers_is_refused_fast(tmp_path):
    import time

    path = make_model().save(tmp_path / "m.safetensors")
    _tamper(path, change_config=lambda c: {**c, "encoder": {**c["encoder"], "hidden": [8] * 20000}})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="encoder.hidden lists 20000 layers, more than the .* stored tensors"):
        ConditionalModel.load(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("config", [[1, 2], "text", 3])
def test_a_config_that_is_not_a_json_object_is_one_error(tmp_path, config):
    path = make_model().save(tmp_path / "m.safetensors")
    _tamper(path, change_config=lambda _c: config)
    with pytest.raises(
        CheckpointError, match=f"malformed config: expected a JSON object, got a JSON {type(config).__name__}"
    ):
        ConditionalModel.load(path)
