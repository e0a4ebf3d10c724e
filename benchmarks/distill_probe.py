"""End-to-end distillation of a finished checkpoint with the full KL against a live dense model: the reference
`armor compress --distill-epochs` (compress/distillation.py) is measured against, and the way to distil a
checkpoint after the fact.

The phase keeps the dense model's top-64 log-probabilities per position, computed once; this probe runs the dense
model beside the compressed one at every step and takes the KL over the whole vocabulary. It takes a finished
checkpoint, makes its kept 2:4 values (and A, B) trainable, the 2:4 positions fixed, and takes Adam steps on that
KL over the checkpoint's own calibration samples (the Wikipedia samples `armor compress` drew by the
settings it recorded, plus its stored generated ones; the last 4 held out), then scores wiki perplexity (and,
optionally, lm-eval tasks).
A baseline's checkpoint (plain 2:4-pruned linears) is tuned the same way, its zeros re-imposed after each step,
so both sides of a comparison get the same treatment.

    python -m benchmarks.distill_probe --dense SMOL --model .cache/quality/armor-b32 --lr 2e-5 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from compress import datasets
from compress.distillation import trainable
from compress.evaluation import load_model, perplexity, run_lm_eval
from compress.pipeline import GENERATED, SUMMARY, mix_generated

RESULTS = Path(__file__).parent / "results"


def calibration(tokenizer, model_dir: Path) -> torch.Tensor:
    """The calibration samples `armor compress` used for `model_dir` (its recorded settings: the same Wikipedia draw,
    its stored generated texts, the same seeded shuffle)."""
    summary = model_dir / SUMMARY
    if not summary.is_file():
        raise SystemExit(f"{model_dir} has no {SUMMARY}: give a finished `armor compress` output")
    settings = json.loads(summary.read_text())["settings"]
    calib = datasets.calibration_samples(tokenizer, settings["calib_samples"], settings["seq_len"], settings["seed"])
    generated_path = model_dir / GENERATED
    if not generated_path.is_file():
        return calib
    return mix_generated(calib, load_file(generated_path)["input_ids"], settings["seed"])


def kl_to_dense(dense, model, batch: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(dense || model) over the batch's positions (bfloat16 matmuls, float32 softmax)."""
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        teacher = dense(batch).logits.float().log_softmax(-1)
    with torch.autocast("cpu", torch.bfloat16):
        student = model(batch).logits.float().log_softmax(-1)
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="sum") / batch.numel()


def step(opt, dense, model, batch: torch.Tensor, masks: list) -> None:
    """One Adam step on the KL; a baseline's pruned weights get their zeros back after it."""
    opt.zero_grad(set_to_none=True)
    kl_to_dense(dense, model, batch).backward()
    opt.step()
    with torch.no_grad():
        for weight, mask in masks:
            weight.mul_(mask)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="a compressed checkpoint (ARMOR or a baseline)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--tasks", default="", help="lm-eval tasks to score after tuning (500 examples each)")
    p.add_argument("--name", default="distill-probe")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    tokenizer, dense = load_model(args.dense)
    _, model = load_model(args.model)
    calib = calibration(tokenizer, args.model)
    train, held_out = calib[:-4].split(args.micro_batch), calib[-4:].split(args.micro_batch)
    params, masks, swapped = trainable(model)
    opt = torch.optim.Adam(params, lr=args.lr, fused=True)

    def held_out_kl() -> float:
        with torch.no_grad():
            return sum(float(kl_to_dense(dense, model, b)) for b in held_out) / len(held_out)

    started, record = time.time(), {"model": str(args.model), "lr": args.lr, "epochs": args.epochs}
    record["held_out_kl"] = [held_out_kl()]
    for _ in range(args.epochs):
        for batch in train:
            step(opt, dense, model, batch, masks)
        record["held_out_kl"].append(held_out_kl())
    record["tuning_seconds"] = round(time.time() - started, 1)
    for name, tunable in swapped.items():
        model.set_submodule(name, tunable.to_armor())
    ids = tokenizer(datasets.wiki_text("test"), return_tensors="pt").input_ids[0]
    record["wiki_ppl"] = perplexity(model, ids, 2048, 2048, 8)["perplexity"]
    if args.tasks:
        record["tasks"] = run_lm_eval(model, tokenizer, args.tasks.split(","), 500, 8)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    (RESULTS / f"{args.name}.md").write_text(
        f"Command: `python -m benchmarks.distill_probe {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        "| checkpoint | lr | epochs | held-out KL before -> after | tuning s | wiki ppl |\n|---|---|---|---|---|---|\n"
        f"| {args.model.name} | {args.lr:g} | {args.epochs} | {record['held_out_kl'][0]:.4f} -> "
        f"{min(record['held_out_kl']):.4f} | {record['tuning_seconds']} | {record['wiki_ppl']:.2f} |\n")
    print(json.dumps({k: v for k, v in record.items() if k != "tasks"}))
    return record


if __name__ == "__main__":
    main()
