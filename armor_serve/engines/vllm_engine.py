"""vLLM's in-process async engine (continuous batching, paged KV cache) with the ARMOR linear method.

vLLM registers its own `vllm:` Prometheus series in the default registry, which /metrics exports too.
"""
from __future__ import annotations

import gc
from typing import AsyncIterator

from armor_serve.engines.base import GenerationChunk, Sampling


class VllmEngine:
    name = "vllm"

    def __init__(self, model_dir: str, dtype: str = "auto", max_model_len: int | None = None,
                 enforce_eager: bool = False, memory_fraction: float | None = None, served_name: str | None = None):
        self.model_dir, self.dtype = model_dir, dtype
        self.requested_len, self.enforce_eager = max_model_len, enforce_eager
        self.memory_fraction, self.served_name = memory_fraction, served_name
        self.engine = None
        self.max_model_len = max_model_len or 0

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = {"model": self.model_dir, "dtype": self.dtype, "enforce_eager": self.enforce_eager,
                  "disable_log_stats": False}
        if self.requested_len:
            kwargs["max_model_len"] = self.requested_len
        if self.memory_fraction:
            kwargs["gpu_memory_utilization"] = self.memory_fraction
        if self.served_name:
            kwargs["served_model_name"] = [self.served_name]
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.max_model_len = self.engine.model_config.max_model_len

    def _params(self, sampling: Sampling):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                              top_p=sampling.top_p, stop=sampling.stop or None, seed=sampling.seed,
                              logprobs=sampling.logprobs, prompt_logprobs=sampling.prompt_logprobs,
                              presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
                              ignore_eos=sampling.ignore_eos, repetition_penalty=sampling.repetition_penalty,
                              top_k=sampling.top_k, min_p=sampling.min_p, min_tokens=sampling.min_tokens,
                              output_kind=RequestOutputKind.DELTA)

    def validate(self, sampling: Sampling) -> None:
        from vllm.exceptions import VLLMClientError

        try:
            self._params(sampling)
        except (ValueError, VLLMClientError) as err:  # e.g. "n must be 1 when using greedy sampling"
            raise ValueError(str(err)) from None

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerationChunk]:
        params = self._params(sampling)
        prompt_logprobs, sent_prompt = None, set()  # the prompt's logprobs go with each choice's first chunk
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            if out.prompt_logprobs is not None:
                scored = zip(prompt_ids[1:], out.prompt_logprobs[1:])
                prompt_logprobs = [(prompt_ids[0], None, {})] + [_entries(tok, lp) for tok, lp in scored]
            for o in out.outputs:
                logprobs = None
                if sampling.logprobs is not None and o.logprobs:
                    logprobs = [_entries(tok, lp) for tok, lp in zip(o.token_ids, o.logprobs)]
                finish = o.finish_reason if o.finish_reason in ("stop", "length") else None
                first = prompt_logprobs is not None and o.index not in sent_prompt
                if o.text or o.token_ids or finish or first:
                    sent_prompt.add(o.index)
                    yield GenerationChunk(o.index, o.text, list(o.token_ids), logprobs, finish,
                                          prompt_logprobs if first else None)

    async def abort(self, request_id: str) -> None:
        if self.engine is not None:
            await self.engine.abort(request_id)

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("engine not started")
        await self.engine.check_health()

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            # AsyncLLM.__del__ shuts down again; left to interpreter exit it runs after vLLM's module globals
            # are gone and prints a traceback. Drop the last reference now, while they still exist.
            self.engine = None
            gc.collect()


def _entries(token: int, logprobs: dict) -> tuple[int, float, dict[int, float]]:
    """(token, its logprob, the top alternatives with it) from vLLM's {token id: Logprob} of one position."""
    return token, logprobs[token].logprob, {t: v.logprob for t, v in logprobs.items()}
