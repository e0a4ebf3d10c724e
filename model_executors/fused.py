"""Forward of a (possibly fused) ARMOR layer: several matrices that read the same input, as vLLM runs them."""
from __future__ import annotations

import torch
from torch import nn

from model_executors import blockdiag


def armor_apply(x: torch.Tensor, a_blocks: torch.Tensor, cores: list[torch.Tensor], b_blocks: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """y = A [S_s (B_s x)]_s + bias for a (possibly fused) ARMOR layer; plain torch ops, so torch.compile traces it."""
    flat = x.reshape(-1, x.shape[-1])
    parts = [nn.functional.linear(blockdiag.apply(b_blocks[s], flat), core) for s, core in enumerate(cores)]
    y = blockdiag.apply(a_blocks, parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], y.shape[-1])
