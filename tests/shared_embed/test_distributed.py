"""The torchrun helper: a one-process session outside torchrun, clear errors inside a bad setup.

The two-process run itself (gloo under torchrun, loss trajectory equal to one process) is in
tests/theory/verdicts/test_reliability.py, whose worker starts its process group through this helper.
"""

from __future__ import annotations

import pytest
import torch

from shared_embed.distributed import distributed_session, init_distributed, launched_by_torchrun
from shared_embed.errors import ConfigError


def test_outside_torchrun_a_session_is_one_process_on_the_asked_device(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert not launched_by_torchrun()
    with distributed_session("cpu") as session:
        assert (session.rank, session.world_size, session.is_main) == (0, 1, True)
        assert session.device == torch.device("cpu")
        assert not torch.distributed.is_initialized()


def test_unavailable_devices_are_refused_before_any_process_group() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        init_distributed("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        init_distributed("gpu0")
