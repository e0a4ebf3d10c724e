"""Block-wise tuning on a real decoder layer of the real model: it lowers the held-out layer error, keeps the 2:4
positions, writes what it measured into the ArmorLinear buffers, and never ends above where it started."""
import copy

import pytest
import torch

from compress import block_tuning
from compress.pipeline import LINEARS
from model_executors import blockdiag, sparsity
from model_executors.armor_linear import ArmorLinear


@pytest.fixture(scope="module")
def decoder(dense_model, tokenizer):
    """(layer 4 of SmolLM2 with magnitude-pruned ArmorLinear matrices, its inputs, the dense outputs, kwargs)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dense_model, dtype=torch.float32)
    text = "The history of the city goes back to Roman times, when a fort stood on the river. " * 40
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :384].reshape(6, 64)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[4]
    positions = torch.arange(64)[None]
    kwargs = {"position_embeddings": model.model.rotary_emb(hidden, positions), "position_ids": positions,
              "attention_mask": None}
    layer = model.model.layers[4]
    inputs = list(hidden.split(3))
    with torch.no_grad():
        targets = [block_tuning._output(layer, h, kwargs) for h in inputs]
    for name in LINEARS:
        w = layer.get_submodule(name).weight.detach()
        mask = sparsity.top2_mask(w.abs())  # magnitude pruning (kept entries may be 0 in this quantized model)
        eye_a, eye_b = blockdiag.identity_blocks(w.shape[0], 32), blockdiag.identity_blocks(w.shape[1], 32)
        layer.set_submodule(name, ArmorLinear.from_factors(eye_a, w * mask, mask, eye_b))
    return layer, inputs, targets, kwargs


def _buffers(layer):
    return {n: [b.clone() for b in layer.get_submodule(n).checkpoint_factors()] for n in LINEARS}


def test_tuning_lowers_the_held_out_error_and_stores_what_it_measured(decoder):
    layer, inputs, targets, kwargs = decoder
    before = _buffers(layer)
    start = block_tuning._error(layer, inputs[1:], targets[1:], kwargs)
    result = block_tuning.tune_layer(layer, list(LINEARS), inputs, targets, kwargs, epochs=3, lr=1e-4, holdout=3,
                                     micro_batch=1)
    assert result["holdout_error_start"] == pytest.approx(start, rel=1e-5)
    assert result["epochs_kept"] > 0 and result["holdout_error_final"] < 0.9 * start
    # the ArmorLinear modules (not the tuning copies) now give the kept state's error
    assert block_tuning._error(layer, inputs[1:], targets[1:], kwargs) == pytest.approx(result["holdout_error_final"],
                                                                                        rel=1e-4)
    after = _buffers(layer)
    for name in LINEARS:
        values, meta, a_blocks, b_blocks = after[name]
        assert torch.equal(meta, before[name][1]), f"{name}: 2:4 positions moved"
        assert not torch.equal(values, before[name][0]) and not torch.equal(a_blocks, before[name][2])
        assert isinstance(layer.get_submodule(name), ArmorLinear)


def test_a_diverging_run_keeps_the_start(decoder):
    layer, inputs, targets, kwargs = decoder
    before = _buffers(layer)
    result = block_tuning.tune_layer(layer, list(LINEARS), inputs, targets, kwargs, epochs=1, lr=1.0, holdout=3,
                                     micro_batch=1)
    assert result["epochs_kept"] == 0 and result["holdout_error_final"] == result["holdout_error_start"]
    for name, factors in _buffers(layer).items():
        assert all(torch.equal(x, y) for x, y in zip(factors, before[name])), name


def test_channel_weights_steer_the_tuning_to_the_channels_that_count(decoder):
    layer, inputs, targets, kwargs = decoder
    half = targets[0].shape[-1] // 2
    weights = torch.ones(targets[0].shape[-1])
    weights[half:] = 1e-3  # only the first half of the output channels counts

    def first_half_error(tuned):  # on the held-out sample
        with torch.no_grad():
            return float((block_tuning._output(tuned, inputs[1], kwargs) - targets[1])[..., :half].pow(2).mean())

    plain, steered = copy.deepcopy(layer), copy.deepcopy(layer)
    args = (list(LINEARS), inputs, targets, kwargs, 2, 1e-4, 3, 1)
    block_tuning.tune_layer(plain, *args)
    result = block_tuning.tune_layer(steered, *args, channel_weights=weights)
    normalised = weights / weights.mean()
    assert result["holdout_error_start"] == pytest.approx(
        block_tuning._error(layer, inputs[1:], targets[1:], kwargs, normalised), rel=1e-5)
    assert first_half_error(steered) < first_half_error(plain) < first_half_error(layer)
