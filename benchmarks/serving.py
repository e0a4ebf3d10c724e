"""Serving table: dense vs ARMOR SmolLM2 through `armor serve`, measured with `armor bench serve`.

    python -m benchmarks.serving            # writes benchmarks/results/serving.{json,md,png}

For each model: start `armor serve` (vLLM engine unless --engine), read its weight-memory gauges from /metrics,
run a concurrency sweep of fixed-length random prompts with ignore_eos (every request makes exactly
--output-len tokens), stop the server. Everything goes through the CLI, as a user runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEMORY_FRACTION = 0.3  # vLLM's share of RAM for weights + KV cache: enough for SmolLM2 beside another server


def engine_env() -> dict:
    """The environment vLLM's CPU engine runs in here: a 2 GiB KV cache unless the caller set one."""
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}


def bundled_dense() -> str:
    """The imported bundled SmolLM2 checkpoint (imported now if it is not yet)."""
    return subprocess.run([sys.executable, "-m", "armor_serve", "model", "import", "smollm2"], cwd=ROOT, check=True,
                          text=True, stdout=subprocess.PIPE).stdout.strip().splitlines()[-1]


def start_server(model: str, engine: str, port: int, log: Path,
                 memory_fraction: float = MEMORY_FRACTION) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "armor_serve", "serve", "--model", model, "--engine", engine, "--port", str(port),
           "--served-model-name", Path(model).name, "--max-model-len", "1024", "--max-concurrent", "64",
           "--max-queue", "256"]
    if engine == "vllm":
        cmd += ["--enforce-eager", "--memory-fraction", str(memory_fraction)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=engine_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {model} exited {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.kill()
    raise SystemExit(f"server for {model} did not become healthy in 15 min; see {log}")


def tree_rss_bytes(pid: int) -> int:
    """RSS of the server and every process it started (vLLM's engine core holds the weights)."""
    import psutil

    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    return sum(p.memory_info().rss for p in procs if p.is_running())


def sample(metrics: str, name: str) -> float:
    """The first sample of `name` in Prometheus text (NaN when the server does not export it)."""
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", help="dense checkpoint (default: the imported bundled SmolLM2)")
    p.add_argument("--armor", default=str(ROOT / ".cache" / "quality" / "armor-b32"),
                   help="ARMOR checkpoint (default: the quality benchmark's armor-b32)")
    p.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--port", type=int, default=8790)
    p.add_argument("--memory-fraction", type=float, default=MEMORY_FRACTION,
                   help="vLLM's share of RAM for weights + KV cache (a 1.5B float32 model with the 2 GiB KV cache "
                        "needs ~0.4 of 24 GiB)")
    p.add_argument("--work", default=str(ROOT / ".cache" / "serving"))
    p.add_argument("--out", default="serving", help="file stem under benchmarks/results/")
    p.add_argument("--rounds", type=int, default=1,
                   help="dense then ARMOR this many times in turn (this VM's speed drifts by 10-20%% over minutes: "
                        "each round's ratio compares runs minutes apart)")
    args = p.parse_args()

    if not (Path(args.armor) / "config.json").exists():
        raise SystemExit(f"no ARMOR checkpoint at {args.armor}: run `python -m benchmarks.quality --only armor-b32` "
                         "or pass --armor DIR")
    dense = args.dense or bundled_dense()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    runs = [(rnd, m) for rnd in range(1, args.rounds + 1) for m in (("dense", dense), ("armor", args.armor))]
    for rnd, (name, model) in runs:
        server = start_server(model, args.engine, args.port, work / f"{name}-server.log", args.memory_fraction)
        try:
            metrics = httpx.get(f"http://127.0.0.1:{args.port}/metrics").text
            memory = {"weights_resident_bytes": sample(metrics, "armor_weights_resident_bytes"),
                      "weights_dense_equivalent_bytes": sample(metrics, "armor_weights_dense_equivalent_bytes"),
                      "process_rss_bytes": sample(metrics, "armor_process_resident_memory_bytes"),
                      "tree_rss_start_bytes": tree_rss_bytes(server.pid)}
            cmd = [sys.executable, "-m", "armor_serve", "bench", "serve", "--base-url", f"http://127.0.0.1:{args.port}",
                   "--tokenizer", model, "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
                   "--output-len", str(args.output_len), "--ignore-eos", "--max-concurrency", args.concurrency,
                   "--warmup", "2", "--result-dir", str(work), "--label", name]
            subprocess.run(cmd, cwd=ROOT, check=True)
            memory["tree_rss_end_bytes"] = tree_rss_bytes(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        points = json.loads((work / f"{name}-sweep.json").read_text())["points"] if "," in args.concurrency else \
            [{k: v for k, v in json.loads((work / f"{name}.json").read_text()).items() if k in ("config", "summary")}]
        rows += [{"model": name, "round": rnd, "checkpoint": model, **memory, "max_concurrency": pt["config"]["max_concurrency"],
                  **{k: pt["summary"][k] for k in ("completed", "failed", "output_throughput", "total_token_throughput",
                                                   "request_throughput", "peak_concurrency")},
                  "ttft_p50_ms": pt["summary"]["ttft_ms"]["median"], "ttft_p99_ms": pt["summary"]["ttft_ms"]["p99"],
                  "tpot_p50_ms": pt["summary"]["tpot_ms"]["median"], "tpot_p99_ms": pt["summary"]["tpot_ms"]["p99"]}
                 for pt in points]
    write(rows, args)


def label(r: dict, rounds: int) -> str:
    return r["model"] if rounds == 1 else f"{r['model']} r{r['round']}"


def ratio_lines(rows: list[dict]) -> list[str]:
    """ARMOR / dense at each concurrency (and round), both measured in this run."""
    dense = {(r.get("round", 1), r["max_concurrency"]): r for r in rows if r["model"] == "dense"}
    out = ["", "ARMOR / dense, same run:", "", "| round | max conc. | output tok/s | TPOT p50 | weights resident | "
           "server+engine RSS |", "|---" * 6 + "|"]
    for r in rows:
        d = dense.get((r.get("round", 1), r["max_concurrency"]))
        if r["model"] != "armor" or d is None:
            continue
        out.append(f"| {r.get('round', 1)} | {r['max_concurrency']} | {r['output_throughput'] / d['output_throughput']:.2f} | "
                   f"{r['tpot_p50_ms'] / d['tpot_p50_ms']:.2f} | "
                   f"{r['weights_resident_bytes'] / d['weights_resident_bytes']:.3f} | "
                   f"{r.get('tree_rss_end_bytes', float('nan')) / d.get('tree_rss_end_bytes', float('nan')):.3f} |")
    return out


def write(rows: list[dict], args) -> None:
    command = "python -m benchmarks.serving " + " ".join(sys.argv[1:])
    import torch

    from model_executors import cpu_kernel

    host = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{os.cpu_count()} CPU cores, no GPU, ARMOR CPU kernel path {cpu_kernel.isa() if cpu_kernel.available() else 'none'}"
    payload = {"command": command, "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "rows": rows,
               "host": host}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    mib = lambda b: f"{b / 2**20:.1f}"
    lines = [f"Command: `{command}` ({payload['date']}, {payload['host']}). {args.engine} engine; random prompts of "
             f"{args.input_len} tokens, exactly {args.output_len} output tokens (ignore_eos), {args.num_prompts} "
             "requests per point, all sent at once under the concurrency cap.", "",
             "| model | max conc. | output tok/s | total tok/s | req/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | "
             "TPOT p99 ms | weights resident MiB | dense-equivalent MiB | API RSS MiB | server+engine RSS MiB |",
             "|---" * 13 + "|"]
    for r in rows:
        lines.append(f"| {label(r, args.rounds)} | {r['max_concurrency']} | {r['output_throughput']:.1f} | "
                     f"{r['total_token_throughput']:.1f} | {r['request_throughput']:.2f} | {r['ttft_p50_ms']:.0f} | "
                     f"{r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} | {r['tpot_p99_ms']:.1f} | "
                     f"{mib(r['weights_resident_bytes'])} | {mib(r['weights_dense_equivalent_bytes'])} | "
                     f"{mib(r['process_rss_bytes'])} | {mib(r.get('tree_rss_end_bytes', float('nan')))} |")
    lines += ratio_lines(rows)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in dict.fromkeys(label(r, args.rounds) for r in rows):
        mine = [r for r in rows if label(r, args.rounds) == model]
        conc = [r["max_concurrency"] for r in mine]
        axes[0].plot(conc, [r["output_throughput"] for r in mine], marker="o", label=model)
        axes[1].plot(conc, [r["ttft_p50_ms"] for r in mine], marker="o", label=f"{model} p50")
        axes[1].plot(conc, [r["ttft_p99_ms"] for r in mine], marker="x", linestyle="--", label=f"{model} p99")
    axes[0].set(xscale="log", xlabel="max concurrency", ylabel="output tokens/s", title="Throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="max concurrency", ylabel="ms", title="Time to first token")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.out}.png", dpi=110)


if __name__ == "__main__":
    main()
