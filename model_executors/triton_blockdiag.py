"""The ARMOR layer's block-diagonal transforms on GPU as one Triton launch each, reading and writing the
activations in place: out[s, t, n*b + i] = sum_j x[t, n*b + j] * blocks[s, n, i, j].

B x for every shard of a fused layer (s = shard) and A z (one "shard") are the same product. torch's batched
matmul needs the activations as (blocks, tokens, b), so it copies them into that order and back: on an H200
at 2048 tokens that made the A transform of a Llama-3-8B gate (14336 outputs, b = 128) cost 106 us, 30% of the
dense GEMM, for 7.5 GFLOP. Here a program owns a (tokens, i) tile of one diagonal block and reads the block's
columns of x straight from their rows. Block sizes: powers of two, 16 to 256 (`supported`); others take
blockdiag.apply. Runs on CPU under TRITON_INTERPRET=1, which is how CI tests it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def supported(block: int) -> bool:
    return 16 <= block <= 256 and block & (block - 1) == 0


@triton.jit
def _blockdiag_kernel(x_ptr, blocks_ptr, out_ptr, T, D, x_stride, B: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, DOT_FP32: tl.constexpr):
    pid_t, n, pid_si = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s, i0 = pid_si // (B // BLOCK_I), (pid_si % (B // BLOCK_I)) * BLOCK_I
    toks = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    i = i0 + tl.arange(0, BLOCK_I)
    block = blocks_ptr + (s * (D // B) + n) * B * B
    acc = tl.zeros((BLOCK_T, BLOCK_I), dtype=tl.float32)
    for j0 in tl.static_range(0, B, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        x = tl.load(x_ptr + toks * x_stride + n * B + j[None, :], mask=toks < T, other=0.0)
        w = tl.load(block + i[:, None] * B + j[None, :])  # rows i of the block, contiguous along j
        if DOT_FP32:  # Triton's CPU interpreter computes bfloat16 tl.dot wrongly (triton 3.x); GPUs never take this
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
        else:
            acc += tl.dot(x, tl.trans(w))
    tl.store(out_ptr + s * T * D + toks * D + n * B + i[None, :], acc.to(out_ptr.dtype.element_ty), mask=toks < T)


def apply(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(shards, tokens, d): every shard's blockdiag(blocks[s]) x for x (tokens, d) and blocks
    (shards, d // b, b, b); blocks (d // b, b, b) gives (tokens, d)."""
    shards, (n, b, _) = (1, blocks.shape) if blocks.dim() == 3 else (blocks.shape[0], blocks.shape[1:])
    tokens, d = x.shape
    if not supported(b) or n * b != d:
        raise ValueError(f"blocks {tuple(blocks.shape)} do not fit an input of shape {tuple(x.shape)}")
    x = x if x.stride(1) == 1 else x.contiguous()  # rows may be strided (the kernel takes their stride), not columns
    out = x.new_empty((shards, tokens, d) if blocks.dim() == 4 else (tokens, d))
    block_t = 16 if tokens <= 16 else 64
    block_i = min(b, 32 if tokens <= 16 else 128)  # few tokens: more programs per block, so the GPU fills
    grid = (triton.cdiv(tokens, block_t), n, shards * (b // block_i))
    _blockdiag_kernel[grid](x, blocks.contiguous(), out, tokens, d, x.stride(0), B=b, BLOCK_T=block_t,
                            BLOCK_I=block_i, BLOCK_J=min(b, 64),
                            DOT_FP32=x.device.type == "cpu" and x.dtype == torch.bfloat16)
    return out
