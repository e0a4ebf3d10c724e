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

PREFIX_TOKENS = 8  # Wikipedia tokens each sample starts from: varied topics without a chat prompt


def _onednn_linears(model: nn.Module) -> None:
    """`model`'s float32 linear layers through oneDNN (`mkldnn::_linear_pointwise`) where torch has it:
    F.linear sends float32 to MKL's sgemm, and SmolLM2's 16-sequence sampling steps took 171 ms that way
    against 109 ms through oneDNN (AMD Zen 4, 2026-12-04; the packed kernel's prefill GEMM makes the same
    choice, armor_op.cpp gemm)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if op is None:
        return

    def forward(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return op(x, mod.weight, mod.bias, "none", [], "")

    for mod in model.modules():
        if type(mod) is nn.Linear and mod.weight.dtype == torch.float32:
            mod.forward = functools.partial(forward, mod)


@torch.no_grad()
def generated_samples(model_dir: Path, tokenizer, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """(n_samples, seq_len) token ids sampled from the dense model (temperature 1, no truncation of the
    distribution, no early end), each after a Wikipedia prefix of PREFIX_TOKENS tokens (seq_len must exceed it:
    pipeline.check_model says so before any work); seeded."""
    from transformers import AutoModelForCausalLM

    from compress.datasets import calibration_samples

    # prefixes from other windows than the Wikipedia samples of the same run (seed + 1)
    prompts = calibration_samples(tokenizer, n_samples, seq_len, seed + 1)[:, :PREFIX_TOKENS]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    _onednn_linears(model)
    new = seq_len - PREFIX_TOKENS
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ids = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=new, max_new_tokens=new,
                             pad_token_id=tokenizer.eos_token_id)
    return ids[:, :seq_len].contiguous()
