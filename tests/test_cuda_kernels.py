"""GPU-only paths: skipped without CUDA (run them on a lent GPU machine: `pytest tests/test_cuda_kernels.py`)."""
import pytest
import torch

from model_executors import sparsity
from model_executors.armor_linear import ArmorLinear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (2:4 sparse tensor cores)")


@pytest.mark.parametrize("tokens", [1, 32, 2048])
def test_semi_structured_kernel_matches_the_reference(tokens):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 512, generator=g)
    mask = sparsity.top2_mask(w.abs())
    a = torch.eye(64) + 0.05 * torch.randn(16, 64, 64, generator=g)
    b = torch.eye(64) + 0.05 * torch.randn(8, 64, 64, generator=g)
    ref = ArmorLinear.from_factors(a, w * mask, mask, b, dtype=torch.bfloat16, kernel="reference").cuda()
    fast = ArmorLinear.from_factors(a, w * mask, mask, b, dtype=torch.bfloat16, kernel="sparse").cuda()
    x = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(fast(x), ref(x), rtol=2e-2, atol=2e-2)
    assert fast._mode in ("sparse", "reference")  # a refused shape falls back, with its reason logged
