"""The small interface every engine implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # number of top alternatives per token (0 = only the chosen token)
    prompt_logprobs: int | None = None  # the same for every prompt token (completions' echo + logprobs)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0  # vLLM's (multiplicative, on prompt and generated tokens); 1 = off
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    min_tokens: int = 0  # no EOS/stop before this many tokens


@dataclass
class GenerationChunk:
    """New output of one of the n choices since the previous chunk."""
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[tuple[int, float, dict[int, float]]] | None = None  # (token, logprob, top alternatives)
    finish_reason: str | None = None  # "stop" | "length" | None while running
    # on a choice's first chunk when Sampling.prompt_logprobs is set: (token, logprob, top alternatives) for
    # every prompt token; the first one has logprob None and no alternatives (nothing precedes it)
    prompt_logprobs: list[tuple[int, float | None, dict[int, float]]] | None = None


class Engine(Protocol):
    name: str
    max_model_len: int

    async def start(self) -> None: ...

    def validate(self, sampling: Sampling) -> None:
        """Raise ValueError, with a message for the client, when the engine cannot run `sampling`."""
        ...

    def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerationChunk]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...
