import pytest
import torch
from torch import nn

from shared_embed import ConfigError, TrainConfig, TrainingDivergedError, fit
from shared_embed.errors import DataError, DTypeError
from shared_embed.train import _lr_factor


def regression(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


def mse(model):
    return lambda b: (model(b[0]) - b[1]).square().mean()


def test_reaches_the_least_squares_solution():
    x, y = regression()
    model = nn.Linear(3, 1)
    fit(model, mse(model), (x, y), config=TrainConfig(steps=800, lr=0.05, batch_size=128))
    design = torch.cat([x, torch.ones(len(x), 1)], 1)
    exact = torch.linalg.lstsq(design, y).solution.flatten()
    got = torch.cat([model.weight.flatten(), model.bias])
    assert torch.allclose(got, exact, atol=2e-2)


def test_seeded_runs_are_reproducible():
    x, y = regression()
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = nn.Linear(3, 1)
        h = fit(model, mse(model), (x, y), config=TrainConfig(steps=50, seed=7, batch_size=32))
        outs.append((model.weight.detach().clone(), h.train_loss))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_early_stopping_restores_the_best_weights():
    x, y = regression(64)
    xv, yv = regression(64, seed=1)
    model = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 1))
    cfg = TrainConfig(steps=3000, lr=3e-3, eval_every=20, patience=5, schedule="constant")
    h = fit(model, mse(model), (x, y), (xv, yv), cfg)
    assert h.stopped_early and h.steps_done < 3000
    with torch.no_grad():
        assert float(mse(model)((xv, yv))) == pytest.approx(h.best_val, rel=1e-5)


def test_nan_loss_stops_with_the_step_named():
    x, y = regression()
    model = nn.Linear(3, 1)
    with pytest.raises(TrainingDivergedError, match=r"at step \d+"):
        fit(model, mse(model), (x, y * 1e30), config=TrainConfig(steps=200, lr=1e6, grad_clip=None))


@pytest.mark.parametrize("steps, said", [(5, "loss is nan at step 1"), (1, "a weight is NaN or inf after step 1")])
def test_a_non_finite_gradient_under_a_finite_loss_stops_unclipped_training(steps: int, said: str) -> None:
    """Unclipped steps skip the gradient-norm check: the non-finite gradient shows in the next loss, and the
    weights are checked after the last step (and before any checkpoint), so it never passes silently."""

    def run(grad_clip: float | None) -> None:
        module = nn.Module()
        module.weight = nn.Parameter(torch.ones(1))

        def loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:  # sqrt at 0: value 0, gradient inf
            return torch.sqrt(module.weight - module.weight.detach()).sum() + 0 * batch[0].sum()

        config = TrainConfig(steps=steps, batch_size=8, grad_clip=grad_clip, progress=False)
        fit(module, loss, (torch.zeros(8, 1),), config=config)

    with pytest.raises(TrainingDivergedError, match=said):
        run(None)
    with pytest.raises(TrainingDivergedError, match="gradient norm is inf at step 0"):  # clipped: at the step itself
        run(1.0)


def test_schedule_warmup_and_cosine_decay():
    x, y = regression(32)
    model = nn.Linear(3, 1)
    seen = []
    cfg = TrainConfig(steps=20, lr=1.0, warmup_steps=5, batch_size=32)

    def loss(b):
        seen.append(opt_lr(model))
        return mse(model)(b)

    def opt_lr(_):
        import gc

        for obj in gc.get_objects():
            if isinstance(obj, torch.optim.Optimizer) and obj.param_groups[0]["params"][0] is model.weight:
                return obj.param_groups[0]["lr"]

    fit(model, loss, (x, y), config=cfg)
    assert seen[0] == pytest.approx(0.2) and seen[4] == pytest.approx(1.0)
    assert seen[-1] < 0.05 and all(a >= b for a, b in zip(seen[4:], seen[5:]))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="unknown optimizer 'sgdd'"):
        TrainConfig(optimizer="sgdd")
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig().replace(stepz=3)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        fit(nn.Linear(1, 1).requires_grad_(False), lambda b: b[0].sum(), (torch.randn(4, 1),))


class Interrupt(Exception):
    pass


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    x, y = regression(200)
    xv, yv = regression(50, seed=3)
    ckpt = str(tmp_path / "state.safetensors")

    def run(path=None, crash_at=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
        calls = []

        def loss(b):
            if len(b[0]) != 50:  # count training batches only (the validation set has 50 rows)
                calls.append(1)
                if crash_at is not None and len(calls) > crash_at:
                    raise Interrupt
            return mse(model)(b)

        cfg = TrainConfig(
            steps=60, batch_size=48, eval_every=10, checkpoint_path=path, checkpoint_every=7 if path else 0
        )
        return model, fit(model, loss, (x, y), (xv, yv), cfg)

    full, h_full = run()
    with pytest.raises(Interrupt):
        run(ckpt, crash_at=25)  # dies after step 25; the last checkpoint holds step 21
    resumed, h_res = run(ckpt)
    assert h_res.resumed_from == 21
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert h_res.train_loss == h_full.train_loss and h_res.val_loss == h_full.val_loss


def test_a_budget_in_epochs_is_passes_over_the_training_rows_capped_by_steps():
    """``epochs``: 40 rows at batch 16 are 3 batches an epoch (the last partial one kept), so 4 epochs run 12
    steps, ``steps`` caps the budget, the cosine schedule spans the resolved steps, and bad values are named."""
    x = torch.randn(40, 2)
    model = nn.Linear(2, 1)

    def loss(batch):
        return model(batch[0]).square().mean()

    history = fit(model, loss, (x,), config=TrainConfig(steps=1000, batch_size=16, epochs=4, patience=None))
    assert history.steps_done == 12
    assert fit(model, loss, (x,), config=TrainConfig(steps=5, batch_size=16, epochs=4)).steps_done == 5
    assert TrainConfig(steps=1000, batch_size=128, epochs=40).for_rows(50).steps == 40  # one batch an epoch
    assert TrainConfig(steps=1000, batch_size=128, epochs=40).for_rows(500).steps == 160
    assert TrainConfig(steps=1000, batch_size=128, epochs=40).for_rows(500, world=2).steps == 160
    assert TrainConfig(steps=7).for_rows(500).steps == 7
    resolved = TrainConfig(steps=1000, batch_size=16, epochs=4).for_rows(40)
    factor = _lr_factor(resolved)
    assert factor(0) == 1.0 and factor(12) == pytest.approx(0.0)  # the schedule ends with the budget
    for bad, error in ((0, DataError), (2.5, DTypeError), (True, DTypeError)):
        with pytest.raises(error, match="epochs"):
            TrainConfig(epochs=bad)
