"""How much each residual-stream channel counts downstream: the output-row weights of o_proj and down_proj.

Both write into the residual stream, and every later layer (and the final norm) reads it through an RMSNorm,
gamma * x / rms(x): an error in channel c reaches each reader scaled by that norm's gamma_c. Some channels are read
by almost no norm. Qwen2.5-Coder-1.5B's "massive activation" channels (609, 1421, 940, 520) have gamma^2 of
1e-6-1e-4 in every norm while the o_proj / down_proj rows writing them have up to 140x the median row's squared
norm, so the plain proxy counts their errors most. SparseGPT fits each row alone, so row weights change nothing
for it; ARMOR's A mixes 32 rows, and with equal weights it lowers the error of those large, unread rows at the
expense of the rows the next layers read (docs/algorithm.md).
"""
from __future__ import annotations

import torch

from compress.errors import UserError
from compress.weights import CheckpointWeights

# The relative weight a channel keeps when no norm reads it: it still moves every reader's rms(x)
FLOOR = 1e-2


def norm_names(n_layers: int) -> list[str]:
    """The residual stream's readers in order: each layer's input and post-attention norms, then the final norm."""
    per_layer = [f"model.layers.{i}.{norm}.weight" for i in range(n_layers)
                 for norm in ("input_layernorm", "post_attention_layernorm")]
    return per_layer + ["model.norm.weight"]


def residual_row_weights(weights: CheckpointWeights, n_layers: int) -> list[dict[str, torch.Tensor]]:
    """Per decoder layer, {"self_attn.o_proj": w, "mlp.down_proj": w}: each residual channel's gamma^2 (over that
    norm's mean gamma^2) averaged over the norms that read the stream after the matrix has added to it, floored at
    FLOOR. down_proj's weights are also those of the decoder layer's output (the block-wise tuning's loss)."""
    names = norm_names(n_layers)
    missing = [n for n in names if n not in weights.weight_map]
    if missing:
        raise UserError(f"--residual-row-weights needs the model's RMSNorm weights, and '{missing[0]}' is not in "
                        f"{weights.model_dir}; run without --residual-row-weights")
    g2 = torch.stack([weights.load(n, strip=False)[n].float().pow(2) for n in names])
    g2 = g2 / g2.mean(1, keepdim=True).clamp_min(1e-30)
    # row k: the mean over readers k..end (o_proj of layer i is read from row 2i + 1 on, down_proj from 2i + 2)
    after = g2.flip(0).cumsum(0).flip(0) / torch.arange(len(g2), 0, -1, dtype=g2.dtype)[:, None]
    after = after.clamp_min(FLOOR)
    return [{"self_attn.o_proj": after[2 * i + 1], "mlp.down_proj": after[2 * i + 2]} for i in range(n_layers)]
