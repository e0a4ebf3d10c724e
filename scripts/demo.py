"""The README's main job, end to end on the bundled real model:

import SmolLM2-135M-Instruct from its GGUF -> compress it with ARMOR -> check its perplexity against the
dense model -> answer a chat request. Every step is the `armor` CLI a user would run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def armor(*args: str) -> str:
    print(f"\n$ armor {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "armor_serve", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    print(proc.stdout, end="", flush=True)
    if proc.returncode:
        sys.exit(proc.returncode)
    return proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default=".cache/demo", help="where the compressed checkpoint goes")
    p.add_argument("--iters", default="100", help="ARMOR iterations per matrix (paper: 3000)")
    args = p.parse_args()
    work = Path(args.work).resolve()

    dense = armor("model", "import", "smollm2").strip().splitlines()[-1]
    armored = work / "smollm2-armor"
    armor("compress", "--model", dense, "--out", str(armored), "--method", "armor", "--iters", args.iters)
    for model in (dense, str(armored)):
        armor("eval", "--model", model, "--tasks", "wiki_ppl", "--limit", "2")

    print("\n# chat request to the ARMOR model (transformers; the HTTP server is not built yet)", flush=True)
    code = f"""
import torch, model_executors
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(armored)!r})
model = AutoModelForCausalLM.from_pretrained({str(armored)!r}, dtype=torch.float32)
msgs = [{{"role": "user", "content": "What is the capital of France?"}}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=40, do_sample=False)
print("assistant:", tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    summary = json.loads((armored / "compression_summary.json").read_text())
    print(f"\nARMOR: {summary['seconds']}s, proxy loss {summary['mean_proxy_loss']:.4f} "
          f"(NoWag-P start {summary['mean_proxy_loss_nowag_p_start']:.4f}), checkpoint {summary['checkpoint_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
