"""benchmarks.distill_probe: a few KL steps towards the dense model lower the KL on the batch they saw, keep an ARMOR
checkpoint's 2:4 positions and a baseline's zeros (real SmolLM2 checkpoints)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import distill_probe
from compress import distillation
from compress.evaluation import load_model
from model_executors.armor_linear import ArmorLinear


def _steps(dense, model, batch, n=3, lr=1e-5):  # 1e-4 overshoots in 3 Adam steps
    params, masks, swapped = distillation.trainable(model)
    opt = torch.optim.Adam(params, lr=lr)
    before = float(distill_probe.kl_to_dense(dense, model, batch))
    for _ in range(n):
        distill_probe.step(opt, dense, model, batch, masks)
    after = float(distill_probe.kl_to_dense(dense, model, batch))
    return before, after, masks, swapped


def test_kl_steps_lower_the_kl_and_keep_the_2_4_positions(dense_model, armor_ckpt, tokenizer):
    dense, model = load_model(dense_model)[1], load_model(armor_ckpt)[1]
    texts = ["The capital of France is Paris. It lies on the Seine.",
             "Water boils at one hundred degrees Celsius at sea level, less on a mountain."]
    batch = torch.stack([torch.tensor(tokenizer(t).input_ids[:10]) for t in texts])
    # checkpoint layout: a module that has run holds the CPU kernel's layout
    before_factors = {n: [t.clone() for t in m.checkpoint_factors()[:2]] for n, m in model.named_modules()
                      if isinstance(m, ArmorLinear)}
    before, after, masks, swapped = _steps(dense, model, batch)
    assert not masks and set(swapped) == set(before_factors)
    assert 0 < after < before
    for name, tunable in swapped.items():
        values, meta = tunable.to_armor().checkpoint_factors()[:2]
        assert torch.equal(meta, before_factors[name][1])
        assert not torch.equal(values, before_factors[name][0])  # the values did move


def test_a_baseline_keeps_its_zeros(dense_model, sparsegpt_ckpt, tokenizer):
    dense, model = load_model(dense_model)[1], load_model(sparsegpt_ckpt)[1]
    batch = tokenizer(["A short sentence about the weather in spring."], return_tensors="pt").input_ids
    zeros = {n: (m.weight == 0).clone() for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
    before, after, masks, swapped = _steps(dense, model, batch)
    assert not swapped and len(masks) == len(zeros)
    assert 0 < after < before
    for name, mod in model.model.layers.named_modules():
        if isinstance(mod, torch.nn.Linear):
            assert bool((mod.weight[zeros[name]] == 0).all())
            assert float(zeros[name].float().mean()) >= 0.5  # 2:4: half of every row is zero


def test_a_directory_without_a_compression_summary_is_refused_in_one_line(tokenizer, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        distill_probe.calibration(tokenizer, tmp_path)
    assert "has no compression_summary.json: give a finished `armor compress` output" in str(exit_info.value)
