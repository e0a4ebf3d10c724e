"""Test bed for --residual-row-weights: replace only o_proj and down_proj of some decoder layers of a dense model
(SparseGPT, ARMOR, ARMOR with residual row weights), each fitted on the dense model's own inputs, and score every
variant against the dense model on held-out Wikipedia tokens.

It answers, in well under an hour on 2 cores, what a whole-model recompression answers in hours: does weighing the
residual-stream rows by what the later norms read make ARMOR's o_proj / down_proj help the model instead of hurting
it (docs/algorithm.md, "Residual row weights")? The score that decides is the mean KL divergence from the dense
model's next-token distribution (paired per token, so far less noisy than the perplexity, which is also reported).

    python -m benchmarks.residual_bed --model QWEN_DIR --layers 20-27 --iters 20

Writes benchmarks/results/NAME.{json,md}. Fitted matrices are kept under --work, so a killed run resumes where it
stopped, and a finished one re-scores without fitting again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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
VARIANTS = ("sparsegpt", "armor", "armor_resid")
RESULTS = Path(__file__).resolve().parent / "results"


def layer_range(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


def fit(weight: torch.Tensor, gram: torch.Tensor, rows: torch.Tensor, iters: int, settings: Settings) -> dict:
    """The three variants of one matrix, and their plain and row-weighted proxy losses."""
    start = baselines.sparsegpt(weight, gram, damp=settings.sparsegpt_damp)
    ridged = baselines.ridge(gram, settings.hessian_damp)
    cfg = ArmorConfig(block_size=settings.block_size, iters=iters)
    out = {"sparsegpt": start,
           "armor": armor(weight, ridged, cfg, start=start).reconstruct(),
           "armor_resid": armor(weight, ridged, cfg, start=start, row_weights=rows).reconstruct()}
    s = (rows / rows.mean()).sqrt()[:, None]
    losses = {v: {"plain": proxy_loss(weight, w, ridged), "weighted": proxy_loss(weight * s, w * s, ridged)}
              for v, w in out.items()}
    return {"weights": out, "losses": losses}


# What each scored model puts in (o_proj, down_proj): the three variants, and the two halves of ARMOR apart
SCORED = {"dense": ("dense", "dense"), **{v: (v, v) for v in VARIANTS},
          "armor o_proj, sparsegpt down_proj": ("armor", "sparsegpt"),
          "sparsegpt o_proj, armor down_proj": ("sparsegpt", "armor")}


@torch.no_grad()
def score(model, originals: dict, fitted: dict, windows: torch.Tensor) -> dict:
    """Per scored model: mean KL(dense || it) per token and the perplexity, on the same windows."""
    sums = {m: {"kl": 0.0, "nll": 0.0} for m in SCORED}
    count = 0
    for window in windows:
        dense_logp = None
        for scored, picks in SCORED.items():
            for key, linear in originals.items():
                variant = picks[MATRICES.index(key.split(".", 1)[1])]
                linear.weight.copy_(linear.dense_weight if variant == "dense" else fitted[key]["weights"][variant])
            logp = F.log_softmax(model(window[None]).logits[0, :-1].float(), -1)
            if dense_logp is None:
                dense_logp = logp
            sums[scored]["kl"] += (dense_logp.exp() * (dense_logp - logp)).sum().item()
            sums[scored]["nll"] += F.nll_loss(logp, window[1:], reduction="sum").item()
        count += window.numel() - 1
    return {m: {"kl": s["kl"] / count, "perplexity": float(torch.tensor(s["nll"] / count).exp()),
                "tokens": count} for m, s in sums.items()}


def fitted_matrices(model, tokenizer, layers: list[int], args) -> tuple[dict, dict]:
    """The replaced linears (their dense weight kept) and each one's fitted variants, from --work where kept."""
    rows = residual_row_weights(CheckpointWeights(args.model), model.config.num_hidden_layers)
    originals, fitted, grams = {}, {}, None
    for i in layers:
        for name in MATRICES:
            key = f"{i}.{name}"
            linear = model.model.layers[i].get_submodule(name)
            linear.dense_weight = linear.weight.detach().clone()
            originals[key] = linear
            path = args.work / f"{key}.pt"
            if not path.is_file():
                if grams is None:  # only when some matrix is still to fit: every replaced matrix's, on the dense model
                    calib = calibration_samples(tokenizer, args.calib_samples, args.seq_len)
                    names = [f"model.layers.{j}.{m}" for j in layers for m in MATRICES]
                    grams = input_grams(model, names, calib, 1, torch.float32)
                t = time.time()
                gram = grams[f"model.layers.{key}"]
                result = fit(linear.dense_weight, gram, rows[i][name], args.iters, Settings())
                result["seconds"] = time.time() - t
                torch.save(result, path)
            fitted[key] = torch.load(path)
            print(key, json.dumps(fitted[key]["losses"]), f"{fitted[key]['seconds']:.0f}s", flush=True)
    return originals, fitted


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"`{report['command']}` ({report['date']}, {report['machine']}): o_proj and down_proj of layers "
             f"{report['layers'][0]}-{report['layers'][-1]} replaced, every other matrix dense; fitted on "
             f"{report['calib_samples']} x {report['seq_len']} calibration tokens with dense inputs, ARMOR "
             f"{report['iters']} iterations from the SparseGPT start; scored on {report['scores']['dense']['tokens']} "
             "held-out Wikipedia tokens. KL: mean KL(dense || variant) of the next-token distribution, per token.",
             "", "| o_proj, down_proj of those layers | KL from dense | perplexity |", "|---|---|---|"]
    lines += [f"| {v} | {s['kl']:.5f} | {s['perplexity']:.3f} |" for v, s in report["scores"].items()]
    losses = report["losses"].values()
    lines += ["", "Mean proxy loss over the replaced matrices (plain / residual-row-weighted):", "",
              "| variant | plain | weighted |", "|---|---|---|"]
    for v in VARIANTS:
        plain = sum(m[v]["plain"] for m in losses) / len(losses)
        weighted = sum(m[v]["weighted"] for m in losses) / len(losses)
        lines.append(f"| {v} | {plain:.5f} | {weighted:.5f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--layers", default="20-27", help="first-last decoder layer whose o_proj/down_proj are replaced")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path(".cache/residual-bed"), help="fitted matrices (resume)")
    ap.add_argument("--name", default="residual-bed", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_model(args.model)
    t0 = time.time()
    layers = layer_range(args.layers)
    originals, fitted = fitted_matrices(model, tokenizer, layers, args)
    test_ids = tokenizer(wiki_text("test"), return_tensors="pt").input_ids[0]
    windows = test_ids[: args.eval_windows * args.seq_len].view(args.eval_windows, args.seq_len)
    report = {"command": "python -m benchmarks.residual_bed " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": device_name("cpu"), "model": str(args.model),
              "layers": layers, "iters": args.iters, "calib_samples": args.calib_samples,
              "seq_len": args.seq_len, "scores": score(model, originals, fitted, windows),
              "fit_seconds": sum(f["seconds"] for f in fitted.values()), "run_seconds": time.time() - t0,
              "losses": {k: f["losses"] for k, f in fitted.items()}}
    write(report, args.name)


if __name__ == "__main__":
    main()
