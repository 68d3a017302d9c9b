"""Basis validation and the SVD rowspace/nullspace split (reference/illusion.md §2.3, §3.1)."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.subspace_patching import as_basis, orthonormalize, row_null_split

F64 = torch.float64
V_ILL = torch.tensor([1.0, 1.0, 0.0], dtype=F64) / 2**0.5
E3 = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
W = torch.tensor([[0.0], [2.0], [1.0]], dtype=F64)  # y = (0, 2, 1)·h, as a [d_mlp, n_read] reader


def test_vector_becomes_one_column() -> None:
    assert as_basis(V_ILL).shape == (3, 1)


@pytest.mark.parametrize(
    ("basis", "match"),
    [
        (torch.tensor([1.0, 1.0, 0.0]), "not orthonormal"),
        (torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]) / 2**0.5, "not orthonormal"),
        (torch.tensor([float("nan"), 1.0, 0.0]), "NaN or inf"),
        (torch.zeros(2, 2, 2), "vector \\[d\\] or a matrix"),
        (torch.eye(2)[:, :0], "non-empty"),
        (torch.tensor([1, 0, 0]), "floating-point"),
        ([1.0, 0.0], "torch.Tensor"),
    ],
)
def test_bad_bases_raise(basis, match: str) -> None:
    with pytest.raises(DePassError, match=match):
        as_basis(basis)


def test_wrong_dimension_and_too_many_columns_raise() -> None:
    with pytest.raises(DePassError, match="activation's last dimension is 4"):
        as_basis(V_ILL, d=4)
    with pytest.raises(DePassError, match="need k <= d"):
        as_basis(torch.ones(2, 3))


def test_tolerance_is_the_documented_one() -> None:
    almost = torch.tensor([1.0 + 1e-7, 0.0], dtype=F64)
    assert as_basis(almost).shape == (2, 1)
    with pytest.raises(DePassError, match="atol"):
        as_basis(torch.tensor([1.0 + 1e-3, 0.0], dtype=F64))


@pytest.mark.parametrize(
    ("v", "v_row", "v_null", "row_norm", "null_norm"),
    [
        (V_ILL, (0.0, 0.5657, 0.2828), (0.7071, 0.1414, -0.2828), 0.6325, 0.7746),
        (E3, (0.0, 0.4, 0.2), (0.0, -0.4, 0.8), 0.4472, 0.8944),
    ],
    ids=["v_ill", "e3"],
)
def test_split_matches_the_reference_table(v, v_row, v_null, row_norm, null_norm) -> None:
    split = row_null_split(v, W)
    assert split.rank == 1
    assert torch.allclose(split.v_row[:, 0], torch.tensor(v_row, dtype=F64), atol=1e-4)
    assert torch.allclose(split.v_null[:, 0], torch.tensor(v_null, dtype=F64), atol=1e-4)
    assert split.row_norm == pytest.approx(row_norm, abs=1e-4)
    assert split.null_norm == pytest.approx(null_norm, abs=1e-4)
    # the unit row part of any direction is ±ŵ when the rowspace is 1-D (reference §2.4 item 2)
    w_hat = W[:, 0] / W[:, 0].norm()
    assert abs(float(split.row_basis[:, 0] @ w_hat)) == pytest.approx(1.0, abs=1e-12)


def test_direction_in_the_nullspace_has_an_empty_row_basis() -> None:
    split = row_null_split(torch.tensor([1.0, 0.0, 0.0], dtype=F64), W)
    assert split.row_basis.shape == (3, 0)
    assert split.null_basis.shape == (3, 1)
    assert split.row_norm == 0.0 and split.null_norm == 1.0


def test_k_dimensional_split_norms() -> None:
    v = torch.stack([torch.tensor([1.0, 0.0, 0.0], dtype=F64), E3], dim=1)  # [e1, e3]
    split = row_null_split(v, W)
    # P_row e1 = 0, ‖P_row e3‖ = 1/√5, so ‖P_row V‖_F / √2 = 1/√10
    assert split.row_norm == pytest.approx(10**-0.5, abs=1e-12)
    assert split.row_basis.shape == (3, 1) and split.null_basis.shape == (3, 2)
    assert split.row_norm**2 + split.null_norm**2 == pytest.approx(1.0, abs=1e-12)


def test_svd_rank_on_centered_writing_weights() -> None:
    # center_writing_weights makes each row of W_out sum to 0: rank ≤ d_model − 1 (here 3, not 4).
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=gen, dtype=F64)
    w_out = a - a.mean(dim=1, keepdim=True)
    split = row_null_split(torch.eye(6, dtype=F64)[:, :1], w_out)
    assert split.rank == 3
    assert float(torch.trace(split.row_projector)) == pytest.approx(3.0, abs=1e-9)


def test_orthonormalize_drops_dependent_columns() -> None:
    vecs = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=F64)
    q = orthonormalize(vecs)
    assert q.shape == (3, 2)
    assert torch.allclose(q.T @ q, torch.eye(2, dtype=F64), atol=1e-12)


def test_bad_reader_raises() -> None:
    with pytest.raises(DePassError, match="reader weights must have shape"):
        row_null_split(V_ILL, torch.ones(4, 2, dtype=F64))
