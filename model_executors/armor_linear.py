"""`ArmorLinear`: y = A (S (B x)) + bias with A, B block-diagonal and S 2:4 sparse.

Kernels, picked by device (`kernel="auto"`) or by name:
* packed (CPU): `torch.ops.armor.linear` (model_executors/cpu_kernel.py) reads S straight from its packed
  form; the buffers are turned into the kernel layout in place once, at load time (position codes ->
  bitmask, A/B blocks transposed: the same bytes); no dense copy of S is ever held;
* sparse (CUDA): S as a semi-structured sparse tensor (cuSPARSELt/CUTLASS via torch) when torch supports
  the shape and dtype; otherwise the reference path, with the reason logged once;
* reference (any device): S unpacked to dense-with-zeros inside each call (and dropped after it), the
  block-diagonal transforms as batched matmuls; the semantics every other kernel is tested against;
* fold (explicit opt-in): A S B multiplied into one dense weight, held (for hosts where sparsity brings nothing).
`state_dict()` always returns the checkpoint format, whatever the in-memory layout.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from model_executors import blockdiag, cpu_kernel, sparsity

log = logging.getLogger(__name__)
KERNELS = ("auto", "packed", "sparse", "reference", "fold")


class ArmorLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, block_a: int, block_b: int, bias: bool = False,
                 dtype=torch.float32, device=None, kernel: str = "auto"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = kernel  # validated by the setter
        self.register_buffer("sparse_values", torch.zeros(out_features, in_features // 2, dtype=dtype, device=device))
        self.register_buffer("sparse_meta", torch.zeros(out_features, in_features // 8, dtype=torch.uint8, device=device))
        self.register_buffer("a_blocks", torch.zeros(out_features // block_a, block_a, block_a, dtype=dtype, device=device))
        self.register_buffer("b_blocks", torch.zeros(in_features // block_b, block_b, block_b, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        self._kernel_layout = False  # True while the buffers hold the packed kernel's layout (cpu_kernel.py)
        self._device = None  # where the executable form (`_mode`, `_core`, set by the kernel setter) was built

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

    @property
    def kernel(self) -> str:
        return self._kernel

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
        self._kernel = name
        self._mode, self._core = None, None  # (re)prepared on the next call; _core: S for the sparse/fold kernels

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_a={self.a_blocks.shape[-1]}, block_b={self.b_blocks.shape[-1]}, kernel={self.kernel}")

    def checkpoint_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(position codes, A blocks, B blocks) in the checkpoint layout, whatever layout the buffers hold now."""
        if self._kernel_layout:
            return cpu_kernel.checkpoint_layout(self.sparse_meta, self.a_blocks, self.b_blocks)
        return self.sparse_meta, self.a_blocks, self.b_blocks

    def _use_kernel_layout(self, on: bool) -> None:
        if on != self._kernel_layout:
            if on:
                cpu_kernel.to_kernel_layout(self.sparse_meta, self.a_blocks, self.b_blocks)
            else:
                for buf, value in zip((self.sparse_meta, self.a_blocks, self.b_blocks), self.checkpoint_factors()):
                    buf.copy_(value)
            self._kernel_layout = on

    def validate(self, name: str) -> None:
        sparsity.check_packed(self.sparse_values, self.checkpoint_factors()[0], name)

    def dense_core(self) -> torch.Tensor:
        return sparsity.unpack(self.sparse_values, self.checkpoint_factors()[0])

    def dense_weight(self) -> torch.Tensor:
        """A S B as one dense matrix (fold mode, tests)."""
        _, a_blocks, b_blocks = self.checkpoint_factors()
        return blockdiag.right(blockdiag.left(a_blocks, self.dense_core()), b_blocks)

    def packed_bytes(self) -> int:
        bufs = [self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks]
        return sum(t.numel() * t.element_size() for t in bufs) + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * self.sparse_values.element_size()

    def resident_bytes(self) -> int:
        """Bytes this layer holds now: the packed tensors, plus the dense S or A S B the sparse / fold kernels keep."""
        core = self._core
        extra = 0
        if isinstance(core, torch.Tensor) and not core.is_sparse and core.layout == torch.strided:
            extra = core.numel() * core.element_size()
        elif core is not None:  # semi-structured: compressed values + metadata
            extra = sum(t.numel() * t.element_size() for t in (core.packed, core.meta) if t is not None)
        return self.packed_bytes() + extra

    def pick_kernel(self, device: torch.device) -> tuple[str, str]:
        """(kernel, why) that `auto` resolves to on `device`."""
        if self.kernel != "auto":
            return self.kernel, "asked for"
        if device.type == "cuda":
            return "sparse", "CUDA device"
        reason = cpu_kernel.unusable_reason(self.sparse_values, self.a_blocks, self.b_blocks)
        return ("reference", reason) if reason else ("packed", f"{cpu_kernel.isa()} CPU kernel")

    def prepare(self, device: torch.device | None = None) -> None:
        """Build the executable form once (at load time; forward does it on first use otherwise)."""
        device = device or self.sparse_values.device
        mode, why = self.pick_kernel(device)
        if mode == "reference" and self.kernel == "auto":
            log.warning("ArmorLinear %dx%d: reference kernel (S unpacked in every call): %s",
                        self.out_features, self.in_features, why)
        self._core = None
        if mode == "packed":
            reason = cpu_kernel.unusable_reason(self.sparse_values, self.a_blocks, self.b_blocks)
            if reason:
                raise ValueError(f"ArmorLinear {self.out_features}x{self.in_features}: kernel='packed' cannot run: {reason}")
        self._use_kernel_layout(mode == "packed")  # the other kernels read the checkpoint layout
        if mode == "fold":
            self._core = self.dense_weight()
        elif mode == "sparse":
            try:
                self._core = torch.sparse.to_sparse_semi_structured(self.dense_core())
            except (RuntimeError, ValueError) as err:
                log.warning("ArmorLinear %dx%d: semi-structured sparse kernel unavailable (%s); using the "
                            "reference kernel", self.out_features, self.in_features, err)
                mode = "reference"
        self._mode, self._device = mode, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode is None or self._device != x.device:
            self.prepare(x.device)
        if self._mode == "packed":
            return cpu_kernel.linear(x, self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks,
                                     [self.out_features], self.bias)  # kernel layout (prepare)
        if self._mode == "fold":
            return nn.functional.linear(x, self._core, self.bias)
        core = self._core if self._mode == "sparse" else self.dense_core()
        y = blockdiag.apply(self.b_blocks, x)
        y = nn.functional.linear(y, core)
        y = blockdiag.apply(self.a_blocks, y)
        return y + self.bias if self.bias is not None else y

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._kernel_layout:  # always save the checkpoint format
            for name, value in zip(("sparse_meta", "a_blocks", "b_blocks"), self.checkpoint_factors()):
                destination[prefix + name] = value

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel_layout, self._mode, self._core = False, None, None  # the buffers hold the checkpoint layout again

    def _apply(self, fn, recurse=True):
        self._mode, self._core = None, None  # .to()/.cuda()/dtype changes invalidate the executable form
        return super()._apply(fn, recurse)
