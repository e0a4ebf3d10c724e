"""The embedded fallback engine: transformers' own `generate`, one sequence at a time.

Measured choice: transformers 5's continuous-batching manager takes one GenerationConfig for all
requests (no per-request temperature/top_p/seed/penalties/stop), so it cannot serve OpenAI requests
faithfully; this engine runs `model.generate` per choice in a worker thread, serialised by a lock, and
streams tokens through a streamer. Use --engine vllm for concurrent throughput.
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

import torch

from armor_serve.engines.base import GenerationChunk, Sampling

_END = object()


class _Penalties:
    """OpenAI presence/frequency penalties on the tokens generated so far (logits processor)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_len:]
        if generated.numel() == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _LogprobRecorder:
    """Keeps the log-distribution of every step (the chosen token is paired with it by the streamer)."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(torch.log_softmax(scores[0].float(), dim=-1))
        return scores


def _entry(dist: torch.Tensor, token: int, top: int) -> tuple[int, float, dict[int, float]]:
    """(token, its logprob, the `top` best alternatives with it) from one position's log-distribution."""
    alts = {}
    if top:
        best = torch.topk(dist, top)
        alts = dict(zip(best.indices.tolist(), best.values.tolist()))
    return token, dist[token].item(), {token: dist[token].item(), **alts}


class _Streamer:
    """transformers streamer that hands generated token ids to an asyncio queue."""

    def __init__(self, loop, queue):
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value):
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, _END)


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_dir: str, dtype: str = "float32", max_model_len: int | None = None,
                 device: str | None = None, **_ignored):
        self.model_dir, self.dtype_name = model_dir, dtype if dtype != "auto" else "float32"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.requested_len = max_model_len
        self.lock = threading.Lock()
        self.aborted: set[str] = set()
        self.model = self.tokenizer = None
        self.max_model_len = max_model_len or 0

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import model_executors  # noqa: F401  ARMOR checkpoints

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, self.dtype_name))
        self.model.to(self.device).eval()
        native = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(self.requested_len or native, native)

    def validate(self, sampling: Sampling) -> None:
        """Every Sampling is one transformers can run (n > 1 with greedy decoding gives n equal choices)."""

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        if sampling.prompt_logprobs is not None:
            prompt_logprobs = await asyncio.to_thread(self._prompt_logprobs, prompt_ids, sampling.prompt_logprobs)
            for index in range(sampling.n):
                yield GenerationChunk(index, "", [], None, None, prompt_logprobs)
        for index in range(sampling.n):
            queue: asyncio.Queue = asyncio.Queue()
            recorder = _LogprobRecorder() if sampling.logprobs is not None else None
            worker = asyncio.ensure_future(asyncio.to_thread(self._run, request_id, prompt_ids, sampling, index,
                                                             _Streamer(loop, queue), recorder))
            tokens: list[int] = []
            emitted = ""
            hold = max((len(s) for s in sampling.stop), default=1) - 1
            finish = None
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    step = len(tokens)
                    tokens.extend(item)
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        self.aborted.add(request_id)  # stop generating: the stop string is there
                    logprobs = None
                    if recorder is not None:
                        logprobs = [_entry(recorder.steps[step + k], tok, sampling.logprobs)
                                    for k, tok in enumerate(item)]
                    ready = text if finish else (text[: len(text) - hold] if hold else text)
                    if ready.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                        ready = ready[:-1]
                    delta = ready[len(emitted):] if ready.startswith(emitted) else ""
                    emitted += delta
                    yield GenerationChunk(index, delta, list(item), logprobs, None)
                    if finish:
                        break
                await worker
                if finish is None:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    finish = "length" if len(tokens) >= sampling.max_tokens else "stop"
                    rest = text[len(emitted):] if text.startswith(emitted) else ""
                    yield GenerationChunk(index, rest, [], None, finish)
                else:
                    yield GenerationChunk(index, "", [], None, finish)
            finally:
                if not worker.done():
                    self.aborted.add(request_id)
                    await asyncio.shield(worker)
                self.aborted.discard(request_id)

    @torch.no_grad()
    def _prompt_logprobs(self, prompt_ids: list[int], top: int) -> list:
        """One forward pass over the prompt: each token's logprob given the tokens before it."""
        with self.lock:
            logits = self.model(torch.tensor([prompt_ids], device=self.device)).logits[0, :-1]
        dist = torch.log_softmax(logits.float(), dim=-1)
        return [(prompt_ids[0], None, {})] + [_entry(dist[pos], tok, top) for pos, tok in enumerate(prompt_ids[1:])]

    def _run(self, request_id, prompt_ids, sampling: Sampling, index, streamer, recorder) -> None:
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        engine = self

        class _Abort(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), request_id in engine.aborted, dtype=torch.bool,
                                  device=input_ids.device)

        processors = LogitsProcessorList()
        if sampling.presence_penalty or sampling.frequency_penalty:
            processors.append(_Penalties(len(prompt_ids), sampling.presence_penalty, sampling.frequency_penalty))
        if recorder is not None:
            processors.append(recorder)
        with self.lock:
            try:
                if request_id in self.aborted:
                    return
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed + index)
                ids = torch.tensor([prompt_ids], device=self.device)
                sample = sampling.temperature > 0
                least = sampling.max_tokens if sampling.ignore_eos else sampling.min_tokens
                self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling.max_tokens,
                    min_new_tokens=least or None, do_sample=sample,
                    temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                    top_k=sampling.top_k if sample and sampling.top_k > 0 else None,
                    min_p=sampling.min_p if sample and sampling.min_p else None,
                    repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1 else None,
                    logits_processor=processors, stopping_criteria=StoppingCriteriaList([_Abort()]),
                    streamer=streamer, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            finally:
                streamer.end()

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    async def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("model not loaded")

    async def shutdown(self) -> None:
        self.aborted.clear()
