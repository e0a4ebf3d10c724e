"""The packed 2:4 CPU kernel, `torch.ops.armor.linear` (C++ in model_executors/csrc, built by `pip install`).

    values = to_kernel_layout(values, meta, a_blocks, b_blocks)   # once, at load time, in place
    y = cpu_kernel.linear(x, values, meta, a_blocks, b_blocks, shard_sizes, bias)
computes y = A [S_s (B_s x)]_s + bias straight from the packed core, for float32 and bfloat16 weights, any
token count. The kernel layout holds the same bytes as the checkpoint: the kept values (the rows of each group
of 4 interleaved G values at a time where the path reads them so -- 8 on AVX2, 16 for float32 on AVX-512, 32 for
bfloat16 on AVX512-BF16, those two paired (below) -- so a 4-row group streams from DRAM as one sequence:
SmolLM2's one-thread decode step at 1 token 1.29-1.38x -> 1.43-1.48x oneDNN's dense on Zen 1), their positions
as a bitmask (a SIMD kernel loads it straight into a lane mask) or, for float32 on AVX-512 and bfloat16 on
AVX512-BF16, as the checkpoint's own position codes (the kernel turns a row's codes into the lane indices that
permute x onto its kept values), and the A/B blocks transposed (each input then scales a contiguous column: no
horizontal sums). Fused layers (qkv, gate_up) pass one B per shard (b_blocks of shape (shards, n, b, b)) and the
shards' row counts. The op has a fake (meta) implementation,
so torch.compile and vLLM's CPU engine trace it as one node. docs/executors.md describes the kernels.
"""
from __future__ import annotations

import functools
import logging

import torch

from model_executors import sparsity

log = logging.getLogger(__name__)

try:
    from model_executors import _C
except ImportError as err:  # a source tree used without `pip install` (the extension is built there)
    _C, _IMPORT_ERROR = None, err


def available() -> bool:
    return _C is not None


def unavailable_reason() -> str:
    return "" if _C else (f"the ARMOR CPU extension is not built ({_IMPORT_ERROR}); run `pip install "
                          f"--no-build-isolation -e .` (or `make install`) to compile it")


@functools.cache
def isa() -> str:
    """The instruction-set path the kernel runs (avx512_bf16, avx512, avx2 or portable); logged once, a
    warning for portable."""
    name = _C.isa()
    if name == "portable":
        log.warning("ARMOR CPU kernel: this CPU has neither AVX-512 (F/BW/VL) nor AVX2+FMA; running the portable "
                    "(scalar) path, which is slower than dense")
    else:
        log.info("ARMOR CPU kernel: %s path", name)
    return name


PACKED_DTYPES = (torch.float32, torch.bfloat16)


def unusable_reason(dtype: torch.dtype, block: int) -> str:
    """Why the packed kernel cannot run a CPU layer of this dtype and (largest) A/B block size ("" when it can)."""
    if _C is None:
        return unavailable_reason()
    if dtype not in PACKED_DTYPES:
        return f"the packed CPU kernel takes float32 or bfloat16 weights, not {dtype}"
    if block > _C.max_block():
        return f"block size {block} is over the packed CPU kernel's {_C.max_block()}"
    return ""


def kernel_layout(values: torch.Tensor) -> tuple[int, bool]:
    """(G, codes) of the kernel layout the path in use reads for these (d_out, d_in/2) values: rows of each
    group of 4 interleaved G values at a time (0: rows one by one; G where the path interleaves and the shape
    allows), and whether the metadata stays position codes (else a bitmask)."""
    group, codes = _C.kernel_layout(values.dtype == torch.bfloat16)
    if values.shape[0] % 4 or values.shape[1] % max(group, 1):
        group = 0
    return group, codes


def to_kernel_layout(values: torch.Tensor, meta: torch.Tensor, a_blocks: torch.Tensor,
                     b_blocks: torch.Tensor) -> torch.Tensor:
    """Checkpoint layout -> kernel layout of the path in use, in place (same bytes): blocks transposed; codes ->
    bitmask, or (float32 on AVX-512, bfloat16 on AVX512-BF16) codes kept; values interleaved 4 rows x G where
    that path reads them so (codes then interleaved with them, G / 4 bytes = G values at a time). Returns the values as the op takes them:
    `values` itself, or a (d_out/4, d_in/(2G), 4G) view of its storage when interleaved. Make it after
    `use_isa`: the op refuses values interleaved otherwise than the path in use reads them."""
    group, codes = kernel_layout(values)
    if not codes:
        meta.copy_(sparsity.codes_to_bitmask(meta))
    for blocks in (a_blocks, b_blocks):
        blocks.copy_(blocks.transpose(-1, -2).contiguous())
    if not group:
        return values
    d_out, half = values.shape
    blocks = values.view(d_out // 4, 4, half // group, group).transpose(1, 2)  # (row group, chunk, row, value)
    code_blocks = meta.view(d_out // 4, 4, half // group, group // 4).transpose(1, 2) if codes else None
    if group in PAIRED_GROUPS:
        blocks, code_blocks = _pair_rows(blocks, code_blocks)
    values.copy_(blocks.reshape(d_out, half))
    if codes:
        meta.copy_(code_blocks.reshape(d_out, half // 4))
    return values.view(d_out // 4, half // group, 4 * group)


# Values interleaved 16 (float32 on AVX-512) or 32 (bfloat16 on AVX512-BF16) at a time are paired too (the kernel's
# csrc/pairs_avx512.h, generic.h row_values): per chunk of 2G inputs a row group's 4 x G values become [rows 0, 1 |
# rows 2, 3] x [first | second G inputs] x 4 lanes x [row 2p, 2p + 1] x G / 8 kept values (float32: a group of 4
# inputs per lane, bfloat16: two), and its 4 x G / 4 code bytes [rows 0, 1 | 2, 3] x [first | second G inputs] x
# [row 2p, 2p + 1] x G / 8 bytes, so that one 128-bit lane holds a row pair's values for the inputs x's lane holds.
PAIRED_GROUPS = (16, 32)


def _permute_blocks(blocks: torch.Tensor, split: tuple, order: tuple, inverse: bool) -> torch.Tensor:
    """(row group, chunk, 4 rows, k) blocks with their last two dims split as `split` and reordered by `order`
    (or that reordering undone), same shape."""
    if inverse:
        split, order = tuple(split[i] for i in order), tuple(sorted(range(len(order)), key=order.__getitem__))
    n, chunks = blocks.shape[:2]
    return blocks.reshape(n, chunks, *split).permute(0, 1, *(2 + i for i in order)).reshape(blocks.shape)


def _pair_rows(blocks: torch.Tensor, code_blocks: torch.Tensor, inverse: bool = False):
    """(row group, chunk, 4 rows, G values) and (..., 4 rows, G / 4 code bytes) -> the paired order (or back)."""
    unit = blocks.shape[-1] // 8  # a row's values per lane and code bytes per G inputs
    # row = 2p + q, value = (G / 2) h + (G / 8) l + s -> (p, h, l, q, s);
    # row = 2p + q, code byte = (G / 8) h + b -> (p, h, q, b)
    return (_permute_blocks(blocks, (2, 2, 2, 4, unit), (0, 2, 3, 1, 4), inverse),
            _permute_blocks(code_blocks, (2, 2, 2, unit), (0, 2, 1, 3), inverse))


def checkpoint_layout(values: torch.Tensor, mask: torch.Tensor, a_blocks_t: torch.Tensor, b_blocks_t: torch.Tensor):
    """Kernel layout -> (values, meta codes, a_blocks, b_blocks) in the checkpoint layout; the values are
    `values` itself where they were not interleaved, the others new tensors."""
    _, codes = _C.kernel_layout(values.dtype == torch.bfloat16)
    if values.dim() == 3:
        groups, chunks, width = values.shape
        group = width // 4
        blocks = values.view(groups, chunks, 4, group)
        code_blocks = mask.view(groups, chunks, 4, group // 4) if codes else None
        if group in PAIRED_GROUPS:
            blocks, code_blocks = _pair_rows(blocks, code_blocks, inverse=True)
        values = blocks.transpose(1, 2).reshape(4 * groups, group * chunks)
        if codes:
            mask = code_blocks.transpose(1, 2).reshape(mask.shape)
    meta = mask.clone() if codes else sparsity.bitmask_to_codes(mask)
    return (values, meta, a_blocks_t.transpose(-1, -2).contiguous(), b_blocks_t.transpose(-1, -2).contiguous())


def scratch_bytes(d_out: int, d_in: int, block: int, dtype: torch.dtype) -> int:
    """The buffer a call on a (shard of a) d_out x d_in layer needs besides activations, which the calling thread
    keeps from call to call, grown to the largest seen (so a model holds its largest layer's): the prefill path's
    panel of dense S (a 4 MB budget, but at least 512 rows; the whole layer up to 16 MB) or the AVX-512 tiled
    path's span of B x (about 1 MB, at least 256 tokens), where the path in use takes them for this dtype; 0 where
    it takes neither (bfloat16 on AVX2, whose tiled product replaces the prefill path)."""
    esize = torch.empty(0, dtype=dtype).element_size()
    return _C.scratch_bytes(d_out, d_in, block, esize) if _C else 0


def use_isa(name: str) -> None:
    """Pin a path (tests, benchmarks); raises when this CPU cannot run it."""
    _C.use_isa(name)
    isa.cache_clear()


def linear(x: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, a_blocks_t: torch.Tensor,
           b_blocks_t: torch.Tensor, shard_sizes: list[int], bias: torch.Tensor | None = None) -> torch.Tensor:
    """The op on tensors in the kernel layout (`to_kernel_layout`)."""
    return torch.ops.armor.linear(x, values, mask, a_blocks_t, b_blocks_t, shard_sizes, bias)


if _C is not None:
    @torch.library.register_fake("armor::linear")
    def _linear_fake(x, values, mask, a_blocks_t, b_blocks_t, shard_sizes, bias):
        return x.new_empty((*x.shape[:-1], values.shape[0] * (4 if values.dim() == 3 else 1)))
