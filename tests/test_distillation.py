"""End-to-end distillation (compress/distillation.py and `armor compress --distill-epochs`): the bucketed KL is the KL
of the coarsened distributions; on the real model a distilled run keeps the 2:4 positions (ARMOR) or the zeros
(a baseline), lowers the held-out KL where it keeps an epoch, and a run killed after the distillation's commit
point resumes to the same checkpoint."""
from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compress import distillation
from conftest import SMALL, run_cli


def _coarse(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A distribution's k chosen probabilities and the rest's, per position."""
    top = logp.exp().gather(-1, ids)
    return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)


def test_bucket_kl_is_the_kl_of_the_top_k_buckets_and_the_rest(monkeypatch):
    monkeypatch.setattr(distillation, "TOP_K", 4)
    gen = torch.Generator().manual_seed(0)
    dense_logits, logits = torch.randn(2, 5, 12, generator=gen) * 2, torch.randn(2, 5, 12, generator=gen) * 2

    class Fixed(torch.nn.Module):  # a "model" whose logits are given
        def forward(self, _ids):
            return type("Out", (), {"logits": dense_logits})

    target = distillation.teacher(Fixed(), torch.zeros(2, 5, dtype=torch.long))
    assert target["ids"].shape == (2, 5, 4) and target["logp"].shape == (2, 5, 4)
    p, q = _coarse(dense_logits.log_softmax(-1), target["ids"]), _coarse(logits.log_softmax(-1), target["ids"])
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert float(distillation.bucket_kl(logits, target)) == pytest.approx(float(expected), rel=1e-4)
    full = (dense_logits.softmax(-1) * (dense_logits.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
    assert float(expected) <= float(full)  # coarsening never adds divergence
    assert float(distillation.bucket_kl(dense_logits, target)) == pytest.approx(0, abs=1e-5)


def test_the_kl_taken_in_pieces_is_the_kl_of_the_whole_logits_with_the_same_gradients(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setattr(distillation, "LOSS_CHUNK", 256)  # 600 positions: two whole pieces and a partial one
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=5000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model, ids = LlamaForCausalLM(config).eval(), torch.randint(0, 5000, (2, 300))
    dense_logits = torch.randn(2, 300, 5000)

    class Fixed(torch.nn.Module):
        def forward(self, _ids):
            return type("Out", (), {"logits": dense_logits})

    target = distillation.teacher(Fixed(), ids)
    whole = distillation.bucket_kl(model(ids).logits, target)
    whole.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    pieces = distillation.model_kl(model, ids, target)
    pieces.backward()
    assert float(pieces) == pytest.approx(float(whole), rel=1e-5) and float(whole) > 0.01
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], rtol=1e-4, atol=1e-6 * float(grads[name].abs().max())), name


def _meta(ckpt) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(ckpt.glob("model-layer-*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, dense_model):
    out = tmp_path_factory.mktemp("distilled") / "ckpt"
    # the layer-wise settings of the armor_ckpt fixture, so the two differ by the distillation alone
    args = ["compress", "--model", str(dense_model), *SMALL, "--method", "armor", "--iters", "30",
            "--distill-epochs", "2"]
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distillation: held-out KL to the dense model" in proc.stderr
    return args, out


def test_distillation_keeps_the_2_4_positions_and_lowers_the_held_out_kl(distilled, armor_ckpt):
    _, out = distilled
    summary = json.loads((out / "compression_summary.json").read_text())
    result = summary["distillation"]
    kls, kept = result["held_out_kl"], result["epochs_kept"]
    assert len(kls) == 3 and kept >= 1 and kls[kept] == min(kls) < kls[0]
    assert summary["phase_seconds"]["distill"] > 0
    assert summary["peak_rss_bytes"]["with_distillation"] > 2**29
    tuned, layerwise = _meta(out), _meta(armor_ckpt)
    assert tuned.keys() == layerwise.keys()
    moved = [k for k in tuned if k.endswith("sparse_values") and not torch.equal(tuned[k], layerwise[k])]
    assert len(moved) == 30 * 7
    for k in tuned:
        if k.endswith("sparse_meta") or "layernorm" in k:
            assert torch.equal(tuned[k], layerwise[k]), k
    assert not list(out.glob(".*.distilled"))


def test_a_distillation_that_only_raises_the_held_out_kl_leaves_the_layer_wise_checkpoint(dense_model, armor_ckpt,
                                                                                            tmp_path):
    out = tmp_path / "overshoot"
    proc = run_cli("compress", "--model", str(dense_model), *SMALL, "--method", "armor", "--iters", "30",
                   "--distill-epochs", "1", "--distill-lr", "1e-3", "--out", str(out))  # 50x the default: overshoots
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compression_summary.json").read_text())["distillation"]
    assert result["epochs_kept"] == 0 and result["held_out_kl"][1] > result["held_out_kl"][0]
    for shard in sorted(armor_ckpt.glob("model-layer-*.safetensors")):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_a_run_killed_after_the_distillations_commit_point_resumes_to_the_same_checkpoint(distilled, armor_ckpt,
                                                                                          tmp_path):
    args, out = distilled
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    # as the run left it had it died while moving the distilled shards in: layer 3's still the layer-wise one
    progress = json.loads((killed / "armor_progress.json").read_text())
    name = "model-layer-00003.safetensors"
    (killed / name).rename(killed / f".{name}.distilled")
    shutil.copy(armor_ckpt / name, killed / name)
    layerwise = json.loads((armor_ckpt / "armor_progress.json").read_text())["shards"]["3"]
    progress["shards"]["3"], progress["complete"] = layerwise, False
    (killed / "compression_summary.json").unlink()
    (killed / "armor_progress.json").write_text(json.dumps(progress))
    resumed = run_cli(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "distillation:" not in resumed.stderr  # recorded as done: not run again
    assert (killed / name).read_bytes() == (out / name).read_bytes()
    assert json.loads((killed / "compression_summary.json").read_text())["distillation"]["held_out_kl"] == \
        json.loads((out / "compression_summary.json").read_text())["distillation"]["held_out_kl"]


def test_a_distilled_baseline_keeps_its_zeros(dense_model, sparsegpt_ckpt, tmp_path):
    out = tmp_path / "sparsegpt"
    proc = run_cli("compress", "--model", str(dense_model), *SMALL, "--method", "sparsegpt", "--distill-epochs", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compression_summary.json").read_text())["distillation"]
    assert result["epochs_kept"] >= 1 and min(result["held_out_kl"]) < result["held_out_kl"][0]
    tuned, pruned = _meta(out), _meta(sparsegpt_ckpt)
    weights = [k for k in tuned if k.endswith("proj.weight")]
    assert len(weights) == 30 * 7
    for k in weights:
        assert torch.equal(tuned[k] == 0, pruned[k] == 0), k  # the same zeros, nothing else zeroed
        assert not torch.equal(tuned[k], pruned[k]), k


def _distil_in_process(dense_model, armor_ckpt, tokenizer, recompute: bool, monkeypatch) -> tuple[dict, dict]:
    """One epoch of distillation on a few short samples, in this process; the result and what keep() received."""
    from compress.evaluation import load_model

    monkeypatch.setattr(distillation, "recompute_layers", lambda model: recompute)
    monkeypatch.setattr(distillation, "HOLDOUT", 2)
    texts = ["The capital of France is Paris. It lies on the Seine, and about two million people live there.",
             "Water boils at one hundred degrees Celsius at sea level, and at less than that on a mountain top."]
    # the held-out pair repeats the training pair, so one small step surely lowers its KL and keep() runs
    calib = torch.stack([torch.tensor(tokenizer(t).input_ids[:16]) for t in texts * 2])
    target = distillation.teacher(load_model(dense_model)[1], calib)
    torch.manual_seed(0)
    model, kept, calls = load_model(armor_ckpt)[1], {}, []
    model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute stops early: no post-hook
    result = distillation.distill(model, calib, target, 1, 1e-4, contextlib.nullcontext,
                                  keep=lambda tuned: kept.update({k: v.clone() for k, v in
                                                                  distillation.checkpoint_state(tuned).items()}))
    return {**result, "layer_0_forwards": len(calls)}, kept


def test_recomputing_the_decoder_layers_gives_the_same_distillation(dense_model, armor_ckpt, tokenizer, monkeypatch):
    # the path a model too big to keep every layer's activations takes (a 1.5B one on 24 GB), on SmolLM2
    kept_all, state = _distil_in_process(dense_model, armor_ckpt, tokenizer, False, monkeypatch)
    recomputed, state_recomputed = _distil_in_process(dense_model, armor_ckpt, tokenizer, True, monkeypatch)
    assert not kept_all["recomputed_layers"] and recomputed["recomputed_layers"]
    # held-out, the training step, held-out again; recomputed: the step's forward once more in its backward pass
    assert kept_all["layer_0_forwards"] == 3 and recomputed["layer_0_forwards"] == 4
    assert kept_all["epochs_kept"] == recomputed["epochs_kept"] == 1  # keep() ran once, on the improving epoch
    assert recomputed["held_out_kl"] == pytest.approx(kept_all["held_out_kl"], rel=1e-4)
    shard_keys = set(_meta(armor_ckpt))
    assert shard_keys <= set(state) and shard_keys <= set(state_recomputed)  # keep() saw every checkpoint name
    for k in shard_keys:
        assert torch.allclose(state[k].float(), state_recomputed[k].float(), atol=1e-6), k


def test_armor_compress_distils_armor_by_default_and_a_baseline_only_when_asked():
    # the flag's default once came from Settings() (method armor), so `--method sparsegpt` was distilled too
    import argparse

    from compress.cli import add_compress_arguments, settings_from

    parser = argparse.ArgumentParser()
    add_compress_arguments(parser)

    def epochs(*flags):
        return settings_from(parser.parse_args(["--model", "M", "--out", "O", *flags])).distill_epochs

    assert epochs() == 1 and epochs("--method", "armor") == 1
    assert epochs("--method", "sparsegpt") == epochs("--method", "wanda") == 0
    assert epochs("--method", "sparsegpt", "--distill-epochs", "1") == 1 and epochs("--distill-epochs", "0") == 0
