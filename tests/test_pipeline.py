"""End to end on the real model: compress (ARMOR and NoWag-P), resume, bad input, quality ordering."""
import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from conftest import ROOT, SMALL, run_cli
from compress.pipeline import LINEARS, PHASES, SUPPORTED_MODEL_TYPES
from model_executors.sparsity import unpack


def test_armor_checkpoint_format(armor_ckpt):
    config = json.loads((armor_ckpt / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "armor" and q["format_version"] == 1 and q["block_size"] == 32
    assert len(q["modules"]) == 30 * 7
    index = json.loads((armor_ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    prefix = "model.layers.7.mlp.down_proj."
    assert f"{prefix}weight" not in index
    with safe_open(armor_ckpt / index[f"{prefix}sparse_values"], "pt") as fh:
        values, meta = fh.get_tensor(f"{prefix}sparse_values"), fh.get_tensor(f"{prefix}sparse_meta")
        a, b = fh.get_tensor(f"{prefix}a_blocks"), fh.get_tensor(f"{prefix}b_blocks")
    assert values.shape == (576, 768) and meta.shape == (576, 192) and meta.dtype == torch.uint8
    assert a.shape == (18, 32, 32) and b.shape == (48, 32, 32)
    core = unpack(values, meta)
    assert bool(((core != 0).reshape(576, -1, 4).sum(-1) <= 2).all())
    summary = json.loads((armor_ckpt / "compression_summary.json").read_text())
    assert summary["proxy"] == "hessian" and summary["start_method"] == "sparsegpt"
    assert summary["mean_proxy_loss"] < summary["mean_proxy_loss_start"]
    assert 0 < summary["overhead_pct_of_dense"] < 15
    assert 0.5 < summary["compressed_matrix_bytes"] / summary["dense_matrix_bytes"] < 0.7  # 2:4 + meta + blocks
    # where the time went: every phase measured, and together they account for the run
    phases = summary["phase_seconds"]
    assert set(phases) == set(PHASES) and all(v >= 0 for v in phases.values())
    assert phases["bcd"] > 0 and phases["pruning"] > 0 and phases["gram"] > 0
    assert 0.8 * summary["seconds"] <= sum(phases.values()) <= summary["seconds"] + 1
    # the process's peak memory, taken after each layer: more than importing torch takes, less than this machine has
    peaks = summary["peak_rss_bytes"]
    assert 2**28 < peaks["layer_wise"] < 2**34
    # ... and each layer's own (Linux's high-water mark, reset after each layer): none above the whole pass's
    assert len(peaks["per_layer"]) == 30 and all(2**27 < p <= peaks["layer_wise"] for p in peaks["per_layer"])


def test_every_armor_matrix_ends_at_or_below_its_start(armor_ckpt):
    progress = json.loads((armor_ckpt / "armor_progress.json").read_text())
    assert progress["complete"] and len(progress["matrices"]) == 210
    for rec in progress["matrices"]:
        assert rec["loss_final"] <= rec["loss_start"], rec
        assert abs(rec["loss_stored"] - rec["loss_final"]) <= 1e-4 * rec["loss_start"] + 1e-7, rec


def test_baseline_checkpoint_is_plain_dense_with_24_zeros(nowag_ckpt):
    from transformers import AutoModelForCausalLM

    config = json.loads((nowag_ckpt / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(nowag_ckpt)
    w = model.model.layers[3].self_attn.o_proj.weight
    assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
    assert model.model.layers[3].input_layernorm.weight.abs().sum() > 0


def test_armor_beats_nowag_p_and_its_sparsegpt_start_on_perplexity(armor_ckpt, nowag_ckpt, sparsegpt_ckpt):
    ppl = {}
    for name, ckpt in (("armor", armor_ckpt), ("nowag", nowag_ckpt), ("sparsegpt", sparsegpt_ckpt)):
        proc = run_cli("eval", "--model", str(ckpt), "--tasks", "wiki_ppl", "--limit", "4", "--ctx-len", "512")
        assert proc.returncode == 0, proc.stderr[-2000:]
        ppl[name] = float(proc.stdout.split("| wiki_ppl | perplexity |")[1].split("|")[0])
    assert ppl["armor"] < ppl["nowag"] and ppl["armor"] < ppl["sparsegpt"], ppl


def _shards(path):
    return {p.name: p.read_bytes() for p in sorted(path.glob("model-layer-*.safetensors"))}


def test_resume_after_kill_gives_an_identical_checkpoint(dense_model, tmp_path):
    # the block-wise tuning and the input correction, which must give the same result on the replayed
    # activations: the compressed model's and the dense model's; the model's own calibration text, which the
    # resumed run reads back; the MLP and residual row weights; the distillation after the last layer
    args = ["compress", "--model", str(dense_model), *SMALL, "--method", "armor", "--iters", "3",
            "--tune-epochs", "1", "--input-correction", "0.25", "--calib-generated", "0.5", "--mlp-row-weights",
            "--residual-row-weights", "--distill-epochs", "1"]
    whole = tmp_path / "whole"
    assert run_cli(*args, "--out", str(whole)).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "armor_serve", *args, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(list(killed.glob("model-layer-*.safetensors"))) < 3 and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    progress = json.loads((killed / "armor_progress.json").read_text())
    assert 0 < progress["layers_done"] < 30
    # as a run started by a version before --input-correction left it: it ran without, so it does not resume
    stored = progress["fingerprint"]["settings"].pop("input_correction")
    (killed / "armor_progress.json").write_text(json.dumps(progress))
    refused = run_cli(*args, "--out", str(killed))
    assert refused.returncode == 2 and "holds a different run (--input-correction 0.0 there, 0.25 here)" in \
        refused.stderr, refused.stderr[-2000:]
    progress["fingerprint"]["settings"]["input_correction"] = stored
    # as a run started by a version before --discrete-steps left it: it ran with the default, so it resumes
    del progress["fingerprint"]["settings"]["discrete_steps"]
    (killed / "armor_progress.json").write_text(json.dumps(progress))
    resumed = run_cli(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    assert _shards(killed) == _shards(whole)
    matrices = json.loads((killed / "armor_progress.json").read_text())["matrices"]
    # the input correction moved every target past the first layer (whose inputs are the dense model's)
    assert all((rec.get("target_shift", 0) > 0) == (rec["layer"] > 0) for rec in matrices)
    tuning = [rec["tuning"] for rec in matrices]
    assert len(tuning) == 210 and all(t["holdout_error_final"] <= t["holdout_error_start"] for t in tuning)
    assert sum(t["epochs_kept"] for t in tuning) > 0  # it did tune somewhere
    assert (killed / "model-base.safetensors").read_bytes() == (whole / "model-base.safetensors").read_bytes()
    generated = (killed / "armor_calibration_generated.safetensors").read_bytes()
    assert generated == (whole / "armor_calibration_generated.safetensors").read_bytes()
    # gate_proj and up_proj (MLP row weights), o_proj and down_proj (residual row weights) of 30 layers
    assert sum(rec.get("row_weighted", False) for rec in matrices) == 120
    # a finished run is not redone
    again = run_cli(*args, "--out", str(killed))
    assert again.returncode == 0 and "already complete" in again.stderr


def test_bad_inputs_fail_before_heavy_work(dense_model, armor_ckpt, tmp_path):
    block = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "b"), "--block-size", "128")
    other = run_cli("compress", "--model", str(dense_model), "--out", str(armor_ckpt), *SMALL, "--method", "wanda")
    short = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "s"), "--calib-samples",
                    "100000", "--seq-len", "2048")
    compressed_input = run_cli("compress", "--model", str(armor_ckpt), "--out", str(tmp_path / "c"))
    junk_dir = tmp_path / "junk"
    junk_dir.mkdir()
    (junk_dir / "notes.txt").write_text("mine")
    not_empty = run_cli("compress", "--model", str(dense_model), "--out", str(junk_dir))
    cfg = json.loads((dense_model / "config.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    (odd / "model.safetensors").symlink_to(dense_model / "model.safetensors")
    arch = run_cli("compress", "--model", str(odd), "--out", str(tmp_path / "a"))
    damp = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "d"), "--hessian-damp", "-1")
    steps = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "e"), "--discrete-steps", "0")
    few = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "f"), "--tune-epochs", "2",
                  "--calib-samples", "5")
    correction = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "g"), "--input-correction", "2")
    dtype = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "h"), "--calib-dtype", "float16")
    micro = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "i"), "--tune-micro-batch", "0")
    share = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "j"), "--calib-generated", "1.5")
    prefix = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "k"), "--calib-generated", "0.5",
                     "--seq-len", "8")
    baseline_prefix = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "n"), "--method", "wanda",
                              "--calib-generated", "0.5", "--seq-len", "8")  # the baselines calibrate on it too
    short_text = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "o"), "--calib-generated-len",
                         "4")
    held = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "l"), "--bcd-holdout", "63")
    negative = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "m"), "--bcd-holdout", "-1")
    distill = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "p"), "--method", "wanda",
                      "--distill-epochs", "1", "--distill-lr", "0")
    distill_few = run_cli("compress", "--model", str(dense_model), "--out", str(tmp_path / "q"), "--method", "wanda",
                          "--distill-epochs", "1", "--calib-samples", "5")
    cases = ((block, "block size 128 does not divide"), (correction, "--input-correction must be between 0"),
             (held, "--bcd-holdout 63 needs --proxy hessian and at least 2 more calibration samples"),
             (negative, "--bcd-holdout must be >= 0 (calibration samples held out; 0: off), got -1"),
             (distill, "--distill-epochs must be >= 0 and --distill-lr > 0, got 1 and 0.0"),
             (distill_few, "--distill-epochs holds 4 calibration samples out to measure the distillation and needs 2 "
                           "more to tune on: pass --calib-samples 6 or more (got 5)"),
             (other, "holds a different run"),
             (short, "fewer than the 100000 asked for"), (compressed_input, "already quantized"),
             (not_empty, "holds no compression run"), (arch, "no known decoder-layer layout"),
             (damp, "--hessian-damp must be >= 0"), (steps, "--discrete-steps must be >= 1"),
             (few, "pass --calib-samples 6 or more"), (dtype, "invalid choice: 'float16'"),
             (micro, "and --tune-micro-batch >= 1, got "), (share, "between 0 and 1, got 1.5"),
             (prefix, "needs --seq-len above the 8-token Wikipedia prefix"),
             (baseline_prefix, "needs --seq-len above the 8-token Wikipedia prefix"),
             (short_text, "--calib-generated-len is 0 (one generated text per sample) or a length above the 8-token"))
    for proc, text in cases:
        assert proc.returncode == 2, (text, proc.stderr[-2000:])
        assert text in proc.stderr and "Traceback" not in proc.stderr
    assert (junk_dir / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_matrices_that_share_a_statistic_read_one_input(model_type):
    # the Gram pass gathers each LINEARS input once, on its first reader (q/k/v, gate/up): that holds only while
    # every supported architecture feeds those matrices the very same tensor
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=1, vocab_size=64)
    model = AutoModelForCausalLM.from_config(config).eval()
    seen: dict[str, list[torch.Tensor]] = {}
    layer = model.model.layers[0]
    for name, source in LINEARS.items():
        record = lambda _mod, args, _out, s=source: seen.setdefault(s, []).append(args[0])  # noqa: E731
        layer.get_submodule(name).register_forward_hook(record)
    with torch.no_grad():
        model(torch.arange(12)[None] % 64)
    assert sorted(seen) == sorted(set(LINEARS.values()))
    for source, inputs in seen.items():
        assert all(x is inputs[0] or torch.equal(x, inputs[0]) for x in inputs), source


def test_dense_path_target_is_the_ridge_least_squares_fit_to_the_dense_output():
    from compress.pipeline import dense_path_target

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=g)
    x_dense = torch.randn(200, 16, generator=g, dtype=torch.float64)
    x = x_dense + 0.3 * torch.randn(200, 16, generator=g, dtype=torch.float64)  # what compressed layers pass on
    gram, cross, damp = x.T @ x, x_dense.T @ x, 0.1
    target = dense_path_target(w, gram, cross, damp)
    # the minimiser of ||X_d W^T - X T^T||^2 + lam ||W - T||^2, from the stacked least-squares problem
    lam = damp * gram.diagonal().mean()
    a = torch.cat([x, lam.sqrt() * torch.eye(16, dtype=torch.float64)])
    b = torch.cat([x_dense @ w.double().T, lam.sqrt() * w.double().T])
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(target.double(), expected, atol=1e-4)
    assert (target - w).norm() > 0.05 * w.norm()  # the correction is real here
    quarter = dense_path_target(w, gram, cross, damp, strength=0.25)
    assert torch.allclose(quarter.double(), w.double() + 0.25 * (expected - w.double()), atol=1e-4)
    # where the compressed model's inputs are the dense model's (the first layer), nothing moves
    assert torch.allclose(dense_path_target(w, x_dense.T @ x_dense, x_dense.T @ x_dense, damp), w, atol=1e-4)


def _bf16_gram_products() -> bool:
    # oneDNN honours the "bf16" float32 precision on AMX CPUs only: on AVX512-BF16 without AMX (Zen 4, measured
    # 2026-12-07) the products stay float32, in another summation order
    return torch.backends.mkldnn.is_available() and torch.cpu._is_amx_tile_supported()


def test_gram_matmuls_give_the_exact_gram_matrix_of_bfloat16_rounded_inputs():
    from compress.pipeline import gram_matmuls

    x = torch.randn(4096, 96, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 30, 96)
    exact, rounded = (v.double().T @ v.double() for v in (x, x.bfloat16()))
    with gram_matmuls(torch.bfloat16):
        fast = (x.T @ x).double()
    with gram_matmuls(torch.float32):
        plain = (x.T @ x).double()
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # restored on leaving
    gap = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert gap(plain, exact) < 1e-6 and gap(rounded, exact) > 1e-4  # the rounding is visible at this scale
    assert gap(fast, rounded if _bf16_gram_products() else exact) < 1e-6, _bf16_gram_products()
    assert float(torch.linalg.eigvalsh(fast).min()) > 0  # a Gram matrix: positive definite here, never indefinite


@pytest.mark.parametrize("layer_index", [0, 5])
def test_bfloat16_calibration_forwards_keep_the_statistics(dense_model, tmp_path, layer_index):
    # --calib-dtype bfloat16 runs the dense layers' matmuls in bfloat16 and the Gram products on bfloat16-rounded
    # inputs with float32 sums: the statistics move by bfloat16's rounding only, and H stays positive definite for
    # SparseGPT's Cholesky
    from transformers import AutoTokenizer

    from compress.baselines import ridge
    from compress.datasets import calibration_samples
    from compress.pipeline import LayerwiseCompressor, Settings

    calib = calibration_samples(AutoTokenizer.from_pretrained(dense_model), 4, 128, 0)
    stats, outputs = {}, {}
    for dtype in ("float32", "bfloat16"):
        settings = Settings(calib_samples=4, seq_len=128, calib_dtype=dtype, tune_epochs=0, distill_epochs=0)
        comp = LayerwiseCompressor(dense_model, tmp_path / dtype, settings)
        comp.dtype = torch.float32
        body = comp._skeleton()
        hidden, kwargs = comp._layer_inputs(body, calib)
        for i in range(layer_index):
            hidden = comp._run(comp._load_layer(body, i), hidden, kwargs[i])
        layer = comp._load_layer(body, layer_index)
        stats[dtype], outputs[dtype], _ = comp._statistics(layer, hidden, kwargs[layer_index], [h.clone() for h in hidden])
    row_weights = stats["float32"].pop("row_weights")  # gate/up rows' share of the MLP output (the default)
    for name, exact in row_weights.items():
        gap = float((stats["bfloat16"]["row_weights"][name] - exact).norm() / exact.norm())
        assert 1e-6 < gap < 0.05, (name, gap)
    for name, exact in stats["float32"].items():
        approx = stats["bfloat16"][name]
        for key in ("h", "H", "C"):
            gap = float((approx[key] - exact[key]).norm() / exact[key].norm())
            # bfloat16 really ran, and only rounded: only the first layer's own input precedes every matmul, so its
            # h and H are float32's, up to the sum order, where oneDNN does not round the Gram products' inputs (no AMX)
            exact_input = (layer_index, name) == (0, "attn_in") and key != "C" and not _bf16_gram_products()
            assert (gap < 1e-6 if exact_input else 1e-6 < gap < 0.03), (name, key, gap)
        assert approx["H"].dtype == torch.float64
        torch.linalg.cholesky(ridge(approx["H"].float(), 0.01))  # what SparseGPT factors
    out_gap = max(float((a - e).norm() / e.norm()) for a, e in zip(outputs["bfloat16"], outputs["float32"]))
    assert 1e-6 < out_gap < 0.03 and outputs["bfloat16"][0].dtype == torch.float32  # the residual stream stays float32


def test_mlp_row_weights_are_each_rows_first_order_share_of_the_mlp_output(dense_model, tmp_path):
    # gate_proj's row j counts (u_j act'(g_j))^2, up_proj's act(g_j)^2, each times |down_proj[:, j]|^2, summed over
    # the calibration tokens of the layer's own inputs (not again over the dense model's, which the input correction
    # runs through the same layer)
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from compress.datasets import calibration_samples
    from compress.pipeline import LayerwiseCompressor, Settings

    calib = calibration_samples(AutoTokenizer.from_pretrained(dense_model), 2, 64, 0)
    settings = Settings(calib_samples=2, seq_len=64, calib_dtype="float32", tune_epochs=0, mlp_row_weights=True,
                        distill_epochs=0)
    comp = LayerwiseCompressor(dense_model, tmp_path / "out", settings)
    comp.dtype = torch.float32
    body = comp._skeleton()
    hidden, kwargs = comp._layer_inputs(body, calib)
    layer = comp._load_layer(body, 0)
    mlp_inputs = []
    handle = layer.mlp.register_forward_pre_hook(lambda _m, args: mlp_inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    stats, _, _ = comp._statistics(layer, hidden, kwargs[0], [h.clone() for h in hidden])
    handle.remove()
    x = torch.cat(mlp_inputs[: len(hidden)])  # the first pass's inputs (the dense pass repeats them here)
    g, u = x @ layer.mlp.gate_proj.weight.T, x @ layer.mlp.up_proj.weight.T
    sig = torch.sigmoid(g)
    columns = layer.mlp.down_proj.weight.pow(2).sum(0)
    want = {"mlp.up_proj": F.silu(g).pow(2).sum(0) * columns,
            "mlp.gate_proj": (u * sig * (1 + g * (1 - sig))).pow(2).sum(0) * columns}
    for name, expected in want.items():
        assert torch.allclose(stats["row_weights"][name], expected, rtol=1e-3), name
    assert set(stats["row_weights"]) == set(want)


def test_residual_row_weights_reach_o_proj_down_proj_and_the_tuning(dense_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from compress import block_tuning, pipeline
    from compress.datasets import calibration_samples
    from compress.residual_weights import residual_row_weights

    seen, tuned = [], []
    real_armor, real_tune = pipeline.armor, block_tuning.tune_layer
    monkeypatch.setattr(pipeline, "armor", lambda *a, row_weights=None, **k: seen.append(row_weights) or real_armor(
        *a, row_weights=row_weights, **k))
    monkeypatch.setattr(block_tuning, "tune_layer", lambda *a: tuned.append(a[-1]) or real_tune(*a))
    settings = pipeline.Settings(calib_samples=6, seq_len=32, iters=1, tune_epochs=1, calib_dtype="float32",
                                 residual_row_weights=True, mlp_row_weights=False)
    comp = pipeline.LayerwiseCompressor(dense_model, tmp_path / "out", settings)
    comp.dtype = torch.float32
    body = comp._skeleton()
    hidden, kwargs = comp._layer_inputs(body, calibration_samples(AutoTokenizer.from_pretrained(dense_model), 6, 32, 0))
    records, _ = comp._compress_layer(3, comp._load_layer(body, 3), hidden, kwargs[3], tqdm_stub(), hidden)
    want = residual_row_weights(comp.weights, comp.n_layers)[3]
    for name, weights, record in zip(LINEARS, seen, records):
        assert (weights is None) == (name not in want) == ("row_weighted" not in record), name
        if weights is not None:
            assert torch.equal(weights, want[name])
    assert len(tuned) == 1 and torch.equal(tuned[0], want["mlp.down_proj"])  # the layer output is what down_proj writes


def tqdm_stub():
    return type("Bar", (), {"set_postfix_str": lambda self, text: None})()


def test_generated_calibration_text_continues_wikipedia_prefixes(dense_model):
    from transformers import AutoTokenizer

    from compress.datasets import calibration_samples
    from compress.generated_text import PREFIX_TOKENS, generated_samples

    tokenizer = AutoTokenizer.from_pretrained(dense_model)
    first, again, other = (generated_samples(dense_model, tokenizer, 2, 40, seed) for seed in (0, 0, 1))
    assert first.shape == (2, 40) and torch.equal(first, again) and not torch.equal(first, other)
    # prefixes from other windows than the run's Wikipedia samples (seed + 1), then the model's own tokens
    assert torch.equal(first[:, :PREFIX_TOKENS], calibration_samples(tokenizer, 2, 40, 1)[:, :PREFIX_TOKENS])
    assert not torch.equal(first, calibration_samples(tokenizer, 2, 40, 1))
    # texts of 16 tokens packed end to end: 3 per sample, the third cut at 40; each starts from its own prefix
    packed = generated_samples(dense_model, tokenizer, 2, 40, 0, text_len=16)
    prefixes = calibration_samples(tokenizer, 6, 16, 1)[:, :PREFIX_TOKENS].reshape(2, 3, PREFIX_TOKENS)
    assert packed.shape == (2, 40)
    for k in range(3):
        assert torch.equal(packed[:, 16 * k:16 * k + PREFIX_TOKENS], prefixes[:, k])


def test_the_samplers_draws_follow_softmax_and_its_cache_matches_transformers(dense_model):
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.cache_utils import Cache

    from compress.generated_text import _ReservedLayer, _sample

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, 4)
    counts = torch.bincount(_sample(logits, torch.Generator().manual_seed(0)).flatten(), minlength=4)
    # 20000 draws: each share within ~4 standard errors of its probability
    assert torch.allclose(counts / 20000, torch.softmax(logits[0], 0), atol=0.015), counts
    model = AutoModelForCausalLM.from_pretrained(dense_model, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    reserved = Cache(layers=[_ReservedLayer(12) for _ in range(model.config.num_hidden_layers)])
    with torch.no_grad():
        for cache in (DynamicCache(config=model.config), reserved):  # a prefill of 8 tokens, then one at a time
            steps = [model(ids[:, :8], past_key_values=cache, use_cache=True).logits[:, -1]]
            steps += [model(ids[:, i:i + 1], past_key_values=cache, use_cache=True).logits[:, -1] for i in range(8, 12)]
            if cache is reserved:
                torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-4, atol=1e-4)
            expected = torch.stack(steps)
    assert reserved.get_seq_length() == 12


def test_sampling_linears_run_through_onednn_with_the_same_outputs():
    from compress.generated_text import _onednn_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.Linear(64, 40, bias=False))
    x = torch.randn(3, 5, 48)
    expected = model(x).detach()
    _onednn_linears(model)
    if torch.backends.mkldnn.is_available():
        assert all("forward" in vars(m) for m in model)  # the instances' own forward replaced F.linear's
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    if torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported():
        _onednn_linears(model, torch.bfloat16)  # the calibration dtype where the CPU multiplies bfloat16: float32 out
        out = model(x).detach()
        gap = float((out - expected).norm() / expected.norm())
        assert out.dtype == torch.float32 and 0 < gap < 0.02, gap


def test_bcd_holdout_samples_feed_only_the_held_out_gram(dense_model, tmp_path):
    # --bcd-holdout 3 of 5 samples, 3 per batch: the first batch splits (2 fitted, 1 held out), the second is all
    # held out. The fitted statistics (h, H and the cross term C) are those of the first 2 samples alone, and the
    # held-out Gram matrix is the rest of the full one (float32 forwards: AMX bfloat16 rounds by batch shape)
    from transformers import AutoTokenizer

    from compress.datasets import calibration_samples
    from compress.pipeline import LayerwiseCompressor, Settings

    calib = calibration_samples(AutoTokenizer.from_pretrained(dense_model), 5, 128, 0)
    stats = {}
    for label, samples, holdout in (("all", calib, 0), ("first", calib[:2], 0), ("held", calib, 3)):
        comp = LayerwiseCompressor(dense_model, tmp_path / label, Settings(calib_samples=len(samples), seq_len=128,
                                                                         batch_size=3, bcd_holdout=holdout,
                                                                         calib_dtype="float32", tune_epochs=0,
                                                                         mlp_row_weights=False, distill_epochs=0))
        comp.dtype = torch.float32
        body = comp._skeleton()
        hidden, kwargs = comp._layer_inputs(body, samples)
        dense = [h * 1.01 for h in hidden]  # other dense-path inputs, so that the cross term C is gathered
        layer = comp._load_layer(body, 0)
        stats[label] = comp._statistics(layer, hidden, kwargs[0], dense)[0]
        if label == "first":  # h: the squared inputs summed over the fitted tokens (taken from H's diagonal)
            with torch.no_grad():
                x = layer.input_layernorm(torch.cat(hidden)).reshape(-1, hidden[0].shape[-1])
            torch.testing.assert_close(stats[label]["attn_in"]["h"], x.pow(2).sum(0).double(), rtol=1e-4, atol=1e-4)
    for name, held in stats["held"].items():
        for key in ("h", "H", "C"):
            torch.testing.assert_close(held[key], stats["first"][name][key])
        assert "H_val" not in stats["all"][name]
        full = stats["all"][name]["H"]  # (float32 products per batch, so equal up to their rounding)
        torch.testing.assert_close(held["H"] + held["H_val"], full, rtol=1e-4, atol=1e-6 * full.abs().max().item())
