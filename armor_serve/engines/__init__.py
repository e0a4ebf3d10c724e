"""Generation engines behind the HTTP layer: vLLM (production) and transformers (fallback)."""
from __future__ import annotations

from armor_serve.engines.base import Engine, GenerationChunk, Sampling


def create_engine(kind: str, model_dir: str, **options) -> Engine:
    if kind == "vllm":
        from armor_serve.engines.vllm_engine import VllmEngine

        return VllmEngine(model_dir, **options)
    if kind == "transformers":
        from armor_serve.engines.hf_engine import TransformersEngine

        return TransformersEngine(model_dir, **options)
    raise ValueError(f"unknown engine {kind!r}; use vllm or transformers")


def default_engine() -> str:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "transformers"
    return "vllm"


__all__ = ["Engine", "GenerationChunk", "Sampling", "create_engine", "default_engine"]
