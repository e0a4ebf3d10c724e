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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False


@dataclass
class GenerationChunk:
    """New output of one of the n choices since the previous chunk."""
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[tuple[int, float, dict[int, float]]] | None = None  # (token, logprob, top alternatives)
    finish_reason: str | None = None  # "stop" | "length" | None while running


class Engine(Protocol):
    name: str
    max_model_len: int

    async def start(self) -> None: ...

    def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerationChunk]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...
