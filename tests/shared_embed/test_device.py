import pytest
import torch

from shared_embed import (
    ConfigError,
    GaussianHead,
    PairedData,
    TrainConfig,
    TransferConfig,
    fit_variants,
    resolve_device,
)


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        TransferConfig(device="cuda")


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_workflow_runs_on_the_requested_device(device):
    data = PairedData(torch.randn(40, 4), torch.randn(40, 2))
    cfg = TransferConfig(device=str(device), source_train=TrainConfig(steps=3), target_train=TrainConfig(steps=3))
    res = fit_variants(lambda k: GaussianHead(2, k, hidden=(8,)), data, data, cfg, ["transfer"])
    model = res["transfer"].model
    assert model.x_scaler.mean.device.type == device.type
    assert model.sample(3, data.c[:3].to(device)).device.type == device.type
