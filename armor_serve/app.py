"""The OpenAI-compatible HTTP app (FastAPI), any engine behind armor_serve.engines.Engine. This module wires:
the engine's background load, request ids and the API key, errors (api_errors.py), admission (admission.py),
and the routes; each endpoint family lives in its own module (serving_chat.py, serving_completion.py,
serving_models.py) over what they share (serving.py)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from armor_serve import __version__
from armor_serve.admission import Admission
from armor_serve.api_errors import error_body, install_error_handlers
from armor_serve.body_limit import BodyLimit
from armor_serve.engines import Engine
from armor_serve.metrics import ServerMetrics
from armor_serve.protocol import ChatCompletionRequest, CompletionRequest
from armor_serve.serving import EngineStatus, ServerConfig
from armor_serve.serving_chat import OpenAIServingChat
from armor_serve.serving_completion import OpenAIServingCompletion
from armor_serve.serving_models import model_list

__all__ = ["ServerConfig", "create_app"]
log = logging.getLogger("armor_serve.server")


def create_app(engine: Engine, tokenizer, config: ServerConfig, resident_bytes: int = 0, dense_bytes: int = 0,
               layer_kernels: dict[str, tuple[str, str]] | None = None) -> FastAPI:
    app = FastAPI(title="armor-serve", version=__version__)
    metrics = ServerMetrics(config.model_name, resident_bytes, dense_bytes, layer_kernels=layer_kernels)
    admission = Admission(config.max_concurrent, config.max_queue, config.retry_after_s)
    metrics.running.set_function(lambda: admission.running)
    metrics.waiting.set_function(lambda: admission.waiting)
    status = EngineStatus()
    chat = OpenAIServingChat(engine, tokenizer, config, metrics, admission, status)
    completion = OpenAIServingCompletion(engine, tokenizer, config, metrics, admission, status)
    install_error_handlers(app)
    install_request_middleware(app, config, metrics)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)  # outermost: before anything reads the body

    async def load():
        try:
            await engine.start()
            status.ready = True
            log.info("engine %s ready: %s (context %d tokens)", engine.name, config.model_name, engine.max_model_len)
        except Exception as err:  # reported by /health; the process stays up for inspection
            status.load_error = f"{type(err).__name__}: {err}"
            log.exception("engine failed to start")

    @app.on_event("startup")
    async def _startup():
        app.state.loader = asyncio.create_task(load())

    @app.on_event("shutdown")
    async def _shutdown():
        await engine.shutdown()

    @app.get("/health")
    async def health():
        if not status.ready:
            return JSONResponse({"status": "error" if status.load_error else "loading", "detail": status.load_error},
                                status_code=503)
        try:
            await asyncio.wait_for(engine.check_health(), timeout=10)
        except Exception as err:
            return JSONResponse({"status": "error", "detail": str(err)}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": __version__, "engine": engine.name}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return model_list(config, engine)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        return await chat.create(req, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await completion.create(req, request)

    return app


def install_request_middleware(app: FastAPI, config: ServerConfig, metrics: ServerMetrics) -> None:
    """A request id on every response, the API key on /v1 (401 otherwise), an access log line and the
    per-status request counter."""
    @app.middleware("http")
    async def request_id_and_auth(request: Request, call_next):
        rid = request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex[:16]}"
        request.state.request_id = rid
        path = request.url.path
        if config.api_key and path.startswith("/v1"):  # /health and /metrics stay open, as in vLLM
            if request.headers.get("authorization", "") != f"Bearer {config.api_key}":
                metrics.requests.labels(config.model_name, path, "401").inc()
                return JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                               "authentication_error", code="invalid_api_key"),
                                    status_code=401, headers={"x-request-id": rid})
        started = time.monotonic()
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        if path.startswith("/v1/"):
            log.info("request %s %s %s -> %d in %.3fs", rid, request.method, path, response.status_code,
                     time.monotonic() - started)
            if request.method == "POST":
                metrics.requests.labels(config.model_name, path, str(response.status_code)).inc()
        return response
