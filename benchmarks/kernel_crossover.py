"""Where the packed CPU kernel's paths cross, per weight dtype, each against the dense GEMM, same run: the
direct sparse product with the kept weights expanded into their lanes (decode path), the tiled product (each
kept weight times a vector of tokens; AVX2 and AVX-512 only), and panel decompression + torch's dense GEMM
(prefill path).

    python -m benchmarks.kernel_crossover [--shape 4096x4096] [--tokens 1,2,...] [--name STEM]
    -> benchmarks/results/kernel-crossover-cpu.{json,md} (or STEM.{json,md})

The thresholds compiled into model_executors/csrc/armor_op.cpp (make_active, per kernel path) come from this table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.layers import RESULTS, device_name, onednn_linear, random_armor, time_calls
from model_executors import cpu_kernel

NEVER = 1 << 40
PATHS = {"decode": (NEVER, NEVER), "tiled": (1, NEVER), "prefill": (NEVER, 0)}  # (tiled_min, prefill_min) tokens


def forced(mod, x, bf16: bool, tiled_min: int, prefill_min: int):
    """A call of `mod` on `x` through the path these thresholds force."""
    def call():
        cpu_kernel._C.set_tiled_min_tokens(tiled_min)
        cpu_kernel._C.set_prefill_min_tokens(bf16, prefill_min)
        return mod(x)
    return call


def ratio(row: dict, key: str, dense: str = "dense_s") -> str:
    return f"{row[dense] / row[key]:.2f}" if key in row and dense in row else "-"


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4096x4096", help="d_out x d_in")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--tokens", default="1,4,8,16,32,48,64,96,128,256,512,1024,2048")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--name", default="kernel-crossover-cpu", help="results file stem")
    args = p.parse_args()
    d_out, d_in = (int(v) for v in args.shape.split("x"))
    rows = []
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        bf16 = dtype == torch.bfloat16
        paths = {k: v for k, v in PATHS.items() if k != "tiled" or cpu_kernel._C.has_tiled()}
        mod = random_armor(d_out, d_in, args.block, dtype, "cpu")
        dense_w = torch.randn(d_out, d_in, dtype=dtype) / d_in ** 0.5
        onednn = onednn_linear(dense_w)
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, d_in, dtype=dtype)
            fns = {"dense_s": lambda: torch.nn.functional.linear(x, dense_w)}
            if onednn:
                fns["dense_onednn_s"] = lambda: onednn(x)
            fns.update({f"{path}_s": forced(mod, x, bf16, *mins) for path, mins in paths.items()})
            row = {"dtype": str(dtype), "tokens": tokens, **time_calls(fns, args.reps)}
            cpu_kernel.use_isa(cpu_kernel.isa())  # the measured thresholds again
            row["default_path"] = cpu_kernel._C.path(d_out, d_in, args.block, args.block, 1, tokens, bf16)
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python -m benchmarks.kernel_crossover " + " ".join(sys.argv[1:])
    payload = {"command": command, "device": device_name("cpu"), "threads": torch.get_num_threads(),
               "shape": [d_out, d_in], "block": args.block, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"`{command}` ({payload['device']}, {payload['threads']} threads, torch {torch.__version__}, "
             f"{payload['date']}): ARMOR b{args.block} {d_out}x{d_in}, speed-up = dense time / path time, medians.", "",
             "| dtype | tokens | dense ms | decode path x | tiled x | prefill path x | dense oneDNN ms | "
             "decode x vs oneDNN | tiled x vs oneDNN | prefill x vs oneDNN | path used by default |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['dtype'].removeprefix('torch.')} | {r['tokens']} | {r['dense_s'] * 1e3:.3f} | "
                     f"{ratio(r, 'decode_s')} | {ratio(r, 'tiled_s')} | {ratio(r, 'prefill_s')} | "
                     f"{r['dense_onednn_s'] * 1e3 if 'dense_onednn_s' in r else float('nan'):.3f} | "
                     + " | ".join(ratio(r, f"{p}_s", "dense_onednn_s") for p in PATHS) + f" | {r['default_path']} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
