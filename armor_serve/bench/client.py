"""One streamed request to an OpenAI-compatible endpoint, timed chunk by chunk."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import httpx

from armor_serve.bench.prompts import Prompt


@dataclass
class RequestRecord:
    prompt_len: int            # tokens: the server's usage.prompt_tokens when it reports usage, else our count
    max_tokens: int
    start: float = 0.0         # perf_counter seconds at send
    success: bool = False
    ttft: float = 0.0          # seconds to the first chunk carrying text
    itl: list[float] = field(default_factory=list)  # gaps between successive text chunks
    latency: float = 0.0       # send -> end of stream
    output_tokens: int = 0     # usage.completion_tokens (0 when the server sent no usage)
    text: str = ""
    error: str = ""            # kind: http_429, http_500, connect_error, connection_lost, timeout, empty_output, ...
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def request_body(endpoint: str, model: str, prompt: Prompt, ignore_eos: bool) -> dict:
    body = {"model": model, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body |= {"messages": [{"role": "user", "content": prompt.text}], "max_completion_tokens": prompt.output_len}
    else:
        body |= {"prompt": prompt.text, "max_tokens": prompt.output_len}
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension (also armor serve): every request makes exactly max tokens
    return body


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or choices[0].get("text") or ""


async def send(http: httpx.AsyncClient, url: str, body: dict, prompt: Prompt, headers: dict) -> RequestRecord:
    rec = RequestRecord(prompt_len=prompt.prompt_len, max_tokens=prompt.output_len)
    rec.start = last = time.perf_counter()
    try:
        async with http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                rec.error, rec.detail = f"http_{response.status_code}", (await response.aread()).decode()[:300]
                return rec
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error, rec.detail = "stream_error", json.dumps(chunk["error"])[:300]
                    return rec
                if chunk.get("usage"):
                    rec.output_tokens = chunk["usage"]["completion_tokens"]
                    rec.prompt_len = chunk["usage"]["prompt_tokens"]
                if text := _chunk_text(chunk):
                    now = time.perf_counter()
                    if not rec.text:
                        rec.ttft = now - rec.start
                    else:
                        rec.itl.append(now - last)
                    last = now
                    rec.text += text
        rec.success = bool(rec.text)
        if not rec.success:
            rec.error = "empty_output"
    except httpx.TimeoutException as err:
        rec.error, rec.detail = "timeout", repr(err)
    except httpx.ConnectError as err:
        rec.error, rec.detail = "connect_error", repr(err)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
        rec.error, rec.detail = "connection_lost", repr(err)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        rec.error, rec.detail = "bad_stream", repr(err)
    finally:
        rec.latency = time.perf_counter() - rec.start  # failures too: they occupied a slot
    return rec
