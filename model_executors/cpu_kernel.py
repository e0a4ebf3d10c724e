"""The packed 2:4 CPU kernel, `torch.ops.armor.linear` (C++ in model_executors/csrc, built by `pip install`).

    to_kernel_layout(meta, a_blocks, b_blocks)        # once, at load time, in place
    y = cpu_kernel.linear(x, values, meta, a_blocks, b_blocks, shard_sizes, bias)
computes y = A [S_s (B_s x)]_s + bias straight from the packed core, for float32 and bfloat16 weights, any
token count. The kernel layout holds the same bytes as the checkpoint: the kept values as stored, a bitmask
of their positions instead of the position codes (a SIMD kernel loads it straight into a lane mask), and the
A/B blocks transposed (each input then scales a contiguous column: no horizontal sums). Fused layers (qkv,
gate_up) pass one B per shard (b_blocks of shape (shards, n, b, b)) and the shards' row counts. The op has a fake (meta) implementation,
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


def to_kernel_layout(meta: torch.Tensor, a_blocks: torch.Tensor, b_blocks: torch.Tensor) -> None:
    """Checkpoint layout -> kernel layout, in place (same shapes and bytes): codes -> bitmask, blocks transposed."""
    meta.copy_(sparsity.codes_to_bitmask(meta))
    for blocks in (a_blocks, b_blocks):
        blocks.copy_(blocks.transpose(-1, -2).contiguous())


def checkpoint_layout(mask: torch.Tensor, a_blocks_t: torch.Tensor, b_blocks_t: torch.Tensor):
    """Kernel layout -> (meta codes, a_blocks, b_blocks) in the checkpoint layout, as new tensors."""
    return (sparsity.bitmask_to_codes(mask), a_blocks_t.transpose(-1, -2).contiguous(),
            b_blocks_t.transpose(-1, -2).contiguous())


def scratch_bytes(d_out: int, d_in: int, block: int, dtype: torch.dtype) -> int:
    """The buffer one call on a (shard of a) d_out x d_in layer allocates besides activations: the prefill
    path's panel of dense S (a 4 MB budget, but at least 512 rows)."""
    esize = torch.empty(0, dtype=dtype).element_size()
    return _C.prefill_scratch_bytes(d_out, d_in, block, esize) if _C else 0


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
        return x.new_empty((*x.shape[:-1], values.shape[0]))
