"""Layer-output error of each 2:4 method on real layers of the bundled model, on held-out tokens.

    python -m benchmarks.layer_loss        # writes benchmarks/results/layer-loss.{json,md}

For a few projections of the dense SmolLM2 it gathers two Gram matrices H = X^T X of their inputs from
disjoint calibration windows (dense inputs): one to fit on, one held out. Every method is fitted on the
first; the table reports ||(W - What) X^T||^2 / ||W X^T||^2 on the held-out one for NoWag-P, SparseGPT and
ARMOR with either proxy (`diag`: the paper's NoWag proxy from NoWag-P; `hessian`: the full Gram matrix
from SparseGPT, with and without the pipeline's ridge `--hessian-damp`), plus ARMOR's time per matrix.
This is the quantity SparseGPT minimises and the one that decides which proxy ARMOR should use.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compress import baselines
from compress.armor import ArmorConfig, armor, proxy_loss
from compress.pipeline import Settings

RESULTS = Path(__file__).resolve().parent / "results"
MATRICES = ["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.v_proj", "model.layers.20.mlp.gate_proj",
            "model.layers.20.mlp.down_proj"]


@torch.no_grad()
def input_grams(model, names: list[str], windows: torch.Tensor, batch_size: int,
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """X^T X of the inputs of each named submodule over `windows`, summed in `dtype`, returned in float32."""
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def add(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).to(dtype)
            grams[name] = grams.get(name, 0) + x.T @ x
        return add

    hooks = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    for batch in windows.split(batch_size):
        model(batch)
    for h in hooks:
        h.remove()
    return {name: g.float() for name, g in grams.items()}


def gram_matrices(model_dir: Path, names: list[str], samples: int, seq_len: int):
    """Per matrix: its weight, the Gram matrix of `samples` windows and that of `samples` other windows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.datasets import calibration_samples

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    calib = calibration_samples(AutoTokenizer.from_pretrained(model_dir), 2 * samples, seq_len, seed=0)
    fit, held_out = (input_grams(model, names, windows, 8, torch.float64)
                     for windows in (calib[:samples], calib[samples:]))
    return {name: (model.get_submodule(name).weight.data.float().clone(), fit[name], held_out[name]) for name in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="dense checkpoint (default: the imported bundled SmolLM2)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--calib-samples", type=int, default=32, help="windows to fit on (as many more are held out)")
    p.add_argument("--seq-len", type=int, default=512)
    args = p.parse_args()
    from compress.model_import import bundled_gguf, import_gguf

    model = Path(args.model) if args.model else import_gguf(bundled_gguf("smollm2"))
    damp = Settings().hessian_damp
    rows = []
    for name, (w, fit, held_out) in gram_matrices(model, MATRICES, args.calib_samples, args.seq_len).items():
        h = fit.diagonal()
        sgpt, damped = baselines.sparsegpt(w, fit), baselines.ridge(fit, damp)
        row = {"matrix": name, "shape": list(w.shape), "nowag-p": proxy_loss(w, baselines.nowag_p(w, h), held_out),
               "sparsegpt": proxy_loss(w, sgpt, held_out)}
        for proxy, (g, start) in {"diag": (h, None), "hessian": (damped, sgpt), "hessian-nodamp": (fit, sgpt)}.items():
            began = time.time()
            res = armor(w, g, ArmorConfig(iters=args.iters), start=start)
            row[f"armor-{proxy}"] = proxy_loss(w, res.reconstruct(), held_out)
            row[f"armor-{proxy} s"] = round(time.time() - began, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python -m benchmarks.layer_loss" + (f" --iters {args.iters}" if args.iters != 200 else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "layer-loss.json").write_text(json.dumps({"command": command, "settings": vars(args), "rows": rows},
                                                        indent=2) + "\n")
    cols = ["nowag-p", "sparsegpt", "armor-diag", "armor-hessian", "armor-hessian-nodamp", "armor-diag s",
            "armor-hessian s"]
    lines = [f"Command: `{command}`. Layer-output error ||(W - What) X^T||^2 / ||W X^T||^2 on "
             f"{args.calib_samples} x {args.seq_len} held-out calibration tokens (dense inputs), every method fitted "
             f"on {args.calib_samples} x {args.seq_len} other ones; ARMOR b=32, {args.iters} iterations, "
             f"`hessian` with ridge {damp}; `s`: ARMOR seconds on this machine.", "",
             "| matrix | shape | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.5f}" if not c.endswith(" s") else f"{r[c]:.1f}" for c in cols]
        lines.append(f"| {r['matrix']} | {r['shape'][0]}x{r['shape'][1]} | " + " | ".join(cells) + " |")
    (RESULTS / "layer-loss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
