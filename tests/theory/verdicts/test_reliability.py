"""Crash safety and scale-out of the shared loop: resume after SIGKILL, and DDP matching one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shared_embed.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]


def job(out: Path, *extra: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "tests.workers.train_job", str(out), *extra]


def run_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def result(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, _, _ = load_checkpoint(out / "weights.safetensors")
    return tensors, json.loads((out / "history.json").read_text())


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    subprocess.run(job(tmp_path / "full"), check=True, env=run_env(), cwd=ROOT, timeout=120)
    ckpt = tmp_path / "state.safetensors"
    proc = subprocess.Popen(
        job(tmp_path / "killed", "--checkpoint", str(ckpt), "--slow", "0.02"), env=run_env(), cwd=ROOT
    )
    deadline = time.time() + 60
    step = 0
    while time.time() < deadline and step < 30:  # wait for a checkpoint past step 30, then kill -9
        time.sleep(0.05)
        if ckpt.exists():
            try:
                step = load_checkpoint(ckpt)[2]["step"]
            except Exception:
                continue  # never a partial file (atomic rename), but be robust to a read race
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and 30 <= step < 120
    subprocess.run(
        job(tmp_path / "resumed", "--checkpoint", str(ckpt)), check=True, env=run_env(), cwd=ROOT, timeout=120
    )
    full, h_full = result(tmp_path / "full")
    resumed, h_res = result(tmp_path / "resumed")
    assert h_res["resumed_from"] is not None and h_res["resumed_from"] >= 30
    for name in full:
        assert torch.equal(full[name], resumed[name]), name  # bitwise on CPU
    assert h_res["train_loss"] == h_full["train_loss"]


@pytest.mark.timeout(120)
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    subprocess.run(job(tmp_path / "one", "--steps", "40"), check=True, env=run_env(), cwd=ROOT, timeout=60)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tests.workers.train_job",
        str(tmp_path / "two"),
        "--steps",
        "40",
    ]
    (tmp_path / "two").mkdir()
    done = subprocess.run(cmd, env=run_env(), cwd=ROOT, timeout=100, capture_output=True, text=True)
    assert done.returncode == 0, f"torchrun exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}"
    one, h_one = result(tmp_path / "one")
    two, h_two = result(tmp_path / "two")
    losses_one, losses_two = torch.tensor(h_one["train_loss"]), torch.tensor(h_two["train_loss"])
    assert len(losses_one) == len(losses_two) == 40
    assert torch.allclose(losses_one, losses_two, rtol=1e-5, atol=1e-6), (losses_one - losses_two).abs().max()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
