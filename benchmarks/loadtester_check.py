"""Check `armor bench serve` against an independent client, NVIDIA's aiperf, on the same server and settings.

    python -m benchmarks.loadtester_check    # writes benchmarks/results/loadtester-vs-aiperf.{json,md}

aiperf lives in its own venv (.cache/aiperf-venv, created on first use from PyPI `aiperf==0.13.0`) so its
dependency pins never touch the project's. Both tools send the same workload shape (synthetic prompts of
--input-len tokens, exactly --output-len output tokens via ignore_eos, streaming completions, the same
concurrency cap and request count); the prompts themselves differ (each tool synthesises its own). The runs
alternate (ours, aiperf, ours, aiperf, ...) so that drift in the machine hits both.
Metric mapping: aiperf `inter_token_latency` is per-request (e2e - ttft) / (osl - 1), i.e. vLLM's TPOT;
aiperf `inter_chunk_latency` is vLLM's ITL. aiperf counts output tokens with --use-server-token-count, as we do.
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.serving import RESULTS, ROOT, sample, start_server

AIPERF_VERSION = "0.13.0"
# (label, our summary key, our stat, aiperf metric, aiperf stat)
PAIRS = [("request throughput (req/s)", "request_throughput", None, "request_throughput", "avg"),
         ("output throughput (tok/s)", "output_throughput", None, "output_token_throughput", "avg"),
         ("TTFT mean (ms)", "ttft_ms", "mean", "time_to_first_token", "avg"),
         ("TTFT p50 (ms)", "ttft_ms", "median", "time_to_first_token", "p50"),
         ("TTFT p99 (ms)", "ttft_ms", "p99", "time_to_first_token", "p99"),
         ("TPOT mean (ms)", "tpot_ms", "mean", "inter_token_latency", "avg"),
         ("TPOT p50 (ms)", "tpot_ms", "median", "inter_token_latency", "p50"),
         ("ITL mean (ms)", "itl_ms", "mean", "inter_chunk_latency", "avg"),
         ("E2E mean (ms)", "e2el_ms", "mean", "request_latency", "avg"),
         ("E2E p99 (ms)", "e2el_ms", "p99", "request_latency", "p99")]


def aiperf_binary(venv: Path) -> Path:
    binary = venv / "bin" / "aiperf"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"aiperf=={AIPERF_VERSION}"], check=True)
    return binary


def run_ours(args, model: str, base: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "armor_serve", "bench", "serve", "--base-url", base, "--tokenizer", model,
                    "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len), "--output-len",
                    str(args.output_len), "--ignore-eos", "--max-concurrency", str(args.concurrency), "--warmup", "2",
                    "--endpoint", getattr(args, "endpoint", "completions"), "--seed", str(getattr(args, "seed", 0)),
                    "--result-dir", str(out.parent), "--label", out.stem], cwd=ROOT, check=True)
    return json.loads(out.read_text())["summary"]


def run_aiperf(args, binary: Path, model: str, name: str, base: str, out_dir: Path) -> dict:
    subprocess.run([str(binary), "profile", "--model", name, "--url", base, "--endpoint-type", "completions",
                    "--streaming", "--tokenizer", model, "--concurrency", str(args.concurrency), "--request-count",
                    str(args.num_prompts), "--isl", str(args.input_len), "--isl-stddev", "0", "--osl",
                    str(args.output_len), "--osl-stddev", "0", "--extra-inputs", "ignore_eos:true",
                    "--use-server-token-count", "--warmup-request-count", "2", "--random-seed", "0",
                    "--output-artifact-dir", str(out_dir), "--ui-type", "none"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((out_dir / "profile_export_aiperf.json").read_text())


def server_side(base: str) -> tuple[float, float, float, float]:
    """The server's own TPOT and TTFT histograms (sum, count): the referee for what each client measured."""
    text = httpx.get(base + "/metrics").text
    return tuple(sample(text, f"armor_{m}_seconds_{part}") for m in ("time_per_output_token", "time_to_first_token")
                 for part in ("sum", "count"))


def measured(fn, base: str) -> tuple:
    """Run one client; return its result, the server-side TPOT and TTFT means (ms) over that run, and the
    client's CPU seconds (it shares the machine with the server)."""
    before, cpu0 = server_side(base), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = fn()
    after, cpu1 = server_side(base), resource.getrusage(resource.RUSAGE_CHILDREN)
    d = [a - b for a, b in zip(after, before)]
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return result, 1000 * d[0] / d[1], 1000 * d[2] / d[3], cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / ".cache" / "quality" / "armor-b32"), help="checkpoint to serve")
    p.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each tool")
    p.add_argument("--port", type=int, default=8791)
    p.add_argument("--work", default=str(ROOT / ".cache" / "loadtester-check"))
    args = p.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    binary = aiperf_binary(ROOT / ".cache" / "aiperf-venv")
    base, name = f"http://127.0.0.1:{args.port}", Path(args.model).name
    server = start_server(args.model, args.engine, args.port, work / "server.log")
    ours, theirs, referee = [], [], {"armor_bench": [], "aiperf": []}
    try:
        for i in range(args.repeats):
            summary, *ref = measured(lambda: run_ours(args, args.model, base, work / f"ours-{i}.json"), base)
            ours.append(summary)
            referee["armor_bench"].append(ref)
            export, *ref = measured(lambda: run_aiperf(args, binary, args.model, name, base, work / f"aiperf-{i}"), base)
            theirs.append(export)
            referee["aiperf"].append(ref)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)

    rows = []
    for label, key, stat, metric, astat in PAIRS:
        mine = [s[key][stat] if stat else s[key] for s in ours]
        other = [t[metric][astat] for t in theirs]
        a, b = statistics.mean(mine), statistics.mean(other)
        rows.append({"metric": label, "armor_bench": mine, "aiperf": other, "spread_pct": 100 * (b - a) / a})
    command = "python -m benchmarks.loadtester_check " + " ".join(sys.argv[1:])
    payload = {"command": command, "date": time.strftime("%Y-%m-%d"), "settings": vars(args),
               "aiperf_version": AIPERF_VERSION, "rows": rows,
               "server_side_per_run": {tool: [dict(zip(("tpot_ms", "ttft_ms", "client_cpu_s"), r)) for r in runs]
                                       for tool, runs in referee.items()}}
    (RESULTS / "loadtester-vs-aiperf.json").write_text(json.dumps(payload, indent=2) + "\n")
    fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)
    lines = [f"Command: `{command}` ({payload['date']}). {args.engine} engine serving `{name}`; {args.num_prompts} "
             f"streamed completions per run, {args.input_len} prompt tokens, exactly {args.output_len} output tokens, "
             f"concurrency {args.concurrency}; {args.repeats} alternating runs per tool (values per run).", "",
             "| metric | armor bench serve | aiperf " + AIPERF_VERSION + " | spread (aiperf vs ours, means) |",
             "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {fmt(r['armor_bench'])} | {fmt(r['aiperf'])} | {r['spread_pct']:+.1f}% |" for r in rows]
    col = lambda tool, k: fmt([r[k] for r in payload["server_side_per_run"][tool]])
    lines += ["", "The server's own histograms over each run (the referee), and the CPU each client used:", "",
              "| during the run of | server TPOT mean (ms) | server TTFT mean (ms) | client CPU s |", "|---|---|---|---|"]
    lines += [f"| {tool} | {col(tool, 'tpot_ms')} | {col(tool, 'ttft_ms')} | {col(tool, 'client_cpu_s')} |"
              for tool in ("armor_bench", "aiperf")]
    (RESULTS / "loadtester-vs-aiperf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
