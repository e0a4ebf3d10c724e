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
import triton.language as tl
from triton.testing import do_bench_cudagraph

from benchmarks.layers import random_factors
from model_executors import blockdiag, cuda_kernel, triton_decode
from model_executors.armor_linear import ArmorLinear


@triton.jit
def gemv24_kernel(values_ptr, meta_ptr, u_ptr, out_ptr, T, N, K, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                  BLOCK_T: tl.constexpr):
    """A candidate for 1-4 tokens (one shard): no tensor cores, so no operand layout conversion; x gathered by
    the position codes, CUDA-core FMAs on the kept values only."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, BLOCK_T)[None, None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
    for g0 in range(0, K // 4, BLOCK_G):
        code, v0, v1 = triton_decode._kept(values_ptr, meta_ptr, rows, 0, N, K, g0, BLOCK_N, BLOCK_G)
        at = ((g0 + tl.arange(0, BLOCK_G)) * 4)[None, :]
        x0 = tl.load(u_ptr + toks * K + (at + (code & 3))[:, :, None], mask=toks < T, other=0.0)
        x1 = tl.load(u_ptr + toks * K + (at + (code >> 2))[:, :, None], mask=toks < T, other=0.0)
        kept = v0[:, :, None].to(tl.float32) * x0.to(tl.float32) + v1[:, :, None].to(tl.float32) * x1.to(tl.float32)
        acc += tl.sum(kept, axis=1)
    tok = tl.arange(0, BLOCK_T)[None, :]
    tl.store(out_ptr + tok * N + rows[:, None], acc.to(out_ptr.dtype.element_ty), mask=tok < T)


def gemv24(u, values, meta16, bn=32, bg=64, warps=4, stages=2):
    tokens, k = u.shape
    n = values.shape[0]
    out = torch.empty(tokens, n, dtype=u.dtype, device=u.device)
    gemv24_kernel[(n // bn,)](values, meta16, u, out, tokens, n, k, BLOCK_N=bn, BLOCK_G=bg,
                              BLOCK_T=max(1, triton.next_power_of_2(tokens)), num_warps=warps, num_stages=stages)
    return out


def t(fn):
    """Microseconds per CUDA-graph replay of fn (a string saying why where it cannot be captured or run)."""
    try:
        fn()
        return round(do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3, 2)
    except Exception as err:  # noqa: BLE001  (a candidate tile that does not compile is a result, not a stop)
        return f"failed: {type(err).__name__}: {str(err)[:100]}"


def pieces(mod, dense, vals, meta16, d_in, d_out) -> dict:
    """GPU time of the layer, dense and each piece of the ARMOR layer per token count."""
    res = {}
    for tokens in (1, 4, 16, 64, 2048):
        x = torch.randn(tokens, d_in, dtype=torch.bfloat16, device="cuda")
        u = x.unsqueeze(0).contiguous()
        row = {"dense_us": t(lambda: torch.nn.functional.linear(x, dense)), "armor_layer_us": t(lambda: mod(x)),
               "b_transform_us": t(lambda: cuda_kernel._shard_inputs(x, mod.b_blocks, 1)),
               "a_transform_us": t(lambda: blockdiag.apply(mod.a_blocks, x.new_empty(tokens, d_out)))}
        if tokens <= 64:
            row["triton_decode_us"] = t(lambda: triton_decode.sparse24_decode(u, vals, meta16, [d_out]))
        if tokens <= 4:
            ref = triton_decode.sparse24_decode(u, vals, meta16, [d_out]).float()
            row["gemv24_relerr"] = ((gemv24(x, vals, meta16).float() - ref).norm() / ref.norm()).item()
            row["gemv24_us"] = t(lambda: gemv24(x, vals, meta16))
        if tokens > 64:
            row["unpack24_us"] = t(lambda: triton_decode.unpack24(vals, meta16, [d_out]))
            row["prefill_mm_us"] = t(lambda: cuda_kernel._prefill_mm(u, vals, mod.sparse_meta, [d_out]))
        res[f"tokens_{tokens}"] = row
        print(tokens, json.dumps(row), flush=True)
    return res


def sweep(vals, meta16, d_in, d_out) -> list:
    """The decode kernel's and the GEMV candidate's tile sizes, warps and pipeline stages."""
    rows = []
    for tokens in (1, 16):
        u = torch.randn(1, tokens, d_in, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(tokens, d_out, dtype=torch.bfloat16, device="cuda")
        for bn, bg, warps, stages in itertools.product((32, 64), (64, 128), (4, 8), (2, 3)):
            fn = lambda: triton_decode._sparse24_kernel[(d_out // bn,)](
                vals, meta16, u, out, tokens, d_out, d_in, d_out, d_out, BLOCK_N=bn, BLOCK_G=bg, BLOCK_T=16,
                DOT_FP32=False, num_warps=warps, num_stages=stages)
            rows.append({"kernel": "sparse24", "tokens": tokens, "BLOCK_N": bn, "BLOCK_G": bg, "warps": warps,
                         "stages": stages, "us": t(fn)})
    x = torch.randn(1, d_in, dtype=torch.bfloat16, device="cuda")
    for bn, bg, warps in itertools.product((32, 64, 128), (32, 64), (4, 8)):
        rows.append({"kernel": "gemv24", "tokens": 1, "BLOCK_N": bn, "BLOCK_G": bg, "warps": warps,
                     "us": t(lambda: gemv24(x, vals, meta16, bn, bg, warps))})
    ok = sorted((r for r in rows if isinstance(r["us"], float)), key=lambda r: r["us"])
    for kernel, tokens in (("sparse24", 1), ("sparse24", 16), ("gemv24", 1)):
        print("best", kernel, tokens, [r for r in ok if r["kernel"] == kernel and r["tokens"] == tokens][:3], flush=True)
    return rows


def main() -> None:
    torch.manual_seed(0)
    d_out, d_in, block = 14336, 4096, 128
    core, mask, a, b = random_factors(d_out, d_in, block)
    mod = ArmorLinear.from_factors(a, core, mask, b[0], dtype=torch.bfloat16).cuda()
    mod.prepare()
    dense = torch.randn(d_out, d_in, dtype=torch.bfloat16, device="cuda")
    vals, meta16 = mod.sparse_values, mod.sparse_meta.view(torch.int16)
    out = Path(os.environ.get("OUT", "/tmp"), "probe.json")
    res = {"decode_limit": mod._decode_limit, "pieces": pieces(mod, dense, vals, meta16, d_in, d_out)}
    out.write_text(json.dumps(res, indent=1))  # kept if the sweep runs out of time
    res["sweep"] = sweep(vals, meta16, d_in, d_out)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
