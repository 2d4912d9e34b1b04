"""Shared test options: ``--device`` and ``--dtype`` (zuko-style), one thread per test process, seeded RNG."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GENTRANSFER_QUIET", "1")  # no progress bars in test logs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for tests that take one (cpu, cuda, mps)")
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"], help="dtype for numeric checks")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("GENTRANSFER_TEST_THREADS", "1")))


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(name)


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
