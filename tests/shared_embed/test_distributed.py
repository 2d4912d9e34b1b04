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


def test_shutdown_collects_a_ddp_wrapper_left_in_a_cycle_before_destroying_its_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A DDP wrapper that outlives its training loop (it sits in reference cycles) must be gone when the process
    group is destroyed: a reducer freed after its group made gloo abort two-process runs now and then."""
    import gc
    import weakref

    import torch.distributed as dist

    from shared_embed.distributed import shutdown_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapper = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        wrapper(torch.ones(3, 2)).sum().backward()
        cycle: list[object] = [wrapper]
        cycle.append(cycle)  # only the garbage collector frees it
        alive = weakref.ref(wrapper)
        del wrapper, cycle
        gc.disable()  # as if no automatic collection happened to run before shutdown
        seen = []
        destroy = dist.destroy_process_group
        monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: (seen.append(alive()), destroy(*a, **k)))
        shutdown_distributed()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
    assert seen == [None]
