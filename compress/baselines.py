"""2:4 pruning baselines. Each returns the pruned dense weight (zeros where pruned), same shape and dtype.

`h` is the diagonal of the calibration Gram matrix, h_j = sum_t x_tj^2; `hessian` the full X^T X.
"""
from __future__ import annotations

import torch

from model_executors.sparsity import GROUP, top2_mask


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every group of 4."""
    return weight * top2_mask(weight.abs())


def wanda(weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2023): score |w_ij| * ||x_j||_2, compared within each group of 4."""
    return weight * top2_mask(weight.abs().float() * h.float().sqrt())


def normalize(weight: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NoWag normalisation: W = diag(r) Wn diag(c), c the column norms of W, r the row norms of W / c."""
    w = weight.float()
    col = w.norm(dim=0).clamp_min(eps)
    row = (w / col).norm(dim=1).clamp_min(eps)
    return w / col / row[:, None], row, col


def nowag_p_mask(weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """NoWag-P (Liu et al. 2025): keep the largest normalised |w|^2 * h_j of every group of 4."""
    wn, _, _ = normalize(weight)
    return top2_mask(wn.pow(2) * h.float())


def nowag_p(weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return weight * nowag_p_mask(weight, h)


def ridge(gram: torch.Tensor, fraction: float) -> torch.Tensor:
    """`gram + fraction * mean(diag gram) * I`: the dampening SparseGPT and ARMOR's full-Gram proxy share."""
    return gram + torch.eye(gram.shape[0], dtype=gram.dtype) * fraction * gram.diagonal().mean()


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, block: int = 128, damp: float = 0.01) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023) with 2:4 groups: OBS pruning with error compensation.

    Columns are processed left to right in blocks; in every group of 4 columns the 2 weights with the
    smallest w^2 / [H^-1]_jj^2 are pruned and their error is spread over the not-yet-processed columns.
    """
    w = weight.clone().float()
    d_out, d_in = w.shape
    h = hessian.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h = ridge(h, damp)
    # Upper Cholesky factor of H^-1: row j holds the OBS update coefficients for column j.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for start in range(0, d_in, block):
        end = min(start + block, d_in)
        w1 = w[:, start:end].clone()
        err = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(end - start):
            if i % GROUP == 0:
                d = torch.diag(hinv1)[i : i + GROUP]
                score = w1[:, i : i + GROUP].pow(2) / d.pow(2)
                mask1[:, i : i + GROUP] = top2_mask(score)
            col = w1[:, i]
            q = torch.where(mask1[:, i], col, torch.zeros_like(col))
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = q
            err[:, i] = e
        w[:, start:end] = w1
        w[:, end:] -= err @ hinv[start:end, end:]
    return w.to(weight.dtype)
