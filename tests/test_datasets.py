import torch

from compress import datasets


def test_wiki_splits_are_disjoint_and_cover_all_articles():
    test = datasets.wiki_split("test")
    calib = datasets.wiki_split("calibration")
    assert len(test) >= 20 and len(calib) >= 60
    assert not {a.page_id for a in test} & {a.page_id for a in calib}
    assert len(test) + len(calib) == len(datasets.wiki_articles())
    # no prose paragraph is shared (short headings such as "History" naturally recur)
    prose = lambda split: {p for p in datasets.wiki_text(split).split("\n\n") if len(p) > 200}
    assert not prose("test") & prose("calibration")


def test_wiki_text_has_no_markup():
    text = datasets.wiki_text("test")
    for marker in ("[[", "]]", "{{", "}}", "<ref", "'''", "==", "&nbsp;"):
        assert marker not in text, marker
    assert "Anarchism" in text


def test_strip_markup_examples():
    raw = ("'''Aardvark''' is a [[mammal|burrowing mammal]].<ref>Some book, p. 3</ref> {{cite web|url=x}}\n"
           "{| class=wikitable\n|-\n| [[Ant|W]] || {{flag|X}}\n|}\n"
           "== Diet ==\n[[File:A.jpg|thumb|left|A picture]]\nIt eats ants.\n[[Category:Mammals]]")
    out = datasets.strip_markup(raw)
    assert "Aardvark is a burrowing mammal." in out
    assert "It eats ants." in out
    for junk in ("Some book", "cite", "thumb", "Category", "[[", "'''", "wikitable", "||"):
        assert junk not in out


def test_calibration_sampling_is_seeded_and_from_the_calibration_split(tokenizer):
    a = datasets.calibration_samples(tokenizer, 4, 128, seed=1)
    b = datasets.calibration_samples(tokenizer, 4, 128, seed=1)
    c = datasets.calibration_samples(tokenizer, 4, 128, seed=2)
    assert a.shape == (4, 128) and torch.equal(a, b) and not torch.equal(a, c)
    calib_ids = tokenizer(datasets.wiki_text("calibration"), return_tensors="pt").input_ids[0]
    windows = {tuple(calib_ids[i : i + 128].tolist()) for i in range(0, calib_ids.numel() - 127, 128)}
    assert all(tuple(row.tolist()) in windows for row in a)


def test_lambada_and_multiple_choice_files():
    passages = datasets.lambada_passages()
    assert len(passages) == 5153
    ctx, cont = passages[0]
    assert cont.startswith(" ") and len(cont.split()) == 1 and len(ctx) > 50
    for task in datasets.MC_TASK_FILES:
        assert datasets.mc_task_file(task).stat().st_size > 10_000
