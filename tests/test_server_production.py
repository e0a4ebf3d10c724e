"""Production behaviour of `armor serve` (transformers engine: it starts in seconds): readiness, the
bounded queue, graceful shutdown, a bounded soak, limits against abuse and schema fuzzing."""
import asyncio
import concurrent.futures as cf
import contextlib
import json
import signal
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server_util import API_KEY, Server

AUTH = {"authorization": f"Bearer {API_KEY}"}
LIMIT_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def busy_server(armor_ckpt):
    srv = Server(armor_ckpt, "transformers", "--max-concurrent", "1", "--max-queue", "1", "--max-request-bytes",
                 str(LIMIT_BYTES), "--max-n", "4", "--max-logprobs", "5", "--max-stop", "16").wait_ready()
    yield srv
    srv.stop()


def post(srv, body, timeout=120):
    return httpx.post(srv.base + "/v1/completions", json={"model": srv.name, **body}, headers=AUTH, timeout=timeout)


def test_health_is_503_until_the_model_is_loaded(armor_ckpt):
    srv = Server(armor_ckpt, "transformers")
    codes = []
    deadline = time.time() + 120
    while time.time() < deadline and 200 not in codes:
        try:
            codes.append(httpx.get(srv.base + "/health", timeout=2).status_code)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    srv.stop()
    assert codes[0] == 503 and codes[-1] == 200


def test_full_queue_answers_429_with_retry_after(busy_server):
    body = {"prompt": "Tell a story.", "max_tokens": 60, "ignore_eos": True}
    with cf.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: post(busy_server, body), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 429 in codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_sigterm_drains_in_flight_requests_then_exits_0(armor_ckpt):
    srv = Server(armor_ckpt, "transformers").wait_ready()
    result = {}

    def long_request():
        result["response"] = post(srv, {"prompt": "Count to fifty:", "max_tokens": 40, "ignore_eos": True})

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(1.5)  # the request is generating
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):  # no new connections while draining
        httpx.get(srv.base + "/health", timeout=2)
    t.join(timeout=120)
    # it exits by itself once drained; a second signal here could land during interpreter shutdown,
    # when Python has put back the default handlers, and kill it
    assert srv.proc.wait(timeout=120) == 0
    r = result["response"]
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40


def test_sigterm_lets_streams_in_flight_finish(armor_ckpt):
    srv = Server(armor_ckpt, "transformers", "--max-concurrent", "2").wait_ready()
    body = {"model": srv.name, "prompt": "List the months:", "max_tokens": 30, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    streams = []

    def stream():
        with httpx.stream("POST", srv.base + "/v1/completions", json=body, headers=AUTH, timeout=120) as r:
            streams.append((r.status_code, [line for line in r.iter_lines() if line]))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # both streams are open, tokens flowing
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    assert srv.proc.wait(timeout=120) == 0
    assert len(streams) == 2
    for status, lines in streams:
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 30


def test_64_streams_beyond_a_full_queue_get_429_not_a_crash(busy_server):
    """Two long streams take the one slot and the one queue place; then 64 streams arrive at once: every one
    is a 429 with Retry-After, nothing crashes, and the two holders are aborted when their clients leave."""
    url, metric = busy_server.base + "/v1/completions", busy_server.metric
    rss_before, aborted_before = metric("armor_process_resident_memory_bytes"), metric("armor_requests_aborted_total")
    body = {"model": busy_server.name, "prompt": "Say hello.", "stream": True}

    async def one(client):
        async with client.stream("POST", url, json={**body, "max_tokens": 8}, headers=AUTH) as r:
            return r.status_code, r.headers.get("retry-after"), (await r.aread()).decode()

    async def burst_while_full():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=80)) as client, \
                contextlib.AsyncExitStack() as holders:
            for _ in range(2):  # headers come at admission: the first runs, the second waits for the slot
                held = await holders.enter_async_context(client.stream(
                    "POST", url, json={**body, "max_tokens": 400, "ignore_eos": True}, headers=AUTH))
                assert held.status_code == 200
            while (await asyncio.to_thread(metric, "armor_requests_waiting")) < 1:
                await asyncio.sleep(0.1)
            return await asyncio.gather(*(one(client) for _ in range(64)))  # the holders leave after this

    results = asyncio.run(burst_while_full())
    assert [status for status, _, _ in results] == [429] * 64
    assert all(retry == "1" and json.loads(text)["error"]["type"] == "rate_limit_error" for _, retry, text in results)
    deadline = time.time() + 60
    while metric("armor_requests_running") + metric("armor_requests_waiting") > 0 and time.time() < deadline:
        time.sleep(0.5)
    assert metric("armor_requests_running") == metric("armor_requests_waiting") == 0  # the places came back
    assert metric("armor_requests_aborted_total") - aborted_before == 2
    assert httpx.get(busy_server.base + "/health").json() == {"status": "ok"}
    growth = metric("armor_process_resident_memory_bytes") - rss_before
    assert growth < 64 * 2**20, growth


def test_oversized_bodies_get_413_before_they_are_read(busy_server):
    url, big = busy_server.base + "/v1/completions", "x" * (LIMIT_BYTES + 1)
    declared = httpx.post(url, json={"model": busy_server.name, "prompt": big}, headers=AUTH)

    def chunked():  # no Content-Length: the server counts the bytes as they arrive
        yield b'{"model": "m", "prompt": "'
        for _ in range(LIMIT_BYTES // 8192 + 2):
            yield b"x" * 8192
        yield b'"}'

    streamed = httpx.post(url, content=chunked(), headers={**AUTH, "content-type": "application/json"})
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large" and str(LIMIT_BYTES) in r.json()["error"]["message"]


@pytest.mark.parametrize("path, body, named", [
    ("/v1/completions", {"prompt": "hi", "stop": [f"s{i}" for i in range(2000)]}, "stop"),
    ("/v1/completions", {"prompt": "hi", "n": 5}, "n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 6}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 6},
     "logprobs"),
    ("/v1/completions", {"prompt": [10**9]}, "vocabulary"),
])
def test_requests_beyond_the_configured_limits_get_400(busy_server, path, body, named):
    r = httpx.post(busy_server.base + path, json={"model": busy_server.name, "max_tokens": 1, **body}, headers=AUTH)
    assert r.status_code == 400 and named in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("raw", [
    b'{"model": "smollm2-armor", "prompt": "caf\xe9 \xff\xfe"}',  # Latin-1 bytes, not UTF-8
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's JSON parser recurses
    b'{"model": "smollm2-armor", "prompt": ' + b"[" * 500 + b"]" * 500 + b"}",  # parses; fits no schema
], ids=["invalid-utf8", "nested-100000", "nested-500"])
def test_bodies_that_are_not_json_or_absurdly_nested_get_400(busy_server, raw):
    r = httpx.post(busy_server.base + "/v1/completions", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert httpx.get(busy_server.base + "/health").status_code == 200


def test_health_and_metrics_need_no_api_key_but_v1_does(busy_server):
    assert httpx.get(busy_server.base + "/health").status_code == 200
    assert "armor_requests_total" in httpx.get(busy_server.base + "/metrics").text
    assert httpx.get(busy_server.base + "/v1/models").status_code == 401


def test_soak_200_requests_at_concurrency_8(armor_ckpt):
    srv = Server(armor_ckpt, "transformers", "--max-concurrent", "8", "--max-queue", "64").wait_ready()
    try:
        post(srv, {"prompt": "warm up", "max_tokens": 2})
        rss_start = srv.metric("armor_process_resident_memory_bytes")
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: post(srv, {"prompt": f"Item {i}:", "max_tokens": 3}).status_code, range(200)))
        rss_end = srv.metric("armor_process_resident_memory_bytes")
        assert codes.count(200) == 200
        # bound: 64 MiB of growth over 200 requests (steady state is flat; allocator caches warm up)
        assert rss_end - rss_start < 64 * 2**20, (rss_start, rss_end)
        assert srv.metric("armor_requests_total", status="200") >= 201
    finally:
        srv.stop()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "logprobs", "top_logprobs",
          "echo", "stream", "stream_options", "presence_penalty", "frequency_penalty", "max_completion_tokens", "junk"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       body=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
@example(path="/v1/completions", body={"prompt": "x", "temperature": float("inf")})  # once a 500 (CI, 2026-11)
@example(path="/v1/chat/completions", body={"messages": [{"role": "user", "content": "x"}], "top_p": float("nan")})
def test_fuzzed_requests_never_get_a_500(busy_server, path, body):
    body = {"model": busy_server.name, **body, "max_tokens": 2}  # keep the valid requests short
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 2
    # json.dumps writes NaN/Infinity literals: the server's parser accepts them, so the schema must refuse them
    r = httpx.post(busy_server.base + path, content=json.dumps(body), timeout=120,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"message", "type"}


def test_json_logs_carry_the_request_id(armor_ckpt):
    srv = Server(armor_ckpt, "transformers", "--log-format", "json").wait_ready()
    r = httpx.post(srv.base + "/v1/completions", headers={**AUTH, "x-request-id": "trace-42"},
                   json={"model": srv.name, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200
    srv.stop()
    records = [json.loads(line) for line in srv.stderr().splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(rec) for rec in records)
    assert any("trace-42" in rec["message"] for rec in records)
