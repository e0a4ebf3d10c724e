"""Tensor-parallel sharding of ARMOR factors (y = A S B x), the rule vLLM's linear layers follow.

Column-parallel (q/k/v, gate/up; output dimension split over ranks): rank r owns output rows
[r p, (r+1) p) with p = d_out / tp. It takes those rows of S (values and metadata), the A blocks that
cover them (needs p % b == 0, so blocks never straddle ranks) and all of B (every rank sees all of x):
    y_r = A_r S_r (B x),    y = concat_r y_r.
Row-parallel (o, down; input dimension split): rank r owns input columns [r q, (r+1) q) with
q = d_in / tp. It takes those columns of S (packed: q/2 values and q/8 metadata bytes per row), the
B blocks that cover them (q % b == 0) and all of A:
    y_r = A S_r (B_r x_r),  y = sum_r y_r   (A is linear, so applying it before the all-reduce is exact).
"""
from __future__ import annotations

import torch


def _split(n: int, tp: int, block: int, what: str) -> int:
    if n % tp or (n // tp) % block:
        raise ValueError(f"{what} {n} cannot be split over {tp} ranks in whole blocks of {block}")
    return n // tp


def column_piece(kind: str, t: torch.Tensor, rank: int, tp: int, block: int) -> torch.Tensor:
    """Rank `rank`'s piece of one ARMOR tensor of a column-parallel layer."""
    if kind == "b_blocks":
        return t
    rows = t.shape[0] * (block if kind == "a_blocks" else 1)
    p = _split(rows, tp, block, "output dimension")
    if kind == "a_blocks":
        return t[rank * p // block : (rank + 1) * p // block]
    return t[rank * p : (rank + 1) * p]


def row_piece(kind: str, t: torch.Tensor, rank: int, tp: int, block: int) -> torch.Tensor:
    """Rank `rank`'s piece of one ARMOR tensor of a row-parallel layer."""
    if kind == "a_blocks":
        return t
    per_col = {"sparse_values": 2, "sparse_meta": 8, "b_blocks": block}[kind]  # input columns per index
    q = _split(t.shape[1 if kind != "b_blocks" else 0] * per_col, tp, max(block, 8), "input dimension")
    lo, hi = rank * q // per_col, (rank + 1) * q // per_col
    return t[lo:hi] if kind == "b_blocks" else t[:, lo:hi]


def column_shard(t: dict[str, torch.Tensor], rank: int, tp: int) -> dict[str, torch.Tensor]:
    block = t["a_blocks"].shape[-1]
    return {k: column_piece(k, v, rank, tp, block) for k, v in t.items()}


def row_shard(t: dict[str, torch.Tensor], rank: int, tp: int) -> dict[str, torch.Tensor]:
    block = t["b_blocks"].shape[-1]
    return {k: row_piece(k, v, rank, tp, block) for k, v in t.items()}
