"""The quality benchmark's table: `--merge` keeps an earlier run's rows (with the command that made them) and
replaces the rows this run redoes; notes and the gap closed are rendered from the rows."""
from __future__ import annotations

import argparse
import json

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
    args = argparse.Namespace(name="q", model=None, ppl_only=True, ppl_windows=4, limit=100, work=str(tmp_path))
    quality.write(list(rows.values()), args)
    table = (tmp_path / "q.md").read_text()
    assert "armor-b32-lr closes 75% of the gap between the best baseline (sparsegpt, 25.10) and dense (14.50)" in table
    assert f"* dense: from `{earlier['command']}` (2026-12-01)" in table
    assert "* armor-b32: new code" in table and "old code" not in table
    assert "* armor-b32-lr: from" not in table
    assert [r["config"] for r in json.loads((tmp_path / "q.json").read_text())["rows"]] == list(rows)
