"""Multi-process training under ``torchrun``: start and stop the process group the training loop detects.

:func:`shared_embed.train.fit` needs no flag for DistributedDataParallel: once ``torch.distributed`` is
initialised it wraps the module in DDP, gives each rank its share of every global batch, logs the
global-batch loss and writes checkpoints from rank 0 only. This module does the initialisation:
gloo on CPU, nccl on CUDA (each rank on GPU ``LOCAL_RANK``).

Example (a script ``train.py``, launched as ``torchrun --nproc_per_node 2 train.py``)::

    from shared_embed.distributed import distributed_session
    with distributed_session("auto") as session:
        model = fit_source(encoder, head, source, TrainConfig(batch_size=512))
        if session.is_main:
            model.save("runs/source")
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import ConfigError

__all__ = [
    "TORCHRUN_VARIABLES",
    "Session",
    "distributed_session",
    "init_distributed",
    "launched_by_torchrun",
    "shutdown_distributed",
]

#: Environment variables torchrun sets for every process it launches.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Session:
    """Where this process stands: its rank, the world size and the device its model should live on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when every variable torchrun sets is present in the environment."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def init_distributed(device: str = "auto") -> Session:
    """Initialise the process group when launched by torchrun (else a one-process session); return it.

    ``device``: ``cpu`` (gloo), ``cuda`` (nccl, GPU ``LOCAL_RANK``), or ``auto`` (cuda when available).
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return Session(0, 1, dev)
    if dist.is_initialized():
        raise ConfigError("torch.distributed is already initialised; call init_distributed once per process")
    local_rank = int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) here")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl")
    elif dev.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ConfigError(f"multi-process training supports cpu (gloo) and cuda (nccl), got device {dev}")
    return Session(dist.get_rank(), dist.get_world_size(), dev)


def shutdown_distributed() -> None:
    """Destroy the process group if one is initialised (safe to call always).

    Unreachable objects are collected first: a DistributedDataParallel wrapper sits in reference cycles, so it
    outlives the training loop that made it until the garbage collector runs, and a reducer destroyed after its
    process group (at the latest at interpreter exit) makes gloo abort the process now and then ("terminate called
    without an active exception": 9 of 40 two-process runs of a bare DDP loop that kept its wrapper, 0 of 60 with
    it collected before the group is destroyed)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str = "auto") -> Iterator[Session]:
    """``with distributed_session() as s:`` initialise (under torchrun) and always shut down afterwards."""
    session = init_distributed(device)
    try:
        yield session
    finally:
        shutdown_distributed()
