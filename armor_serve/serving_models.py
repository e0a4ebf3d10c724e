"""GET /v1/models: the one model this server serves, as OpenAI's list with vLLM's extra fields: `root` (the
checkpoint, where clients such as `armor bench serve` find its tokenizer), `parent`, `max_model_len`."""
from __future__ import annotations

from armor_serve.engines import Engine
from armor_serve.serving import ServerConfig


def model_list(config: ServerConfig, engine: Engine) -> dict:
    return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                        "owned_by": "armor-serve", "root": config.root or config.model_name,
                                        "parent": None, "max_model_len": engine.max_model_len}]}
