import pytest
import torch

from model_executors import blockdiag, sparsity


def test_pack_unpack_roundtrip_and_24():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    mask = sparsity.top2_mask(w.abs())
    values, meta = sparsity.pack(w * mask, mask)
    assert values.shape == (16, 32) and meta.shape == (16, 8) and meta.dtype == torch.uint8
    dense = sparsity.unpack(values, meta)
    assert torch.equal(dense, w * mask)
    assert sparsity.is_24(dense)
    sparsity.check_packed(values, meta, "x")


def test_top2_mask_keeps_two_largest_per_group():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0, 0.5, 9.0, 8.0]])
    assert sparsity.top2_mask(scores).tolist() == [[False, True, True, False, False, False, True, True]]


def test_pack_rejects_non_24_mask_and_check_rejects_bad_meta():
    with pytest.raises(ValueError, match="exactly 2"):
        sparsity.pack(torch.ones(2, 8), torch.ones(2, 8, dtype=torch.bool))
    values = torch.ones(2, 4)
    bad_meta = torch.zeros(2, 1, dtype=torch.uint8)  # code 0: both kept positions are 0
    with pytest.raises(ValueError, match="layer.x.*not 2:4"):
        sparsity.check_packed(values, bad_meta, "layer.x")


def test_is_24_detects_three_nonzeros():
    m = torch.zeros(1, 8)
    m[0, :3] = 1
    assert not sparsity.is_24(m)


@pytest.mark.parametrize("n,b", [(3, 4), (2, 32)])
def test_blockdiag_ops_match_dense(n, b):
    torch.manual_seed(1)
    blocks = torch.randn(n, b, b)
    full = blockdiag.dense(blocks)
    m = torch.randn(n * b, 2 * n * b)
    assert torch.allclose(blockdiag.left(blocks, m), full @ m, atol=1e-4)
    m2 = torch.randn(5, n * b)
    assert torch.allclose(blockdiag.right(m2, blocks), m2 @ full, atol=1e-4)
    x = torch.randn(2, 3, n * b)
    assert torch.allclose(blockdiag.apply(blocks, x), x @ full.T, atol=1e-4)
