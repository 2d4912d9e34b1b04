"""Your own data through one call, ``as_paired_data``: numpy (any real dtype), tensors, TensorDataset, DataLoader,
Dataset, DataFrame; one-line errors for what cannot be fitted; the fit calls take the same things, cast to the
model's dtype up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shared_embed import (
    DataError,
    DTypeError,
    Encoder,
    GaussianHead,
    PairedData,
    ShapeError,
    TrainConfig,
    TransferConfig,
    as_paired_data,
    fit_source,
    fit_target_head,
    fit_variants,
)


def arrays(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy (c (n, 4), x (n, 2)) with x depending on c."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, 4))
    return c, c[:, :2] @ np.array([[1.0, 0.5], [-0.5, 1.0]]) + 0.3 * rng.normal(size=(n, 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_])
def test_numpy_arrays_of_any_real_dtype_become_float32(dtype: type) -> None:
    c, x = arrays()
    data = as_paired_data((c * 3).astype(dtype), (x * 3).astype(dtype))
    assert data.c.dtype == data.x.dtype == torch.float32
    assert data.c.shape == (60, 4) and data.x.shape == (60, 2)
    assert torch.equal(data.c, torch.from_numpy((c * 3).astype(dtype).astype(np.float32)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int16])
def test_tensors_of_any_real_dtype_and_an_explicit_target_dtype(dtype: torch.dtype) -> None:
    c, x = (torch.from_numpy(a * 4).to(dtype) for a in arrays())
    assert as_paired_data(c, x).x.dtype == torch.float32
    data = as_paired_data(c, x, dtype=torch.float64)
    assert data.c.dtype == torch.float64 and torch.equal(data.c, c.to(torch.float64))


def test_datasets_loaders_pairs_and_unconditional_data() -> None:
    c, x = (torch.from_numpy(a) for a in arrays())
    pairs = TensorDataset(c, x)
    for data in (
        as_paired_data(pairs),
        as_paired_data((c, x)),
        as_paired_data(PairedData(c, x)),
        as_paired_data(DataLoader(pairs, batch_size=7)),
    ):
        assert torch.equal(data.c, c.float()) and torch.equal(data.x, x.float())
    shuffled = as_paired_data(DataLoader(pairs, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(0)))
    order = torch.argsort(shuffled.c[:, 0])  # pairs stay pairs when the loader shuffles rows
    assert torch.equal(shuffled.x[order], x.float()[torch.argsort(c[:, 0])])

    class Rows(Dataset):
        def __len__(self) -> int:
            return len(c)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return c[i], x[i]

    assert torch.equal(as_paired_data(Rows()).x, x.float())
    unconditional = as_paired_data(TensorDataset(x))
    assert unconditional.c is None and unconditional.x.shape == (60, 2)
    assert as_paired_data(None, x.numpy()).c is None


def test_dataframes_by_column_name() -> None:
    pd = pytest.importorskip("pandas", reason="the pandas extra: pip install 'gentransfer[pandas]'")
    c, x = arrays()
    frame = pd.DataFrame(np.hstack([c, x]), columns=["a", "b", "c", "d", "y1", "y2"])
    frame["flag"] = frame["a"] > 0  # a bool column is numeric enough
    data = as_paired_data(frame, c_columns=["a", "b", "c", "d", "flag"], x_columns=["y1", "y2"])
    assert data.c.shape == (60, 5) and torch.equal(data.x, torch.from_numpy(x).float())
    assert as_paired_data(frame[["a", "b"]], frame["y1"]).x.shape == (60, 1)  # a Series is one column
    assert as_paired_data(frame, x_columns=["y1"]).c is None
    frame["name"] = "tumour"
    with pytest.raises(DTypeError, match="column 'name' is not numeric"):
        as_paired_data(frame, c_columns=["name"], x_columns=["y1"])
    with pytest.raises(DataError, match=r"x_columns names \['y3'\], not columns"):
        as_paired_data(frame, c_columns=["a"], x_columns=["y3"])
    with pytest.raises(DataError, match=r"column\(s\) \['a'\] are in both"):
        as_paired_data(frame, c_columns=["a"], x_columns=["a"])
    with pytest.raises(DTypeError, match="say which columns are x: x_columns"):
        as_paired_data(frame, c_columns=["a"])
    missing = pd.DataFrame({"c": [1.0, 2.0, None], "x": [1, 2, 3]}, dtype="Float64")
    with pytest.raises(DataError, match=r"data.c has 1 NaN or inf value\(s\) \(first in row 2\)"):
        as_paired_data(missing, c_columns=["c"], x_columns=["x"])


@pytest.mark.parametrize(
    ("c", "x", "error", "words"),
    [
        (
            np.ones((5, 2)),
            np.array([[0.0, np.nan]] * 5),
            DataError,
            r"^data.x has 5 NaN or inf value\(s\) \(first in row 0\)",
        ),
        (np.ones((5, 2)), np.full((5, 1), np.inf), DataError, "NaN or inf"),
        (
            np.full((5, 2), 1e300),
            np.ones((5, 1)),
            DataError,
            r"after the cast to torch.float32 \(values beyond its range\)",
        ),
        (np.ones((5, 2)), np.ones((4, 1)), ShapeError, "^data: c has 5 rows and x has 4"),
        (
            np.ones((5, 2)),
            np.ones(5),
            ShapeError,
            r"data.x must be 2-D.*got shape \(5,\); for one column use .reshape\(-1, 1\)",
        ),
        (
            np.ones((5, 2, 2)),
            np.ones((5, 1)),
            ShapeError,
            r"data.c must be 2-D \(rows, features\), got shape \(5, 2, 2\)$",
        ),
        (np.ones((0, 2)), np.ones((0, 1)), DataError, "data.c has no rows"),
        (np.array([["a", "b"]]), np.ones((1, 1)), DTypeError, "data.c must hold real numbers.*dtype <U1"),
        (np.ones((2, 2)) * 1j, np.ones((2, 1)), DTypeError, "must hold real numbers"),
        (torch.ones(2, 2, dtype=torch.complex64), torch.ones(2, 1), DTypeError, "tensor of dtype torch.complex64"),
        ("c.csv", np.ones((2, 1)), DTypeError, "must be a numeric array, got a string"),
    ],
)
def test_bad_data_gets_one_line_errors(c: object, x: object, error: type, words: str) -> None:
    with pytest.raises(error, match=words) as info:
        as_paired_data(c, x)
    assert "\n" not in str(info.value)


def test_what_is_not_data_is_named_with_the_call_to_use() -> None:
    with pytest.raises(DTypeError, match=r"^source must be \(c, x\) data: as_paired_data\(c, x\).*got dict$"):
        as_paired_data({"c": 1}, name="source")
    with pytest.raises(DTypeError, match="dtype must be a floating torch.dtype"):
        as_paired_data(*arrays(), dtype=torch.int32)
    with pytest.raises(DTypeError, match="select columns of one DataFrame"):
        as_paired_data(*arrays(), x_columns=["y"])
    with pytest.raises(ShapeError, match="must hold \\(c, x\\) or \\(x,\\) per row, got 3 tensors"):
        as_paired_data(TensorDataset(torch.ones(3, 1), torch.ones(3, 1), torch.ones(3, 1)))
    with pytest.raises(DTypeError, match=r"PairedData takes torch tensors; c is a ndarray.*as_paired_data\(c, x\)"):
        PairedData(*arrays())


def test_fit_calls_take_numpy_float64_and_cast_to_the_model_dtype() -> None:
    """float64 numpy pairs used to pass PairedData and fail one step later inside fit_source."""
    source, target = arrays(200, 0), arrays(40, 1)
    config = TrainConfig(steps=20, eval_every=10)
    src = fit_source(Encoder(4, 2), GaussianHead(2, 2), source, config)
    assert src.history.n_train + src.history.n_val == 200
    tgt = fit_target_head(src, GaussianHead(2, 2), TensorDataset(*(torch.from_numpy(a) for a in target)), config)
    assert tgt.history.n_train == 32 and tgt.history.n_val == 8
    logp = tgt.log_prob(as_paired_data(*target).x, as_paired_data(*target).c)
    assert logp.shape == (40,) and bool(torch.isfinite(logp).all())
    as64 = fit_source(Encoder(4, 2).double(), GaussianHead(2, 2).double(), arrays(200, 0), config)
    assert as64.x_scaler.mean.dtype == torch.float64  # a float64 model gets float64 data
    fits = fit_variants(
        lambda k: GaussianHead(2, k),
        source,
        target,
        TransferConfig(source_train=config, target_train=config, val_fraction=0.25),
        variants=("transfer", "direct"),
    )
    assert fits["source"].summary()["rows"] == {"source": {"train": 150, "val": 50}}
    assert fits["transfer"].summary()["rows"] == {"target": {"train": 30, "val": 10}}
    with pytest.raises(ShapeError, match="^target: c has 40 rows and x has 39"):
        fit_target_head(src, GaussianHead(2, 2), (target[0], target[1][:39]))
    with pytest.raises(DataError, match=r"^source.x has 1 NaN"):
        fit_source(Encoder(4, 2), GaussianHead(2, 2), (source[0], np.where(np.arange(200)[:, None] == 3, np.nan, 1.0)))
