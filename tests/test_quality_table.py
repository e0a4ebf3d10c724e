"""The quality benchmark's table: `--merge` keeps an earlier run's rows (with the command that made them) and
replaces the rows this run redoes; notes and the gap closed are rendered from the rows."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import quality


def _row(config: str, ppl: float) -> dict:
    return {"config": config, "results": {"wiki_ppl": {"perplexity": ppl}}}


def test_merge_keeps_earlier_rows_and_replaces_redone_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    earlier = {"command": "python -m benchmarks.quality --only dense,sparsegpt,armor-b32", "date": "2026-12-01",
               "rows": [_row("dense", 14.5), _row("sparsegpt", 25.1), {**_row("armor-b32", 24.9), "note": "old code"}]}
    (tmp_path / "q.json").write_text(json.dumps(earlier))

    rows = quality.merge_rows(tmp_path / "q.json", {"armor-b32": {"config": "armor-b32"},
                                                    "armor-b32-lr": {"config": "armor-b32-lr"}})
    assert list(rows) == ["dense", "sparsegpt", "armor-b32", "armor-b32-lr"]
    assert rows["dense"]["run"] == {"command": earlier["command"], "date": "2026-12-01"}
    assert rows["armor-b32"] == {"config": "armor-b32"}  # redone: neither the old results nor the old command
    assert quality.merge_rows(tmp_path / "missing.json", {"a": {"config": "a"}}) == {"a": {"config": "a"}}

    rows["armor-b32"] = {**_row("armor-b32", 19.8), "note": "new code"}
    rows["armor-b32-lr"] = _row("armor-b32-lr", 17.1)
    # runs with the end-to-end distillation (their phase_seconds say so): a baseline's is not a one-shot baseline
    distill = {"phase_seconds": {"distill": 12.0}, "compress_seconds": 20.0}
    rows["sparsegpt-distill"] = {**_row("sparsegpt-distill", 20.3), **distill}
    rows["armor-b32-distill"] = {**_row("armor-b32-distill", 16.0), **distill,
                                 "peak_rss_bytes": {"layer_wise": 3 * 2**30, "with_distillation": 13.5 * 2**30,
                                                    "per_layer": [3 * 2**30, 2.2 * 2**30, 2.5 * 2**30, 2.4 * 2**30]}}
    args = argparse.Namespace(name="q", model=None, ppl_only=True, ppl_windows=4, limit=100, work=str(tmp_path))
    quality.write(list(rows.values()), args)
    table = (tmp_path / "q.md").read_text()
    assert "armor-b32-lr closes 75% of the gap between the best baseline (sparsegpt, 25.10) and dense (14.50): 17.10\n" \
        in table
    assert ("armor-b32-distill closes 86% of the gap between the best baseline (sparsegpt, 25.10) and dense (14.50): "
            "16.00; 74% of the gap from the best baseline distilled too (sparsegpt-distill, 20.30)") in table
    assert f"* dense, sparsegpt: `{earlier['command']}` (2026-12-01)" in table
    assert "* armor-b32: new code" in table and "old code" not in table
    assert "armor-b32-lr:" not in table
    assert ("* armor-b32-distill: 12 (total 20); peak RSS layer wise 3.0 GiB; peak RSS with distillation 13.5 GiB; "
            "per-layer peak, layers 2-4: 2.2-2.5 GiB (last 2.4)\n") in table
    assert "* sparsegpt-distill: 12 (total 20)\n" in table  # recorded by runs since 2026-12-07 only
    assert [r["config"] for r in json.loads((tmp_path / "q.json").read_text())["rows"]] == list(rows)


def test_merge_run_evaluates_only_the_rows_it_redoes(tmp_path, monkeypatch):
    """Regression: the zero-shot pass once went over every row, the kept ones too (a dense re-evaluation)."""
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    earlier = {"command": "earlier", "date": "2026-12-01",
               "rows": [{**_row("dense", 14.5), "checkpoint": "dense-dir"}, {**_row("sparsegpt", 25.1), "checkpoint": "s"}]}
    (tmp_path / "q.json").write_text(json.dumps(earlier))
    compressed, evaluated = [], []

    def fake_cli(*args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "compression_summary.json").write_text(json.dumps(
            {"seconds": 1.0, "overhead_pct_of_dense": 2.8, "checkpoint_bytes": 1, "mean_proxy_loss": 0.1}))
        compressed.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    def fake_evaluate(row, path, task_args):
        evaluated.append((row["config"], task_args[1].split(",")[0]))
        if task_args[1] == "wiki_ppl":
            row.setdefault("results", {})["wiki_ppl"] = {"perplexity": 17.1}

    monkeypatch.setattr(quality, "armor", fake_cli)
    monkeypatch.setattr(quality, "evaluate", fake_evaluate)
    monkeypatch.setattr(sys, "argv", ["quality", "--model", "M", "--work", str(tmp_path / "work"), "--name", "q",
                                      "--only", "armor-b32-lr", "--merge"])
    quality.main()
    assert [list(a[a.index("--out") + 1:]) for a in compressed] == [[str(tmp_path / "work" / "armor-b32-lr"), "--method",
                                                               "armor", "--block-size", "32", "--calib-samples", "32",
                                                               "--iters", "100", "--tune-epochs", "0", "--tune-lr", "1e-4",
                                                               "--calib-generated", "0", "--no-mlp-row-weights",
                                                               "--distill-epochs", "0", "--scale-value-lr"]]
    assert evaluated == [("armor-b32-lr", task) for task in quality.TASKS.split(",")]
    assert [r["config"] for r in json.loads((tmp_path / "q.json").read_text())["rows"]] == ["dense", "sparsegpt",
                                                                                           "armor-b32-lr"]


def test_a_bfloat16_run_evaluates_in_bfloat16_and_keeps_its_reports_apart(tmp_path, monkeypatch):
    """--dtype reaches armor eval, names the cached reports (a float32 report is never reused for bfloat16) and the
    table says which dtype it was evaluated in."""
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    calls = []

    def fake_evaluate(row, path, task_args):
        calls.append((path.name, task_args[task_args.index("--dtype") + 1]))
        row.setdefault("results", {})["wiki_ppl"] = {"perplexity": 14.5}

    monkeypatch.setattr(quality, "evaluate", fake_evaluate)
    monkeypatch.setattr(sys, "argv", ["quality", "--model", "M", "--work", str(tmp_path / "work"), "--name", "q",
                                      "--only", "dense", "--dtype", "bfloat16"])
    quality.main()
    assert calls == [("dense.bfloat16.ppl.json", "bfloat16")] + [
        (f"dense.bfloat16.{task}.json", "bfloat16") for task in quality.TASKS.split(",")[1:]]
    assert "Evaluated in bfloat16." in (tmp_path / "q.md").read_text()


def test_zero_shot_tasks_resume_task_by_task(tmp_path, monkeypatch):
    """A row's tasks run one `armor eval` each: a run cut short keeps the reports it finished and redoes only the rest;
    a finished report of all tasks at once (before this) is read as it is."""
    ran = []

    def fake_cli(*args):
        task = args[args.index("--tasks") + 1]
        ran.append(task)
        Path(args[args.index("--json") + 1]).write_text(json.dumps({"results": {task: {"acc": 0.5}}}))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(quality, "armor", fake_cli)
    args = argparse.Namespace(limit=400, dtype="float32")
    (tmp_path / "a.hellaswag.json").write_text(json.dumps({"results": {"hellaswag": {"acc": 0.4}}}))  # finished before
    (tmp_path / "a.piqa.json").write_text(json.dumps({"status": "running"}))  # cut short: redone
    row = {"config": "a", "checkpoint": "ckpt"}
    quality.evaluate_tasks(row, tmp_path, "", args, lambda: None)
    tasks = quality.TASKS.split(",")[1:]
    assert ran == [t for t in tasks if t != "hellaswag"]
    assert row["results"]["hellaswag"] == {"acc": 0.4} and set(row["results"]) == set(tasks)

    ran.clear()
    (tmp_path / "b.tasks.json").write_text(json.dumps({"results": {"boolq": {"acc": 0.6}}}))
    row = {"config": "b", "checkpoint": "ckpt"}
    quality.evaluate_tasks(row, tmp_path, "", args, lambda: None)
    assert ran == [] and row["results"] == {"boolq": {"acc": 0.6}}
