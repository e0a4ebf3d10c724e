"""Triton decode kernels for the 2:4 core on GPU: z_s = S_s u_s for 1-64 tokens, straight from the bytes the
CUTLASS 2:4 kernel reads (kept values + CUTLASS-reordered 4-bit position codes, model_executors/cuda_kernel.py),
so decode and prefill share one copy of the weights and decode reads ~0.56x the bytes of dense.

One launch covers a fused layer (qkv: 3 shards, gate_up: 2): shard s's rows read their own input u_s
(u has shape (shards, tokens, d_in): every shard's B x, made by one batched transform). A program owns
BLOCK_N output rows of one shard, all tokens and 1/SPLIT of the inputs (split-K: a layer with few row tiles
still fills the GPU; the SPLIT partial sums, float32, are added after). Two kernels:
* `sparse24_gemv` (a few tokens): no tensor cores. Each kept value multiplies the input it sits at, gathered
  by its position code: FMAs on the kept values only, and no operand layout conversion.
* `sparse24_decode` (up to 64 tokens): per step it decodes a (BLOCK_N, 4 * BLOCK_G) tile of S in registers
  (each metadata word loaded once for its 4 groups, the kept values as contiguous pairs) and runs one
  tensor-core dot against the matching contiguous rows of u.
cuda_kernel measures, per shape at load time, up to how many tokens each one beats the prefill path.
`unpack24` writes the same tiles out: the prefill path where torch's CUTLASS 2:4 GEMM does not run. Runs on CPU
under TRITON_INTERPRET=1, which is how CI tests it.

History, H200 (2026-12-04), Llama-3-8B gate (14336 x 4096), 1 token, dense 30.5 us: the first dot kernel (four
column phases per step, metadata address math per (row, group), strided value loads) 206 us; this dot kernel
without split-K 80 us; the GEMV without split-K 33 us (scripts/gpu_probe.py, benchmarks/results/gpu-probe*.json).
A GEMV variant that expanded S's tiles with their zeros against contiguous inputs (no gathers, twice the
FMAs) lost to this one on all four Llama-3-8B layer types and was removed.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_TOKENS = 64       # the dot kernel holds the token tile whole in registers
GEMV_MAX_TOKENS = 8   # the GEMV's FMAs grow with the tokens: beyond a few the dots win


@triton.jit
def _shard_of(row0, N, end0, end1):
    """(index, first row, row count) of the shard this row tile belongs to (tiles never straddle shards: BLOCK_N
    divides every shard's rows)."""
    s = (row0 >= end0).to(tl.int32) + (row0 >= end1).to(tl.int32)
    start = tl.where(s == 0, 0, tl.where(s == 1, end0, end1))
    return s, start, tl.where(s == 0, end0, tl.where(s == 1, end1, N)) - start


@triton.jit
def _kept(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """(codes, v0, v1), each (BLOCK_N, BLOCK_G): the 4-bit position codes of the groups g0 .. g0 + BLOCK_G of these
    rows and their two kept values, read from the CUTLASS layout: one 2-byte metadata load per row and 4 groups,
    the kept values as contiguous pairs."""
    # CUTLASS meta reordering (torch.sparse._semi_structured_conversions): row interleave within groups of
    # 32 rows, 2x2 swizzle, then column-major interleaved by 2 -- per shard, whose buffer starts at start*K/16
    local = rows - start
    dst_r = (local // 32) * 32 + (local % 8) * 4 + (local % 32) // 8
    col = g0 // 4 + tl.arange(0, BLOCK_G // 4)  # the int16 meta elements holding these groups' 4-bit codes
    top_right = ((dst_r[:, None] % 2 == 0) & (col[None, :] % 2 == 1)).to(tl.int32)
    bottom_left = ((dst_r[:, None] % 2 == 1) & (col[None, :] % 2 == 0)).to(tl.int32)
    r = dst_r[:, None] + top_right - bottom_left
    c = col[None, :] - top_right + bottom_left
    meta = tl.load(meta_ptr + start * (K // 16) + (c // 2) * m * 2 + r * 2 + c % 2).to(tl.int32) & 0xFFFF
    nibble = tl.arange(0, 4) * 4
    code = tl.reshape((meta[:, :, None] >> nibble[None, None, :]) & 0xF, (BLOCK_N, BLOCK_G))
    pairs = tl.load(values_ptr + rows[:, None] * (K // 2) + g0 * 2 + tl.arange(0, 2 * BLOCK_G)[None, :])
    v0, v1 = tl.split(tl.reshape(pairs, (BLOCK_N, BLOCK_G, 2)))
    return code, v0, v1


@triton.jit
def _dense_tile(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The dense (zeros included) (BLOCK_N, 4 * BLOCK_G) tile of S at inputs 4*g0 .. of these rows, in registers."""
    code, v0, v1 = _kept(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N, BLOCK_G)
    j = tl.arange(0, 4)[None, None, :]  # the input within each group of 4
    tile = tl.where((code & 3)[:, :, None] == j, v0[:, :, None],
                    tl.where((code >> 2)[:, :, None] == j, v1[:, :, None], tl.zeros_like(v0)[:, :, None]))
    return tl.reshape(tile, (BLOCK_N, 4 * BLOCK_G))


@triton.jit
def _store_rows(out_ptr, acc, rows, T, N, BLOCK_T: tl.constexpr, SPLIT: tl.constexpr):
    """acc (BLOCK_N, BLOCK_T) -> out (tokens, N); with split-K into this program's float32 slice of
    out (SPLIT, tokens, N), summed after."""
    toks = tl.arange(0, BLOCK_T)[None, :]
    at = out_ptr + toks * N + rows[:, None]
    if SPLIT == 1:
        tl.store(at, acc.to(out_ptr.dtype.element_ty), mask=toks < T)
    else:
        tl.store(at + tl.program_id(1) * T * N, acc, mask=toks < T)


@triton.jit
def _sparse24_kernel(values_ptr, meta_ptr, u_ptr, out_ptr, T, N, K, end0, end1, BLOCK_N: tl.constexpr,
                     BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, SPLIT: tl.constexpr, DOT_FP32: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_N
    s, start, m = _shard_of(row0, N, end0, end1)
    rows = row0 + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, BLOCK_T)
    tok_ok = toks[None, :] < T
    inputs = tl.arange(0, 4 * BLOCK_G)
    u_base = u_ptr + s * T * K + toks[None, :] * K + inputs[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    groups = K // 4 // SPLIT  # this program's groups of 4 inputs
    for g0 in range(tl.program_id(1) * groups, (tl.program_id(1) + 1) * groups, BLOCK_G):
        w = _dense_tile(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N, BLOCK_G)
        x = tl.load(u_base + g0 * 4, mask=tok_ok, other=0.0)
        if DOT_FP32:  # Triton's CPU interpreter computes bfloat16 tl.dot wrongly (triton 3.x); GPUs never take this
            acc += tl.dot(w.to(tl.float32), x.to(tl.float32))
        else:
            acc += tl.dot(w, x)
    _store_rows(out_ptr, acc, rows, T, N, BLOCK_T, SPLIT)


@triton.jit
def _gemv24_kernel(values_ptr, meta_ptr, u_ptr, out_ptr, T, N, K, end0, end1, BLOCK_N: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, SPLIT: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_N
    s, start, m = _shard_of(row0, N, end0, end1)
    rows = row0 + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, BLOCK_T)[None, None, :]
    u_base = u_ptr + s * T * K + toks * K
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    groups = K // 4 // SPLIT
    for g0 in range(tl.program_id(1) * groups, (tl.program_id(1) + 1) * groups, BLOCK_G):
        code, v0, v1 = _kept(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N, BLOCK_G)
        at = ((g0 + tl.arange(0, BLOCK_G)) * 4)[None, :]
        x0 = tl.load(u_base + (at + (code & 3))[:, :, None], mask=toks < T, other=0.0).to(tl.float32)
        x1 = tl.load(u_base + (at + (code >> 2))[:, :, None], mask=toks < T, other=0.0).to(tl.float32)
        acc += tl.sum(v0[:, :, None].to(tl.float32) * x0 + v1[:, :, None].to(tl.float32) * x1, axis=1)
    _store_rows(out_ptr, acc, rows, T, N, BLOCK_T, SPLIT)


@triton.jit
def _unpack24_kernel(values_ptr, meta_ptr, out_ptr, N, K, end0, end1, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The dense (zeros included) S of a row tile and BLOCK_G groups, from the CUTLASS layout."""
    row0 = tl.program_id(0) * BLOCK_N
    _, start, m = _shard_of(row0, N, end0, end1)
    rows = row0 + tl.arange(0, BLOCK_N)
    g0 = tl.program_id(1) * BLOCK_G
    tile = _dense_tile(values_ptr, meta_ptr, rows, start, m, K, g0, BLOCK_N, BLOCK_G)
    tl.store(out_ptr + rows[:, None] * K + g0 * 4 + tl.arange(0, 4 * BLOCK_G)[None, :], tile)


def tile_rows(shard_sizes: list[int]) -> int:
    """The largest row tile (16 or 32) that divides every shard, so no tile straddles two shards."""
    for block in (32, 16):
        if all(size % block == 0 for size in shard_sizes):
            return block
    raise ValueError(f"shard sizes {shard_sizes} are not multiples of 16")


def _tiling(shard_sizes: list[int], n: int, k: int) -> tuple[list[int], int, int]:
    """(the shards' end rows padded to 3, rows per tile, groups of 4 inputs per step) for every 2:4 kernel here."""
    ends = [sum(shard_sizes[: i + 1]) for i in range(len(shard_sizes))] + [n] * (3 - len(shard_sizes))
    return ends, tile_rows(shard_sizes), next(g for g in (64, 32, 16) if (k // 4) % g == 0)


def _check(u: torch.Tensor, values: torch.Tensor, shard_sizes: list[int], max_tokens: int) -> None:
    shards, tokens, _ = u.shape
    if len(shard_sizes) != shards or shards > 3 or sum(shard_sizes) != values.shape[0]:
        raise ValueError(f"shard sizes {shard_sizes} do not match {shards} input shard(s) and {values.shape[0]} rows")
    if tokens > max_tokens:
        raise ValueError(f"this decode kernel takes at most {max_tokens} tokens, got {tokens}")


@functools.cache
def _multiprocessors(device: str) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_k(row_tiles: int, steps: int, k: int, max_inputs: int, device: torch.device) -> int:
    """How many programs share a row tile's inputs (split-K): the fewest that give each program at most
    `max_inputs` inputs and every multiprocessor two programs, at most 8, each with a whole number of steps
    (1 off CUDA). The H200 split-K sweep (benchmarks/results/gpu-probe.json, Llama-3-8B, 1 token for the GEMV,
    16 for the dot kernel, microseconds for split 1/2/4/8): gate (448 row tiles, 4096 inputs) GEMV 36/38/37/38,
    dots 80/75/83/88; down (128 row tiles, 14336 inputs) GEMV 91/54/41/41, dots 112/87/84/81."""
    if device.type != "cuda":
        return 1
    split = 1
    while split < 8 and steps % (2 * split) == 0 and (
            k // split > max_inputs or row_tiles * split < 2 * _multiprocessors(str(device))):
        split *= 2
    return split


def _launch(kernel, u, values, meta, shard_sizes, split, max_inputs, block_t, **consts) -> torch.Tensor:
    """Run one of the decode kernels over every row tile (and split-K slice); (tokens, rows) in u's dtype."""
    _, tokens, k = u.shape
    n = values.shape[0]
    ends, block_n, block_g = _tiling(shard_sizes, n, k)
    split = split or _split_k(n // block_n, k // 4 // block_g, k, max_inputs, u.device)
    if (k // 4) % (split * block_g):
        raise ValueError(f"split-K {split} does not divide the {k // 4 // block_g} steps of {block_g} groups")
    out = u.new_empty(tokens, n) if split == 1 else torch.empty(split, tokens, n, dtype=torch.float32, device=u.device)
    kernel[(n // block_n, split)](values, meta, u.contiguous(), out, tokens, n, k, ends[0], ends[1], BLOCK_N=block_n,
                                  BLOCK_G=block_g, BLOCK_T=block_t, SPLIT=split, **consts)
    return out if split == 1 else out.sum(0).to(u.dtype)


def sparse24_decode(u: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int],
                    split: int | None = None) -> torch.Tensor:
    """(tokens, sum(shard_sizes)): [S_s u_s]_s through tensor-core dots, with u (shards, tokens, d_in) and S in
    the CUTLASS layout (`meta`: every shard's reordered int16 metadata, shard after shard: the layer's uint8
    buffer viewed as int16). `split`: split-K factor (default: `_split_k`)."""
    _check(u, values, shard_sizes, MAX_TOKENS)
    return _launch(_sparse24_kernel, u, values, meta, shard_sizes, split, 2048,
                   max(16, triton.next_power_of_2(u.shape[1])), DOT_FP32=u.device.type == "cpu" and u.dtype == torch.bfloat16)


def sparse24_gemv(u: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int],
                  split: int | None = None) -> torch.Tensor:
    """The same product on CUDA cores, FMAs on the kept values only, for up to GEMV_MAX_TOKENS tokens."""
    _check(u, values, shard_sizes, GEMV_MAX_TOKENS)
    return _launch(_gemv24_kernel, u, values, meta, shard_sizes, split, 4096, triton.next_power_of_2(u.shape[1]))


def unpack24(values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
    """(rows, d_in): the dense (zeros included) S from the CUTLASS layout, every shard's rows, in one launch."""
    n, k = values.shape[0], values.shape[1] * 2
    ends, block_n, block_g = _tiling(shard_sizes, n, k)
    out = torch.empty(n, k, dtype=values.dtype, device=values.device)
    _unpack24_kernel[(n // block_n, k // 4 // block_g)](values, meta, out, n, k, ends[0], ends[1],
                                                         BLOCK_N=block_n, BLOCK_G=block_g)
    return out
