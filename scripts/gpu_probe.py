"""GPU time of the ARMOR layer's pieces (CUDA graph replays, so no CPU launch overhead), and a sweep of the
Triton decode kernel's tile sizes, on a Llama-3-8B gate/up shape: `python scripts/gpu_probe.py` -> $OUT/probe.json."""
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: run from anywhere

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

from benchmarks.layers import random_factors
from model_executors import blockdiag, cuda_kernel, triton_decode
from model_executors.armor_linear import ArmorLinear


def t(fn):
    try:
        return round(do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3, 2)
    except Exception as err:  # noqa: BLE001
        return f"graph failed ({type(err).__name__}: {str(err)[:80]}); eager {do_bench(fn, return_mode='median') * 1e3:.2f}"


torch.manual_seed(0)
d_out, d_in, block = 14336, 4096, 128
core, mask, a, b = random_factors(d_out, d_in, block)
mod = ArmorLinear.from_factors(a, core, mask, b[0], dtype=torch.bfloat16).cuda()
mod.prepare()
dense = torch.randn(d_out, d_in, dtype=torch.bfloat16, device="cuda")
vals, meta16 = mod.sparse_values, mod.sparse_meta.view(torch.int16)
res = {"decode_limit": mod._decode_limit}
for tokens in (1, 16, 64, 2048):
    x = torch.randn(tokens, d_in, dtype=torch.bfloat16, device="cuda")
    u = x.unsqueeze(0).contiguous()
    row = {"dense_us": t(lambda: torch.nn.functional.linear(x, dense)), "armor_layer_us": t(lambda: mod(x)),
           "b_transform_us": t(lambda: cuda_kernel._shard_inputs(x, mod.b_blocks, 1)),
           "a_transform_us": t(lambda: blockdiag.apply(mod.a_blocks, x.new_empty(tokens, d_out)))}
    if tokens <= 64:
        row["triton_decode_us"] = t(lambda: triton_decode.sparse24_decode(u, vals, meta16, [d_out]))
    else:
        row["unpack24_us"] = t(lambda: triton_decode.unpack24(vals, meta16, [d_out]))
        row["prefill_mm_us"] = t(lambda: cuda_kernel._prefill_mm(u, vals, mod.sparse_meta, [d_out]))
    res[f"tokens_{tokens}"] = row
    print(tokens, json.dumps(row), flush=True)
# decode kernel sweep at 1 and 16 tokens
sweep = []
for tokens in (1, 16):
    u = torch.randn(1, tokens, d_in, dtype=torch.bfloat16, device="cuda")
    out = torch.empty(tokens, d_out, dtype=torch.bfloat16, device="cuda")
    for bn, bg, warps, stages in itertools.product((32, 64), (64, 128, 256), (4, 8), (2, 4)):
        try:
            fn = lambda: triton_decode._sparse24_kernel[(d_out // bn,)](vals, meta16, u, out, tokens, d_out, d_in, d_out,
                d_out, BLOCK_N=bn, BLOCK_G=bg, BLOCK_T=16, DOT_FP32=False, num_warps=warps, num_stages=stages)
            fn()
            us = do_bench_cudagraph(fn, rep=20, return_mode="median") * 1e3
        except Exception as err:  # noqa: BLE001
            us = None
        sweep.append({"tokens": tokens, "BLOCK_N": bn, "BLOCK_G": bg, "warps": warps, "stages": stages, "us": us})
best = sorted((s for s in sweep if s["us"]), key=lambda s: (s["tokens"], s["us"]))
for tokens in (1, 16):
    print("best", tokens, [s for s in best if s["tokens"] == tokens][:5], flush=True)
res["sweep"] = sweep
open(os.path.join(os.environ.get("OUT", "/tmp"), "probe.json"), "w").write(json.dumps(res, indent=1))
