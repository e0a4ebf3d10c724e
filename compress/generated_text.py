"""Calibration text written by the dense model itself: sampled continuations of short Wikipedia prefixes.

Calibrating on Wikipedia alone lets the block-wise tuning fit Wikipedia's domain (its wiki perplexity improves while
LAMBADA and zero-shot accuracy fall, docs/algorithm.md). The model's own samples follow the distribution it was
trained on, whatever that is, so mixing them into the calibration set keeps the fit general.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.cache_utils import Cache, DynamicLayer

PREFIX_TOKENS = 8  # Wikipedia tokens each sample starts from: varied topics without a chat prompt


def _onednn_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """`model`'s float32 linear layers through oneDNN (`mkldnn::_linear_pointwise`) where torch has it, multiplying
    in `dtype` (the run's calibration dtype: bfloat16 where the CPU multiplies it natively) with float32 in and out.
    F.linear sends float32 to MKL's sgemm, and SmolLM2's 16-sequence sampling steps took 171 ms that way against
    109 ms through oneDNN (AMD Zen 4, 2026-12-04; the packed kernel's prefill GEMM makes the same choice,
    armor_op.cpp gemm); bfloat16 linears sample 16 x 504 tokens in 56 s against 86 s in float32 (Intel AMX,
    2026-12-06)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if op is None:
        return

    def forward(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        return op(x.to(weight.dtype), weight, bias, "none", [], "").float()

    for mod in model.modules():
        if type(mod) is nn.Linear and mod.weight.dtype == torch.float32:
            bias = None if mod.bias is None else mod.bias.detach().to(dtype)
            mod.forward = functools.partial(forward, mod.weight.detach().to(dtype), bias)


class _ReservedLayer(DynamicLayer):
    """A KV-cache layer whose keys and values fill one buffer of `capacity` positions in place: transformers'
    DynamicLayer concatenates the whole cache anew every step, 41% of the sampling time at ~400 tokens (torch
    profiler, 2026-12-06)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:2], self.capacity, key_states.shape[-1])
            self.key_buffer, self.value_buffer = key_states.new_empty(shape), value_states.new_empty(shape)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def _sample(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token id per row of `logits` (rows, vocab), drawn from softmax(logits) by the Gumbel-max trick."""
    gumbel = torch.rand(logits.shape, generator=gen).clamp_min_(1e-20).log_().neg_().log_().neg_()
    return (logits + gumbel).argmax(-1, keepdim=True)


@torch.inference_mode()
def generated_samples(model_dir: Path, tokenizer, n_samples: int, seq_len: int, seed: int,
                      dtype: torch.dtype = torch.float32, text_len: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) token ids sampled from the dense model (temperature 1, no truncation of the
    distribution, no early end) in texts of `text_len` tokens (0: seq_len), each after a Wikipedia prefix of
    PREFIX_TOKENS tokens (text_len must exceed it: pipeline.check_model says so before any work), packed end to end
    into the samples (the last text of each cut at seq_len); seeded. The linears multiply in `dtype`.

    Shorter texts, more of them at once: a sampling step costs about the same for 16 sequences as for 32 (it is
    bound by reading the weights and by per-op overheads), so 32 texts of 256 tokens take 33 s where 16 of 512 take
    62 (SmolLM2, bfloat16, Intel AMX, 2026-12-06).

    Its own loop rather than `generate`: the cache above, and the Gumbel-max draw argmax(logits + Gumbel noise),
    an exact sample of softmax(logits), from torch.rand (6 ms per step for 16 x 49152 logits) instead of
    torch.multinomial's exponential draws (24 ms); 145 ms per step against 218 in all (16 samples, 504 tokens)."""
    from compress.datasets import calibration_samples

    text_len = min(text_len or seq_len, seq_len)
    per_sample = -(-seq_len // text_len)
    # prefixes from windows of the text's length drawn with seed + 1, independently of the run's own Wikipedia samples
    ids = calibration_samples(tokenizer, n_samples * per_sample, text_len, seed + 1)[:, :PREFIX_TOKENS]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    _onednn_linears(model, dtype)
    cache = Cache(layers=[_ReservedLayer(text_len) for _ in range(model.config.num_hidden_layers)])
    gen = torch.Generator().manual_seed(seed)
    tokens = [ids]
    for _ in range(text_len - PREFIX_TOKENS):
        logits = model(tokens[-1], past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        tokens.append(_sample(logits, gen))
    return torch.cat(tokens, 1).reshape(n_samples, per_sample * text_len)[:, :seq_len]
