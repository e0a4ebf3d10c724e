"""GPU time of the ARMOR layer's pieces (CUDA graph replays, so no CPU launch overhead), a sweep of the Triton
2:4 kernels' split-K, and whether cuSPARSELt's compressed 2:4 operand starts with our kept values, on
Llama-3-8B's gate (14336 x 4096) and down (4096 x 14336) shapes: `python scripts/gpu_probe.py` -> $OUT/probe.json."""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: run from anywhere

import torch
from triton.testing import do_bench_cudagraph

from benchmarks.layers import random_factors
from model_executors import blockdiag, cuda_kernel, triton_blockdiag, triton_decode
from model_executors.armor_linear import ArmorLinear

SHAPES = {"gate": (14336, 4096), "down": (4096, 14336)}


def t(fn):
    """Microseconds per CUDA-graph replay of fn (a string saying why where it cannot be captured or run)."""
    try:
        fn()
        return round(do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3, 2)
    except Exception as err:  # noqa: BLE001  (a candidate that does not compile is a result, not a stop)
        return f"failed: {type(err).__name__}: {str(err)[:100]}"


def pieces(mod, dense, d_in, d_out) -> dict:
    """GPU time of the layer, dense and each piece of the ARMOR layer per token count."""
    vals, meta16, res = mod.sparse_values, mod.sparse_meta.view(torch.int16), {}
    b_blocks = mod.b_blocks.reshape(1, *mod.b_blocks.shape)
    for tokens in (1, 2, 4, 8, 16, 64, 2048):
        x = torch.randn(tokens, d_in, dtype=torch.bfloat16, device="cuda")
        z = torch.randn(tokens, d_out, dtype=torch.bfloat16, device="cuda")
        u = x.unsqueeze(0).contiguous()
        row = {"dense_us": t(lambda: torch.nn.functional.linear(x, dense)), "armor_layer_us": t(lambda: mod(x)),
               "b_triton_us": t(lambda: triton_blockdiag.apply(b_blocks, x)),
               "b_torch_us": t(lambda: torch.einsum("tnj,snij->stni", x.reshape(tokens, -1, 128),
                                                    b_blocks).reshape(1, tokens, d_in)),
               "a_triton_us": t(lambda: triton_blockdiag.apply(mod.a_blocks, z)),
               "a_torch_us": t(lambda: blockdiag.apply(mod.a_blocks, z))}
        if tokens <= triton_decode.GEMV_MAX_TOKENS:
            row["gemv_us"] = t(lambda: triton_decode.sparse24_gemv(u, vals, meta16, [d_out]))
        if tokens <= triton_decode.MAX_TOKENS:
            row["dot_us"] = t(lambda: triton_decode.sparse24_decode(u, vals, meta16, [d_out]))
        if tokens > 8:
            row["unpack24_us"] = t(lambda: triton_decode.unpack24(vals, meta16, [d_out]))
            row["prefill_mm_us"] = t(lambda: cuda_kernel._prefill_mm(u, vals, mod.sparse_meta, [d_out]))
        res[f"tokens_{tokens}"] = row
        print(d_out, d_in, tokens, json.dumps(row), flush=True)
    return res


def sweep(mod, d_out) -> list:
    """Both decode kernels' split-K factors (1 = no split) at a few token counts."""
    vals, meta16, rows = mod.sparse_values, mod.sparse_meta.view(torch.int16), []
    for kernel, tokens in (("sparse24_gemv", 1), ("sparse24_gemv", 4), ("sparse24_decode", 16)):
        u = torch.randn(1, tokens, mod.in_features, dtype=torch.bfloat16, device="cuda")
        for split in (1, 2, 4, 8):
            fn = getattr(triton_decode, kernel)
            rows.append({"kernel": kernel, "tokens": tokens, "split": split,
                         "us": t(lambda: fn(u, vals, meta16, [d_out], split=split))})
        print(rows[-4:], flush=True)
    return rows


def cusparselt_layout(mod) -> dict:
    """Does torch's cuSPARSELt compression keep our kept values, row-major, at the start of its buffer? (Then
    one copy of S could serve both our decode kernels and cuSPARSELt's prefill GEMM.)"""
    try:
        core = mod.dense_core().cuda()
        packed = torch._cslt_compress(core)
        n_vals = mod.sparse_values.numel()
        values = mod.checkpoint_factors()[0].reshape(-1)
        return {"compressed_numel": packed.numel(), "values_numel": n_vals,
                "values_first": bool(torch.equal(packed[:n_vals], values))}
    except Exception as err:  # noqa: BLE001
        return {"failed": f"{type(err).__name__}: {str(err)[:200]}"}


def main() -> None:
    torch.manual_seed(0)
    out, res = Path(os.environ.get("OUT", "/tmp"), "probe.json"), {}
    for name, (d_out, d_in) in SHAPES.items():
        core, mask, a, b = random_factors(d_out, d_in, 128)
        mod = ArmorLinear.from_factors(a, core, mask, b[0], dtype=torch.bfloat16).cuda()
        mod.prepare()
        dense = torch.randn(d_out, d_in, dtype=torch.bfloat16, device="cuda")
        res[name] = {"shape": [d_out, d_in], "limits_gemv_dot": mod._decode_limits, "cusparselt": cusparselt_layout(mod)}
        print(name, res[name], flush=True)
        res[name]["pieces"] = pieces(mod, dense, d_in, d_out)
        out.write_text(json.dumps(res, indent=1))  # kept if a later step runs out of time
        res[name]["split_k"] = sweep(mod, d_out)
        out.write_text(json.dumps(res, indent=1))
        del mod, dense
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
