import json
import math

from conftest import run_cli


def test_eval_end_to_end_on_a_few_examples(dense_model, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("eval", "--model", str(dense_model), "--tasks", "wiki_ppl,lambada_ppl,hellaswag,boolq",
                   "--limit", "8", "--ctx-len", "256", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    r = report["results"]
    assert r["wiki_ppl"]["ctx_len"] == 256 and r["wiki_ppl"]["stride"] == 256
    assert r["wiki_ppl"]["tokens"] == 8 * 255
    assert 5 < r["wiki_ppl"]["perplexity"] < 100  # a real 135M model on Wikipedia text
    assert 1 < r["lambada_ppl"]["perplexity"] < 1000 and 0 <= r["lambada_ppl"]["acc"] <= 1
    for task in ("hellaswag", "boolq"):
        assert r[task]["samples"] == 8
        assert 0 <= r[task]["acc"] <= 1 and 0 <= r[task]["acc_norm"] <= 1
    assert all(math.isfinite(v) for t in r.values() for v in t.values())
    assert "| wiki_ppl | perplexity |" in proc.stdout


def test_eval_bad_inputs(dense_model, tmp_path):
    unknown = run_cli("eval", "--model", str(dense_model), "--tasks", "wiki_ppl,mmlu_pro")
    not_ckpt = run_cli("eval", "--model", str(tmp_path), "--tasks", "wiki_ppl")
    missing = run_cli("eval", "--model", str(tmp_path / "absent"), "--tasks", "wiki_ppl")
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = run_cli("eval", "--model", str(dense_model), "--tasks", "wiki_ppl", "--json", str(blocker / "x.json"))
    for proc, text in ((unknown, "unknown task"), (not_ckpt, "no config.json"), (missing, "does not exist"),
                       (unwritable, "cannot write")):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert text in proc.stderr and "Traceback" not in proc.stderr
