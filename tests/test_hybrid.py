"""benchmarks.hybrid: a hybrid of two compressed checkpoints scores exactly as the checkpoint it takes every part from,
and swapping parts changes the score (real SmolLM2 checkpoints: SparseGPT as base, ARMOR as other)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import hybrid
from compress.evaluation import load_model


def test_hybrids_score_as_the_checkpoints_they_take_their_parts_from(dense_model, sparsegpt_ckpt, armor_ckpt, tokenizer):
    dense = load_model(dense_model)[1]
    base, other = load_model(sparsegpt_ckpt)[1], load_model(armor_ckpt)[1]
    alone = load_model(armor_ckpt)[1]  # a second, never rewired copy of --other
    n = len(dense.model.layers)
    hybrids = hybrid.variants(n, [f"0-{n - 1}", "0-3"])
    windows = tokenizer("The capital of France is Paris. It lies on the Seine, and about two million people live "
                        "there.", return_tensors="pt").input_ids[:, :24]
    base_parts, other_parts = hybrid.parts(base), hybrid.parts(other)
    scores = hybrid.score(dense, base, base_parts, other_parts, hybrids, windows)
    plain = hybrid.score(dense, alone, hybrid.parts(alone), hybrid.parts(alone), {"alone": hybrids["base"]}, windows)

    assert scores["dense"]["perplexity"] > 1 and "kl" in scores["base"]
    assert scores["other"]["kl"] == pytest.approx(plain["alone"]["kl"], rel=1e-5)
    assert scores[f"other in layers 0-{n - 1} only"]["kl"] == pytest.approx(scores["other"]["kl"], rel=1e-5)
    assert scores["base"]["kl"] != pytest.approx(scores["other"]["kl"], rel=1e-3)
    assert scores["other attention, base MLP"]["kl"] != pytest.approx(scores["base"]["kl"], rel=1e-3)
    assert scores["other in layers 0-3 only"]["kl"] != pytest.approx(scores["base"]["kl"], rel=1e-3)
    hybrid.assemble(base, base_parts, other_parts, hybrids["base"])  # rewired back: base is itself again
    assert all(layer.mlp is p["mlp"] and layer.self_attn is p["self_attn"] for layer, p in zip(base.model.layers, base_parts))
    assert torch.isfinite(torch.tensor([s["kl"] for s in scores.values()])).all()


def test_checkpoints_of_different_depth_are_a_usage_error(dense_model, tmp_path, monkeypatch, capsys):
    shallow = tmp_path / "shallow"  # the same model cut to 2 decoder layers (its other layers' weights go unread)
    shallow.mkdir()
    for file in dense_model.iterdir():
        (shallow / file.name).symlink_to(file)
    config = json.loads((dense_model / "config.json").read_text())
    (shallow / "config.json").unlink()
    (shallow / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    monkeypatch.setattr(sys, "argv", ["hybrid", "--dense", str(dense_model), "--base", str(dense_model),
                                      "--other", str(shallow)])
    with pytest.raises(SystemExit) as exit_info:
        hybrid.main()
    assert exit_info.value.code == 2 and "their decoder layer counts differ" in capsys.readouterr().err


@pytest.mark.parametrize("ranges", ["0-13,14-99", "first-last", "3-x", "5-3"])
def test_a_range_outside_the_model_is_a_usage_error(dense_model, monkeypatch, capsys, ranges):
    monkeypatch.setattr(sys, "argv", ["hybrid", "--dense", str(dense_model), "--base", str(dense_model),
                                      "--other", str(dense_model), "--ranges", ranges])
    with pytest.raises(SystemExit) as exit_info:
        hybrid.main()
    assert exit_info.value.code == 2 and "--ranges must be first-last decoder layers within 0-29" in capsys.readouterr().err


@pytest.mark.parametrize("layers", ["20-99", "x", "5-3", "1-2,4-5"])
def test_residual_bed_refuses_a_layer_range_it_cannot_take(dense_model, monkeypatch, capsys, layers):
    from benchmarks import residual_bed

    monkeypatch.setattr(sys, "argv", ["residual_bed", "--model", str(dense_model), "--layers", layers])
    with pytest.raises(SystemExit) as exit_info:
        residual_bed.main()
    assert exit_info.value.code == 2 and "--layers must be one first-last range of decoder layers within 0-29" in \
        capsys.readouterr().err
