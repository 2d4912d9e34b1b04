import pytest
import torch

from shared_embed import DataError, DTypeError, PairedData, ShapeError
from shared_embed.data import iterate_batches


def test_valid_pairs_report_dimensions():
    data = PairedData(torch.randn(10, 16), torch.randn(10, 2))
    assert (len(data), data.d_c, data.d_x, data.conditional) == (10, 16, 2, True)
    assert PairedData(None, torch.randn(3, 2)).tensors()[0].shape == (3, 2)


@pytest.mark.parametrize(
    "c, x, error, words",
    [
        (torch.randn(10, 16), torch.randn(9, 2), ShapeError, "same number of rows"),
        (torch.randn(10), torch.randn(10, 2), ShapeError, "c must have 2 dimension"),
        (torch.randn(10, 16), torch.randn(10, 2, 1), ShapeError, "x must have 2 dimension"),
        (torch.randn(0, 16), torch.randn(0, 2), DataError, "at least 1 row"),
        (torch.randn(4, 3), torch.tensor([[0.0, float("nan")]] * 4), DataError, "NaN or inf"),
        (torch.randn(4, 3), torch.ones(4, 2, dtype=torch.long), DTypeError, "floating-point"),
        ([[1.0]], torch.randn(1, 2), DTypeError, "takes torch tensors.*as_paired_data"),
    ],
)
def test_bad_pairs_get_clear_errors(c, x, error, words):
    with pytest.raises(error, match=words):
        PairedData(c, x)


def test_split_is_disjoint_and_complete(generator):
    data = PairedData(torch.arange(20.0)[:, None], torch.arange(20.0)[:, None])
    train, val = data.split(0.25, generator)
    assert (len(train), len(val)) == (15, 5)
    seen = torch.cat([train.x, val.x]).flatten().sort().values
    assert torch.equal(seen, torch.arange(20.0))
    assert torch.equal(train.c, train.x)  # rows stay paired


def test_split_refuses_too_small_data():
    with pytest.raises(DataError, match="cannot split 1 row"):
        PairedData(None, torch.randn(1, 2)).split(0.5)


def test_batches_cover_each_row_once_per_epoch(generator):
    x = torch.arange(10.0)[:, None]
    rows = torch.cat([b[0] for b in iterate_batches((x,), 3, generator)]).flatten()
    assert sorted(rows.tolist()) == list(range(10))
    assert [b[0].shape[0] for b in iterate_batches((x,), 4, generator)] == [4, 4, 2]


def test_batches_refuse_mismatched_tensors(generator):
    with pytest.raises(ShapeError, match="share their first dimension"):
        next(iterate_batches((torch.randn(4, 1), torch.randn(5, 1)), 2, generator))
