"""Arrival times and the summary numbers, defined as vLLM's `vllm bench serve` defines them
(vllm/benchmarks/serve.py: `get_request`, `calculate_metrics`):

- request throughput = completed requests / benchmark duration (first send -> last response);
- output throughput = sum of output tokens / duration; total token throughput adds the prompt tokens;
- TTFT = send -> first chunk with text; ITL = the gaps between successive text chunks (a chunk may carry
  several tokens); TPOT = (E2E latency - TTFT) / (output tokens - 1), over requests with > 1 output token;
- goodput = completed requests meeting every given SLO (ttft, tpot, e2el in ms; tpot counts as 0 for
  1-token outputs) / duration;
- output tokens = the server's usage.completion_tokens, else the tokenizer's count of the streamed text.
One deliberate difference: peak concurrency is the exact maximum of requests in flight, where vLLM counts
requests active in each whole second (which over-counts short requests).
"""
from __future__ import annotations

import numpy as np

from armor_serve.bench.client import RequestRecord


def arrival_times(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send times (s from the start): gamma gaps with mean 1/rate and shape `burstiness` (1 = Poisson)."""
    if rate == float("inf"):
        return np.zeros(n)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    gaps[0] = 0.0  # the first request goes at once
    return np.cumsum(gaps)


def output_tokens(rec: RequestRecord, tokenizer=None) -> int:
    if rec.output_tokens:
        return rec.output_tokens
    if tokenizer is not None:
        return len(tokenizer.encode(rec.text, add_special_tokens=False))
    return len(rec.itl) + 1


def _stats(values: list[float], percentiles: list[float]) -> dict:
    arr = np.asarray(values or [0.0]) * 1000.0
    out = {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std())}
    out.update({f"p{p:g}": float(np.percentile(arr, p)) for p in percentiles})
    return out


def peak_concurrency(records: list[RequestRecord]) -> int:
    events = sorted([(r.start, 1) for r in records] + [(r.start + r.latency, -1) for r in records],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def timeline(records: list[RequestRecord], t0: float) -> dict:
    """Per whole second since t0: text chunks received (output tokens when the server streams one token per
    chunk) and requests in flight."""
    done = [r for r in records if r.success]
    if not done:
        return {"output_chunks_per_s": [], "in_flight": []}
    seconds = int(np.ceil(max(r.start + r.latency for r in done) - t0)) + 1
    chunks, in_flight = np.zeros(seconds), np.zeros(seconds)
    for r in done:
        t = r.start + r.ttft
        for gap in [0.0, *r.itl]:
            t += gap
            chunks[min(int(t - t0), seconds - 1)] += 1
        in_flight[int(r.start - t0) : int(r.start + r.latency - t0) + 1] += 1
    return {"output_chunks_per_s": chunks.tolist(), "in_flight": in_flight.tolist()}


def summarize(records: list[RequestRecord], duration: float, percentiles: list[float],
              goodput: dict[str, float] | None = None, tokenizer=None) -> dict:
    done = [r for r in records if r.success]
    out_lens = [output_tokens(r, tokenizer) for r in done]
    ttfts = [r.ttft for r in done]
    e2els = [r.latency for r in done]
    all_tpots = [(r.latency - r.ttft) / (n - 1) if n > 1 else 0.0 for r, n in zip(done, out_lens)]
    tpots = [t for t, n in zip(all_tpots, out_lens) if n > 1]
    itls = [gap for r in done for gap in r.itl]
    errors: dict[str, int] = {}
    for r in records:
        if not r.success:
            errors[r.error] = errors.get(r.error, 0) + 1
    total_in, total_out = sum(r.prompt_len for r in done), sum(out_lens)
    summary = {
        "completed": len(done), "failed": len(records) - len(done), "errors": errors,
        "duration_s": duration, "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(done) / duration, "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration, "peak_concurrency": peak_concurrency(records),
        "ttft_ms": _stats(ttfts, percentiles), "tpot_ms": _stats(tpots, percentiles),
        "itl_ms": _stats(itls, percentiles), "e2el_ms": _stats(e2els, percentiles),
    }
    if goodput:
        per_request = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        good = sum(all(per_request[k][i] * 1000.0 <= slo for k, slo in goodput.items()) for i in range(len(done)))
        summary["request_goodput"] = good / duration
        summary["goodput_slo_ms"] = goodput
    return summary
