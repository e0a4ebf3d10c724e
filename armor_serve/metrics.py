"""Prometheus metrics of the server (prometheus-client). vLLM's own `vllm:` series share the registry."""
from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from safetensors import safe_open

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


_SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I64": 8}


def _layer_type(key: str) -> str:
    return key.rsplit(".", 2)[-2]  # model.layers.3.self_attn.q_proj.sparse_values -> q_proj


# the matrices vLLM runs as one fused layer (one kernel call, so one prefill panel over all of them)
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}


def _fused_layer(key: str) -> str:
    parent, name = key.rsplit(".", 2)[0].rsplit(".", 1)  # model.layers.3.self_attn, q_proj
    return f"{parent}.{_FUSED.get(name, name)}"


def _armor_block_size(model_dir: Path) -> int:
    """The checkpoint's ARMOR block size (0 for a dense checkpoint)."""
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("quantization_config", {}).get("block_size", 0))


def layer_kernels(model_dir: str | Path, device: str, dtype) -> dict[str, tuple[str, str]]:
    """{layer type (q_proj, ...): (kernel, why)} as the engines pick them for `dtype` weights on `device`
    (model_executors.kernel_choice: the same decision, taken from the checkpoint's shapes)."""
    from model_executors import kernel_choice

    model_dir = Path(model_dir)
    block = _armor_block_size(model_dir)
    kernels = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, "pt") as fh:
            for key in fh.keys():
                if key.endswith(".sparse_values") and _layer_type(key) not in kernels:
                    d_out, half = fh.get_slice(key).get_shape()
                    kernels[_layer_type(key)] = kernel_choice.choose(device, dtype, half * 2, [d_out], block)
    return kernels


def checkpoint_weight_bytes(model_dir: str | Path, kernels: dict[str, tuple[str, str]] | None = None,
                            scratch_bytes=None) -> tuple[int, int]:
    """(resident, dense-equivalent) weight bytes of a checkpoint as an engine holds it.

    ARMOR tensors count as stored (values + metadata + blocks: the packed CPU kernel and the 2:4 tensor-core
    path hold exactly that, in their own byte order) except in layers whose kernel (`kernels`, from
    layer_kernels) is the reference one, which holds S dense-with-zeros; plus the largest scratch buffer a
    layer call allocates, `scratch_bytes(d_out, d_in, block)` (the packed CPU kernel's prefill panel, which can
    span a whole fused layer: q/k/v and gate/up as vLLM fuses them; layers run one at a time, so only the
    largest counts). Dense-equivalent counts every ARMOR matrix as d_out x d_in.
    """
    kernels = kernels or {}
    model_dir = Path(model_dir)
    block = _armor_block_size(model_dir)
    resident = dense = 0
    fused_rows: dict[tuple[str, int], int] = {}  # (fused layer, d_in) -> rows, of the layers the kernel runs
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, "pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                shape, size = sl.get_shape(), _SAFETENSORS_DTYPES.get(sl.get_dtype(), 4)
                n = 1
                for d in shape:
                    n *= d
                expanded = key.endswith((".sparse_values", ".sparse_meta")) and \
                    kernels.get(_layer_type(key), ("reference",))[0] == "reference"
                if key.endswith(".sparse_values"):
                    resident += n * size * (2 if expanded else 1)
                    dense += n * 2 * size
                    if not expanded:
                        fused = (_fused_layer(key), shape[1] * 2)
                        fused_rows[fused] = fused_rows.get(fused, 0) + shape[0]
                elif key.endswith(".sparse_meta"):
                    resident += 0 if expanded else n
                elif key.endswith((".a_blocks", ".b_blocks")):
                    resident += n * size
                else:
                    resident += n * size
                    dense += n * size
    scratch = max((scratch_bytes(rows, d_in, block) for (_, d_in), rows in fused_rows.items()), default=0) \
        if scratch_bytes else 0
    return resident + scratch, dense  # a tied lm_head is stored (and held) once, and counted once


def _rss_bytes() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ServerMetrics:
    def __init__(self, model: str, resident_bytes: int, dense_bytes: int, registry=REGISTRY,
                 layer_kernels: dict[str, tuple[str, str]] | None = None):
        label = {"model_name": model}
        self.model = model
        self.requests = Counter("armor_requests", "HTTP requests by endpoint and status", ["model_name", "endpoint", "status"], registry=registry)
        self.prompt_tokens = Counter("armor_prompt_tokens", "Prompt tokens processed", ["model_name"], registry=registry).labels(**label)
        self.generation_tokens = Counter("armor_generation_tokens", "Tokens generated", ["model_name"], registry=registry).labels(**label)
        hist = lambda name, doc: Histogram(name, doc, ["model_name"], buckets=LATENCY, registry=registry).labels(**label)
        self.ttft = hist("armor_time_to_first_token_seconds", "Time from request arrival to its first output token")
        self.itl = hist("armor_inter_token_latency_seconds", "Time between consecutive output tokens")
        self.tpot = hist("armor_time_per_output_token_seconds", "(e2e - ttft) / (output tokens - 1) per request")
        self.e2e = hist("armor_e2e_request_latency_seconds", "Request latency, arrival to last token")
        self.aborted = Counter("armor_requests_aborted", "Requests whose client went away before the end (generation aborted)",
                               ["model_name"], registry=registry).labels(**label)
        self.running = Gauge("armor_requests_running", "Requests being generated", ["model_name"], registry=registry).labels(**label)
        self.waiting = Gauge("armor_requests_waiting", "Requests queued for a generation slot", ["model_name"], registry=registry).labels(**label)
        self._window: deque[tuple[float, int]] = deque()
        tps = Gauge("armor_generation_tokens_per_second", "Generated tokens per second over the last 10 s", ["model_name"], registry=registry)
        tps.labels(**label).set_function(self.tokens_per_second)
        Gauge("armor_weights_resident_bytes", "Model weight bytes held by the engine", ["model_name"], registry=registry).labels(**label).set(resident_bytes)
        Gauge("armor_weights_dense_equivalent_bytes", "Weight bytes of the same model uncompressed", ["model_name"], registry=registry).labels(**label).set(dense_bytes)
        kernel_info = Gauge("armor_layer_kernel_info", "Kernel that runs each ARMOR layer type (1 per type; reason in the log)",
                            ["model_name", "layer", "kernel"], registry=registry)
        for layer, (kernel, _) in sorted((layer_kernels or {}).items()):
            kernel_info.labels(model, layer, kernel).set(1)
        Gauge("armor_process_resident_memory_bytes", "Server process RSS", registry=registry).set_function(_rss_bytes)
        try:
            import torch

            if torch.cuda.is_available():
                for what, fn in (("allocated", torch.cuda.memory_allocated), ("reserved", torch.cuda.memory_reserved),
                                 ("peak", torch.cuda.max_memory_allocated)):
                    Gauge(f"armor_cuda_memory_{what}_bytes", f"CUDA memory {what}", registry=registry).set_function(fn)
        except ImportError:
            pass

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        while self._window and self._window[0][0] < now - window:
            self._window.popleft()
        return sum(n for _, n in self._window) / window

    def count_tokens(self, n: int) -> None:
        if n:
            self.generation_tokens.inc(n)
            self._window.append((time.monotonic(), n))
