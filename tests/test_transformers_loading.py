"""ARMOR checkpoints in transformers: registration, logits vs the dense A.S.B product, generation, errors."""
import json
import shutil

import pytest
import torch

import model_executors  # noqa: F401
from model_executors.armor_linear import ArmorLinear


@pytest.fixture(scope="module")
def loaded(armor_ckpt):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(armor_ckpt, dtype=torch.float32)


def test_modules_are_armor_and_memory_is_compressed(loaded):
    mods = [m for m in loaded.modules() if isinstance(m, ArmorLinear)]
    assert len(mods) == 210
    packed = sum(m.packed_bytes() for m in mods)
    dense = sum(m.dense_bytes() for m in mods)
    assert 0.5 < packed / dense < 0.7  # 2:4 values + 4-bit metadata + blocks
    # prepared at load time for the packed CPU kernel, holding nothing beyond the packed tensors
    assert all(m._mode == "packed" and m.resident_bytes() == m.packed_bytes() for m in mods)


def test_logits_match_the_dense_product_model(loaded, armor_ckpt, tokenizer):
    from transformers import AutoModelForCausalLM

    folded = AutoModelForCausalLM.from_pretrained(armor_ckpt, dtype=torch.float32)
    for m in folded.modules():
        if isinstance(m, ArmorLinear):
            m.kernel = "fold"
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = loaded(ids).logits, folded(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_generate_with_chat_template(loaded, tokenizer):
    msgs = [{"role": "user", "content": "Name a colour."}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = loaded.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _broken_copy(src, tmp_path, edit_config=None, edit_tensors=None):
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        shard = dst / "model-layer-00004.safetensors"
        tensors = load_file(shard)
        edit_tensors(tensors)
        save_file(tensors, shard, metadata={"format": "pt"})
    return dst


def test_unknown_format_version_is_a_clear_error(armor_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    bad = _broken_copy(armor_ckpt, tmp_path, edit_config=lambda q: q.update(format_version=99))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_non_24_core_is_a_clear_error_naming_the_layer(armor_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    def zero_meta(t):
        t["model.layers.4.mlp.up_proj.sparse_meta"].zero_()

    bad = _broken_copy(armor_ckpt, tmp_path, edit_tensors=zero_meta)
    with pytest.raises(ValueError, match=r"layers\.4\.mlp\.up_proj.*not 2:4"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_block_size_that_does_not_divide_is_a_clear_error(armor_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    bad = _broken_copy(armor_ckpt, tmp_path, edit_config=lambda q: q.update(block_size=40))
    with pytest.raises(ValueError, match="block size 40 does not divide"):
        AutoModelForCausalLM.from_pretrained(bad)
