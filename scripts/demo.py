"""The README's main job, end to end on the bundled real model:

import SmolLM2-135M-Instruct from its GGUF -> compress it with ARMOR -> serve the dense and the ARMOR model
in turn, ask each the same question, time its decoding, show the server's metrics -> check both perplexities
-> end with a summary a person reads in five seconds. Every step is the `armor` CLI a user would run.
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


QUESTION = "What is the capital of France?"
METRIC_LINES = ("armor_requests_total", "armor_prompt_tokens_total", "armor_generation_tokens_total",
                "armor_time_to_first_token_seconds_sum", "armor_e2e_request_latency_seconds_sum", "armor_weights_",
                "armor_layer_kernel_info", "armor_process_resident", "vllm:kv_cache_usage_perc")


def perplexity(model: str, out: Path) -> float:
    armor("eval", "--model", model, "--tasks", "wiki_ppl", "--limit", "2", "--json", str(out))
    return json.loads(out.read_text())["results"]["wiki_ppl"]["perplexity"]


def wait_healthy(server: subprocess.Popen, base: str) -> None:
    deadline = time.time() + 600
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            sys.exit("the server did not start")
        time.sleep(2)


def decode_tokens_per_second(client, name: str, tokens: int = 64) -> float:
    """One streamed completion of exactly `tokens` tokens: tokens after the first / time after the first."""
    stamps = []
    for chunk in client.completions.create(model=name, prompt="Once upon a time", max_tokens=tokens, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def serve_and_ask(model: str, name: str, port: int, show_metrics: bool) -> dict:
    """Serve `model` (vLLM engine), ask the question, time decoding, read the resident weight bytes."""
    print(f"\n$ armor serve --model {model} --served-model-name {name} --enforce-eager", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "armor_serve", "serve", "--model", model, "--port", str(port),
                               "--served-model-name", name, "--enforce-eager", "--max-model-len", "2048"], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base)
        from openai import OpenAI

        client = OpenAI(base_url=base + "/v1", api_key="none")
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=40, temperature=0)
        answer = reply.choices[0].message.content
        print(f"\nuser: {QUESTION}\n{name}: {answer}\nusage: {reply.usage}")
        speed = decode_tokens_per_second(client, name)
        metrics = httpx.get(base + "/metrics").text
        if show_metrics:
            print("\n$ curl /metrics  (armor_* series; vLLM's vllm:* series are exported too)")
            print("\n".join(line for line in metrics.splitlines() if line.startswith(METRIC_LINES)))
        resident = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("armor_weights_resident_bytes{"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return {"answer": answer, "decode_tps": speed, "resident": resident}


def summary(dense: dict, armored: dict) -> str:
    rows = [("wiki perplexity (2 windows)", "ppl", "{:.1f}"), ("weights resident (MiB)", "resident", "{:.0f}"),
            ("decode tokens/s (1 stream)", "decode_tps", "{:.1f}")]
    lines = ["", "=" * 72, f"{'':30}{'dense':>12}{'ARMOR 2:4':>12}{'ARMOR/dense':>14}"]
    for label, key, fmt in rows:
        scale = 2**20 if key == "resident" else 1
        d, a = dense[key] / scale, armored[key] / scale
        lines.append(f"{label:30}{fmt.format(d):>12}{fmt.format(a):>12}{a / d:>13.2f}x")
    lines += [f"dense: {QUESTION} -> {dense['answer']!r}", f"ARMOR: {QUESTION} -> {armored['answer']!r}", "=" * 72]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default=".cache/demo", help="where the compressed checkpoint goes")
    p.add_argument("--iters", default="40",
                   help="ARMOR iterations per matrix (paper: 3000; armor compress's default: 40, then block-wise tuning "
                        "and end-to-end distillation)")
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    dense = armor("model", "import", "smollm2").strip().splitlines()[-1]
    armored = work / "smollm2-armor"
    # small settings keep the demo to minutes on 2 CPU cores; benchmarks/quality.py uses the larger ones
    armor("compress", "--model", dense, "--out", str(armored), "--method", "armor", "--iters", args.iters,
          "--calib-samples", "16", "--seq-len", "512")
    results = {}
    for label, model, port in (("dense", dense, 8764), ("armor", str(armored), 8765)):
        results[label] = serve_and_ask(model, f"smollm2-{label}", port, show_metrics=label == "armor")
        results[label]["ppl"] = perplexity(model, work / f"ppl-{label}.json")
    compressed = json.loads((armored / "compression_summary.json").read_text())
    print(f"\nARMOR: {compressed['seconds']}s, {compressed['proxy']} proxy loss {compressed['mean_proxy_loss']:.4f} "
          f"({compressed['start_method']} start {compressed['mean_proxy_loss_start']:.4f}), "
          f"checkpoint {compressed['checkpoint_bytes'] / 1e6:.0f} MB")
    print(summary(results["dense"], results["armor"]))


if __name__ == "__main__":
    main()
