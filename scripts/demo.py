"""The README's main job, end to end on the bundled real model:

import SmolLM2-135M-Instruct from its GGUF -> compress it with ARMOR -> check its perplexity against the
dense model -> serve it -> answer a chat request -> show the server's metrics. Every step is the `armor` CLI a user would run.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
    p.add_argument("--iters", default="60", help="ARMOR iterations per matrix (paper: 3000; quality table: 200)")
    args = p.parse_args()
    work = Path(args.work).resolve()

    dense = armor("model", "import", "smollm2").strip().splitlines()[-1]
    armored = work / "smollm2-armor"
    # small settings keep the demo to minutes on 2 CPU cores; benchmarks/quality.py uses the larger ones
    armor("compress", "--model", dense, "--out", str(armored), "--method", "armor", "--iters", args.iters,
          "--calib-samples", "16", "--seq-len", "512")
    for model in (dense, str(armored)):
        armor("eval", "--model", model, "--tasks", "wiki_ppl", "--limit", "2")

    print("\n$ armor serve --model ... (vLLM engine with the ARMOR linear method)", flush=True)
    port = 8765
    server = subprocess.Popen([sys.executable, "-m", "armor_serve", "serve", "--model", str(armored), "--port", str(port),
                               "--served-model-name", "smollm2-armor", "--enforce-eager", "--max-model-len", "2048"],
                              cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit("the server did not start")
            time.sleep(2)
        from openai import OpenAI

        client = OpenAI(base_url=base + "/v1", api_key="none")
        question = "What is the capital of France?"
        reply = client.chat.completions.create(model="smollm2-armor", messages=[{"role": "user", "content": question}],
                                               max_tokens=40, temperature=0)
        print(f"\nuser: {question}\nassistant: {reply.choices[0].message.content}\nusage: {reply.usage}")
        print("\n$ curl /metrics  (armor_* series; vLLM's vllm:* series are exported too)")
        for line in httpx.get(base + "/metrics").text.splitlines():
            if line.startswith(("armor_requests_total", "armor_prompt_tokens_total", "armor_generation_tokens_total",
                                "armor_time_to_first_token_seconds_sum", "armor_e2e_request_latency_seconds_sum",
                                "armor_weights_", "armor_layer_kernel_info", "armor_process_resident",
                                "vllm:kv_cache_usage_perc")):
                print(line)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    summary = json.loads((armored / "compression_summary.json").read_text())
    print(f"\nARMOR: {summary['seconds']}s, {summary['proxy']} proxy loss {summary['mean_proxy_loss']:.4f} "
          f"({summary['start_method']} start {summary['mean_proxy_loss_start']:.4f}), "
          f"checkpoint {summary['checkpoint_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
