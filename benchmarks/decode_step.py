"""One forward pass of every projection of a model, as a serving step runs them: dense vs ARMOR, per thread
count, token count and dtype. The weights of all layers (hundreds of MB) stream from DRAM as in serving,
unlike benchmarks.layers, which re-runs one matrix whose weights may sit in the CPU's caches; ARMOR's qkv and
gate_up are fused as vLLM runs them (one kernel call over 3 and 2 shards, each with its own B).

    python -m benchmarks.decode_step [--model smollm2-135m] [--layers N]
    -> benchmarks/results/decode-step-cpu.{json,md} (or --name STEM)

Dense and ARMOR are timed in turn within every repetition (a shared machine's slow spells hit both alike).
Dense is timed twice: torch's F.linear (MKL for float32, oneDNN for bfloat16) and, when vLLM is installed,
vLLM's CPU GEMM (oneDNN, weights prepacked), which is what vLLM's CPU engine runs for dense layers. vLLM's
CPU engine on this 2-core machine runs its model on one thread (it reserves the other core), so 1 thread is
the serving-relevant column. Weights are random and non-zero; ARMOR layers are b = 32.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.layers import RESULTS, SHAPES, device_name, onednn_linear, random_factors, time_calls
from model_executors import cpu_kernel, sparsity


def fused_rows(model: str, name: str) -> list[int]:
    """The row counts of the matrices vLLM fuses into this layer: q, k, v (q as wide as the hidden size, the
    layer's input) and gate, up; one shard otherwise."""
    d_out, d_in = SHAPES[model][name]
    if name == "qkv":
        return [d_in, (d_out - d_in) // 2, (d_out - d_in) // 2]
    return [d_out // 2] * 2 if name == "gate_up" else [d_out]


def fused_armor(shards: list[int], d_in: int, block: int, dtype):
    """A random ARMOR layer as vLLM's CPU engine runs it: one packed-kernel call over its fused shards, each
    reading x through its own B."""
    core, mask, a, b = random_factors(sum(shards), d_in, block, len(shards))
    values, codes = sparsity.pack(core, mask)
    a, b = a.to(dtype), b.to(dtype)
    values = cpu_kernel.to_kernel_layout(values.to(dtype), codes, a, b)
    return lambda x: cpu_kernel.linear(x, values, codes, a, b, shards, None)


def build(model: str, layers: int, dtype) -> list[tuple]:
    """(ARMOR layer, d_in, dense weight, vLLM's oneDNN dense layer or None) for every projection of the model."""
    mats = []
    for _ in range(layers):
        for name in ("qkv", "o", "gate_up", "down"):
            d_out, d_in = SHAPES[model][name]
            dense = torch.randn(d_out, d_in, dtype=dtype) / d_in ** 0.5
            mats.append((fused_armor(fused_rows(model, name), d_in, 32, dtype), d_in, dense, onednn_linear(dense)))
    return mats


def sweep(layers: list[tuple]):
    """One pass over every (layer, input): each output is dropped as soon as it is made, as a model's forward
    frees it (holding them all changes the allocator's behaviour, and with it the page faults each path pays)."""
    def step() -> None:
        for layer, x in layers:
            layer(x)
    return step


@torch.no_grad()
def run_one(args) -> None:
    """In a child process (thread count fixed at start): print one JSON row per token count."""
    dtype = getattr(torch, args.dtype)
    mats = build(args.model, args.layers, dtype)
    for tokens in (int(t) for t in args.tokens.split(",")):
        xs = {d: torch.randn(tokens, d, dtype=dtype) for d in {d for _, d, _, _ in mats}}
        fns = {"armor_s": sweep([(armor, xs[d]) for armor, d, _, _ in mats]),
               "dense_torch_s": sweep([(functools.partial(torch.nn.functional.linear, weight=w), xs[d])
                                       for _, d, w, _ in mats])}
        if all(o for *_, o in mats):
            fns["dense_onednn_s"] = sweep([(o, xs[d]) for _, d, _, o in mats])
        row = {"dtype": args.dtype, "threads": torch.get_num_threads(), "tokens": tokens, **time_calls(fns, args.reps)}
        print("ROW " + json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=[m for m in SHAPES if "gate_up" in SHAPES[m]])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--tokens", default="1,16,256")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--name", default="decode-step-cpu",
                   help="results file stem (e.g. decode-step-cpu-avx2 beside the AVX-512 table)")
    p.add_argument("--dtype", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.dtype:
        return run_one(args)
    rows = []
    for threads in args.threads.split(","):
        for dtype in args.dtypes.split(","):
            cmd = [sys.executable, "-m", "benchmarks.decode_step", "--model", args.model, "--layers", str(args.layers),
                   "--tokens", args.tokens, "--reps", str(args.reps), "--dtype", dtype]
            out = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": threads}, check=True, text=True,
                                 capture_output=True).stdout
            for line in out.splitlines():
                if line.startswith("ROW "):
                    rows.append(json.loads(line[4:]))
                    print(line[4:], flush=True)
    command = "python -m benchmarks.decode_step " + " ".join(sys.argv[1:])
    payload = {"command": command, "device": device_name("cpu"), "model": args.model, "layers": args.layers,
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"`{command}` ({payload['device']}, torch {torch.__version__}, {payload['date']}): all {args.layers} "
             f"layers' qkv/o/gate_up/down of {args.model} in one pass (ms, medians); speed-up = dense / ARMOR b32.", "",
             "| dtype | threads | tokens | dense F.linear ms | dense oneDNN (vLLM) ms | ARMOR ms | x vs F.linear | "
             "x vs oneDNN |", "|---" * 8 + "|"]
    for r in rows:
        one = r.get("dense_onednn_s")
        lines.append(f"| {r['dtype']} | {r['threads']} | {r['tokens']} | {r['dense_torch_s'] * 1e3:.2f} | "
                     f"{one * 1e3 if one else float('nan'):.2f} | {r['armor_s'] * 1e3:.2f} | "
                     f"{r['dense_torch_s'] / r['armor_s']:.2f} | {(one / r['armor_s']) if one else float('nan'):.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
