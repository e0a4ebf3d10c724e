"""2:4 semi-structured sparsity: masks, checks, and the compact on-disk layout.

Compact layout (checkpoint format v1): for a 2:4 matrix of shape (d_out, d_in)
* `values` (d_out, d_in / 2): the two kept entries of every group of 4, in column order;
* `meta` uint8 (d_out, d_in / 8): per group a 4-bit code `i0 | i1 << 2` (i0 < i1 the kept positions
  0..3); two groups share one byte, the even group in the low nibble.
That is 0.5 + 1/16 of the dense element count: 0.5625x the dense bytes at 16-bit, the same ratio the
NVIDIA sparse tensor-core format (values + 2-bit indices) needs.
"""
from __future__ import annotations

import torch

GROUP = 4
KEEP = 2


def top2_mask(scores: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping, in every group of 4 consecutive columns, the 2 largest scores."""
    d_out, d_in = scores.shape
    if d_in % GROUP:
        raise ValueError(f"input dimension {d_in} is not a multiple of {GROUP}; 2:4 sparsity needs that")
    grouped = scores.reshape(d_out, d_in // GROUP, GROUP)
    keep = grouped.topk(KEEP, dim=-1).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(d_out, d_in)


def is_24(matrix: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs of every row has at most 2 non-zeros."""
    d_out, d_in = matrix.shape
    if d_in % GROUP:
        return False
    nonzero = (matrix != 0).reshape(d_out, d_in // GROUP, GROUP).sum(-1)
    return bool((nonzero <= KEEP).all())


def pack(core: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) of a 2:4 matrix whose kept positions are `mask` (exactly 2 per group)."""
    d_out, d_in = core.shape
    groups = mask.reshape(d_out, d_in // GROUP, GROUP)
    if not bool((groups.sum(-1) == KEEP).all()):
        raise ValueError("mask must keep exactly 2 of every 4 consecutive inputs")
    # positions of the kept entries, ascending within each group
    idx = torch.arange(GROUP, device=mask.device).expand_as(groups)
    kept = idx[groups].reshape(d_out, d_in // GROUP, KEEP)
    values = core.reshape(d_out, d_in // GROUP, GROUP).gather(-1, kept).reshape(d_out, d_in // 2)
    codes = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.uint8).reshape(d_out, d_in // 8, 2)
    meta = codes[..., 0] | (codes[..., 1] << 4)
    return values.contiguous(), meta.contiguous()


def kept_columns(meta: torch.Tensor) -> torch.Tensor:
    """The input index of every packed value, (d_out, d_in / 2) int64, in the values' order."""
    d_out, groups = meta.shape[0], meta.shape[1] * 2
    codes = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(d_out, groups).long()
    kept = torch.stack([codes & 0x3, codes >> 2], dim=-1)  # (d_out, groups, KEEP): positions inside each group
    return (kept + GROUP * torch.arange(groups, device=meta.device)[:, None]).reshape(d_out, groups * KEEP)


def unpack(values: torch.Tensor, meta: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """The dense (zeros included) matrix of a packed 2:4 core; `columns`: kept_columns(meta) when the caller keeps
    it (differentiable in `values`)."""
    d_out, half = values.shape
    columns = kept_columns(meta) if columns is None else columns
    return values.new_zeros(d_out, half * 2).scatter(1, columns, values)


def check_packed(values: torch.Tensor, meta: torch.Tensor, name: str) -> None:
    """Raise ValueError naming `name` when the packed tensors do not describe a valid 2:4 matrix."""
    if values.dim() != 2 or meta.dim() != 2 or meta.dtype != torch.uint8:
        raise ValueError(f"{name}: expected 2-D values and uint8 meta, got {tuple(values.shape)} / {meta.dtype}")
    d_out, half = values.shape
    if half % 4 or tuple(meta.shape) != (d_out, half // 4):
        raise ValueError(f"{name}: meta shape {tuple(meta.shape)} does not match values {tuple(values.shape)}")
    codes = torch.stack([meta & 0xF, meta >> 4], dim=-1)
    if not bool(((codes & 0x3) < (codes >> 2)).all()):
        raise ValueError(f"{name}: sparse core is not 2:4 (a group's kept positions are not two distinct indices)")


# Kernel layout: the same bytes per group, as a bitmask of the kept positions (bit j of byte k <=> input
# 8k + j kept), so a SIMD kernel loads a row's mask straight into a lane mask. Made once at load time.
_CODE_TO_BITS = torch.tensor([(1 << (c & 3)) | (1 << (c >> 2)) for c in range(16)], dtype=torch.uint8)
_BITS_TO_CODE = torch.zeros(16, dtype=torch.uint8)
for _code in range(16):
    if (_code & 3) < (_code >> 2):
        _BITS_TO_CODE[int(_CODE_TO_BITS[_code])] = _code


def codes_to_bitmask(meta: torch.Tensor) -> torch.Tensor:
    """Checkpoint metadata (4-bit position codes) -> kernel bitmask, same shape and dtype."""
    lut = _CODE_TO_BITS.to(meta.device)
    return lut[(meta & 0xF).long()] | (lut[(meta >> 4).long()] << 4)


def bitmask_to_codes(mask: torch.Tensor) -> torch.Tensor:
    """Kernel bitmask -> checkpoint metadata (the inverse of codes_to_bitmask)."""
    lut = _BITS_TO_CODE.to(mask.device)
    return lut[(mask & 0xF).long()] | (lut[(mask >> 4).long()] << 4)
