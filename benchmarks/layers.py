"""Layer speed: dense vs plain 2:4 vs ARMOR (per block size) on real projection shapes.

    python -m benchmarks.layers [--device cpu|cuda] [--dtype float32|bfloat16]
    -> benchmarks/results/layers-<device>-<dtype>.{json,md} (or --name STEM)

Kernels per device:
* dense: F.linear with the dense weight (cuBLAS; on CPU MKL for float32, oneDNN for bfloat16);
* dense oneDNN (CPU, when vLLM is installed): vLLM's CPU GEMM (`onednn_mm`, weights prepacked once), what
  vLLM's CPU engine runs for dense layers; on AMD CPUs it is far faster than MKL's float32 GEMM, so it is
  the baseline that decides serving speed;
* 2:4 (CUDA only): F.linear with the 2:4 weight as a semi-structured sparse tensor (cuSPARSELt or CUTLASS);
  CPUs have no library 2:4 kernel, so the column is left out there;
* ARMOR: ArmorLinear with the kernel that device gets (`auto`): on CPU the packed 2:4 kernel
  (torch.ops.armor.linear: B transform, sparse product from the packed core, A transform, one op); on CUDA
  the 2:4 tensor-core path (model_executors/cuda_kernel.py: B as one batched transform, the Triton decode
  kernel up to the token count measured at load, CUTLASS's 2:4 GEMM beyond on sm8x (on sm9x S unpacked per
  call + cuBLAS: torch's CUTLASS 2:4 is built for sm8x only), A as one batched transform).
Weights are random (never zeros), outputs are checked against the dense product A.S.B; timings are
medians of repeated calls (on GPU CUDA-graph replays timed by triton.testing.do_bench_cudagraph, eager
do_bench for a call that cannot be captured, listed in the row's `timed_eager`; on CPU perf_counter, dense
and ARMOR called in turn within every repetition).
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from model_executors import sparsity
from model_executors.armor_linear import ArmorLinear

RESULTS = Path(__file__).resolve().parent / "results"
# (model, matrix) -> (d_out, d_in)
SHAPES = {
    "smollm2-135m": {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)},
    "llama3-8b": {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "qkv": (6144, 4096), "o": (4096, 4096),
                  "gate": (14336, 4096), "up": (14336, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
    "llama2-70b": {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)},
}


def time_cuda(fn) -> tuple[float, bool]:
    """(median seconds of one call, whether it was a CUDA graph replay): the call captured as a CUDA graph, as
    vLLM and torch.compile's reduce-overhead run decode, so Python's launch overhead does not hide the kernels'
    time; eager where the call cannot be captured."""
    from triton.testing import do_bench, do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median") / 1e3, True
    except RuntimeError:
        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3, False


def time_calls(fns: dict, reps: int) -> dict:
    """Median seconds of one call of each CPU function, the functions run in turn within every repetition, so
    a shared machine's slow spells (other tenants, frequency changes) hit all of them alike and their ratios
    stay fair."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def onednn_linear(w: torch.Tensor):
    """vLLM's CPU dense GEMM on `w` (oneDNN, prepacked once), or None without vLLM."""
    try:
        from vllm import _custom_ops as ops

        handler = ops.create_onednn_mm(w.t(), 32)
    except (ImportError, AttributeError, RuntimeError):
        return None
    return lambda x: ops.onednn_mm(handler, x, None)


def random_factors(d_out: int, d_in: int, block: int, shards: int = 1):
    """Random non-zero ARMOR factors seeded by the shape: (2:4 core, its mask, A blocks, B blocks per shard
    [shards, d_in / block, block, block]), the transforms near the identity as trained ones are."""
    g = torch.Generator().manual_seed(d_out * 7 + d_in + block)
    w = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    mask = sparsity.top2_mask(w.abs())
    a = torch.eye(block) + 0.05 * torch.randn(d_out // block, block, block, generator=g)
    b = torch.eye(block) + 0.05 * torch.randn(shards, d_in // block, block, block, generator=g)
    return w * mask, mask, a, b


@functools.lru_cache(maxsize=3)
def random_armor(d_out: int, d_in: int, block: int, dtype, device) -> ArmorLinear:
    """One module per block size of the shape being timed, reused across its token counts (building a large one
    costs more than timing it)."""
    core, mask, a, b = random_factors(d_out, d_in, block)
    return ArmorLinear.from_factors(a, core, mask, b[0], dtype=dtype).to(device)


@torch.no_grad()
def bench_shape(d_out, d_in, tokens, blocks, dtype, device, reps) -> dict:
    x = torch.randn(tokens, d_in, dtype=dtype, device=device)
    row = {"d_out": d_out, "d_in": d_in, "tokens": tokens}
    dense_w = (torch.randn(d_out, d_in, dtype=dtype, device=device) / d_in ** 0.5)
    calls = {"dense_s": lambda: torch.nn.functional.linear(x, dense_w)}
    onednn = onednn_linear(dense_w) if device == "cpu" else None
    if onednn:
        calls["dense_onednn_s"] = lambda: onednn(x)
    if device == "cuda":
        w24 = dense_w * sparsity.top2_mask(dense_w.abs().float()).to(device)
        try:
            w24 = torch.sparse.to_sparse_semi_structured(w24)
            calls["sparse24_s"] = lambda: torch.nn.functional.linear(x, w24)
        except (RuntimeError, ValueError) as err:  # no column then, rather than timing the dense-with-zeros matrix
            row["sparse_24_note"] = f"no semi-structured kernel: {err}"
    for block in blocks:
        if d_out % block or d_in % block:
            continue
        mod = random_armor(d_out, d_in, block, dtype, device)
        # reference: the folded weight A.S.B (batched block products, never a dense d x d factor)
        ref = x.float() @ mod.dense_weight().float().T
        row[f"armor_b{block}_relerr"] = ((mod(x).float() - ref).norm() / ref.norm()).item()
        row[f"armor_b{block}_kernel"] = mod._mode
        row[f"armor_b{block}_bytes"] = mod.resident_bytes()
        if mod._mode == "sparse":
            from model_executors.cuda_kernel import prefill_path

            row[f"armor_b{block}_triton_gemv_dot_up_to_tokens"] = mod._decode_limits
            row["armor_beyond_that"] = prefill_path(x.device)
        del ref
        calls[f"armor_b{block}_s"] = lambda mod=mod: mod(x)
    if device == "cpu":  # in turn within every repetition: the shared VM's slow spells hit dense and ARMOR alike
        row.update(time_calls(calls, reps))
    else:
        for name, fn in calls.items():
            row[name], graphed = time_cuda(fn)
            if not graphed:
                row.setdefault("timed_eager", []).append(name)
    row["dense_bytes"] = d_out * d_in * dense_w.element_size()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--models", default="smollm2-135m,llama3-8b,llama2-70b")
    p.add_argument("--tokens", default="1,16,128,2048")
    p.add_argument("--blocks", default="32,64,128")
    p.add_argument("--matrices", default=None, help="comma list of matrix names to keep (default: all)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-gflop", type=float, default=None, help="skip calls above this many GFLOP (CPU time)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in the results file, run the rest")
    p.add_argument("--name", help="results file stem (default layers-<device>-<dtype>; e.g. layers-cpu-avx2-float32 "
                   "beside the AVX-512 table)")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    blocks = [int(b) for b in args.blocks.split(",")]
    rows, skipped = [], []
    done_file = RESULTS / f"{results_stem(args, dtype)}.json"
    if args.resume and done_file.exists():
        rows = json.loads(done_file.read_text())["rows"]
    done = {(r["model"], r["matrix"], r["tokens"]) for r in rows}
    for model in args.models.split(","):
        for matrix, (d_out, d_in) in SHAPES[model].items():
            if args.matrices and matrix not in args.matrices.split(","):
                continue
            for tokens in (int(t) for t in args.tokens.split(",")):
                gflop = 2 * d_out * d_in * tokens / 1e9
                if args.max_gflop and gflop > args.max_gflop:
                    skipped.append(f"{model}.{matrix}@{tokens}")
                    continue
                if (model, matrix, tokens) in done:
                    continue
                row = {"model": model, "matrix": matrix, **bench_shape(d_out, d_in, tokens, blocks, dtype, args.device, args.reps)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                write(rows, skipped, args, dtype, blocks)  # after every row: an interrupted run keeps what it measured
    write(rows, skipped, args, dtype, blocks)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from model_executors import cpu_kernel

    info = {}  # first core's fields; the family tells apart CPUs a VM names alike (AMD EPYC: 25 Zen 4, 26 Zen 5)
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = f"{info.get('model name', platform.machine())} (family {info.get('cpu family', '?')})"
    return f"{cpu}, ARMOR kernel path {cpu_kernel.isa() if cpu_kernel.available() else 'none (reference)'}"


def results_stem(args, dtype) -> str:
    return args.name or f"layers-{args.device}-{str(dtype).removeprefix('torch.')}"


def write(rows: list[dict], skipped: list[str], args, dtype, blocks: list[int]) -> None:
    name = device_name(args.device)
    stem = results_stem(args, dtype)
    payload = {"command": "python -m benchmarks.layers " + " ".join(sys.argv[1:]), "device": args.device,
               "device_name": name, "threads": torch.get_num_threads(), "dtype": str(dtype), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "skipped_over_max_gflop": skipped, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    cuda = args.device == "cuda"
    lines = [f"`{payload['command']}` on {args.device} ({name}, {payload['threads']} threads, {payload['dtype']}, "
             f"torch {torch.__version__}, {payload['date']}). Speed-up = dense time / kernel time (>1 is faster than "
             "dense), medians; random non-zero weights; every ARMOR output checked against the folded A.S.B product.",
             "", "| model | matrix | tokens | dense ms | " + ("2:4 x | " if cuda else "") +
             " | ".join(f"ARMOR b{b} x" for b in blocks) + (" | dense oneDNN ms | ARMOR b32 x vs oneDNN" if not cuda else "")
             + " | ARMOR b32 bytes / dense |", "|---" * (5 + cuda + len(blocks) + 2 * (not cuda)) + "|"]
    for r in rows:
        cells = [r["model"], r["matrix"], str(r["tokens"]), f"{r['dense_s'] * 1e3:.3f}"]
        if cuda:
            cells.append(f"{r['dense_s'] / r['sparse24_s']:.2f}" if "sparse24_s" in r else "n/a")
        cells += [f"{r['dense_s'] / r[f'armor_b{b}_s']:.2f}" if f"armor_b{b}_s" in r else "n/a" for b in blocks]
        if not cuda:
            has = "dense_onednn_s" in r and "armor_b32_s" in r
            cells += [f"{r['dense_onednn_s'] * 1e3:.3f}" if has else "n/a",
                      f"{r['dense_onednn_s'] / r['armor_b32_s']:.2f}" if has else "n/a"]
        cells.append(f"{r['armor_b32_bytes'] / r['dense_bytes']:.3f}" if "armor_b32_bytes" in r else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", f"Skipped (over --max-gflop {args.max_gflop}): {', '.join(skipped)}"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
