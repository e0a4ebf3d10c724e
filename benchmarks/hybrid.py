"""Where does one compressed checkpoint beat another? Score hybrids of the two against the dense model.

Loads the dense model and two compressed checkpoints of it (`--base`, e.g. SparseGPT, and `--other`, e.g. ARMOR),
then scores models that take each decoder layer's attention and MLP from one or the other: all base, all other,
the other's attention only, its MLP only, and the other in each listed range of layers only. Each is scored by the
mean KL divergence from the dense model's next-token distribution on held-out Wikipedia tokens (paired per token, far
less noisy than the perplexity, also reported), as `benchmarks.residual_bed` does.

    python -m benchmarks.hybrid --dense QWEN_DIR --base .cache/quality-qwen/sparsegpt \
        --other .cache/quality-qwen/armor-b32-lr --ranges 0-13,14-27 --name hybrid-qwen2.5-coder-1.5b

Writes benchmarks/results/NAME.{json,md}. Three models in memory: ~14 GB for a 1.5B model in float32.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from benchmarks.layers import device_name
from benchmarks.residual_bed import (RESULTS, held_out_windows, kl_and_nll, layer_range, layer_ranges,
                                     mean_scores)
from compress.evaluation import load_model

PARTS = ("self_attn", "mlp")


def variants(n_layers: int, ranges: list[str]) -> dict[str, list[tuple[bool, bool]]]:
    """Per hybrid, per decoder layer: (attention from --other, MLP from --other)."""
    every = range(n_layers)
    out = {"base": [(False, False)] * n_layers, "other": [(True, True)] * n_layers,
           "other attention, base MLP": [(True, False)] * n_layers,
           "base attention, other MLP": [(False, True)] * n_layers}
    for spec in ranges:
        chosen = set(layer_range(spec))
        out[f"other in layers {spec} only"] = [(i in chosen, i in chosen) for i in every]
    return out


def parts(model) -> list[dict]:
    """Each decoder layer's attention and MLP modules, taken before any hybrid rewires them."""
    return [{part: getattr(layer, part) for part in PARTS} for layer in model.model.layers]


def assemble(model, base_parts: list[dict], other_parts: list[dict], picks: list[tuple[bool, bool]]) -> None:
    """Point `model`'s decoder layers' attention and MLP at the picked checkpoint's modules (no copies)."""
    for layer, base, other, pick in zip(model.model.layers, base_parts, other_parts, picks):
        for part, from_other in zip(PARTS, pick):
            setattr(layer, part, (other if from_other else base)[part])


@torch.no_grad()
def score(dense, hybrid, base_parts, other_parts, hybrids: dict, windows: torch.Tensor) -> dict:
    sums = {name: {"kl": 0.0, "nll": 0.0} for name in ["dense", *hybrids]}
    count = 0
    for window in windows:
        dense_logp = F.log_softmax(dense(window[None]).logits[0, :-1].float(), -1)
        sums["dense"]["nll"] += F.nll_loss(dense_logp, window[1:], reduction="sum").item()
        for name, picks in hybrids.items():
            assemble(hybrid, base_parts, other_parts, picks)
            logp = F.log_softmax(hybrid(window[None]).logits[0, :-1].float(), -1)
            kl, nll = kl_and_nll(dense_logp, logp, window[1:])
            sums[name]["kl"] += kl
            sums[name]["nll"] += nll
        count += window.numel() - 1
    return mean_scores(sums, count)


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    base_kl = report["scores"]["base"]["kl"]
    lines = [f"Command: `{report['command']}` ({report['date']}, {report['machine']}, {report['run_seconds']:.0f} s). "
             f"base = `{report['base']}`, other = `{report['other']}`; scored on {report['scores']['dense']['tokens']} "
             "held-out Wikipedia tokens. KL: mean KL(dense || hybrid) of the next-token distribution, per token.",
             "", "| hybrid | KL from dense | / base's | perplexity |", "|---|---|---|---|"]
    lines += [f"| {m} | {s['kl']:.5f} | {s['kl'] / base_kl:.2f} | {s['perplexity']:.3f} |"
              for m, s in report["scores"].items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense", required=True, type=Path)
    ap.add_argument("--base", required=True, type=Path, help="compressed checkpoint the hybrids start from")
    ap.add_argument("--other", required=True, type=Path, help="compressed checkpoint whose parts are swapped in")
    ap.add_argument("--ranges", default="", help="comma-separated first-last layer ranges taken from --other alone")
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--name", default="hybrid", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    t0 = time.time()
    ranges = [r for r in args.ranges.split(",") if r]
    n_layers = AutoConfig.from_pretrained(args.dense).num_hidden_layers
    if layer_ranges(args.ranges, n_layers) is None:  # checked before any model loads
        ap.error(f"--ranges must be first-last decoder layers within 0-{n_layers - 1} of {args.dense}, "
                 f"e.g. 0-{n_layers // 2 - 1},{n_layers // 2}-{n_layers - 1}; got {args.ranges!r}")
    tokenizer, dense = load_model(args.dense)
    base, other = load_model(args.base)[1], load_model(args.other)[1]
    if len(base.model.layers) != n_layers or len(other.model.layers) != n_layers:
        ap.error("--dense, --base and --other must be the same model (their decoder layer counts differ)")
    hybrids = variants(n_layers, ranges)
    windows = held_out_windows(tokenizer, args.eval_windows, args.seq_len)
    scores = score(dense, base, parts(base), parts(other), hybrids, windows)
    report = {"command": "python -m benchmarks.hybrid " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": device_name("cpu"), "dense": str(args.dense), "base": str(args.base), "other": str(args.other),
              "scores": scores, "run_seconds": time.time() - t0}
    write(report, args.name)


if __name__ == "__main__":
    main()
