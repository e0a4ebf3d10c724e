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

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, stop=sampling.stop or None, seed=sampling.seed,
                                logprobs=sampling.logprobs, presence_penalty=sampling.presence_penalty,
                                frequency_penalty=sampling.frequency_penalty, ignore_eos=sampling.ignore_eos,
                                output_kind=RequestOutputKind.DELTA)
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            for o in out.outputs:
                logprobs = None
                if sampling.logprobs is not None and o.logprobs:
                    logprobs = [(tok, lp[tok].logprob, {t: v.logprob for t, v in lp.items()})
                                for tok, lp in zip(o.token_ids, o.logprobs)]
                finish = o.finish_reason if o.finish_reason in ("stop", "length") else None
                if o.text or o.token_ids or finish:
                    yield GenerationChunk(o.index, o.text, list(o.token_ids), logprobs, finish)

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
