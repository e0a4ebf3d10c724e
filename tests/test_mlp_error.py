"""benchmarks.mlp_error on real SmolLM2 checkpoints: the dense MLP scores zero, compressed ones do not, swapping one
matrix in moves the error, and bad --layers get a usage error."""
from __future__ import annotations

import sys

import pytest

from benchmarks import mlp_error


def test_mlp_errors_measure_each_checkpoint_and_each_swapped_matrix(dense_model, sparsegpt_ckpt, armor_ckpt, tokenizer,
                                                                  tmp_path, monkeypatch):
    windows = tokenizer("The capital of France is Paris. It lies on the Seine, and about two million people live "
                        "there.", return_tensors="pt").input_ids[:, :24]
    layers = mlp_error.measure(dense_model, {"sparsegpt": sparsegpt_ckpt, "armor": armor_ckpt, "dense": dense_model},
                               [0, 3], windows)
    for rows in layers.values():
        assert rows["dense"]["all"] == 0 and rows["sparsegpt"]["all"] > 0 and rows["armor"]["all"] > 0
        assert rows["sparsegpt"]["n_outlier_tokens"] == rows["armor"]["n_outlier_tokens"]
        assert rows["sparsegpt + armor's down_proj"]["all"] != pytest.approx(rows["sparsegpt"]["all"], rel=1e-4)
        assert rows["sparsegpt + dense's up_proj"]["all"] != pytest.approx(rows["sparsegpt"]["all"], rel=1e-4)
    monkeypatch.setattr(mlp_error, "RESULTS", tmp_path)
    mlp_error.write({"command": "c", "date": "d", "machine": "m", "run_seconds": 1.0, "tokens": 24,
                     "layers": layers}, "t")
    table = (tmp_path / "t.md").read_text()
    assert "| 3 | sparsegpt + armor's gate_proj |" in table and "| 0 | dense | 0.0000 |" in table


@pytest.mark.parametrize("layers", ["0,99", "two"])
def test_a_layer_the_model_does_not_have_is_a_usage_error(dense_model, monkeypatch, capsys, layers):
    monkeypatch.setattr(sys, "argv", ["mlp_error", "--dense", str(dense_model), "--layers", layers, f"a={dense_model}"])
    with pytest.raises(SystemExit) as exit_info:
        mlp_error.main()
    assert exit_info.value.code == 2 and "--layers must name decoder layers 0-29" in capsys.readouterr().err
