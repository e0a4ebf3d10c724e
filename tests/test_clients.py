"""Clients nobody here wrote, pointed at `armor serve` unchanged, both engines: vLLM's own `vllm bench serve`,
lm-evaluation-harness `local-completions`, and the `openai` SDK with the fields users send. Any 5xx in any
of them fails the run (the `server` fixture counts them)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import openai
import pytest
import torch

from conftest import ROOT
from server_util import API_KEY


@pytest.fixture(scope="session")
def hf_armor(armor_ckpt):
    """The same ARMOR checkpoint in transformers, in this process, float32: the reference the server must match."""
    from compress.evaluation import load_model

    return load_model(armor_ckpt)


@pytest.mark.parametrize("backend, endpoint", [("openai", "/v1/completions"), ("openai-chat", "/v1/chat/completions")])
def test_vllm_bench_serve_completes_every_request(server, tmp_path, backend, endpoint):
    pytest.importorskip("vllm")
    ttft_before = [server.metric(f"armor_time_to_first_token_seconds_{part}") for part in ("sum", "count")]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.vllm_bench", "--backend", backend, "--base-url", server.base,
         "--endpoint", endpoint, "--model", server.name, "--tokenizer", str(server.model), "--dataset-name", "random",
         "--random-input-len", "32", "--random-output-len", "8", "--num-prompts", "6", "--max-concurrency", "2",
         "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--result-filename", "run.json",
         "--disable-tqdm"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OPENAI_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["completed"] == 6 and result.get("failed", 0) == 0, result.get("errors")
    assert result["total_output_tokens"] == 6 * 8  # ignore_eos: exactly what it asked for
    assert result["output_throughput"] > 0
    # its TTFT is the server's (a first chunk sent before the first token would make it look instant)
    ttft_sum, ttft_count = (server.metric(f"armor_time_to_first_token_seconds_{part}") - before
                            for part, before in zip(("sum", "count"), ttft_before))
    assert result["mean_ttft_ms"] > 0.5 * 1000 * ttft_sum / ttft_count, (result["mean_ttft_ms"], ttft_sum / ttft_count)


def test_prompt_logprobs_equal_transformers(server, hf_armor):
    tokenizer, model = hf_armor
    text = "The quick brown fox jumps over the lazy dog because it wanted to see the river."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    reply = server.client().completions.create(model=server.name, prompt=text, max_tokens=1, echo=True, logprobs=1,
                                               temperature=0)
    got = reply.choices[0].logprobs
    assert got.token_logprobs[0] is None and got.top_logprobs[0] is None  # nothing precedes the first token
    assert got.tokens[:len(ids)] == [tokenizer.decode([t]) for t in ids]
    assert reply.choices[0].text.startswith(text)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    served = torch.tensor(got.token_logprobs[1:len(ids)])
    assert (served - expected).abs().max().item() < 1e-3, (served - expected).abs().max()


def test_lm_eval_local_completions_gives_the_armor_eval_accuracy(server, hf_armor, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from compress.evaluation import lm_eval_results

    tasks, limit = ["lambada_ppl", "hellaswag"], 8
    tokenizer, model = hf_armor
    local = lm_eval_results(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu"), tasks, limit)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # lm-eval's API models send it as the bearer key
    served = lm_eval_results("local-completions", tasks, limit, model_args={
        "base_url": server.base + "/v1/completions", "model": server.name, "tokenizer": str(server.model),
        "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 2, "max_retries": 1})
    for task in tasks:
        assert served[task]["samples"] == local[task]["samples"] == limit
        assert served[task]["acc"] == local[task]["acc"], (task, served, local)
    assert served["hellaswag"]["acc_norm"] == local["hellaswag"]["acc_norm"]
    assert math.isclose(served["lambada_ppl"]["perplexity"], local["lambada_ppl"]["perplexity"], rel_tol=1e-3)


def test_openai_sdk_request_surface(server, tokenizer):
    client = server.client()
    ask = [{"role": "user", "content": "Name three colours."}]
    greedy = dict(model=server.name, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(messages=ask, **greedy)
    parts = client.chat.completions.create(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Name three "}, {"type": "text", "text": "colours."}]}], **greedy)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    capped = client.chat.completions.create(model=server.name, messages=ask, max_completion_tokens=3, temperature=0.8,
                                            extra_body={"ignore_eos": True}, user="u-42", metadata={"team": "eval"},
                                            seed=1, stop=["\n\n"], n=2)
    assert [c.index for c in capped.choices] == [0, 1] and capped.usage.completion_tokens <= 6
    if server.engine == "vllm":  # vLLM refuses n > 1 with greedy sampling: a 400 with its reason, before any token
        with pytest.raises(openai.BadRequestError, match="greedy"):
            client.chat.completions.create(messages=ask, n=2, **greedy)
    else:  # transformers runs it: n equal choices
        twins = client.chat.completions.create(messages=ask, n=2, **greedy).choices
        assert twins[0].message.content == twins[1].message.content == plain.choices[0].message.content
    text = "The capital of France is"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    by_ids = client.completions.create(model=server.name, prompt=ids, max_tokens=2, temperature=0, echo=True)
    by_text = client.completions.create(model=server.name, prompt=text, max_tokens=2, temperature=0)
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == text + by_text.choices[0].text


@pytest.mark.parametrize("extra, named", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}]},
     "image_url"),
    ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs=true
])
def test_unsupported_fields_get_a_400_naming_them(server, extra, named):
    body = {"model": server.name, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as bad:
        server.client().chat.completions.create(**body)
    assert named in bad.value.body["message"], bad.value.body


def test_unknown_model_is_404_model_not_found(server):
    with pytest.raises(openai.NotFoundError) as missing:
        server.client().completions.create(model="gpt-4o", prompt="hi", max_tokens=1)
    assert missing.value.body["code"] == "model_not_found" and server.name in missing.value.body["message"]
