"""`armor serve`: load a checkpoint into an engine and run the OpenAI-compatible app under uvicorn.

SIGTERM/SIGINT: uvicorn stops accepting connections, waits up to --drain-timeout seconds for in-flight
requests, then the app shuts the engine down and the process exits 0.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

from compress.errors import UserError


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), "level": record.levelname,
                   "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def serve(args) -> None:
    import uvicorn
    from transformers import AutoTokenizer

    from armor_serve.app import ServerConfig, create_app
    from armor_serve.engines import create_engine, default_engine
    from armor_serve.metrics import checkpoint_weight_bytes, layer_kernels
    from compress.model_import import require_checkpoint

    model_dir = require_checkpoint(args.model)
    configure_logging(args.log_format, args.verbose)
    engine_kind = args.engine or default_engine()
    if engine_kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError("--engine vllm needs vLLM: pip install 'armor-serve[cpu]' (or [cuda]); "
                            "or use --engine transformers") from None
    name = args.served_model_name or model_dir.name
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    import torch

    memory_fraction = args.memory_fraction
    if memory_fraction is None and not torch.cuda.is_available():
        memory_fraction = 0.3  # vLLM's CPU default (0.92 of a NUMA node's RAM) rarely fits beside anything else
    engine = create_engine(engine_kind, str(model_dir), dtype=args.dtype, max_model_len=args.max_model_len,
                           enforce_eager=args.enforce_eager, memory_fraction=memory_fraction, served_name=name)

    # the kernel each ARMOR layer type runs, decided as the engines decide it (model_executors.kernel_choice),
    # and the weight bytes that leaves resident
    from model_executors import cpu_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _weight_dtype(model_dir, args.dtype, engine_kind, device)
    kernels = layer_kernels(model_dir, device, dtype)
    packed = any(kernel == "packed" for kernel, _ in kernels.values())
    resident, dense = checkpoint_weight_bytes(
        model_dir, kernels, scratch_bytes=(lambda d_out, d_in, b: cpu_kernel.scratch_bytes(d_out, d_in, b, dtype)) if packed else None)
    config = ServerConfig(name, args.api_key, args.max_concurrent, args.max_queue, root=str(model_dir),
                          max_n=args.max_n, max_logprobs=args.max_logprobs, max_stop=args.max_stop,
                          max_request_bytes=args.max_request_bytes)
    app = create_app(engine, tokenizer, config, resident, dense, kernels)
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal to the handler that was installed
    # before it; a no-op one there turns "drained and stopped" into exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, timeout_graceful_shutdown=args.drain_timeout,
                access_log=args.verbose)
    logging.getLogger("armor_serve.server").info("stopped")


def _weight_dtype(model_dir, dtype: str, engine_kind: str, device: str):
    """The dtype the engine holds weights in: --dtype, or for "auto" what the engines resolve it to
    (transformers: float32; vLLM: the checkpoint's dtype on GPU, float32 on CPU)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if engine_kind == "vllm" and device == "cuda":
        config = json.loads((model_dir / "config.json").read_text())
        return getattr(torch, config.get("torch_dtype") or config.get("dtype") or "float32")
    return torch.float32


def add_serve_arguments(p) -> None:
    p.add_argument("--model", required=True, help="local checkpoint directory (dense or ARMOR)")
    p.add_argument("--engine", choices=["vllm", "transformers"], help="default: vllm when installed")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    # from the environment too, so the key never shows in the process list (Kubernetes Secret -> env)
    p.add_argument("--api-key", default=os.environ.get("ARMOR_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $ARMOR_API_KEY, else open)")
    p.add_argument("--served-model-name", help="model id clients send (default: the directory name)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--dtype", default="float32", help="float32 (CPU), bfloat16, float16, auto")
    p.add_argument("--max-concurrent", type=int, default=8, help="requests generated at once")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond that; more get 429")
    p.add_argument("--max-n", type=int, default=16, help="most choices (n) one request may ask for")
    p.add_argument("--max-logprobs", type=int, default=20, help="most logprobs / top_logprobs per token (as vLLM's)")
    p.add_argument("--max-stop", type=int, default=32, help="most stop strings per request")
    p.add_argument("--max-request-bytes", type=int, default=8 * 2**20, help="larger request bodies get 413")
    p.add_argument("--drain-timeout", type=int, default=30, help="seconds to finish in-flight requests on SIGTERM")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM: skip torch.compile/CUDA graphs (fast start)")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="vLLM gpu_memory_utilization (on CPU: the fraction of RAM for weights + KV cache; default 0.3 there)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
