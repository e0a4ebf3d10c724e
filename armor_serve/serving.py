"""What chat and completions share (vLLM's OpenAIServing): readiness, the model check, sampling within the
context, generation with its metrics and abort-on-disconnect, and the response, streamed (SSE) or whole.
serving_chat.py and serving_completion.py say how their requests become prompts and how their choices look."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from armor_serve.admission import Admission, Ticket
from armor_serve.api_errors import ApiError
from armor_serve.engines import Engine, Sampling
from armor_serve.metrics import ServerMetrics

log = logging.getLogger("armor_serve.server")


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_concurrent: int = 8
    max_queue: int = 32
    retry_after_s: int = 1
    root: str | None = None  # the checkpoint directory; /v1/models reports it (clients find the tokenizer there)
    # per-request limits: what one request may ask of the engine (400 beyond them)
    max_n: int = 16
    max_logprobs: int = 20  # vLLM's --max-logprobs default
    max_stop: int = 32
    max_request_bytes: int = 8 * 2**20  # 413 beyond it (a 128k-token prompt is ~0.5 MB of text)


@dataclass
class EngineStatus:
    """Set by the app's background load; /health and every generation route read it."""
    ready: bool = False
    load_error: str | None = None


@dataclass
class Reply:
    """One request's response: its id, prompts (token ids), choices per prompt, logprobs asked for, echo."""
    prompts: list[list[int]]
    n: int
    top: int
    echo: list[str] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class OpenAIServing:
    id_prefix = object_name = chunk_object = ""  # set by each endpoint
    logprob_lists: tuple[str, ...] = ()  # the lists in its logprobs object that grow chunk by chunk

    def __init__(self, engine: Engine, tokenizer, config: ServerConfig, metrics: ServerMetrics, admission: Admission,
                 status: EngineStatus):
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        self.metrics, self.admission, self.status = metrics, admission, status

    # -- what an endpoint supplies --
    def logprobs(self, chunk, top: int) -> dict | None:
        raise NotImplementedError


    def opening_choices(self, reply: Reply) -> list[dict]:
        """Choices streamed before any token (chat: the assistant role; completions: echoed prompts)."""
        return []

    def stream_choice(self, index: int, chunk, logprobs: dict | None) -> dict:
        raise NotImplementedError

    def final_choice(self, index: int, text: str, logprobs: dict | None, finish: str, reply: Reply) -> dict:
        raise NotImplementedError

    # -- shared --
    def merge_logprobs(self, acc: dict | None, new: dict | None) -> dict | None:
        if acc is None or new is None:
            return acc or new
        for key in self.logprob_lists:
            acc[key].extend(new[key])
        return acc

    def check_request(self, req, logprobs: int | None) -> None:
        """The engine is ready, the model is ours, and the request stays within the server's limits."""
        if not self.status.ready:
            raise ApiError(503, self.status.load_error or "model is still loading", "service_unavailable")
        if req.model != self.config.model_name:
            raise ApiError(404, f"model '{req.model}' does not exist; this server serves '{self.config.model_name}'",
                           param="model", code="model_not_found")
        config = self.config
        for param, value, limit, flag in (("n", req.n, config.max_n, "--max-n"),
                                          ("logprobs", logprobs or 0, config.max_logprobs, "--max-logprobs"),
                                          ("stop", len(req.stop_list()), config.max_stop, "--max-stop")):
            if value > limit:
                raise ApiError(400, f"{param} is {value} but this server allows at most {limit} (its {flag})",
                               param=param)

    def sampling_for(self, req, prompt_len: int, max_tokens: int | None, logprobs: int | None,
                     prompt_logprobs: int | None = None) -> Sampling:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise ApiError(400, f"the prompt has {prompt_len} tokens but the model's context is {limit} tokens; "
                                f"shorten the prompt", param="messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = limit - prompt_len
        elif prompt_len + max_tokens > limit:
            raise ApiError(400, f"the prompt has {prompt_len} tokens and max_tokens is {max_tokens}: together more "
                                f"than the model's context of {limit} tokens", param="max_tokens",
                           code="context_length_exceeded")
        sampling = Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                            stop=req.stop_list(), seed=req.seed, n=req.n, logprobs=logprobs,
                            prompt_logprobs=prompt_logprobs, presence_penalty=req.presence_penalty,
                            frequency_penalty=req.frequency_penalty, ignore_eos=req.ignore_eos,
                            repetition_penalty=req.repetition_penalty, top_k=req.top_k, min_p=req.min_p,
                            min_tokens=min(req.min_tokens, max_tokens))
        try:  # refused here, before a stream could start
            self.engine.validate(sampling)
        except ValueError as err:
            raise ApiError(400, f"the {self.engine.name} engine cannot run this request: {err}") from None
        return sampling

    async def generate(self, request: Request, prompts: list[list[int]], sampling: Sampling):
        """Async iterator of (prompt index, chunk) over all prompts; latency metrics; aborts what is left when
        the consumer stops early (a client that went away)."""
        rid, metrics = request.state.request_id, self.metrics
        started = time.monotonic()
        metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        first = last = None
        out_tokens = 0
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(k, ids):
            try:
                async for chunk in self.engine.generate(f"{rid}-{k}", ids, sampling):
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
                if chunk.token_ids:
                    now = time.monotonic()
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
                    await self.engine.abort(f"{rid}-{k}")
            end = time.monotonic()
            metrics.e2e.observe(end - started)
            if first is not None and out_tokens > 1:
                metrics.tpot.observe((end - first) / (out_tokens - 1))

    async def respond(self, request: Request, req, reply: Reply, sampling: Sampling) -> Response:
        ticket = self.admission.ticket()  # 429 now, before a 200 and an event stream start
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            # the background task gives the place back if the client leaves before the stream's body ever runs
            return StreamingResponse(self._events(request, reply, sampling, include_usage, ticket),
                                     media_type="text/event-stream", headers={"x-request-id": request.state.request_id},
                                     background=BackgroundTask(ticket.release))
        return await self._whole(request, reply, sampling, ticket)

    def _sse(self, reply: Reply, choices: list[dict], **extra) -> str:
        payload = {"id": f"{self.id_prefix}-{reply.id}", "object": self.chunk_object, "created": reply.created,
                   "model": self.config.model_name, "choices": choices, **extra}
        return f"data: {json.dumps(payload)}\n\n"

    async def _events(self, request: Request, reply: Reply, sampling: Sampling, include_usage: bool, ticket: Ticket):
        completion_tokens = 0
        try:
            async with ticket:
                # the opening choices (the assistant role, echoed prompts) go out with the first output, as vLLM
                # does: clients such as `vllm bench serve` take the first chunk's arrival as the time to first token
                opening = self.opening_choices(reply)
                async for k, chunk in self.generate(request, reply.prompts, sampling):
                    for choice in opening:
                        yield self._sse(reply, [choice])
                    opening = []
                    completion_tokens += len(chunk.token_ids)
                    choice = self.stream_choice(k * reply.n + chunk.index, chunk, self.logprobs(chunk, reply.top))
                    yield self._sse(reply, [choice])
        except (asyncio.CancelledError, GeneratorExit):  # the client went away, while waiting or generating
            self._aborted(request)
            raise
        if include_usage:
            yield self._sse(reply, [], usage=usage(reply.prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"

    def _aborted(self, request: Request) -> None:
        self.metrics.aborted.inc()
        log.info("request %s: client disconnected, generation aborted", request.state.request_id)

    async def _collect(self, request: Request, reply: Reply, sampling: Sampling, ticket: Ticket):
        texts, finish, logprobs, completion_tokens = {}, {}, {}, 0
        async with ticket:
            async for k, chunk in self.generate(request, reply.prompts, sampling):
                index = k * reply.n + chunk.index
                texts[index] = texts.get(index, "") + chunk.text
                completion_tokens += len(chunk.token_ids)
                logprobs[index] = self.merge_logprobs(logprobs.get(index), self.logprobs(chunk, reply.top))
                if chunk.finish_reason:
                    finish[index] = chunk.finish_reason
        return texts, finish, logprobs, completion_tokens

    async def _whole(self, request: Request, reply: Reply, sampling: Sampling, ticket: Ticket) -> Response:
        rid = request.state.request_id
        task = asyncio.create_task(self._collect(request, reply, sampling, ticket))
        watcher = asyncio.create_task(_cancel_on_disconnect(request, task))
        try:
            texts, finish, logprobs, completion_tokens = await task
        except asyncio.CancelledError:
            self._aborted(request)
            return Response(status_code=499)
        finally:
            watcher.cancel()
            ticket.release()  # already given back, unless the task was cancelled before it ever ran
        choices = [self.final_choice(i, texts.get(i, ""), logprobs.get(i), finish.get(i, "stop"), reply)
                   for i in range(len(reply.prompts) * reply.n)]
        return JSONResponse({"id": f"{self.id_prefix}-{reply.id}", "object": self.object_name, "created": reply.created,
                             "model": self.config.model_name, "choices": choices,
                             "usage": usage(reply.prompt_tokens, completion_tokens)}, headers={"x-request-id": rid})


async def _cancel_on_disconnect(request: Request, task: asyncio.Task) -> None:
    while not task.done():
        if await request.is_disconnected():
            task.cancel()
            return
        await asyncio.sleep(0.25)
