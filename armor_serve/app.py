"""The OpenAI-compatible HTTP layer (FastAPI): one app, any engine behind armor_serve.engines.Engine."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from armor_serve import __version__
from armor_serve.engines import Engine, Sampling
from armor_serve.metrics import ServerMetrics
from armor_serve.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("armor_serve.server")


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_concurrent: int = 8
    max_queue: int = 32
    retry_after_s: int = 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_body(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Admission:
    """At most `max_concurrent` requests generate; at most `max_queue` wait; the rest get 429."""

    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int):
        self.slots = asyncio.Semaphore(max_concurrent)
        self.max_queue, self.waiting, self.running, self.retry_after_s = max_queue, 0, 0, retry_after_s

    def full(self) -> bool:
        return self.slots.locked() and self.waiting >= self.max_queue

    def busy_error(self) -> ApiError:
        return ApiError(429, f"server busy: {self.running} requests running and {self.waiting} queued; retry later",
                        "rate_limit_error", code="server_busy", headers={"Retry-After": str(self.retry_after_s)})

    async def __aenter__(self):
        if self.full():
            raise self.busy_error()
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        return self

    async def __aexit__(self, *exc):
        self.running -= 1
        self.slots.release()


def create_app(engine: Engine, tokenizer, config: ServerConfig, resident_bytes: int = 0, dense_bytes: int = 0,
               layer_kernels: dict[str, tuple[str, str]] | None = None) -> FastAPI:
    app = FastAPI(title="armor-serve", version=__version__)
    metrics = ServerMetrics(config.model_name, resident_bytes, dense_bytes, layer_kernels=layer_kernels)
    admission = Admission(config.max_concurrent, config.max_queue, config.retry_after_s)
    state = {"ready": False, "load_error": None}
    metrics.running.set_function(lambda: admission.running)
    metrics.waiting.set_function(lambda: admission.waiting)

    async def load():
        try:
            await engine.start()
            state["ready"] = True
            log.info("engine %s ready: %s (context %d tokens)", engine.name, config.model_name, engine.max_model_len)
        except Exception as err:  # reported by /health; the process stays up for inspection
            state["load_error"] = f"{type(err).__name__}: {err}"
            log.exception("engine failed to start")

    @app.on_event("startup")
    async def _startup():
        app.state.loader = asyncio.create_task(load())

    @app.on_event("shutdown")
    async def _shutdown():
        await engine.shutdown()

    @app.middleware("http")
    async def request_id_and_auth(request: Request, call_next):
        rid = request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex[:16]}"
        request.state.request_id = rid
        if config.api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {config.api_key}":
                metrics.requests.labels(config.model_name, request.url.path, "401").inc()
                return JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                               "authentication_error", code="invalid_api_key"),
                                    status_code=401, headers={"x-request-id": rid})
        started = time.monotonic()
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        if request.url.path.startswith("/v1/"):
            log.info("request %s %s %s -> %d in %.3fs", rid, request.method, request.url.path, response.status_code,
                     time.monotonic() - started)
        if request.url.path.startswith("/v1/") and request.method == "POST":
            metrics.requests.labels(config.model_name, request.url.path, str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        log.info("request %s: %d %s", getattr(request.state, "request_id", "-"), err.status, err.message)
        return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                            headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"] if p != "body")
            problems.append(f"{where}: {'unsupported field' if e['type'] == 'extra_forbidden' else e['msg']}")
        param = ".".join(str(p) for p in err.errors()[0]["loc"] if p != "body") if err.errors() else None
        return JSONResponse(error_body("invalid request: " + "; ".join(problems), "invalid_request_error", param),
                            status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("request %s failed", getattr(request.state, "request_id", "-"))
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", "server_error"), status_code=500)

    def require_ready():
        if not state["ready"]:
            raise ApiError(503, state["load_error"] or "model is still loading", "service_unavailable")

    @app.get("/health")
    async def health():
        if not state["ready"]:
            return JSONResponse({"status": "error" if state["load_error"] else "loading", "detail": state["load_error"]},
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
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "armor-serve", "max_model_len": engine.max_model_len}]}

    def check_model(name: str):
        if name != config.model_name:
            raise ApiError(404, f"model '{name}' does not exist; this server serves '{config.model_name}'",
                           param="model", code="model_not_found")

    def sampling_for(req, prompt_len: int, max_tokens: int | None, logprobs: int | None) -> Sampling:
        limit = engine.max_model_len
        if prompt_len >= limit:
            raise ApiError(400, f"the prompt has {prompt_len} tokens but the model's context is {limit} tokens; "
                                f"shorten the prompt", param="messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = limit - prompt_len
        elif prompt_len + max_tokens > limit:
            raise ApiError(400, f"the prompt has {prompt_len} tokens and max_tokens is {max_tokens}: together more "
                                f"than the model's context of {limit} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=req.stop_list(),
                        seed=req.seed, n=req.n, logprobs=logprobs, presence_penalty=req.presence_penalty,
                        frequency_penalty=req.frequency_penalty, ignore_eos=req.ignore_eos)

    async def run(request: Request, prompts: list[list[int]], sampling: Sampling):
        """Async iterator of (prompt index, chunk) over all prompts; metrics and abort-on-disconnect included."""
        rid = request.state.request_id
        started = time.monotonic()
        metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        first = last = None
        out_tokens = 0
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(k, ids):
            try:
                async for chunk in engine.generate(f"{rid}-{k}", ids, sampling):
                    await queue.put((k, chunk))
            finally:
                await queue.put((k, None))

        tasks = [asyncio.create_task(pump(k, ids)) for k, ids in enumerate(prompts)]
        done = 0
        try:
            while done < len(tasks):
                k, chunk = await queue.get()
                if chunk is None:
                    done += 1
                    continue
                now = time.monotonic()
                if chunk.token_ids:
                    if first is None:
                        first = now
                        metrics.ttft.observe(now - started)
                    elif last is not None:
                        metrics.itl.observe(now - last)
                    last = now
                    out_tokens += len(chunk.token_ids)
                    metrics.count_tokens(len(chunk.token_ids))
                yield k, chunk
            for t in tasks:
                t.result()  # surface engine errors
        finally:
            for k, t in enumerate(tasks):
                if not t.done():
                    t.cancel()
                    await engine.abort(f"{rid}-{k}")
            end = time.monotonic()
            metrics.e2e.observe(end - started)
            if first is not None and out_tokens > 1:
                metrics.tpot.observe((end - first) / (out_tokens - 1))

    async def watch_disconnect(request: Request, task: asyncio.Task):
        while not task.done():
            if await request.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(0.25)

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def chat_logprobs(chunk, top: int) -> dict | None:
        if chunk.logprobs is None:
            return None
        content = []
        for tok, lp, alts in chunk.logprobs:
            text = tokenizer.decode([tok])
            best = sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            content.append({"token": text, "logprob": lp, "bytes": list(text.encode()),
                            "top_logprobs": [{"token": tokenizer.decode([t]), "logprob": v,
                                              "bytes": list(tokenizer.decode([t]).encode())} for t, v in best]})
        return {"content": content}

    def completion_logprobs(chunk, top: int) -> dict | None:
        if chunk.logprobs is None:
            return None
        tokens = [tokenizer.decode([t]) for t, _, _ in chunk.logprobs]
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in chunk.logprobs],
                "top_logprobs": [{tokenizer.decode([t]): v for t, v in sorted(a.items(), key=lambda kv: -kv[1])[:top]}
                                 for _, _, a in chunk.logprobs],
                "text_offset": []}

    def merge_logprobs(acc: dict | None, new: dict | None, chat: bool) -> dict | None:
        if new is None:
            return acc
        if acc is None:
            return new
        if chat:
            acc["content"].extend(new["content"])
        else:
            for key in ("tokens", "token_logprobs", "top_logprobs"):
                acc[key].extend(new[key])
        return acc

    async def respond(request: Request, req, prompts: list[list[int]], sampling: Sampling, chat: bool, top: int,
                      echo_texts: list[str] | None):
        rid = request.state.request_id
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        oid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        n = sampling.n
        prompt_tokens = sum(len(p) for p in prompts)
        to_logprobs = chat_logprobs if chat else completion_logprobs

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def events():
                completion_tokens = 0
                async with admission:
                    if chat:
                        for i in range(len(prompts) * n):
                            yield _sse({"id": oid, "object": "chat.completion.chunk", "created": created,
                                        "model": config.model_name, "choices": [
                                            {"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
                    elif echo_texts:
                        for k, text in enumerate(echo_texts):
                            for i in range(n):
                                yield _sse({"id": oid, "object": "text_completion", "created": created,
                                            "model": config.model_name, "choices": [
                                                {"index": k * n + i, "text": text, "logprobs": None,
                                                 "finish_reason": None}]})
                    async for k, chunk in run(request, prompts, sampling):
                        completion_tokens += len(chunk.token_ids)
                        index = k * n + chunk.index
                        lp = to_logprobs(chunk, top)
                        if chat:
                            delta = {"content": chunk.text} if chunk.text or not chunk.finish_reason else {}
                            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": chunk.finish_reason}
                            yield _sse({"id": oid, "object": "chat.completion.chunk", "created": created,
                                        "model": config.model_name, "choices": [choice]})
                        else:
                            choice = {"index": index, "text": chunk.text, "logprobs": lp, "finish_reason": chunk.finish_reason}
                            yield _sse({"id": oid, "object": "text_completion", "created": created,
                                        "model": config.model_name, "choices": [choice]})
                if include_usage:
                    yield _sse({"id": oid, "object": "chat.completion.chunk" if chat else "text_completion",
                                "created": created, "model": config.model_name, "choices": [],
                                "usage": usage(prompt_tokens, completion_tokens)})
                yield "data: [DONE]\n\n"

            if admission.full():  # refuse before the 200 and the event stream start
                raise admission.busy_error()
            return StreamingResponse(events(), media_type="text/event-stream", headers={"x-request-id": rid})

        async def collect():
            texts = {}
            finish = {}
            logprobs: dict[int, dict | None] = {}
            completion_tokens = 0
            async with admission:
                async for k, chunk in run(request, prompts, sampling):
                    index = k * n + chunk.index
                    texts[index] = texts.get(index, "") + chunk.text
                    completion_tokens += len(chunk.token_ids)
                    logprobs[index] = merge_logprobs(logprobs.get(index), to_logprobs(chunk, top), chat)
                    if chunk.finish_reason:
                        finish[index] = chunk.finish_reason
            return texts, finish, logprobs, completion_tokens

        task = asyncio.create_task(collect())
        watcher = asyncio.create_task(watch_disconnect(request, task))
        try:
            texts, finish, logprobs, completion_tokens = await task
        except asyncio.CancelledError:
            log.info("request %s: client disconnected, generation aborted", rid)
            return Response(status_code=499)
        finally:
            watcher.cancel()
        choices = []
        for index in range(len(prompts) * n):
            text = texts.get(index, "")
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": logprobs.get(index), "finish_reason": finish.get(index, "stop")})
            else:
                if echo_texts:
                    text = echo_texts[index // n] + text
                choices.append({"index": index, "text": text, "logprobs": logprobs.get(index),
                                "finish_reason": finish.get(index, "stop")})
        return JSONResponse({"id": oid, "object": obj, "created": created, "model": config.model_name,
                             "choices": choices, "usage": usage(prompt_tokens, completion_tokens)},
                            headers={"x-request-id": rid})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        require_ready()
        check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        top = req.top_logprobs or 0
        sampling = sampling_for(req, len(ids), req.max_completion_tokens or req.max_tokens,
                                top if req.logprobs else None)
        return await respond(request, req, [ids], sampling, chat=True, top=top, echo_texts=None)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        require_ready()
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if req.echo and req.logprobs is not None:
            raise ApiError(400, "echo together with logprobs (prompt logprobs) is not supported", param="echo")
        ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        if any(not p for p in ids):
            raise ApiError(400, "prompt must not be empty", param="prompt")
        sampling = sampling_for(req, max(len(p) for p in ids), req.max_tokens or 16, req.logprobs)
        return await respond(request, req, ids, sampling, chat=False, top=req.logprobs or 0,
                             echo_texts=prompts if req.echo else None)

    return app


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
