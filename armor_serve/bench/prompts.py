"""Workloads for the load tester: random token prompts, a ShareGPT-format file, or real text.

Each prompt carries the number of tokens the tokenizer counts in it and the number of tokens to ask for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import UserError


@dataclass(frozen=True)
class Prompt:
    text: str
    prompt_len: int
    output_len: int


def _lengths(rng: np.random.Generator, n: int, mean: int, range_ratio: float) -> np.ndarray:
    """Uniform in [mean*(1-r), mean*(1+r)], as vLLM's random dataset draws them."""
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=n)


def _fit(tokenizer, ids: list[int], length: int) -> tuple[str, int]:
    """Decode ids to text; decoding then re-encoding merges or splits tokens, so trim and re-decode until the
    text re-encodes to about `length` tokens (vLLM's random dataset does the same)."""
    text = tokenizer.decode(ids)
    for _ in range(3):
        again = tokenizer.encode(text, add_special_tokens=False)
        if len(again) <= length:
            break
        text = tokenizer.decode(again[:length])
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def random_prompts(tokenizer, n: int, input_len: int, output_len: int, range_ratio: float,
                   rng: np.random.Generator) -> list[Prompt]:
    """Uniformly random (non-special) token ids decoded to text; re-tokenised to count what is really sent."""
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    prompts = []
    for in_len, out_len in zip(_lengths(rng, n, input_len, range_ratio), _lengths(rng, n, output_len, range_ratio)):
        text, n_tokens = _fit(tokenizer, rng.choice(vocab, size=int(in_len)).tolist(), int(in_len))
        prompts.append(Prompt(text, n_tokens, int(out_len)))
    return prompts


def corpus_prompts(tokenizer, n: int, input_len: int, output_len: int, range_ratio: float,
                   rng: np.random.Generator) -> list[Prompt]:
    """Passages of real English text (the Wikipedia test split of the evaluation data) at random offsets."""
    from compress.datasets import wiki_text

    ids = tokenizer.encode(wiki_text("test"), add_special_tokens=False)
    prompts = []
    for in_len, out_len in zip(_lengths(rng, n, input_len, range_ratio), _lengths(rng, n, output_len, range_ratio)):
        start = int(rng.integers(0, len(ids) - in_len))
        text, n_tokens = _fit(tokenizer, ids[start : start + int(in_len)], int(in_len))
        prompts.append(Prompt(text, n_tokens, int(out_len)))
    return prompts


def sharegpt_prompts(path: str, tokenizer, n: int, output_len: int | None, rng: np.random.Generator) -> list[Prompt]:
    """First human turn as the prompt; the reply's token length as the output length (unless --output-len),
    with vLLM's filters (prompt >= 4 tokens, output >= 4, prompt <= 1024, prompt + output <= 2048)."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read ShareGPT file '{path}': {err}; pass a JSON list of "
                        '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}') from None
    pairs = [r["conversations"][:2] for r in records if isinstance(r, dict) and len(r.get("conversations", [])) >= 2]
    if not pairs:
        raise UserError(f"'{path}' holds no conversation with a prompt and a reply")
    prompts = []
    for i in rng.permutation(len(pairs)):
        human, reply = pairs[i]
        p_len = len(tokenizer.encode(human["value"], add_special_tokens=False))
        o_len = output_len or len(tokenizer.encode(reply["value"], add_special_tokens=False))
        if p_len < 4 or o_len < 4 or p_len > 1024 or p_len + o_len > 2048:
            continue
        prompts.append(Prompt(human["value"], p_len, o_len))
        if len(prompts) == n:
            break
    if len(prompts) < n:
        raise UserError(f"'{path}' has only {len(prompts)} usable conversations; ask for fewer with --num-prompts")
    return prompts


def load_prompts(dataset: str, tokenizer, n: int, input_len: int, output_len: int | None, range_ratio: float,
                 seed: int, dataset_path: str | None = None) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    if dataset == "sharegpt":
        if not dataset_path:
            raise UserError("--dataset sharegpt needs --dataset-path FILE.json")
        return sharegpt_prompts(dataset_path, tokenizer, n, output_len, rng)
    make = {"random": random_prompts, "corpus": corpus_prompts}[dataset]
    return make(tokenizer, n, input_len, output_len or 128, range_ratio, rng)
