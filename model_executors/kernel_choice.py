"""Which kernel runs an ARMOR layer: one decision, shared by `ArmorLinear`, the vLLM linear method and the
server's /metrics (which reports it per layer type without seeing the engine's layers).

* packed (CPU): the packed 2:4 CPU kernel (model_executors/cpu_kernel.py);
* sparse (CUDA sm80+, float16/bfloat16): 2:4 sparse tensor cores (model_executors/cuda_kernel.py);
* reference: S unpacked to dense-with-zeros, wherever neither can run; the reason says why.
"""
from __future__ import annotations

import torch

from model_executors import cpu_kernel, cuda_kernel

PACKED, SPARSE, REFERENCE = "packed", "sparse", "reference"


def choose(device, dtype: torch.dtype, in_features: int, shard_sizes: list[int], block: int) -> tuple[str, str]:
    """(kernel, why) for a (fused) layer with these per-rank sizes on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        reason = cuda_kernel.unusable_reason(device, dtype, shard_sizes, in_features)
        return (REFERENCE, reason) if reason else (SPARSE, cuda_kernel.describe(device))
    if device.type == "cpu":
        reason = cpu_kernel.unusable_reason(dtype, block)
        return (REFERENCE, reason) if reason else (PACKED, f"packed 2:4 CPU kernel ({cpu_kernel.isa()} path)")
    return REFERENCE, f"no 2:4 kernel for {device.type} devices"
