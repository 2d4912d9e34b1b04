"""The shared loop's defaults and manners: the caller's global RNG is left as it was, seeded fits reproduce, early
stopping is on by default (and can be turned off), every fit says how many rows trained and how many were held
out, and callbacks see every step and evaluation (TensorBoard among them)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torch import nn

from shared_embed import (
    Callback,
    DataError,
    DTypeError,
    Encoder,
    GaussianHead,
    GentransferError,
    PairedData,
    TensorBoardCallback,
    TrainConfig,
    fit,
    fit_source,
    fit_target_head,
    train_model,
)
from shared_embed.train import DEFAULT_PATIENCE


def regression(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)


def noisy_mse(model: nn.Module):
    """A loss that draws from torch's global RNG, as denoising losses do."""
    return lambda b: (model(b[0] + 0.1 * torch.randn_like(b[0])) - b[1]).square().mean()


def paired(n: int = 200, seed: int = 0) -> PairedData:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 4, generator=g)
    return PairedData(c, c[:, :2] + 0.3 * torch.randn(n, 2, generator=g))


def test_a_fit_leaves_the_callers_global_rng_untouched() -> None:
    x, y = regression()
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    expected = torch.rand(3)  # what the caller's stream gives next, had no fit run
    torch.set_rng_state(before)
    model = nn.Linear(3, 1)
    after_init = torch.get_rng_state()
    fit(model, noisy_mse(model), (x, y), (x[:64], y[:64]), TrainConfig(steps=30, eval_every=10, seed=5))
    assert torch.equal(torch.get_rng_state(), after_init)
    torch.set_rng_state(before)
    nn.Linear(3, 1)
    fit(model, noisy_mse(model), (x, y), None, TrainConfig(steps=5, seed=5))
    torch.set_rng_state(before)
    assert torch.equal(torch.rand(3), expected)


def test_seeded_fits_reproduce_whatever_the_caller_drew_before() -> None:
    x, y = regression()
    outs = []
    for caller_seed in (1, 99):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)  # the same initial weights
        torch.manual_seed(caller_seed)  # a different global stream at the call
        history = fit(model, noisy_mse(model), (x, y), (x[:64], y[:64]), TrainConfig(steps=40, eval_every=10, seed=3))
        outs.append((model.weight.detach().clone(), history.train_loss))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    other = fit(model, noisy_mse(model), (x, y), (x[:64], y[:64]), TrainConfig(steps=40, eval_every=10, seed=4))
    assert other.train_loss != outs[0][1]  # the seed matters


def test_early_stopping_is_on_by_default_and_can_be_turned_off() -> None:
    assert TrainConfig().patience == DEFAULT_PATIENCE == 5
    x, y = regression()
    val = (x[:64], y[:64] + 5.0)  # a validation set the fit can never improve on after a few steps
    runs = {}
    for patience in (DEFAULT_PATIENCE, None, 0):
        model = nn.Linear(3, 1)
        config = TrainConfig(steps=400, eval_every=10, lr=0.05, patience=patience)
        runs[patience] = fit(model, noisy_mse(model), (x, y), val, config)
    assert runs[DEFAULT_PATIENCE].stopped_early and runs[DEFAULT_PATIENCE].steps_done < 400
    assert runs[DEFAULT_PATIENCE].steps_done - runs[DEFAULT_PATIENCE].best_step == 10 * DEFAULT_PATIENCE
    for off in (None, 0):
        assert not runs[off].stopped_early and runs[off].steps_done == 400
    with pytest.raises(DataError, match="patience must be >= 0, got -1"):
        TrainConfig(patience=-1)


def test_histories_say_how_many_rows_trained_and_were_held_out() -> None:
    data = paired(40)
    config = TrainConfig(steps=10, eval_every=5)
    model = fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config)
    assert (model.history.n_train, model.history.n_val) == (32, 8)
    assert model.history.summary().endswith("; 32 rows trained, 8 held out for validation")
    model = fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config, val_fraction=0.5)
    assert (model.history.n_train, model.history.n_val) == (20, 20)
    model = fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config, val_fraction=0)
    assert (model.history.n_train, model.history.n_val) == (40, 0) and model.history.steps_done == 10
    assert model.history.summary() == "10 steps; 40 rows trained, 0 held out for validation"
    small = fit_source(Encoder(4, 2), GaussianHead(2, 2), paired(12), config)  # 0.2 x 12 < MIN_VAL_ROWS
    assert (small.history.n_train, small.history.n_val) == (12, 0)
    with pytest.raises(DataError, match=r"val_fraction must lie in \[0.0, 0.9\], got 0.95"):
        fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config, val_fraction=0.95)
    x, y = regression()
    plain = nn.Linear(3, 1)
    history = fit(plain, noisy_mse(plain), (x, y), (x[:50], y[:50]), TrainConfig(steps=3))
    assert (history.n_train, history.n_val) == (256, 50)


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_start(self, description: str) -> None:
        self.events.append(("start", description))

    def on_step(self, step: int, loss: float) -> None:
        self.events.append(("step", step, loss))

    def on_eval(self, step: int, val_loss: float) -> None:
        self.events.append(("eval", step, val_loss))

    def on_end(self, history: Any) -> None:
        self.events.append(("end", history.steps_done))


def test_callbacks_see_every_step_and_evaluation_and_change_nothing() -> None:
    data = paired(100)
    config = TrainConfig(steps=25, eval_every=10, patience=None)
    recorder = Recorder()
    torch.manual_seed(0)
    with_cb = fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config, callbacks=[recorder])
    torch.manual_seed(0)
    without = fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config)
    assert with_cb.history.train_loss == without.history.train_loss
    history = with_cb.history
    assert recorder.events[0] == ("start", "source") and recorder.events[-1] == ("end", 25)
    steps = [e for e in recorder.events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, 26)) and [e[2] for e in steps] == history.train_loss
    evals = [e[1:] for e in recorder.events if e[0] == "eval"]
    assert evals == list(zip(history.val_steps, history.val_loss)) and [s for s, _ in evals] == [10, 20, 25]
    target = fit_target_head(with_cb, GaussianHead(2, 2), paired(40, 1), TrainConfig(steps=3), callbacks=[recorder])
    last = recorder.events[-6:]  # the target fit: 3 steps, one evaluation at the last step
    assert [e[:2] for e in last] == [
        ("start", "target"),
        ("step", 1),
        ("step", 2),
        ("step", 3),
        ("eval", 3),
        ("end", 3),
    ]
    assert [e[2] for e in last[1:4]] == target.history.train_loss and last[4][2] == target.history.val_loss[0]
    with pytest.raises(DTypeError, match=r"callbacks\[0\] \(int\) lacks on_start, on_step, on_eval, on_end"):
        train_model(with_cb, data, config, callbacks=[3])
    with pytest.raises(DTypeError, match="callbacks must be a list of Callback objects, got Recorder"):
        fit_source(Encoder(4, 2), GaussianHead(2, 2), data, config, callbacks=Recorder())


def test_tensorboard_callback_writes_the_curves(tmp_path: Any) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'gentransfer[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardCallback(tmp_path / "tb", every=2)
    config = TrainConfig(steps=10, eval_every=5, patience=None)
    model = fit_source(Encoder(4, 2), GaussianHead(2, 2), paired(100), config, callbacks=[board])
    fit_target_head(model, GaussianHead(2, 2), paired(40, 1), config, callbacks=[board])
    fit_target_head(model, GaussianHead(2, 2), paired(40, 2), config, callbacks=[board])
    board.close()
    assert board.fits == ["source", "target", "target (2)"]
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("source/train_loss")] == [2, 4, 6, 8, 10]
    assert [e.step for e in events.Scalars("target (2)/val_loss")] == [5, 10]
    logged = [e.value for e in events.Scalars("source/val_loss")]
    assert logged == pytest.approx(model.history.val_loss, rel=1e-6)


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an import finds without the package
    with pytest.raises(
        GentransferError, match=r"needs the package 'tensorboard'.*pip install 'gentransfer\[tensorboard\]'"
    ):
        TensorBoardCallback(tmp_path)
