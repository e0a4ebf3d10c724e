"""Test bed for ARMOR's residual-stream writers: replace only o_proj and down_proj of some decoder layers of a dense
model (SparseGPT, and ARMOR variants started from it), each fitted on the dense model's own inputs, and score every
variant against the dense model on held-out Wikipedia tokens.

It answers, in about an hour on 2 cores, what a whole-model recompression answers in hours: do ARMOR's o_proj /
down_proj help the model or hurt it, and does a variant (`armor_resid`: --residual-row-weights, `armor_lr`:
--scale-value-lr) change that (docs/algorithm.md)? The score that decides is the mean KL divergence from the dense
model's next-token distribution (paired per token, so far less noisy than the perplexity, which is also reported).

    python -m benchmarks.residual_bed --model QWEN_DIR --layers 20-27 --iters 100 --variants armor,armor_lr

Writes benchmarks/results/NAME.{json,md}. Each fitted matrix is kept under --work per variant, iteration count and
calibration size, so a killed run resumes where it stopped, and a finished one re-scores without fitting again.
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

from benchmarks.layer_loss import input_grams
from benchmarks.layers import device_name
from compress import baselines
from compress.armor import ArmorConfig, armor, proxy_loss
from compress.datasets import calibration_samples, wiki_text
from compress.evaluation import load_model
from compress.pipeline import Settings
from compress.residual_weights import residual_row_weights
from compress.weights import CheckpointWeights

MATRICES = ("self_attn.o_proj", "mlp.down_proj")
ARMOR_VARIANTS = {"armor": "default settings", "armor_resid": "--residual-row-weights",
                  "armor_lr": "--scale-value-lr"}
RESULTS = Path(__file__).resolve().parent / "results"


def layer_range(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


def layer_ranges(text: str, n_layers: int) -> list[list[int]] | None:
    """Each comma-separated layer or first-last range of `text`, as its layers; None where one is not numeric,
    empty (last before first) or outside the model's 0..n_layers-1."""
    try:
        chosen = [layer_range(spec) for spec in text.split(",") if spec]
    except ValueError:
        return None
    return chosen if all(r and 0 <= r[0] and r[-1] < n_layers for r in chosen) else None


def fit(variant: str, weight: torch.Tensor, gram: torch.Tensor, start: torch.Tensor | None, rows: torch.Tensor,
        iters: int, settings: Settings) -> dict:
    """One variant of one matrix (ARMOR ones from the SparseGPT `start`), and its plain and row-weighted proxy loss."""
    t = time.time()
    ridged = baselines.ridge(gram, settings.hessian_damp)
    if variant == "sparsegpt":
        w = baselines.sparsegpt(weight, gram, damp=settings.sparsegpt_damp)
    else:
        cfg = ArmorConfig(block_size=settings.block_size, iters=iters, scale_value_lr=variant == "armor_lr")
        row_weights = rows if variant == "armor_resid" else None
        w = armor(weight, ridged, cfg, start=start, row_weights=row_weights).reconstruct()
    return {"weight": w, "plain": proxy_loss(weight, w, ridged), "weighted": proxy_loss(weight, w, ridged, rows),
            "seconds": time.time() - t}


def scored_models(variants: list[str]) -> dict:
    """What each scored model puts in (o_proj, down_proj): every variant, and each ARMOR variant's halves apart."""
    scored = {"dense": ("dense", "dense"), **{v: (v, v) for v in variants}}
    for v in variants[1:]:
        scored[f"{v} o_proj, sparsegpt down_proj"] = (v, "sparsegpt")
        scored[f"sparsegpt o_proj, {v} down_proj"] = ("sparsegpt", v)
    return scored


def held_out_windows(tokenizer, n: int, seq_len: int) -> torch.Tensor:
    """The first n x seq_len tokens of the Wikipedia test split, as n windows (the benchmarks' scoring text)."""
    ids = tokenizer(wiki_text("test"), return_tensors="pt").input_ids[0]
    return ids[: n * seq_len].view(n, seq_len)


def kl_and_nll(dense_logp: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """KL(dense || model) and the model's NLL, each summed over a window's tokens (log-probs per token)."""
    return (dense_logp.exp() * (dense_logp - logp)).sum().item(), F.nll_loss(logp, targets, reduction="sum").item()


def mean_scores(sums: dict, count: int) -> dict:
    """Per scored model: its summed KL and NLL as the mean KL per token and the perplexity."""
    return {m: {"kl": s["kl"] / count, "perplexity": float(torch.tensor(s["nll"] / count).exp()), "tokens": count}
            for m, s in sums.items()}


@torch.no_grad()
def score(model, originals: dict, fitted: dict, windows: torch.Tensor, variants: list[str]) -> dict:
    """Per scored model: mean KL(dense || it) per token and the perplexity, on the same windows."""
    models = scored_models(variants)
    sums = {m: {"kl": 0.0, "nll": 0.0} for m in models}
    count = 0
    for window in windows:
        dense_logp = None
        for scored, picks in models.items():
            for key, linear in originals.items():
                variant = picks[MATRICES.index(key.split(".", 1)[1])]
                linear.weight.copy_(linear.dense_weight if variant == "dense" else fitted[key][variant]["weight"])
            logp = F.log_softmax(model(window[None]).logits[0, :-1].float(), -1)
            if dense_logp is None:
                dense_logp = logp
            kl, nll = kl_and_nll(dense_logp, logp, window[1:])
            sums[scored]["kl"] += kl
            sums[scored]["nll"] += nll
        count += window.numel() - 1
    return mean_scores(sums, count)


def fitted_matrices(model, tokenizer, layers: list[int], variants: list[str], args) -> tuple[dict, dict]:
    """The replaced linears (their dense weight kept) and each one's fitted variants, from --work where kept."""
    rows = residual_row_weights(CheckpointWeights(args.model), model.config.num_hidden_layers)
    originals, fitted, grams = {}, {}, None
    for i in layers:
        for name in MATRICES:
            key = f"{i}.{name}"
            linear = model.model.layers[i].get_submodule(name)
            linear.dense_weight = linear.weight.detach().clone()
            originals[key], fitted[key] = linear, {}
            for variant in variants:
                iters = "" if variant == "sparsegpt" else f".it{args.iters}"
                path = args.work / f"{key}.{variant}{iters}.c{args.calib_samples}x{args.seq_len}.pt"
                if path.is_file():
                    f = torch.load(path)
                else:
                    if grams is None:  # only when something is still to fit: every replaced matrix's, on dense inputs
                        calib = calibration_samples(tokenizer, args.calib_samples, args.seq_len)
                        names = [f"model.layers.{j}.{m}" for j in layers for m in MATRICES]
                        grams = input_grams(model, names, calib, 1, torch.float32)
                    # sparsegpt comes first in `variants`, so each ARMOR variant finds its start
                    start = None if variant == "sparsegpt" else fitted[key]["sparsegpt"]["weight"]
                    f = fit(variant, linear.dense_weight, grams[f"model.layers.{key}"], start, rows[i][name],
                            args.iters, Settings())
                    torch.save(f, path)
                fitted[key][variant] = f
                print(key, variant, f"plain {f['plain']:.5f} weighted {f['weighted']:.5f} {f['seconds']:.0f}s",
                      flush=True)
    return originals, fitted


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"`{report['command']}` ({report['date']}, {report['machine']}): o_proj and down_proj of layers "
             f"{report['layers'][0]}-{report['layers'][-1]} replaced, every other matrix dense; fitted on "
             f"{report['calib_samples']} x {report['seq_len']} calibration tokens with dense inputs, ARMOR "
             f"{report['iters']} iterations from the SparseGPT start ("
             + ", ".join(f"{v}: {ARMOR_VARIANTS[v]}" for v in report["variants"][1:])
             + f"); scored on {report['scores']['dense']['tokens']} held-out Wikipedia tokens. KL: mean "
             "KL(dense || variant) of the next-token distribution, per token.",
             "", "| o_proj, down_proj of those layers | KL from dense | perplexity |", "|---|---|---|"]
    lines += [f"| {v} | {s['kl']:.5f} | {s['perplexity']:.3f} |" for v, s in report["scores"].items()]
    lines += ["", "Mean proxy loss of the replaced matrices (the row-weighted one weighs the residual rows by what "
              "the later norms read), and fit time:", "",
              "| variant | o_proj | down_proj | all, row-weighted | fit seconds |", "|---|---|---|---|---|"]
    def mean(variant: str, kind: str, matrix: str = "") -> float:
        picked = [m[variant][kind] for k, m in report["losses"].items() if k.endswith(matrix)]
        return sum(picked) / len(picked)
    for v in report["variants"]:
        lines.append(f"| {v} | {mean(v, 'plain', 'o_proj'):.5f} | {mean(v, 'plain', 'down_proj'):.5f} | "
                     f"{mean(v, 'weighted'):.5f} | {sum(m[v]['seconds'] for m in report['losses'].values()):.0f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--layers", default="20-27", help="first-last decoder layer whose o_proj/down_proj are replaced")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--variants", default="armor,armor_resid",
                    help=f"comma-separated ARMOR variants scored beside SparseGPT: {', '.join(ARMOR_VARIANTS)}")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path(".cache/residual-bed"), help="fitted matrices (resume)")
    ap.add_argument("--name", default="residual-bed", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    variants = ["sparsegpt"] + args.variants.split(",")
    if unknown := [v for v in variants[1:] if v not in ARMOR_VARIANTS]:
        ap.error(f"unknown --variants {', '.join(unknown)}: pick from {', '.join(ARMOR_VARIANTS)}")
    n_layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
    chosen = layer_ranges(args.layers, n_layers)
    if chosen is None or len(chosen) != 1:  # checked before the model loads
        ap.error(f"--layers must be one first-last range of decoder layers within 0-{n_layers - 1} of {args.model}, "
                 f"e.g. {n_layers // 2}-{n_layers - 1}; got {args.layers!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_model(args.model)
    t0 = time.time()
    layers = chosen[0]
    originals, fitted = fitted_matrices(model, tokenizer, layers, variants, args)
    windows = held_out_windows(tokenizer, args.eval_windows, args.seq_len)
    report = {"command": "python -m benchmarks.residual_bed " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": device_name("cpu"), "model": str(args.model),
              "layers": layers, "iters": args.iters, "variants": variants, "calib_samples": args.calib_samples,
              "seq_len": args.seq_len, "scores": score(model, originals, fitted, windows, variants),
              "losses": {k: {v: {m: f[m] for m in ("plain", "weighted", "seconds")} for v, f in per.items()}
                         for k, per in fitted.items()},
              "run_seconds": time.time() - t0}
    write(report, args.name)


if __name__ == "__main__":
    main()
