"""ARMOR layers on NVIDIA 2:4 sparse tensor cores (sm80+, float16/bfloat16).

    to_cutlass_layout(meta, shard_sizes)                 # once, at load time, in place
    limits = decode_token_limits(values, shard_sizes)    # once per shape, at load time (measured)
    y = cuda_kernel.linear(x, values, meta, a, b, shard_sizes, bias, limits)

y = A [S_s (B_s x)]_s + bias: B as one block-diagonal transform giving every shard's input (one Triton launch,
model_executors/triton_blockdiag.py), then, with limits = [gemv, dot]:
* up to `gemv` tokens the Triton 2:4 GEMV, up to `dot` tokens the Triton tensor-core decode kernel
  (model_executors/triton_decode.py), one launch per fused layer;
* beyond: CUTLASS's 2:4 GEMM (`torch._sparse_semi_structured_mm`), one per shard, tokens padded to 8, on
  sm8x; torch builds it for sm8x only, so on sm9x (Hopper) S is unpacked from the same bytes into a scratch
  buffer for the call (one Triton launch) and multiplied by cuBLAS;
then A as one block-diagonal transform over the concatenated shards (one Triton launch).

Why CUTLASS and not cuSPARSELt: the CUTLASS format *is* the checkpoint's: the kept values are byte-identical
and the metadata holds the same 4-bit position codes (4 to an int16), only permuted into the tensor cores'
order. So the conversion is a permutation of our own bytes, in place, with no dense intermediate, checked on
CPU against torch's reference conversion, and the Triton decode kernel reads the very same buffers: the layer
holds 0.5625x dense bytes plus the A/B blocks. cuSPARSELt's compressed format is opaque, so decode would need
a second copy of S (or no decode kernel at all).
"""
from __future__ import annotations

import functools
import logging

import torch
from torch.sparse._semi_structured_conversions import _calculate_meta_reordering_scatter_offsets

from model_executors import blockdiag, triton_blockdiag

log = logging.getLogger(__name__)

DTYPES = (torch.float16, torch.bfloat16)
ROW_MULTIPLE, COL_MULTIPLE = 32, 64  # CUTLASS 2:4 (16-bit) constraints on the sparse operand, per shard
TOKEN_MULTIPLE = 8                   # ... and on the dense operand's columns (tokens)
DEFAULT_DECODE_LIMITS = [1, 16]      # [GEMV, dot kernel] where they cannot be measured (no CUDA: the interpreter)


def triton_unavailable_reason() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not installed ({err}); `pip install triton`"
    return ""


def unusable_reason(device: torch.device, dtype: torch.dtype, shard_sizes: list[int], in_features: int) -> str:
    """Why the 2:4 tensor-core path cannot run a layer ("" when it can)."""
    if device.type != "cuda":
        return f"2:4 sparse tensor cores need a CUDA device; this layer is on {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (f"2:4 sparse tensor cores need compute capability 8.0 (Ampere) or newer; "
                f"{torch.cuda.get_device_name(device)} is {major}.{minor}")
    if dtype not in DTYPES:
        return f"the 2:4 tensor-core path takes float16 or bfloat16 weights, not {dtype} (serve with --dtype bfloat16)"
    bad = [s for s in shard_sizes if s % ROW_MULTIPLE] + ([in_features] if in_features % COL_MULTIPLE else [])
    if bad:
        return (f"CUTLASS 2:4 needs output rows per shard in multiples of {ROW_MULTIPLE} and inputs in multiples "
                f"of {COL_MULTIPLE}; this layer has outputs {shard_sizes}, input {in_features}")
    return triton_unavailable_reason()


def prefill_path(device) -> str:
    """What runs beyond the decode kernel's token count on this GPU (log lines, benchmark rows)."""
    return "CUTLASS 2:4 GEMM" if has_cutlass_24(str(device)) else "S unpacked per call + cuBLAS (no CUTLASS 2:4 on sm9x)"


def describe(device: torch.device) -> str:
    """The path a usable GPU layer runs, for the kernel choice's log line."""
    return f"2:4 packed on the GPU (Triton decode kernel, {prefill_path(device)} beyond)"


def _offsets(rows: int, in_features: int, device) -> torch.Tensor:
    return _calculate_meta_reordering_scatter_offsets(rows, in_features // 16, torch.int16, device)


def to_cutlass_layout(meta: torch.Tensor, shard_sizes: list[int]) -> None:
    """Checkpoint position codes -> CUTLASS metadata, in place (same bytes, permuted), shard by shard.

    Our uint8 meta holds two 4-bit codes `i0 | i1 << 2` per byte, low nibble first: read as little-endian
    int16 that is CUTLASS's metadata before reordering, four groups per element."""
    rows_start = 0
    for rows in shard_sizes:
        shard = meta[rows_start : rows_start + rows]
        codes = shard.contiguous().view(torch.int16).reshape(-1)
        reordered = torch.empty_like(codes).scatter_(0, _offsets(rows, meta.shape[1] * 8, meta.device), codes)
        shard.view(torch.int16).copy_(reordered.view(rows, -1))
        rows_start += rows


def checkpoint_layout(meta: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
    """CUTLASS metadata -> checkpoint position codes (the inverse of to_cutlass_layout), as a new tensor."""
    out = torch.empty_like(meta)
    rows_start = 0
    for rows in shard_sizes:
        reordered = meta[rows_start : rows_start + rows].contiguous().view(torch.int16).reshape(-1)
        codes = reordered.gather(0, _offsets(rows, meta.shape[1] * 8, meta.device))
        out[rows_start : rows_start + rows].view(torch.int16).copy_(codes.view(rows, -1))
        rows_start += rows
    return out


def _shard_inputs(x2d: torch.Tensor, b_blocks: torch.Tensor, shards: int) -> torch.Tensor:
    """(shards, tokens, d_in): every shard's B_s x in one block-diagonal transform."""
    tokens, d_in = x2d.shape
    b = b_blocks.shape[-1]
    blocks = b_blocks.reshape(shards, d_in // b, b, b)
    if triton_blockdiag.supported(b):
        return block_transform(blocks, x2d)
    return torch.einsum("tnj,snij->stni", x2d.reshape(tokens, d_in // b, b), blocks).reshape(shards, tokens, d_in)


def _cutlass_mm(u: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
    tokens = u.shape[1]
    pad = (-tokens) % TOKEN_MULTIPLE
    if pad:
        u = torch.nn.functional.pad(u, (0, 0, 0, pad))
    parts, start = [], 0
    meta16 = meta.view(torch.int16)
    for s, rows in enumerate(shard_sizes):
        z = torch._sparse_semi_structured_mm(values[start : start + rows], meta16[start : start + rows], u[s].t())
        parts.append(z.t()[:tokens])
        start += rows
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _unpacked_mm(u: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
    """[S_s u_s]_s through a dense GEMM on S unpacked into a scratch buffer for this call only (one Triton
    launch, freed after): the prefill path where torch's CUTLASS 2:4 GEMM does not run (it is built for sm8x)."""
    from model_executors.triton_decode import unpack24

    dense = unpack24(values, meta.view(torch.int16), shard_sizes)
    parts, start = [], 0
    for s, rows in enumerate(shard_sizes):
        parts.append(u[s] @ dense[start : start + rows].t())
        start += rows
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def has_cutlass_24(device: str) -> bool:
    """torch's CUTLASS 2:4 GEMM runs on compute capability 8.x only (Ampere, Ada); Hopper takes the unpacked path."""
    return torch.cuda.get_device_capability(device)[0] == 8


def _prefill_mm(u, values, meta, shard_sizes):
    return (_cutlass_mm if has_cutlass_24(str(u.device)) else _unpacked_mm)(u, values, meta, shard_sizes)


# One opaque op: the choice by token count happens inside it, so torch.compile (vLLM compiles with a dynamic
# token dimension) sees no branch to guard on, and CUDA graphs capture whichever kernel the size picks.
@torch.library.custom_op("armor_cuda::sparse24_mm", mutates_args=())
def sparse_mm(u: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, shard_sizes: list[int],
              limits: list[int]) -> torch.Tensor:
    """[S_s u_s]_s as (tokens, rows): with limits = [gemv, dot], the Triton 2:4 GEMV up to `gemv` tokens, the
    Triton tensor-core decode kernel up to `dot` tokens, the prefill path (CUTLASS 2:4 on sm8x, else unpacked
    + dense GEMM) beyond."""
    from model_executors import triton_decode

    tokens = u.shape[1]
    if tokens <= limits[0]:
        return triton_decode.sparse24_gemv(u, values, meta.view(torch.int16), shard_sizes)
    if tokens <= limits[1]:
        return triton_decode.sparse24_decode(u, values, meta.view(torch.int16), shard_sizes)
    return _prefill_mm(u, values, meta, shard_sizes)


@sparse_mm.register_fake
def _(u, values, meta, shard_sizes, limits):
    return u.new_empty(u.shape[1], values.shape[0])


# The block-diagonal transforms' Triton launch as an opaque op too, so torch.compile never traces the launch.
@torch.library.custom_op("armor_cuda::block_transform", mutates_args=())
def block_transform(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """triton_blockdiag.apply: (tokens, d) for blocks (n, b, b), (shards, tokens, d) for (shards, n, b, b)."""
    return triton_blockdiag.apply(blocks, x)


@block_transform.register_fake
def _(blocks, x):
    return x.new_empty(x.shape if blocks.dim() == 3 else (blocks.shape[0], *x.shape))


def _output_transform(a_blocks: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if triton_blockdiag.supported(a_blocks.shape[-1]):
        return block_transform(a_blocks, z)
    return blockdiag.apply(a_blocks, z)


def linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, a_blocks: torch.Tensor, b_blocks: torch.Tensor,
           shard_sizes: list[int], bias: torch.Tensor | None = None, limits: list[int] | None = None):
    """y = A [S_s (B_s x)]_s + bias on tensors in the CUTLASS layout (`to_cutlass_layout`)."""
    flat = x.reshape(-1, x.shape[-1])
    u = _shard_inputs(flat, b_blocks, len(shard_sizes))
    y = _output_transform(a_blocks, sparse_mm(u, values, meta, shard_sizes, limits or DEFAULT_DECODE_LIMITS))
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _time_ms(fn) -> float:
    """GPU time of one call, from CUDA-graph replays: served decode steps are replayed graphs, and timing eager
    calls would time Python's launch overhead instead (tens of microseconds, as long as a decode GEMV)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=10, return_mode="median")


@functools.cache
def _measured_limits(rows: tuple[int, ...], d_in: int, dtype: torch.dtype, device: str) -> tuple[int, int]:
    """[gemv, dot]: per power-of-two token count the fastest of the GEMV, the dot kernel and the prefill path;
    each Triton kernel runs up to the last count of the unbroken run, from 1 token, that it (or, for the dot
    kernel, the GEMV) wins."""
    from model_executors import triton_decode

    shards = len(rows)
    values = torch.randn(sum(rows), d_in // 2, dtype=dtype, device=device)
    meta = torch.full((sum(rows), d_in // 8), 0x44, dtype=torch.uint8, device=device)  # positions (0, 1) everywhere
    to_cutlass_layout(meta, list(rows))
    meta16, limits, tokens = meta.view(torch.int16), [0, 0], 1
    while tokens <= triton_decode.MAX_TOKENS:
        u = torch.randn(shards, tokens, d_in, dtype=dtype, device=device)
        ms = {"dot": _time_ms(lambda: triton_decode.sparse24_decode(u, values, meta16, list(rows))),
              "prefill": _time_ms(lambda: _prefill_mm(u, values, meta, list(rows)))}
        if tokens <= triton_decode.GEMV_MAX_TOKENS and limits[0] == limits[1]:  # GEMV only while it has won so far
            ms["gemv"] = _time_ms(lambda: triton_decode.sparse24_gemv(u, values, meta16, list(rows)))
        best = min(ms, key=ms.get)
        if best == "prefill":
            break
        limits = [tokens if best == "gemv" else limits[0], tokens]
        tokens *= 2
    log.info("ARMOR 2:4 layer %s x %d (%s): Triton GEMV up to %d tokens, Triton dot kernel up to %d, %s beyond",
             list(rows), d_in, dtype, limits[0], limits[1], prefill_path(device))
    return tuple(limits)


def decode_token_limits(values: torch.Tensor, shard_sizes: list[int]) -> list[int]:
    """[gemv, dot]: up to how many tokens the Triton GEMV, then the Triton dot kernel, beat the prefill path on
    this shape: timed once per shape and dtype on this GPU, at load time; DEFAULT_DECODE_LIMITS off CUDA."""
    if values.device.type != "cuda":
        return list(DEFAULT_DECODE_LIMITS)
    return list(_measured_limits(tuple(shard_sizes), values.shape[1] * 2, values.dtype, str(values.device)))
