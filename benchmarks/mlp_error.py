"""How far is each compressed checkpoint's MLP from the dense one, on the dense model's own inputs?

Per listed decoder layer: the relative MLP-output error on held-out Wikipedia tokens, over all tokens, on the outlier
tokens (output norm above 20x the median: Qwen's "massive activations" at each window's first token, whose MLP output
is ~300x a typical token's) and on the rest; and, for every checkpoint after the first, its gate_proj, up_proj and
down_proj swapped one at a time into the first checkpoint's MLP, which tells which matrix carries the error.
Each checkpoint's layers were fitted on inputs from its own compressed predecessors (and ARMOR's towards the dense
path's outputs), so this isolates each MLP's own error, not the model's.

    python -m benchmarks.mlp_error --dense QWEN_DIR --layers 1,2,26 --name mlp-error-qwen2.5-coder-1.5b \
        sparsegpt=.cache/quality-qwen/sparsegpt armor=.cache/quality-qwen/armor-b32-lr

Writes benchmarks/results/NAME.{json,md}. One model in memory at a time (plus the listed layers' MLPs).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from benchmarks.layers import device_name
from benchmarks.residual_bed import RESULTS, held_out_windows, layer_ranges
from compress.evaluation import load_model

MATRICES = ("gate_proj", "up_proj", "down_proj")
OUTLIER = 20.0  # a token whose dense MLP output norm exceeds this many times the median is an outlier token


def mlp_matrices(model, layers: list[int]) -> dict[int, dict]:
    return {i: {m: getattr(model.model.layers[i].mlp, m) for m in MATRICES} for i in layers}


def dense_inputs(model, layers: list[int], windows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each listed layer's MLP inputs (post-attention-norm hidden states) on `windows`, all tokens stacked."""
    seen: dict[int, list] = {i: [] for i in layers}
    hooks = [model.model.layers[i].mlp.register_forward_hook(lambda _m, a, _o, i=i: seen[i].append(a[0].flatten(0, 1)))
             for i in layers]
    try:
        for window in windows:
            model(window[None])
    finally:
        for hook in hooks:
            hook.remove()
    return {i: torch.cat(x) for i, x in seen.items()}


def run_mlp(act, mlp: dict, x: torch.Tensor) -> torch.Tensor:
    return mlp["down_proj"](act(mlp["gate_proj"](x)) * mlp["up_proj"](x))


def errors(act, y: torch.Tensor, mlp: dict, x: torch.Tensor) -> dict:
    """Relative squared MLP-output error of `mlp` (gate/up/down modules) on inputs `x`, against the dense output `y`."""
    e = run_mlp(act, mlp, x) - y
    norms = y.norm(dim=1)
    outlier = norms > OUTLIER * norms.median()

    def rel(rows):
        return float((e[rows] ** 2).sum() / (y[rows] ** 2).sum()) if bool(rows.any()) else None

    return {"all": rel(torch.ones_like(outlier)), "outlier_tokens": rel(outlier), "other_tokens": rel(~outlier),
            "n_outlier_tokens": int(outlier.sum())}


@torch.no_grad()
def measure(dense_dir: Path, checkpoints: dict[str, Path], layers: list[int], windows: torch.Tensor) -> dict:
    """{layer: {row name: errors}}: each checkpoint's MLP, then each later checkpoint's matrices swapped singly into
    the first's."""
    dense = load_model(dense_dir)[1]
    act, reference = dense.model.layers[0].mlp.act_fn, mlp_matrices(dense, layers)
    inputs = dense_inputs(dense, layers, windows)
    del dense
    mlps = {}
    for name, path in checkpoints.items():
        mlps[name] = mlp_matrices(load_model(path)[1], layers)  # keeps the layers' MLPs, frees the rest
        gc.collect()
    first = next(iter(checkpoints))
    out = {}
    for i in layers:
        x = inputs[i]
        y = run_mlp(act, reference[i], x)
        rows = {name: errors(act, y, mlps[name][i], x) for name in checkpoints}
        for name in list(checkpoints)[1:]:
            for m in MATRICES:
                rows[f"{first} + {name}'s {m}"] = errors(act, y, {**mlps[first][i], m: mlps[name][i][m]}, x)
        out[i] = rows
    return out


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")

    def cell(v):
        return "–" if v is None else f"{v:.4f}"

    lines = [f"Command: `{report['command']}` ({report['date']}, {report['machine']}, {report['run_seconds']:.0f} s). "
             f"Relative squared MLP-output error, sum |e|^2 / sum |y|^2, on the dense model's inputs at "
             f"{report['tokens']} held-out Wikipedia tokens; outlier tokens: dense MLP output norm > {OUTLIER:g}x the "
             "median.", "", "| layer | MLP | all tokens | outlier tokens | other tokens | outlier tokens n |",
             "|---|---|---|---|---|---|"]
    for layer, rows in report["layers"].items():
        lines += [f"| {layer} | {row} | {cell(r['all'])} | {cell(r['outlier_tokens'])} | {cell(r['other_tokens'])} | "
                  f"{r['n_outlier_tokens']} |" for row, r in rows.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense", required=True, type=Path)
    ap.add_argument("checkpoints", nargs="+", help="NAME=DIR of compressed checkpoints; the first is the swap base")
    ap.add_argument("--layers", required=True, help="comma-separated decoder layers or first-last ranges")
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--name", default="mlp-error", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if not all("=" in c for c in args.checkpoints):
        ap.error("give each checkpoint as NAME=DIR, e.g. sparsegpt=.cache/quality/sparsegpt")
    checkpoints = {n: Path(d) for n, _, d in (c.partition("=") for c in args.checkpoints)}
    n_layers = AutoConfig.from_pretrained(args.dense).num_hidden_layers
    chosen = layer_ranges(args.layers, n_layers)
    layers = [i for spec in chosen or [] for i in spec]
    if not layers:
        ap.error(f"--layers must name decoder layers 0-{n_layers - 1} of {args.dense}, got {args.layers!r}")
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.dense)
    windows = held_out_windows(tokenizer, args.eval_windows, args.seq_len)
    report = {"command": "python -m benchmarks.mlp_error " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": device_name("cpu"), "tokens": windows.numel(), "checkpoints": {n: str(d) for n, d in
                                                                                       checkpoints.items()},
              "layers": measure(args.dense, checkpoints, layers, windows)}
    report["run_seconds"] = time.time() - t0
    write(report, args.name)


if __name__ == "__main__":
    main()
