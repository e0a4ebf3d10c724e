"""Real vLLM (vllm-cpu, float32) on the compressed SmolLM2: plugin selection by the checkpoint alone,
greedy tokens equal to transformers', prompt-logprob perplexity equal to `armor eval`'s, and the stock
OpenAI server answering over HTTP."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from compress import datasets
from compress.evaluation import perplexity
from conftest import ROOT

pytest.importorskip("vllm")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Photosynthesis is the process"]
VLLM_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def vllm_result(armor_ckpt, tokenizer, tmp_path_factory):
    ppl_ids = tokenizer(datasets.wiki_text("test"), return_tensors="pt").input_ids[0, :512].tolist()
    req = {"prompts": [tokenizer(p).input_ids for p in PROMPTS], "max_tokens": 12, "ppl_ids": ppl_ids}
    path = tmp_path_factory.mktemp("vllm") / "req.json"
    path.write_text(json.dumps(req))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm_worker.py"), str(armor_ckpt), str(path)],
                          capture_output=True, text=True, timeout=900, env=VLLM_ENV)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    assert "ARMOR layers run the packed 2:4 CPU kernel" in proc.stdout + proc.stderr  # not the reference path
    return req, json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def hf_model(armor_ckpt):
    import model_executors  # noqa: F401
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(armor_ckpt, dtype=torch.float32).eval()


def test_greedy_tokens_match_transformers(vllm_result, hf_model):
    req, res = vllm_result
    for prompt_ids, vllm_tokens in zip(req["prompts"], res["tokens"]):
        ids = torch.tensor([prompt_ids])
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=req["max_tokens"],
                                min_new_tokens=req["max_tokens"], do_sample=False)
        assert out[0, len(prompt_ids):].tolist() == vllm_tokens


def test_prompt_logprob_perplexity_matches_armor_eval(vllm_result, hf_model):
    req, res = vllm_result
    ids = torch.tensor(req["ppl_ids"])
    ours = perplexity(hf_model, ids, ctx_len=512, stride=512)["perplexity"]
    assert abs(res["ppl"] - ours) / ours < 0.01, (res["ppl"], ours)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stock_vllm_openai_server_serves_the_armor_checkpoint(armor_ckpt):
    from openai import OpenAI

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(armor_ckpt),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--host", "127.0.0.1",
           "--port", str(port), "--gpu-memory-utilization", "0.2", "--served-model-name", "smollm2-armor"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=VLLM_ENV)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert server.poll() is None, server.stderr.read()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        # min_tokens (vLLM's sampling parameter) holds EOS back: the test checkpoint (8 calibration samples) may
        # otherwise end its answer at once, which says nothing about serving
        reply = client.chat.completions.create(model="smollm2-armor", max_tokens=16, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}],
                                               extra_body={"min_tokens": 4})
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens > 0
    finally:
        server.terminate()
        server.wait(timeout=60)
