"""The OpenAI-compatible server for real: `armor serve` on 127.0.0.1, the compressed SmolLM2, the official
`openai` client, both engines (the `server` fixture, conftest.py)."""
import json
import time

import httpx
import openai
import pytest
import torch

from conftest import ENGINES
from server_util import API_KEY


def chat_ids(tokenizer, content):
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def test_chat_usage_matches_the_tokenizer(server, tokenizer):
    client = server.client()
    reply = client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "Name a fruit."}],
                                           max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    assert reply.usage.prompt_tokens == len(chat_ids(tokenizer, "Name a fruit."))
    assert reply.usage.completion_tokens == 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8


def test_streaming_equals_non_streaming_and_ends_with_usage(server):
    client = server.client()
    # ignore_eos: the small-calibration ARMOR fixture may stop a greedy reply at once; this test wants all 10 tokens
    args = dict(model=server.name, messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=10,
                temperature=0, extra_body={"ignore_eos": True})
    reply = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage and reply.usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length" == reply.choices[0].finish_reason


def test_completions_prompt_list_and_n(server):
    client = server.client()
    reply = client.completions.create(model=server.name, prompt=["Once upon a time", "The capital of Italy is"],
                                      max_tokens=4, n=2, temperature=0.9, seed=3)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert all(c.text for c in reply.choices)
    echo = client.completions.create(model=server.name, prompt="Hello", max_tokens=2, echo=True, temperature=0)
    assert echo.choices[0].text.startswith("Hello")


def test_stop_sequence_cuts_the_output(server):
    client = server.client()
    args = dict(model=server.name, prompt="The numbers one, two, three, four, five,", max_tokens=12, temperature=0)
    full = client.completions.create(**args).choices[0].text
    words = full.split()
    stop = words[1] if len(words) > 1 else words[0]
    cut = client.completions.create(**args, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_seed_makes_sampling_reproducible(server):
    client = server.client()
    args = dict(model=server.name, prompt="My favourite animal is", max_tokens=8, temperature=1.0)
    a = client.completions.create(**args, seed=7).choices[0].text
    b = client.completions.create(**args, seed=7).choices[0].text
    others = {client.completions.create(**args, seed=s).choices[0].text for s in (8, 9, 10)}
    assert a == b
    assert others - {a}


def test_logprobs(server):
    client = server.client()
    reply = client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    # one entry per generated token (the model may end its answer before max_tokens)
    assert len(content) == reply.usage.completion_tokens >= 1
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.logprob - 1e-4  # greedy: the chosen token is the best


def test_metrics_move_by_known_amounts(server, tokenizer):
    before = {m: server.metric(m, model_name=server.name) for m in
              ("armor_generation_tokens_total", "armor_prompt_tokens_total", "armor_e2e_request_latency_seconds_count",
               "armor_time_to_first_token_seconds_count")}
    ok_before = server.metric("armor_requests_total", endpoint="/v1/chat/completions", status="200")
    server.client().chat.completions.create(model=server.name, messages=[{"role": "user", "content": "Count."}],
                                            max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    after = {m: server.metric(m, model_name=server.name) for m in before}
    assert after["armor_generation_tokens_total"] - before["armor_generation_tokens_total"] == 5
    assert after["armor_prompt_tokens_total"] - before["armor_prompt_tokens_total"] == len(chat_ids(tokenizer, "Count."))
    assert after["armor_e2e_request_latency_seconds_count"] - before["armor_e2e_request_latency_seconds_count"] == 1
    assert after["armor_time_to_first_token_seconds_count"] - before["armor_time_to_first_token_seconds_count"] == 1
    assert server.metric("armor_requests_total", endpoint="/v1/chat/completions", status="200") == ok_before + 1
    # ARMOR layers stay packed (values + bitmask + A/B blocks) on CPU: the server holds less than dense
    dense, resident = server.metric("armor_weights_dense_equivalent_bytes"), server.metric("armor_weights_resident_bytes")
    assert 0 < resident < 0.85 * dense
    for layer in ("q_proj", "gate_proj", "down_proj"):  # the kernel each layer type runs, as the engine picks it
        assert server.metric("armor_layer_kernel_info", layer=layer, kernel="packed") == 1
    assert server.metric("armor_process_resident_memory_bytes") > 0
    if server.engine == "vllm":
        text = httpx.get(server.base + "/metrics").text
        assert "vllm:kv_cache_usage_perc" in text and "vllm:num_requests_running" in text


def test_errors_are_openai_shaped(server):
    client = server.client()
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.name, messages=msgs, extra_body={"best_of_everything": 2})
    assert "best_of_everything: unsupported field" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "word " * 1500}])
    assert "1024 tokens" in long.value.body["message"] and "prompt has" in long.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.name, messages=msgs, temperature=5)
    wrong_key = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model=server.name, messages=msgs)
    raw = httpx.post(server.base + "/v1/completions", content=b"{not json", headers={
        "authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_health_version_models_and_request_id(server):
    assert httpx.get(server.base + "/health").json() == {"status": "ok"}
    assert httpx.get(server.base + "/version").json()["engine"] in ENGINES
    models = httpx.get(server.base + "/v1/models", headers={"authorization": f"Bearer {API_KEY}"}).json()
    card = models["data"][0]
    assert card["id"] == server.name and card["root"] == str(server.model) and card["max_model_len"] == 1024
    r = httpx.post(server.base + "/v1/completions", headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "abc-123"},
                   json={"model": server.name, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"


def test_client_disconnect_aborts_generation(server):
    headers = {"authorization": f"Bearer {API_KEY}"}
    body = {"model": server.name, "prompt": "Write a long story.", "max_tokens": 600, "stream": True,
            "ignore_eos": True}
    aborted = server.metric("armor_requests_aborted_total")
    with httpx.stream("POST", server.base + "/v1/completions", json=body, headers=headers, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break
    time.sleep(3)
    first = server.metric("armor_generation_tokens_total")
    time.sleep(3)
    assert server.metric("armor_generation_tokens_total") == first  # nothing is generated for nobody
    assert server.metric("armor_requests_running") == 0
    assert server.metric("armor_requests_aborted_total") == aborted + 1  # and the abort is counted


def test_resident_bytes_count_the_widest_fused_layer_panel(tmp_path):
    """The prefill panel spans a fused layer (gate/up as vLLM fuses them), so its scratch counts their rows together."""
    from safetensors.torch import save_file

    from armor_serve.metrics import checkpoint_weight_bytes

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"block_size": 16}}))
    tensors = {}
    for name, d_out, d_in in (("gate_proj", 64, 128), ("up_proj", 64, 128), ("down_proj", 128, 64)):
        prefix = f"model.layers.0.mlp.{name}."
        tensors[prefix + "sparse_values"] = torch.zeros(d_out, d_in // 2)
        tensors[prefix + "sparse_meta"] = torch.zeros(d_out, d_in // 8, dtype=torch.uint8)
        tensors[prefix + "a_blocks"] = torch.zeros(d_out // 16, 16, 16)
        tensors[prefix + "b_blocks"] = torch.zeros(d_in // 16, 16, 16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    panels = []
    packed = {name: ("packed", "") for name in ("gate_proj", "up_proj", "down_proj")}
    resident, dense = checkpoint_weight_bytes(tmp_path, packed, lambda d_out, d_in, b: panels.append(
        (d_out, d_in, b)) or d_out * d_in)
    assert sorted(panels) == [(128, 64, 16), (128, 128, 16)]  # gate + up: 128 rows; down alone
    assert resident == stored + 128 * 128 and dense == 4 * (64 * 128 * 2 + 128 * 64)
