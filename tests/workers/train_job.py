"""A small training job run in a subprocess by the reliability tests (resume after SIGKILL, DDP under torchrun).

Usage: python -m tests.workers.train_job OUT_DIR [--checkpoint PATH] [--slow SECONDS] [--steps N]
Writes OUT_DIR/weights.safetensors (final weights) and OUT_DIR/history.json (rank 0 only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from shared_embed import TrainConfig, fit, save_checkpoint
from shared_embed.distributed import init_distributed, shutdown_distributed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--slow", type=float, default=0.0, help="sleep per step, so a test can kill it partway")
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    session = init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    y = torch.sin(x @ torch.randn(4, 1, generator=g)) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))

    def loss(batch):
        if args.slow:
            time.sleep(args.slow)
        return (model(batch[0]) - batch[1]).square().mean()

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=64,
        lr=1e-2,
        seed=3,
        checkpoint_path=args.checkpoint,
        checkpoint_every=5 if args.checkpoint else 0,
    )
    history = fit(model, loss, (x, y), config=cfg)
    if session.is_main:
        out = Path(args.out)
        save_checkpoint(out / "weights.safetensors", model, {"job": "train_job"})
        (out / "history.json").write_text(json.dumps(history.to_dict()))
    shutdown_distributed()


if __name__ == "__main__":
    main()
