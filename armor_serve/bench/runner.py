"""Drive the load: arrivals (Poisson/gamma or all at once), a concurrency cap, a duration bound, warm-up,
and a sweep over several rates / concurrencies."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from armor_serve.bench import report
from armor_serve.bench.client import request_body, send
from armor_serve.bench.metrics import arrival_times, summarize, timeline
from armor_serve.bench.prompts import load_prompts
from compress.errors import UserError

RESULT_VERSION = 1

log = logging.getLogger("armor_serve.bench")


def add_arguments(p) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)")
    p.add_argument("--model", help="model id to request (default: the first of GET /v1/models)")
    p.add_argument("--tokenizer", help="local tokenizer directory for prompt building and counting "
                   "(default: --model when it is a directory)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key (default: $OPENAI_API_KEY)")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="completions")
    p.add_argument("--dataset", choices=["random", "sharegpt", "corpus"], default="random",
                   help="random token prompts; a ShareGPT-format JSON (--dataset-path); corpus = real Wikipedia text")
    p.add_argument("--dataset-path")
    p.add_argument("--input-len", type=int, default=256, help="prompt tokens (random, corpus)")
    p.add_argument("--output-len", type=int, help="tokens to generate (default 128; sharegpt: the reply's length)")
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1 +- ratio)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--request-rate", default="inf", help="req/s, 'inf' = all at once; a comma list sweeps")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival gaps (1 = Poisson)")
    p.add_argument("--max-concurrency", default="", help="cap on requests in flight; a comma list sweeps")
    p.add_argument("--duration", type=float, help="stop sending new requests after this many seconds")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests sent first")
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly the output length (vLLM extension)")
    p.add_argument("--goodput", nargs="*", default=[], help="SLOs in ms, e.g. ttft:500 tpot:50 e2el:5000")
    p.add_argument("--percentiles", default="90,99", help="reported besides mean and median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds per request")
    p.add_argument("--result-dir", default="bench-results")
    p.add_argument("--label", default="bench", help="file name stem of the outputs")


def _parse_goodput(items: list[str]) -> dict[str, float]:
    slos = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not value:
            raise UserError(f"bad --goodput '{item}': use ttft:MS, tpot:MS or e2el:MS")
        try:
            slos[name] = float(value)
        except ValueError:
            raise UserError(f"bad --goodput '{item}': '{value}' is not a number of milliseconds") from None
    return slos


def _numbers(text: str, name: str, cast) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {name} '{text}': give a number or a comma-separated list") from None


def _discover(base_url: str, model: str | None, headers: dict) -> tuple[str, str | None]:
    """(model id, its `root` as the server reports it, if it does): the id from --model or else the first model
    GET /v1/models lists; the root is what vLLM and `armor serve` report as the model's checkpoint."""
    try:
        data = httpx.get(base_url + "/v1/models", headers=headers, timeout=30).raise_for_status().json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as err:
        if model:
            return model, None
        raise UserError(f"could not read the model id from {base_url}/v1/models ({err}); pass --model") from None
    if not data and not model:
        raise UserError(f"{base_url}/v1/models lists no model; pass --model")
    card = next((m for m in data if m.get("id") == model), None) if model else data[0]
    return (model or card["id"]), (card or {}).get("root")


def _tokenizer(path: str | None, model: str, root: str | None):
    from transformers import AutoTokenizer

    tried = [p for p in (path,) if p] or [p for p in (model, root) if p]
    source = next((p for p in tried if Path(p).is_dir()), None)
    if source is None:
        raise UserError(f"no local tokenizer: pass --tokenizer DIR (tried {', '.join(map(repr, tried))}; the hub "
                        f"is not used)")
    if not path and source == root:
        log.info("tokenizer: the server's checkpoint %s (its /v1/models root)", root)
    return AutoTokenizer.from_pretrained(source)


async def run_point(cfg: dict, prompts, warmup, headers: dict, tokenizer) -> dict:
    url = cfg["base_url"] + ("/v1/chat/completions" if cfg["endpoint"] == "chat" else "/v1/completions")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=cfg["timeout"], limits=limits) as http:
        fire = lambda p: send(http, url, request_body(cfg["endpoint"], cfg["model"], p, cfg["ignore_eos"]), p, headers)
        for p in warmup:
            await fire(p)
        concurrency = cfg["max_concurrency"]
        gate = asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()

        async def one(p):
            async with gate:
                return await fire(p)

        times = arrival_times(len(prompts), cfg["request_rate"], cfg["burstiness"], np.random.default_rng(cfg["seed"]))
        t0 = time.perf_counter()
        tasks = []
        for p, at in zip(prompts, times):
            if cfg["duration"] and at >= cfg["duration"]:
                break
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(p)))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    summary = summarize(records, duration, cfg["percentiles"], cfg["goodput"], tokenizer)
    for r in records:  # times relative to the start, for the JSON
        r.start -= t0
    return {"summary": summary, "timeline": timeline(records, 0.0), "requests": [r.as_dict() for r in records],
            "send_times_s": [r.start for r in records]}


def bench_serve(args) -> list[dict]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the table
    # every flag is checked before the server is asked anything and before the tokenizer loads
    rates = _numbers(args.request_rate, "--request-rate", float)
    concurrencies = _numbers(args.max_concurrency, "--max-concurrency", int) or [None]
    if any(r <= 0 for r in rates) or any(c is not None and c < 1 for c in concurrencies) or args.burstiness <= 0:
        raise UserError("--request-rate, --max-concurrency and --burstiness must be positive")
    percentiles = _numbers(args.percentiles, "--percentiles", float)
    if not percentiles or not all(0 < q <= 100 for q in percentiles):
        raise UserError(f"bad --percentiles '{args.percentiles}': give one or more numbers in (0, 100], e.g. 90,99")
    goodput = _parse_goodput(args.goodput)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base_url = args.base_url.rstrip("/").removesuffix("/v1")
    model, root = _discover(base_url, args.model, headers)
    tokenizer = _tokenizer(args.tokenizer, model, root)
    prompts = load_prompts(args.dataset, tokenizer, args.num_prompts + args.warmup, args.input_len, args.output_len,
                           args.range_ratio, args.seed, args.dataset_path)
    warmup, prompts = prompts[: args.warmup], prompts[args.warmup :]
    cfg = {"base_url": base_url, "model": model, "endpoint": args.endpoint, "dataset": args.dataset,
           "input_len": args.input_len, "output_len": args.output_len, "num_prompts": args.num_prompts,
           "burstiness": args.burstiness, "duration": args.duration, "warmup": args.warmup,
           "ignore_eos": args.ignore_eos, "seed": args.seed, "timeout": args.timeout, "percentiles": percentiles,
           "goodput": goodput, "command": " ".join(["armor", *sys.argv[1:]])}
    out_dir, sweep = Path(args.result_dir), len(rates) * len(concurrencies) > 1
    pct = f"p{percentiles[-1]:g}"
    results = []
    for rate, conc in itertools.product(rates, concurrencies):
        point = f"rate={rate:g},conc={conc or 'none'}"
        label = f"{args.label}-{point.replace('=', '').replace(',', '-')}" if sweep else args.label
        point_cfg = {**cfg, "request_rate": rate, "max_concurrency": conc, "label": label, "point": point}
        result = {"version": RESULT_VERSION, "config": point_cfg,
                  **asyncio.run(run_point(point_cfg, prompts, warmup, headers, tokenizer))}
        print(report.console_table(result), flush=True)
        report.write_json(out_dir / f"{label}.json", result)
        report.plot_run(result, out_dir / f"{label}.png")
        results.append(result)
    table = "\n".join([report.markdown_row_header(pct), *(report.markdown_row(r, pct) for r in results)])
    (out_dir / f"{args.label}.md").write_text(f"Command: `{cfg['command']}`\n\n{table}\n")
    if sweep:
        report.write_json(out_dir / f"{args.label}-sweep.json",
                          {"version": RESULT_VERSION, "points": [{"config": r["config"], "summary": r["summary"]} for r in results]})
        report.plot_sweep(results, out_dir / f"{args.label}-sweep.png", pct)
    print(f"results: {out_dir.resolve()}/{args.label}*", flush=True)
    return results
