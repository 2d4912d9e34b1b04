import pytest
import torch

from shared_embed import ConfigError, Encoder, ShapeError


def test_shape_and_config_round_trip():
    enc = Encoder(16, 2, hidden=(32,), activation="tanh")
    assert enc(torch.randn(5, 16)).shape == (5, 2)
    assert Encoder(**enc.config).config == enc.config


def test_freeze_stops_gradients_and_stays_in_eval():
    enc = Encoder(4, 2)
    assert not enc.frozen
    enc.freeze()
    assert enc.frozen and not enc.training
    assert all(not p.requires_grad for p in enc.parameters())
    parent = torch.nn.Sequential(enc)
    parent.train()
    assert not enc.training  # a parent in train mode does not unfreeze it
    out = enc(torch.randn(3, 4))
    assert not out.requires_grad
    enc.unfreeze()
    assert not enc.frozen and all(p.requires_grad for p in enc.parameters())


def test_bad_inputs():
    with pytest.raises(ShapeError, match="last dimension 16"):
        Encoder(16, 2)(torch.randn(3, 15))
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        Encoder(16, 2, activation="swish")
