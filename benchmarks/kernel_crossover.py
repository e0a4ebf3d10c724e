"""Where the packed CPU kernel's two paths cross, per weight dtype: the direct sparse product (decode path)
vs panel decompression + torch's dense GEMM (prefill path), each against the dense GEMM, same run.

    python -m benchmarks.kernel_crossover [--shape 4096x4096] [--tokens 1,2,...]
    -> benchmarks/results/kernel-crossover-cpu.{json,md}

The thresholds compiled into model_executors/csrc/armor_op.cpp (make_active, per kernel path) come from this table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.layers import RESULTS, device_name, random_armor, time_call
from model_executors import cpu_kernel

PATHS = {"decode": 1 << 40, "prefill": 0}  # prefill_min_tokens that forces each path


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4096x4096", help="d_out x d_in")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--tokens", default="1,4,8,16,32,48,64,96,128,256,512,1024,2048")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    d_out, d_in = (int(v) for v in args.shape.split("x"))
    rows = []
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        bf16 = dtype == torch.bfloat16
        saved = cpu_kernel._C.prefill_min_tokens(bf16)
        mod = random_armor(d_out, d_in, args.block, dtype, "cpu")
        dense_w = torch.randn(d_out, d_in, dtype=dtype) / d_in ** 0.5
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, d_in, dtype=dtype)
            row = {"dtype": str(dtype), "tokens": tokens,
                   "dense_s": time_call(lambda: torch.nn.functional.linear(x, dense_w), "cpu", args.reps)}
            for path, threshold in PATHS.items():
                cpu_kernel._C.set_prefill_min_tokens(bf16, threshold)
                row[f"{path}_s"] = time_call(lambda: mod(x), "cpu", args.reps)
            cpu_kernel._C.set_prefill_min_tokens(bf16, saved)
            row["default_path"] = "prefill" if tokens >= saved else "decode"
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python -m benchmarks.kernel_crossover " + " ".join(sys.argv[1:])
    payload = {"command": command, "device": device_name("cpu"), "threads": torch.get_num_threads(),
               "shape": [d_out, d_in], "block": args.block, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "rows": rows}
    (RESULTS / "kernel-crossover-cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"`{command}` ({payload['device']}, {payload['threads']} threads, torch {torch.__version__}, "
             f"{payload['date']}): ARMOR b{args.block} {d_out}x{d_in}, speed-up = dense time / path time, medians.", "",
             "| dtype | tokens | dense ms | decode path x | prefill path x | path used by default |", "|---" * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['dtype'].removeprefix('torch.')} | {r['tokens']} | {r['dense_s'] * 1e3:.3f} | "
                     f"{r['dense_s'] / r['decode_s']:.2f} | {r['dense_s'] / r['prefill_s']:.2f} | {r['default_path']} |")
    (RESULTS / "kernel-crossover-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
