"""GET /v1/models: the one model this server serves, as OpenAI's list (plus vLLM's max_model_len)."""
from __future__ import annotations

from armor_serve.engines import Engine
from armor_serve.serving import ServerConfig


def model_list(config: ServerConfig, engine: Engine) -> dict:
    return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                        "owned_by": "armor-serve", "max_model_len": engine.max_model_len}]}
