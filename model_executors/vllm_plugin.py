"""vLLM support: a QuantizationConfig + LinearMethodBase named "armor", registered through the
`vllm.general_plugins` entry point, picked by the checkpoint's quantization_config (no flag needed).

vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj while the checkpoint stores factors per
original matrix. A fused layer keeps, per rank: the rows of every shard's S (concatenated), the A blocks
of every shard (concatenated, still block-diagonal), and one B per shard (each shard reads x through its
own B). Tensor parallelism follows model_executors.sharding.

Kernels, chosen once at load time (`process_weights_after_loading`) and logged once per process:
* CPU: the packed 2:4 kernel (`torch.ops.armor.linear`, one call per fused layer: each shard's rows read that
  shard's B x); its tensors turned into the kernel layout in place (position bitmask or codes, interleaved values, transposed A/B blocks);
* CUDA sm80+, float16/bfloat16: 2:4 sparse tensor cores (model_executors/cuda_kernel.py): the metadata
  permuted in place into CUTLASS's order; one Triton launch per fused layer up to the token count where it
  was measured to beat the prefill path (timed once per shape at load), beyond it CUTLASS's 2:4 GEMM per
  shard on sm8x, S unpacked per call + cuBLAS on sm9x;
* elsewhere (no extension, float16 on CPU, float32 on GPU, a GPU before sm80, shapes CUTLASS cannot take):
  the reference kernel, S held dense-with-zeros per shard, with the reason in the log.
All paths keep exactly the checkpoint's bytes except the reference one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import LinearBase, LinearMethodBase, RowParallelLinear, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from model_executors import format as fmt
from model_executors import cpu_kernel, cuda_kernel, kernel_choice, sharding, sparsity
from model_executors.fused import armor_apply

log = init_logger("vllm.armor")  # under "vllm": vLLM's handlers print it; it has info_once/warning_once
_QKV = {"q": 0, "k": 1, "v": 2}


def register() -> None:
    """Entry point of `vllm.general_plugins`: importing this module registered the classes below."""


@register_quantization_config(fmt.QUANT_METHOD)
class ArmorConfig(QuantizationConfig):
    def __init__(self, block_size: int, modules: list[str]):
        super().__init__()
        self.block_size = block_size
        self.modules = set(modules)

    @classmethod
    def get_name(cls):
        return fmt.QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.float32, torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # the reference path runs anywhere; 2:4 tensor cores need 80 and are picked when present

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ArmorConfig":
        fmt.check_config(config)
        return cls(int(config["block_size"]), list(config["modules"]))

    def get_quant_method(self, layer: nn.Module, prefix: str):
        if not isinstance(layer, LinearBase):
            return None
        parent, _, name = prefix.rpartition(".")
        parts = self.packed_modules_mapping.get(name, [name])
        stored = [f"{parent}.{p}" in self.modules for p in parts]
        if all(stored):
            return ArmorLinearMethod(self, prefix)
        if any(stored):
            raise ValueError(f"{prefix}: only some of {parts} are ARMOR-compressed; vLLM fuses them, so "
                             f"all or none must be")
        return UnquantizedLinearMethod()

class ArmorLinearMethod(LinearMethodBase):
    def __init__(self, config: ArmorConfig, prefix: str):
        self.config, self.prefix = config, prefix

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size,
                       output_size, params_dtype, **extra_weight_attrs):
        b = self.config.block_size
        for size, what in [(s, "output shard") for s in output_partition_sizes] + [(input_size_per_partition, "input")]:
            if size % b or size % 8:
                raise ValueError(f"{self.prefix}: {what} size {size} per rank is not a multiple of the ARMOR "
                                 f"block size {b} (and of 8); use a tensor-parallel size that keeps whole blocks")
        d_out, d_in, n = sum(output_partition_sizes), input_size_per_partition, len(output_partition_sizes)
        shapes = {"sparse_values": ((d_out, d_in // 2), params_dtype),
                  "sparse_meta": ((d_out, d_in // 8), torch.uint8),
                  "a_blocks": ((d_out // b, b, b), params_dtype),
                  "b_blocks": ((n, d_in // b, b, b), params_dtype)}
        for kind, (shape, dtype) in shapes.items():
            # zeros, never torch.empty: a tensor the checkpoint lacks is reported, not read as garbage
            param = nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
            param.weight_loader = self._loader(layer, kind)
            layer.register_parameter(kind, param)
        layer.armor_shard_sizes = list(output_partition_sizes)
        layer.armor_loaded = set()

    def _loader(self, layer, kind: str):
        def load(param, loaded: torch.Tensor, shard_id=None):
            s = 0 if shard_id is None else _QKV.get(shard_id, shard_id)
            name = f"{self.prefix}[{shard_id}].{kind}" if shard_id is not None else f"{self.prefix}.{kind}"
            tp, rank, b = layer.tp_size, layer.tp_rank, self.config.block_size
            if isinstance(layer, RowParallelLinear) and layer.input_is_parallel:
                piece = sharding.row_piece(kind, loaded, rank, tp, b)
                target = param.data[0] if kind == "b_blocks" else param.data
            else:
                if shard_id in ("k", "v"):  # kv heads may be replicated over ranks
                    rank, tp = rank // layer.num_kv_head_replicas, tp // layer.num_kv_head_replicas
                piece = sharding.column_piece(kind, loaded, rank, tp, b)
                sizes = layer.armor_shard_sizes
                off = sum(sizes[:s])
                if kind in ("sparse_values", "sparse_meta"):
                    target = param.data[off : off + sizes[s]]
                elif kind == "a_blocks":
                    target = param.data[off // b : (off + sizes[s]) // b]
                else:
                    target = param.data[s]
            if tuple(piece.shape) != tuple(target.shape) or piece.dtype.is_floating_point != target.dtype.is_floating_point:
                raise ValueError(f"ARMOR tensor {name} has shape {tuple(loaded.shape)} ({loaded.dtype}); "
                                 f"this layer expects a per-rank piece of shape {tuple(target.shape)}")
            target.copy_(piece)
            layer.armor_loaded.add((kind, s))
        return load

    def process_weights_after_loading(self, layer) -> None:
        n = len(layer.armor_shard_sizes)
        missing = [f"{kind}[{s}]" for kind in fmt.TENSORS for s in range(n) if (kind, s) not in layer.armor_loaded]
        if missing:
            raise ValueError(f"{self.prefix}: ARMOR tensors missing from the checkpoint: {', '.join(missing)}")
        sparsity.check_packed(layer.sparse_values.data, layer.sparse_meta.data, self.prefix)
        values, shards = layer.sparse_values.data, layer.armor_shard_sizes
        kernel, why = kernel_choice.choose(values.device, values.dtype, values.shape[1] * 2, shards,
                                           self.config.block_size)
        layer.armor_kernel = kernel
        if kernel == kernel_choice.PACKED:
            log.info_once(f"ARMOR layers run the {why}")
            layer.sparse_values.data = cpu_kernel.to_kernel_layout(values, layer.sparse_meta.data, layer.a_blocks.data,
                                                                   layer.b_blocks.data)
            return
        if kernel == kernel_choice.SPARSE:
            log.info_once(f"ARMOR layers run on {why}")
            cuda_kernel.to_cutlass_layout(layer.sparse_meta.data, shards)
            layer.armor_decode_limits = cuda_kernel.decode_token_limits(values, shards)
            return
        log.warning_once(f"ARMOR layers run the reference kernel (S held dense-with-zeros): {why}")
        # Reference kernel: S dense-with-zeros, one matrix per shard; the packed copies are freed.
        core = sparsity.unpack(values, layer.sparse_meta.data)
        layer.armor_cores = list(core.split(layer.armor_shard_sizes, dim=0))
        layer.sparse_values = nn.Parameter(values.new_empty(0), requires_grad=False)
        layer.sparse_meta = nn.Parameter(layer.sparse_meta.data.new_empty(0), requires_grad=False)

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if layer.armor_kernel == kernel_choice.PACKED:
            return cpu_kernel.linear(x, layer.sparse_values, layer.sparse_meta, layer.a_blocks, layer.b_blocks,
                                     layer.armor_shard_sizes, bias)
        if layer.armor_kernel == kernel_choice.SPARSE:
            return cuda_kernel.linear(x, layer.sparse_values, layer.sparse_meta, layer.a_blocks, layer.b_blocks,
                                      layer.armor_shard_sizes, bias, layer.armor_decode_limits)
        return armor_apply(x, layer.a_blocks, layer.armor_cores, layer.b_blocks, bias)

