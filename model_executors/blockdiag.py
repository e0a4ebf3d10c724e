"""Block-diagonal matrices stored as their diagonal blocks, shape (n_blocks, b, b).

No dense (d x d) matrix is ever built: products are batched matmuls on reshaped views.
"""
from __future__ import annotations

import torch


def identity_blocks(dim: int, block: int, dtype=torch.float32, device=None) -> torch.Tensor:
    return torch.eye(block, dtype=dtype, device=device).repeat(dim // block, 1, 1)


def apply(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`M x` for every row vector x of `x` (..., n*b), with M = blockdiag(blocks): returns x @ M^T."""
    n, b, _ = blocks.shape
    xs = x.reshape(-1, n, b).transpose(0, 1)  # (n, T, b)
    out = torch.bmm(xs, blocks.transpose(1, 2))  # (n, T, b)
    return out.transpose(0, 1).reshape(x.shape)


def left(blocks: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """blockdiag(blocks) @ matrix."""
    n, b, _ = blocks.shape
    return torch.bmm(blocks, matrix.reshape(n, b, -1)).reshape(matrix.shape)


def right(matrix: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """matrix @ blockdiag(blocks)."""
    n, b, _ = blocks.shape
    return torch.einsum("rnj,nji->rni", matrix.reshape(matrix.shape[0], n, b), blocks).reshape(matrix.shape)


def dense(blocks: torch.Tensor) -> torch.Tensor:
    """The full matrix; for tests and for folding only."""
    return torch.block_diag(*blocks)
