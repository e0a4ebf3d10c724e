"""`ArmorLinear`: y = A (S (B x)) + bias with A, B block-diagonal and S 2:4 sparse.

Kernels, picked by device:
* reference (CPU, or any device): block-diagonal transforms as batched matmuls, S dense-with-zeros;
* cuda: S as a semi-structured sparse tensor (cuSPARSELt/CUTLASS via torch) when torch supports the
  shape and dtype; otherwise the reference path, with the reason logged once;
* fold: A S B multiplied into one dense weight at load time (for hosts where sparsity brings nothing).
The packed checkpoint tensors stay the module's state; the executable form is built lazily.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from model_executors import blockdiag, sparsity

log = logging.getLogger(__name__)
KERNELS = ("auto", "reference", "sparse", "fold")


class ArmorLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, block_a: int, block_b: int, bias: bool = False,
                 dtype=torch.float32, device=None, kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.register_buffer("sparse_values", torch.zeros(out_features, in_features // 2, dtype=dtype, device=device))
        self.register_buffer("sparse_meta", torch.zeros(out_features, in_features // 8, dtype=torch.uint8, device=device))
        self.register_buffer("a_blocks", torch.zeros(out_features // block_a, block_a, block_a, dtype=dtype, device=device))
        self.register_buffer("b_blocks", torch.zeros(in_features // block_b, block_b, block_b, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        self._core = None  # executable form of S, built on first use
        self._mode = None

    @classmethod
    def from_factors(cls, a_blocks, core, mask, b_blocks, bias=None, dtype=None, kernel="auto") -> "ArmorLinear":
        dtype = dtype or a_blocks.dtype
        out_features, in_features = core.shape
        mod = cls(in_features, out_features, a_blocks.shape[-1], b_blocks.shape[-1], bias is not None, dtype, kernel=kernel)
        values, meta = sparsity.pack(core, mask)
        mod.sparse_values.copy_(values.to(dtype))
        mod.sparse_meta.copy_(meta)
        mod.a_blocks.copy_(a_blocks.to(dtype))
        mod.b_blocks.copy_(b_blocks.to(dtype))
        if bias is not None:
            mod.bias.data.copy_(bias.to(dtype))
        return mod

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_a={self.a_blocks.shape[-1]}, block_b={self.b_blocks.shape[-1]}, kernel={self.kernel}")

    def validate(self, name: str) -> None:
        sparsity.check_packed(self.sparse_values, self.sparse_meta, name)

    def dense_core(self) -> torch.Tensor:
        return sparsity.unpack(self.sparse_values, self.sparse_meta)

    def dense_weight(self) -> torch.Tensor:
        """A S B as one dense matrix (fold mode, tests)."""
        return blockdiag.right(blockdiag.left(self.a_blocks, self.dense_core()), self.b_blocks)

    def packed_bytes(self) -> int:
        bufs = [self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks]
        return sum(t.numel() * t.element_size() for t in bufs) + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * self.sparse_values.element_size()

    def _prepare(self, x: torch.Tensor) -> None:
        mode = self.kernel
        if mode == "auto":
            mode = "sparse" if x.is_cuda else "reference"
        if mode == "fold":
            self._core = self.dense_weight()
        elif mode == "sparse":
            try:
                self._core = torch.sparse.to_sparse_semi_structured(self.dense_core())
            except (RuntimeError, ValueError) as err:
                log.warning("ArmorLinear %dx%d: semi-structured sparse kernel unavailable (%s); using the "
                            "reference kernel", self.out_features, self.in_features, err)
                mode, self._core = "reference", self.dense_core()
        else:
            self._core = self.dense_core()
        self._mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._core is None or self._core.device != x.device:
            self._prepare(x)
        if self._mode == "fold":
            return nn.functional.linear(x, self._core, self.bias)
        y = blockdiag.apply(self.b_blocks, x)
        y = nn.functional.linear(y, self._core)
        y = blockdiag.apply(self.a_blocks, y)
        return y + self.bias if self.bias is not None else y

    def _apply(self, fn, recurse=True):
        self._core = None  # .to()/.cuda()/dtype changes invalidate the executable form
        return super()._apply(fn, recurse)
