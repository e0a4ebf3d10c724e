"""`armor bench serve` against a real local server: the numbers add up, arrivals follow the asked process,
errors are counted when the server dies, and the output keeps its schema."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from armor_serve.bench.metrics import arrival_times
from armor_serve.bench.prompts import load_prompts
from conftest import ROOT, run_cli
from server_util import API_KEY, Server

SCHEMA = json.loads((ROOT / "armor_serve" / "bench" / "result.schema.json").read_text())


@pytest.fixture(scope="module")
def server(armor_ckpt):
    srv = Server(armor_ckpt, "transformers").wait_ready()
    yield srv
    srv.stop()


def bench(srv: Server, out: Path, *args: str, label: str = "run") -> subprocess.CompletedProcess:
    return run_cli("bench", "serve", "--base-url", srv.base, "--api-key", API_KEY, "--tokenizer", str(srv.model),
                   "--result-dir", str(out), "--label", label, *args)


def load(out: Path, label: str = "run") -> dict:
    result = json.loads((out / f"{label}.json").read_text())
    jsonschema.validate(result, SCHEMA)
    return result


@pytest.mark.parametrize("burstiness, cv", [(1.0, 1.0), (4.0, 0.5)])
def test_arrival_gaps_have_the_asked_mean_and_shape(burstiness, cv):
    gaps = np.diff(arrival_times(20001, rate=5.0, burstiness=burstiness, rng=np.random.default_rng(0)))
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)  # gamma: CV = 1/sqrt(shape)
    assert np.array_equal(arrival_times(5, 5.0, burstiness, np.random.default_rng(1)),
                          arrival_times(5, 5.0, burstiness, np.random.default_rng(1)))
    assert not arrival_times(3, float("inf"), 1.0, np.random.default_rng(0)).any()


def test_prompt_sources_have_the_asked_lengths(tokenizer, tmp_path):
    for dataset in ("random", "corpus"):
        prompts = load_prompts(dataset, tokenizer, 8, 64, 16, 0.0, seed=0)
        assert all(abs(p.prompt_len - 64) <= 8 and p.output_len == 16 for p in prompts), dataset
        assert prompts == load_prompts(dataset, tokenizer, 8, 64, 16, 0.0, seed=0)  # seeded
    varied = load_prompts("random", tokenizer, 50, 100, 100, 0.5, seed=0)
    assert min(p.output_len for p in varied) >= 50 and max(p.output_len for p in varied) <= 150
    assert len({p.output_len for p in varied}) > 10
    sharegpt = tmp_path / "sg.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"Tell me about the number {i}."},
                                                       {"from": "gpt", "value": "It is a number. " * (i + 1)}]}
                                    for i in range(6)] + [{"id": "no conversation"}]))
    prompts = load_prompts("sharegpt", tokenizer, 4, 0, None, 0.0, seed=0, dataset_path=str(sharegpt))
    assert len(prompts) == 4 and all(p.text.startswith("Tell me") and p.output_len >= 4 for p in prompts)


def test_numbers_add_up(server, tmp_path):
    gen_before = server.metric("armor_generation_tokens_total")
    prompt_before = server.metric("armor_prompt_tokens_total")
    proc = bench(server, tmp_path, "--num-prompts", "6", "--input-len", "32", "--output-len", "8", "--ignore-eos",
                 "--max-concurrency", "3", "--warmup", "1", "--goodput", "ttft:60000", "tpot:5000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Serving Benchmark Result" in proc.stdout
    result = load(tmp_path)
    s, reqs = result["summary"], result["requests"]
    assert s["completed"] == 6 and s["failed"] == 0 and s["errors"] == {}
    assert all(r["output_tokens"] == 8 for r in reqs)  # ignore_eos: exactly the asked length
    assert s["total_output_tokens"] == 48
    # the server's own counters saw the same tokens (plus the one warm-up request)
    assert server.metric("armor_generation_tokens_total") - gen_before == 48 + 8
    warmup_prompt = server.metric("armor_prompt_tokens_total") - prompt_before - s["total_input_tokens"]
    assert 30 <= warmup_prompt <= 40
    assert s["output_throughput"] == pytest.approx(48 / s["duration_s"])
    assert s["request_throughput"] == pytest.approx(6 / s["duration_s"])
    assert s["total_token_throughput"] == pytest.approx((s["total_input_tokens"] + 48) / s["duration_s"])
    assert s["duration_s"] >= max(r["start"] + r["latency"] for r in reqs) - 1e-6
    assert s["peak_concurrency"] == 3  # capped by --max-concurrency, and reached
    first = reqs[0]
    assert 1 <= len(first["itl"]) <= 7 and first["ttft"] + sum(first["itl"]) <= first["latency"]
    tpots = sorted((r["latency"] - r["ttft"]) / 7 * 1000 for r in reqs)
    assert s["tpot_ms"]["median"] == pytest.approx(float(np.median(tpots)))
    assert s["request_goodput"] == pytest.approx(s["request_throughput"])  # loose SLOs: every request is good
    assert (tmp_path / "run.png").stat().st_size > 0 and "| run |" in (tmp_path / "run.md").read_text()


def test_poisson_arrivals_are_sent_on_schedule(server, tmp_path):
    proc = bench(server, tmp_path, "--num-prompts", "20", "--input-len", "16", "--output-len", "1",
                 "--request-rate", "8", "--seed", "3", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sent = np.array(load(tmp_path)["send_times_s"])
    scheduled = arrival_times(20, 8.0, 1.0, np.random.default_rng(3))
    assert np.all(sent >= scheduled - 1e-3) and np.all(sent - scheduled < 0.25)
    assert np.diff(sent).mean() == pytest.approx(np.diff(scheduled).mean(), abs=0.01)


def test_chat_with_sharegpt_and_a_sweep(server, tmp_path):
    sharegpt = tmp_path / "sg.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"Name a colour, {i}."},
                                                       {"from": "gpt", "value": "Blue is a colour."}]}
                                    for i in range(4)]))
    proc = bench(server, tmp_path, "--endpoint", "chat", "--dataset", "sharegpt", "--dataset-path", str(sharegpt),
                 "--num-prompts", "2", "--output-len", "4", "--max-concurrency", "1,2", "--ignore-eos", label="sweep")
    # --ignore-eos: the small-calibration ARMOR fixture's greedy reply may be EOS at once (empty_output);
    # this test is about the sweep, not the reply
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((tmp_path / "sweep-sweep.json").read_text())["points"]
    assert [p["config"]["max_concurrency"] for p in points] == [1, 2]
    assert all(p["summary"]["completed"] == 2 for p in points)
    for label in ("sweep-rateinf-conc1", "sweep-rateinf-conc2"):
        assert load(tmp_path, label)["config"]["endpoint"] == "chat"
    assert (tmp_path / "sweep-sweep.png").exists()


def test_errors_are_counted_when_the_server_dies_midway(armor_ckpt, tmp_path):
    srv = Server(armor_ckpt, "transformers").wait_ready()
    cmd = [sys.executable, "-m", "armor_serve", "bench", "serve", "--base-url", srv.base, "--api-key", API_KEY,
           "--tokenizer", str(armor_ckpt), "--num-prompts", "16", "--request-rate", "2", "--input-len", "16",
           "--output-len", "8", "--warmup", "0", "--result-dir", str(tmp_path), "--label", "run"]
    runner = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while srv.metric("armor_e2e_request_latency_seconds_count") < 2 and time.time() < deadline:
        time.sleep(0.2)  # kill once two requests have finished
    srv.stop(sig=signal.SIGKILL)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err[-3000:]
    s = load(tmp_path)["summary"]
    assert s["completed"] >= 1 and s["failed"] >= 1 and s["completed"] + s["failed"] == 16
    assert set(s["errors"]) <= {"connect_error", "connection_lost"} and sum(s["errors"].values()) == s["failed"]
    assert "connect_error" in out


@pytest.mark.parametrize("args, message", [
    (["--goodput", "latency:5"], "bad --goodput 'latency:5'"),
    (["--tokenizer", "/nonexistent"], "no local tokenizer"),
    (["--request-rate", "fast"], "bad --request-rate"),
    (["--dataset", "sharegpt"], "--dataset sharegpt needs --dataset-path"),
    (["--percentiles", "150"], "bad --percentiles '150'"),
    (["--max-concurrency", "0"], "must be positive"),
])
def test_bad_input_is_one_clear_line(server, tmp_path, args, message):
    proc = bench(server, tmp_path, "--num-prompts", "1", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_tokenizer_comes_from_the_servers_checkpoint_when_not_given(server, tmp_path):
    """The served name is not a directory: the tokenizer is found through /v1/models' `root`, and said so."""
    proc = run_cli("bench", "serve", "--base-url", server.base, "--api-key", API_KEY, "--num-prompts", "2",
                   "--input-len", "16", "--output-len", "4", "--result-dir", str(tmp_path), "--label", "root")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"tokenizer: the server's checkpoint {server.model}" in proc.stderr
    assert load(tmp_path, "root")["summary"]["completed"] == 2


def test_unreachable_server_without_model_id():
    proc = run_cli("bench", "serve", "--base-url", "http://127.0.0.1:9", "--num-prompts", "1")
    assert proc.returncode == 2 and "pass --model" in proc.stderr, proc.stderr[-2000:]
