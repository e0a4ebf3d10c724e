"""vLLM's offline engine (`vllm.LLM`: no HTTP server, no load tester) on one fixed batch, dense vs ARMOR in
alternating child processes: the engine's own time for benchmarks.serving's concurrency-16 workload (16 random
prompts of 256 tokens, 64 output tokens each, ignore_eos), which on a 2-core VM the server's and client's noise
hides (its rounds move 5-10%).

    python -m benchmarks.engine_throughput [--dense DIR] [--armor DIR] [--rounds 2] [--reps 3]
    -> benchmarks/results/engine-throughput.{json,md} (or --name STEM)

Each round runs one process per model (dense first): it warms up, then times, --reps times each, the prefill
alone (every prompt, 1 output token) and the whole batch (prompts + --output-len tokens); the table gives each
process's median and ARMOR / dense per round (as throughput: dense time / ARMOR time). float32, eager mode,
prefix caching off (every repetition prefills the same prompts anew), vLLM's default scheduler (2048 tokens
per step).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.serving import RESULTS, ROOT, bundled_dense, engine_env


def run_child(args) -> None:
    """Time one model; print one JSON row."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=args.child, dtype="float32", enforce_eager=True, max_model_len=1024,
              gpu_memory_utilization=args.memory_fraction, enable_prefix_caching=False)
    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, 40000) for _ in range(args.input_len)])
               for _ in range(args.num_prompts)]
    prefill = SamplingParams(max_tokens=1, ignore_eos=True)
    whole = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], whole, use_tqdm=False)  # warm-up
    times = {"prefill_s": [], "whole_s": []}
    for _ in range(args.reps):
        for key, params in (("prefill_s", prefill), ("whole_s", whole)):
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            times[key].append(time.perf_counter() - start)
    print("ROW " + json.dumps({key: statistics.median(v) for key, v in times.items()} | {"all": times}), flush=True)


def measure(model: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.engine_throughput", "--child", model, "--reps", str(args.reps),
           "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len), "--output-len",
           str(args.output_len), "--memory-fraction", str(args.memory_fraction)]
    out = subprocess.run(cmd, cwd=ROOT, env=engine_env(), text=True, capture_output=True)
    rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if out.returncode or not rows:
        raise SystemExit(f"engine run for {model} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(rows[-1])


def write(rows: list[dict], args, command: str) -> None:
    from benchmarks.layers import device_name

    payload = {"command": command, "device": device_name("cpu"), "date": time.strftime("%Y-%m-%d"),
               "workload": {k: getattr(args, k) for k in ("num_prompts", "input_len", "output_len", "reps")},
               "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    total = args.num_prompts * args.output_len
    lines = [f"Command: `{command}` ({payload['date']}, {payload['device']}). vLLM offline engine, float32, eager; "
             f"{args.num_prompts} random prompts of {args.input_len} tokens, {args.output_len} output tokens each "
             f"(ignore_eos), all submitted at once; medians of {args.reps} repetitions per process.", "",
             "| round | model | prefill s | whole batch s | output tok/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['model']} | {r['prefill_s']:.2f} | {r['whole_s']:.2f} | "
                     f"{total / r['whole_s']:.1f} |")
    lines += ["", "ARMOR / dense, same round (throughput: dense time / ARMOR time):", "",
              "| round | prefill | whole batch (output tok/s) |", "|---|---|---|"]
    for rnd in sorted({r["round"] for r in rows}):
        d, a = (next(r for r in rows if r["round"] == rnd and r["model"] == m) for m in ("dense", "armor"))
        lines.append(f"| {rnd} | {d['prefill_s'] / a['prefill_s']:.2f} | {d['whole_s'] / a['whole_s']:.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", help="dense checkpoint (default: the imported bundled SmolLM2)")
    p.add_argument("--armor", default=str(ROOT / ".cache" / "quality" / "armor-b32"), help="ARMOR checkpoint")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--memory-fraction", type=float, default=0.3, help="vLLM's share of RAM (weights + KV cache)")
    p.add_argument("--name", default="engine-throughput", help="results file stem")
    p.add_argument("--child", help=argparse.SUPPRESS)  # child mode: the model to time
    args = p.parse_args()
    if args.child:
        return run_child(args)
    if not (Path(args.armor) / "config.json").exists():
        raise SystemExit(f"no ARMOR checkpoint at {args.armor}: pass --armor DIR (an `armor compress` output)")
    dense = args.dense or bundled_dense()
    rows = []
    for rnd in range(1, args.rounds + 1):
        for name, model in (("dense", dense), ("armor", args.armor)):
            rows.append({"round": rnd, "model": name, "path": model, **measure(model, args)})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, args, "python -m benchmarks.engine_throughput " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
