"""End-to-end decode, dense vs ARMOR, on a Llama-3-8B-shaped model with random weights: the transformers
engine with a static KV cache and torch.compile, batch 1/8/32, one process, one device.

    python -m benchmarks.decode_e2e [--device cuda] [--layers 32] [--batches 1,8,32] [--block 128]
    -> benchmarks/results/decode-e2e-<device>.{json,md}

Decode tokens/s = batch * (N2 - N1) / (time to generate N2 tokens - time to generate N1), so prefill and
warm-up cancel out. The ARMOR model is the dense one with every projection of every decoder layer replaced
in place by an ArmorLinear (random 2:4 core, A/B = identity + noise, block --block), so both runs share
embeddings, norms and lm_head; weight bytes are counted from the modules, peak memory from CUDA.
Runs anywhere; the numbers that matter come from a GPU (`--device cuda`); on CPU use a small --layers and
--no-compile as a smoke run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from benchmarks.layers import RESULTS, device_name
from model_executors import sparsity
from model_executors.armor_linear import ArmorLinear

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@torch.no_grad()
def to_armor(model: LlamaForCausalLM, block: int) -> None:
    """Replace every projection by an ArmorLinear whose core is that weight pruned 2:4 (in place, layer by layer)."""
    g = torch.Generator(device=model.device).manual_seed(0)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                dense = getattr(parent, name, None)
                if dense is None:
                    continue
                w = dense.weight
                d_out, d_in = w.shape
                eye = torch.eye(block, device=w.device, dtype=w.dtype)
                a = eye + 0.02 * torch.randn(d_out // block, block, block, device=w.device, dtype=w.dtype, generator=g)
                b = eye + 0.02 * torch.randn(d_in // block, block, block, device=w.device, dtype=w.dtype, generator=g)
                mask = sparsity.top2_mask(w.abs())
                mod = ArmorLinear.from_factors(a, w * mask, mask, b, dense.bias, dtype=w.dtype).to(w.device)
                mod.prepare()  # the executable form (and, on CUDA, the measured decode crossover) now, not in forward
                setattr(parent, name, mod)
                del dense, w


def decode_rate(model, batch: int, short: int, long: int, reps: int) -> dict:
    device = model.device
    prompt = torch.randint(100, 1000, (batch, 32), device=device)

    def run(n):
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static",
                               pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompt, generation_config=cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == prompt.shape[1] + n
        return time.perf_counter() - t0

    run(long), run(short)  # compile + warm-up; generate keeps the longer static cache, so one graph serves both
    t_short = min(run(short) for _ in range(reps))
    t_long = min(run(long) for _ in range(reps))
    return {"batch": batch, "decode_tokens_per_s": batch * (long - short) / (t_long - t_short),
            "ms_per_step": 1e3 * (t_long - t_short) / (long - short)}


def compile_decode_steps(model) -> None:
    """torch.compile (CUDA graphs, one graph) for the one-token decode steps only: the prefill, which the
    N2 - N1 difference cancels anyway, stays eager, so each batch size costs one compilation, not two."""
    torch._dynamo.config.automatic_dynamic_shapes = False  # a static graph per batch size, as each is measured
    eager = model.forward
    compiled = torch.compile(eager, mode="reduce-overhead", fullgraph=True)

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        return (compiled if ids is not None and ids.shape[1] == 1 else eager)(*args, **kwargs)

    model.forward = forward


def measure(model, args, label: str) -> dict:
    if args.compile:
        compile_decode_steps(model)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"model": label, "weight_bytes": weight_bytes(model), "rows": []}
    for batch in args.batches:
        row = decode_rate(model, batch, args.short, args.long, args.reps)
        result["rows"].append(row)
        print(label, json.dumps(row), flush=True)
    if args.device == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    if args.compile:
        del model.forward  # back to the class's forward
        torch._dynamo.reset()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=None, help="shrink the model (smoke runs); default Llama-3-8B's")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--short", type=int, default=16)
    p.add_argument("--long", type=int, default=80)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    shape = dict(LLAMA3_8B, num_hidden_layers=args.layers)
    if args.hidden:
        shape.update(hidden_size=args.hidden, intermediate_size=args.hidden * 7 // 2 // 64 * 64,
                     num_attention_heads=args.hidden // 128, num_key_value_heads=max(1, args.hidden // 512),
                     vocab_size=32000)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(dtype).eval()
    model.generation_config.disable_compile = True  # this script compiles explicitly, the same way for both
    dense = measure(model, args, "dense")
    to_armor(model, args.block)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    armor = measure(model, args, f"ARMOR b{args.block}")
    write(args, dtype, shape, dense, armor)


def write(args, dtype, shape, dense, armor) -> None:
    payload = {"command": "python -m benchmarks.decode_e2e " + " ".join(sys.argv[1:]), "device": args.device,
               "device_name": device_name(args.device), "dtype": str(dtype), "torch": torch.__version__,
               "shape": shape, "compile": args.compile, "date": time.strftime("%Y-%m-%d"), "dense": dense, "armor": armor}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"decode-e2e-{args.device}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"`{payload['command']}` on {payload['device_name']} ({payload['dtype']}, torch {torch.__version__}, "
             f"{payload['date']}; {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, static cache, "
             f"torch.compile {'on' if args.compile else 'off'}). Ratios = ARMOR / dense, same process.", "",
             "| batch | dense tok/s | ARMOR tok/s | ARMOR / dense |", "|---|---|---|---|"]
    for d, a in zip(dense["rows"], armor["rows"]):
        lines.append(f"| {d['batch']} | {d['decode_tokens_per_s']:.1f} | {a['decode_tokens_per_s']:.1f} | "
                     f"{a['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f} |")
    lines += ["", f"Weights: dense {dense['weight_bytes'] / 2**30:.2f} GiB, ARMOR {armor['weight_bytes'] / 2**30:.2f} GiB "
              f"({armor['weight_bytes'] / dense['weight_bytes']:.3f}x, embeddings and lm_head included)."]
    if "peak_cuda_bytes" in dense:
        lines.append(f"Peak CUDA memory: dense {dense['peak_cuda_bytes'] / 2**30:.2f} GiB, ARMOR "
                     f"{armor['peak_cuda_bytes'] / 2**30:.2f} GiB ({armor['peak_cuda_bytes'] / dense['peak_cuda_bytes']:.3f}x).")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
