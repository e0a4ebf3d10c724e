"""`ArmorLinear`: y = A (S (B x)) + bias with A, B block-diagonal and S 2:4 sparse.

Kernels, picked by device (`kernel="auto"`) or by name:
* packed (CPU): `torch.ops.armor.linear` (model_executors/cpu_kernel.py) reads S straight from its packed
  form; the buffers are turned into the kernel layout in place once, at load time (position codes ->
  bitmask or kept as codes, A/B blocks transposed, values interleaved 4 rows at a time where the path reads
  them so: the same bytes); no dense
  copy of S is ever held;
* sparse (CUDA, sm80+, float16/bfloat16): 2:4 sparse tensor cores (model_executors/cuda_kernel.py): the
  metadata permuted in place once, at load time, into CUTLASS's order (the same bytes); a Triton kernel
  up to a measured token count, CUTLASS's 2:4 GEMM beyond (sm8x; on sm9x S unpacked per call + cuBLAS);
  otherwise the reference path, reason logged;
* reference (any device): S unpacked to dense-with-zeros inside each call (and dropped after it), the
  block-diagonal transforms as batched matmuls; the semantics every other kernel is tested against;
* fold (explicit opt-in): A S B multiplied into one dense weight, held (for hosts where sparsity brings nothing).
`state_dict()` always returns the checkpoint format, whatever the in-memory layout.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from model_executors import blockdiag, cpu_kernel, cuda_kernel, kernel_choice, sparsity

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
        self._layout = "checkpoint"  # or "cpu" / "cuda" while the buffers hold that kernel's layout
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
        self._mode, self._core = None, None  # (re)prepared on the next call; _core: A S B for the fold kernel
        self._decode_limits = list(cuda_kernel.DEFAULT_DECODE_LIMITS)  # sparse kernel: [Triton GEMV, dot] up to

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_a={self.a_blocks.shape[-1]}, block_b={self.b_blocks.shape[-1]}, kernel={self.kernel}")

    def checkpoint_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, position codes, A blocks, B blocks) in the checkpoint layout, whatever layout the buffers
        hold now."""
        if self._layout == "cpu":
            return cpu_kernel.checkpoint_layout(self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks)
        if self._layout == "cuda":
            meta = cuda_kernel.checkpoint_layout(self.sparse_meta, [self.out_features])
            return self.sparse_values, meta, self.a_blocks, self.b_blocks
        return self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks

    def _use_layout(self, layout: str) -> None:
        """Turn the buffers into `layout` ("checkpoint", "cpu" or "cuda"), in place."""
        if layout == self._layout:
            return
        if self._layout != "checkpoint":
            factors = self.checkpoint_factors()
            self.sparse_values = self.sparse_values.view(self.out_features, self.in_features // 2)
            for buf, value in zip((self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks), factors):
                buf.copy_(value)
        if layout == "cpu":
            self.sparse_values = cpu_kernel.to_kernel_layout(self.sparse_values, self.sparse_meta, self.a_blocks,
                                                             self.b_blocks)
        elif layout == "cuda":
            cuda_kernel.to_cutlass_layout(self.sparse_meta, [self.out_features])
        self._layout = layout

    def validate(self, name: str) -> None:
        sparsity.check_packed(*self.checkpoint_factors()[:2], name)

    def dense_core(self) -> torch.Tensor:
        return sparsity.unpack(*self.checkpoint_factors()[:2])

    def dense_weight(self) -> torch.Tensor:
        """A S B as one dense matrix (fold mode, tests)."""
        _, _, a_blocks, b_blocks = self.checkpoint_factors()
        return blockdiag.right(blockdiag.left(a_blocks, self.dense_core()), b_blocks)

    def packed_bytes(self) -> int:
        bufs = [self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks]
        return sum(t.numel() * t.element_size() for t in bufs) + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * self.sparse_values.element_size()

    def resident_bytes(self) -> int:
        """Bytes this layer holds now: the packed tensors, plus the dense A S B the fold kernel keeps."""
        core = self._core
        return self.packed_bytes() + (core.numel() * core.element_size() if core is not None else 0)

    def pick_kernel(self, device: torch.device) -> tuple[str, str]:
        """(kernel, why) for `device`: what `auto` resolves to, or the kernel asked for by name (refused with
        a ValueError when it cannot run there)."""
        block = max(self.a_blocks.shape[-1], self.b_blocks.shape[-1])
        fits, why = kernel_choice.choose(device, self.sparse_values.dtype, self.in_features, [self.out_features], block)
        if self.kernel == "auto":
            return fits, why
        if self.kernel in (kernel_choice.PACKED, kernel_choice.SPARSE) and fits != self.kernel:
            raise ValueError(f"ArmorLinear {self.out_features}x{self.in_features}: kernel={self.kernel!r} cannot run "
                             f"on {device}: {why if fits == kernel_choice.REFERENCE else 'that takes ' + fits}")
        return self.kernel, "asked for"

    def prepare(self, device: torch.device | None = None) -> None:
        """Build the executable form once (at load time; forward does it on first use otherwise)."""
        device = device or self.sparse_values.device
        mode, why = self.pick_kernel(device)
        if mode == kernel_choice.REFERENCE and self.kernel == "auto":
            log.warning("ArmorLinear %dx%d: reference kernel (S unpacked in every call): %s",
                        self.out_features, self.in_features, why)
        self._core = None
        self._use_layout({"packed": "cpu", "sparse": "cuda"}.get(mode, "checkpoint"))
        if mode == "fold":
            self._core = self.dense_weight()
        elif mode == "sparse":
            self._decode_limits = cuda_kernel.decode_token_limits(self.sparse_values, [self.out_features])
        self._mode, self._device = mode, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode is None or self._device != x.device:
            self.prepare(x.device)
        if self._mode == "packed":
            return cpu_kernel.linear(x, self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks,
                                     [self.out_features], self.bias)  # kernel layout (prepare)
        if self._mode == "sparse":
            return cuda_kernel.linear(x, self.sparse_values, self.sparse_meta, self.a_blocks, self.b_blocks,
                                      [self.out_features], self.bias, self._decode_limits)  # CUTLASS layout (prepare)
        if self._mode == "fold":
            return nn.functional.linear(x, self._core, self.bias)
        y = blockdiag.apply(self.b_blocks, x)
        y = nn.functional.linear(y, self.dense_core())
        y = blockdiag.apply(self.a_blocks, y)
        return y + self.bias if self.bias is not None else y

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._layout != "checkpoint":  # always save the checkpoint format
            for name, value in zip(("sparse_values", "sparse_meta", "a_blocks", "b_blocks"), self.checkpoint_factors()):
                destination[prefix + name] = value

    def _load_from_state_dict(self, *args, **kwargs):
        self.sparse_values = self.sparse_values.view(self.out_features, self.in_features // 2)  # overwritten next
        super()._load_from_state_dict(*args, **kwargs)
        self._layout, self._mode, self._core = "checkpoint", None, None  # the buffers hold the checkpoint layout again

    def _apply(self, fn, recurse=True):
        self._mode, self._core = None, None  # .to()/.cuda()/dtype changes invalidate the executable form
        return super()._apply(fn, recurse)
