"""Sequential, layer-by-layer compression of a local Hugging Face checkpoint (SparseGPT-style).

Calibration tokens go through the decoder one layer at a time: layer i's linear inputs are gathered
with forward hooks, its seven projections are compressed, and the *compressed* layer's outputs become
layer i+1's inputs. Only one decoder layer and the calibration activations are in memory at a time:
weights are streamed from the safetensors shards and the model skeleton lives on the meta device.

Resume: every finished layer is written atomically to its own shard and recorded (with a SHA-256) in
armor_progress.json. Re-running the same command re-derives the activations by running the calibration
through the finished layers as stored on disk, then continues; the result equals an uninterrupted run.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from compress import baselines, block_tuning, distillation
from compress.armor import PROXIES, ArmorConfig, armor, proxy_loss
from compress.weights import CheckpointWeights
from compress.errors import UserError
from compress.residual_weights import residual_row_weights
from compress.generated_text import PREFIX_TOKENS
from model_executors import format as fmt
from model_executors.armor_linear import ArmorLinear
from model_executors.convert import armor_names_in, swap_in_armor

log = logging.getLogger(__name__)

METHODS = ("armor", "nowag-p", "sparsegpt", "wanda", "magnitude")
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
LAYER_PREFIX = "model.layers."
LINEARS = {  # module path inside a decoder layer -> which calibration statistic it needs
    "self_attn.q_proj": "attn_in", "self_attn.k_proj": "attn_in", "self_attn.v_proj": "attn_in",
    "self_attn.o_proj": "o_in", "mlp.gate_proj": "mlp_in", "mlp.up_proj": "mlp_in", "mlp.down_proj": "down_in",
}
ARMOR_ONLY = ("block_size", "proxy", "hessian_damp", "iters", "lr", "patience", "discrete_steps", "scale_value_lr",
              "bcd_holdout", "tune_epochs", "tune_lr", "tune_holdout", "tune_micro_batch", "input_correction",
              "mlp_row_weights", "residual_row_weights")
PROGRESS = "armor_progress.json"
# Where a run's time goes (summary["phase_seconds"]): reading weights, sampling calibration text from the dense
# model (--calib-generated), running calibration tokens through the layers, gathering Gram matrices, the 2:4
# pruning (a baseline, or ARMOR's SparseGPT/NoWag-P start), ARMOR's block coordinate descent, the block-wise tuning
# of each decoder layer, writing shards, and the end-to-end distillation of the whole model (compress/distillation.py).
PHASES = ("load", "generate", "calibration_forward", "gram", "pruning", "bcd", "tuning", "write", "distill")
SUMMARY = "compression_summary.json"
GENERATED = "armor_calibration_generated.safetensors"  # the dense model's own calibration text, kept for a resume


# Settings added with a default other than the behaviour before them: a stored run without them ran like this.
SETTINGS_BEFORE_ADDED = {"input_correction": 0.0, "calib_dtype": "float32", "tune_micro_batch": 2,
                         "mlp_row_weights": False, "calib_generated": 0.0, "calib_generated_len": 0,
                         "distill_epochs": 0, "tune_epochs": 0}
CALIB_DTYPES = ("auto", "float32", "bfloat16")
# Compressed layers run their calibration tokens (thousands per batch) as one dense A S B matmul: what the packed
# kernel does at that many tokens anyway, and a matmul that autocast can run in the calibration dtype
CALIB_KERNEL = "fold"


@dataclass
class Settings:
    method: str = "armor"
    block_size: int = 32
    proxy: str = "hessian"  # ARMOR's loss: the full Gram matrix (from SparseGPT) or its diagonal (from NoWag-P)
    # The default (2026-12-06, late): 64 calibration samples, a quarter written by the dense model itself, 40 BCD
    # iterations per matrix, gate/up rows weighed by their share of the MLP output, 1 epoch of block-wise tuning per
    # decoder layer at Adam lr 3e-4, then (ARMOR) 1 epoch of end-to-end distillation of the whole model.
    # SmolLM2-135M: wiki perplexity 30.83 (77% of the gap from SparseGPT on 64 Wikipedia samples to dense) in 537 s
    # on 2 Intel AMX cores; the layer-wise default it replaced (2 tuning epochs at 2e-4, no distillation) reached
    # 32.85 (73%) in 486-609 s (the VM's speed drifts). Tuning on Wikipedia alone fits its domain and loses zero-shot
    # accuracy; the generated quarter keeps it (docs/algorithm.md)
    iters: int = 40
    lr: float = 3e-3
    patience: int = 100
    discrete_steps: int = 1  # sparse-core updates per BCD iteration
    scale_value_lr: bool = False  # the kept values' lr scaled by sqrt(576 / d_in) (compress/armor.py)
    # Calibration samples held out of the fit that only pick which BCD state of each matrix is kept (the one with
    # the lowest loss on them; --patience then counts iterations without a held-out gain): a guard for matrices
    # with about as many inputs as calibration tokens, where BCD can fit the tokens' noise (docs/algorithm.md).
    # 0: keep the state with the lowest fitted loss
    bcd_holdout: int = 0
    tune_epochs: int = 1  # block-wise tuning of each decoder layer's factors to its dense output (block_tuning.py)
    tune_lr: float = 3e-4  # 2 epochs at 2e-4 before the distillation (2026-12-06, late), 1e-4 before that
    tune_holdout: int = 4  # calibration samples that only measure the tuning
    tune_micro_batch: int = 2  # calibration samples per Adam step of the tuning
    # Fit each matrix (and the tuning) to the dense model's output on the dense model's inputs, not on the inputs
    # the already compressed layers produce: corrects the error those layers pass on (docs/algorithm.md)
    input_correction: float = 0.25  # share of the way to it: 0 off, 1 the full least-squares target (worse)
    # Weigh gate_proj's and up_proj's output rows by how far each moves the MLP's output (act(g) * u through
    # down_proj) instead of alike: A mixes rows, and with equal weights it moves error into the few intermediate
    # channels that carry the most (docs/algorithm.md). On Qwen it turns ARMOR from worse than SparseGPT into
    # better; on SmolLM2 it gains a point of wiki perplexity and loses on LAMBADA perplexity
    mlp_row_weights: bool = True
    # Weigh o_proj's and down_proj's output rows (residual-stream channels), and the block-wise tuning's output
    # channels, by how much the later layers' norms read each channel: A mixes rows, and with equal weights it
    # trades error into the channels that count from the large ones no norm reads (compress/residual_weights.py)
    residual_row_weights: bool = False
    calib_samples: int = 64
    # Share of the calibration samples the dense model writes itself (compress/generated_text.py), the rest
    # Wikipedia: keeps the block-wise tuning from fitting Wikipedia's domain (docs/algorithm.md)
    calib_generated: float = 0.25
    # Tokens per generated text, packed end to end into the samples (0: one text per sample): 256 samples SmolLM2's
    # quarter in half the time of 512 (compress/generated_text.py)
    calib_generated_len: int = 256
    seq_len: int = 512
    # The matmuls of the layers' calibration forwards and of the block-wise tuning in bfloat16 (2x the speed where
    # the CPU multiplies bfloat16 natively; "auto" picks it there, float32 elsewhere)
    calib_dtype: str = "auto"
    seed: int = 0
    sparsegpt_damp: float = 0.01
    hessian_damp: float = 0.1  # ridge of the full-Gram proxy, as a fraction of mean(diag H)
    batch_size: int = 8
    # Epochs of end-to-end distillation after the last layer: every compressed matrix tuned at once towards the
    # dense model's next-token distribution on the calibration samples (compress/distillation.py). None: 1 for
    # ARMOR, 0 for the baselines (one-shot, as the papers compare them; any method takes it when asked)
    distill_epochs: int | None = None
    distill_lr: float = 2e-5

    def __post_init__(self):
        if self.distill_epochs is None:
            self.distill_epochs = 1 if self.method == "armor" else 0

    def fingerprint(self, model_dir: Path) -> dict:
        source = hashlib.sha256((model_dir / "config.json").read_bytes())
        for file in sorted(model_dir.glob("*.safetensors")):
            stat = file.stat()
            source.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return {"settings": self.relevant(), "source": str(model_dir), "source_hash": source.hexdigest()}

    @property
    def uses_hessian(self) -> bool:
        """ARMOR with the full-Gram proxy, which needs H and a SparseGPT start."""
        return self.method == "armor" and self.proxy == "hessian"

    @property
    def corrects_inputs(self) -> bool:
        """ARMOR fitted to the dense path's outputs (needs the full Gram matrix and its cross term)."""
        return self.uses_hessian and self.input_correction > 0

    def relevant(self) -> dict:
        """The settings that shape this method's result (a baseline run is not told apart by ARMOR flags)."""
        settings = asdict(self)
        if self.method != "armor":
            for name in ARMOR_ONLY:
                settings.pop(name)
        if self.method != "sparsegpt" and not self.uses_hessian:
            settings.pop("sparsegpt_damp")
        if self.method == "armor" and not self.uses_hessian:
            settings.pop("hessian_damp")
        if not self.calib_generated:
            settings.pop("calib_generated_len")
        if not self.distill_epochs:
            settings.pop("distill_lr")
        return settings


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _return_freed_memory() -> None:
    """Hand the memory freed by a finished layer back to the OS (glibc's malloc_trim). Without it glibc keeps
    freed blocks for reuse, fragmented, and the resident memory crept with depth: SmolLM2's per-layer peak rose
    from 1060 to 1344 MiB over 30 layers while the live tensors stayed at 31 MiB and, trimmed, the anonymous memory
    at 458 MiB; with the trim it rose from 966 to 1100-1135 MiB (2026-12-07, docs/algorithm.md). A no-op where the
    C library has no malloc_trim (musl, macOS)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_since_reset() -> int:
    """Bytes: the process's resident high-water mark since the last call (Linux's VmHWM, then reset through
    /proc/self/clear_refs); where that cannot be read or reset, the process's whole-life peak (getrusage)."""
    try:
        status = Path("/proc/self/status").read_text()
        peak = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024
        Path("/proc/self/clear_refs").write_text("5")
        return peak
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _atomic_json(path: Path, payload: dict) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))


def check_model(config, settings: Settings) -> None:
    """Errors that must come before any heavy work: layout, block size, method."""
    if settings.method not in METHODS:
        raise UserError(f"unknown method '{settings.method}'; choose from {', '.join(METHODS)}")
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"model type '{config.model_type}' has no known decoder-layer layout; supported: "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    if getattr(config, "quantization_config", None):
        raise UserError("the input checkpoint is already quantized/compressed; start from a dense checkpoint")
    if settings.calib_dtype not in CALIB_DTYPES:
        raise UserError(f"unknown --calib-dtype '{settings.calib_dtype}'; choose from {', '.join(CALIB_DTYPES)}")
    if not 0 <= settings.calib_generated <= 1:
        raise UserError(f"--calib-generated is the share of calibration samples the model writes itself, between 0 "
                        f"and 1, got {settings.calib_generated}")
    if settings.calib_generated and settings.seq_len <= PREFIX_TOKENS:
        raise UserError(f"--calib-generated needs --seq-len above the {PREFIX_TOKENS}-token Wikipedia prefix each "
                        f"generated sample starts from, got {settings.seq_len}")
    if settings.calib_generated and settings.calib_generated_len != 0 and settings.calib_generated_len <= PREFIX_TOKENS:
        raise UserError(f"--calib-generated-len is 0 (one generated text per sample) or a length above the "
                        f"{PREFIX_TOKENS}-token Wikipedia prefix each text starts from, got {settings.calib_generated_len}")
    if settings.distill_epochs < 0 or settings.distill_lr <= 0:
        raise UserError(f"--distill-epochs must be >= 0 and --distill-lr > 0, got {settings.distill_epochs} and "
                        f"{settings.distill_lr}")
    if settings.distill_epochs and settings.calib_samples < distillation.HOLDOUT + 2:
        raise UserError(f"--distill-epochs holds {distillation.HOLDOUT} calibration samples out to measure the "
                        f"distillation and needs 2 more to tune on: pass --calib-samples {distillation.HOLDOUT + 2} "
                        f"or more (got {settings.calib_samples}), or --distill-epochs 0")
    if settings.method != "armor":
        return
    if settings.proxy not in PROXIES:
        raise UserError(f"unknown proxy '{settings.proxy}'; choose from {', '.join(PROXIES)}")
    if settings.hessian_damp < 0:
        raise UserError(f"--hessian-damp must be >= 0 (a fraction of mean(diag H)), got {settings.hessian_damp}")
    if settings.bcd_holdout < 0:
        raise UserError(f"--bcd-holdout must be >= 0 (calibration samples held out; 0: off), got "
                        f"{settings.bcd_holdout}")
    if settings.bcd_holdout and (settings.proxy != "hessian" or settings.calib_samples < settings.bcd_holdout + 2):
        raise UserError(f"--bcd-holdout {settings.bcd_holdout} needs --proxy hessian and at least 2 more calibration "
                        f"samples to fit on: pass --calib-samples {settings.bcd_holdout + 2} or more (got "
                        f"{settings.calib_samples} with --proxy {settings.proxy}), or --bcd-holdout 0")
    if settings.discrete_steps < 1:
        raise UserError(f"--discrete-steps must be >= 1 (sparse-core updates per iteration), got {settings.discrete_steps}")
    if not 0 <= settings.input_correction <= 1:
        raise UserError(f"--input-correction must be between 0 (off) and 1 (the full least-squares target), got "
                        f"{settings.input_correction}")
    if settings.tune_epochs < 0 or settings.tune_lr <= 0 or settings.tune_micro_batch < 1:
        raise UserError(f"--tune-epochs must be >= 0, --tune-lr > 0 and --tune-micro-batch >= 1, got "
                        f"{settings.tune_epochs}, {settings.tune_lr} and {settings.tune_micro_batch}")
    if settings.tune_epochs and settings.calib_samples < settings.tune_holdout + 2:
        raise UserError(f"--tune-epochs holds {settings.tune_holdout} calibration samples out to measure the tuning and "
                        f"needs 2 more to tune on: pass --calib-samples {settings.tune_holdout + 2} or more "
                        f"(got {settings.calib_samples}), or --tune-epochs 0")
    b = settings.block_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dims = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "q_proj out": config.num_attention_heads * head_dim,
            "k/v_proj out": config.num_key_value_heads * head_dim}
    bad = {k: v for k, v in dims.items() if v % b}
    if b % 4 or bad:
        fits = [s for s in (16, 32, 64, 128) if all(v % s == 0 for v in dims.values())]
        raise UserError(f"block size {b} does not divide {bad or 'a multiple of 4'}; sizes that fit this model: {fits}")


def _accumulate(stats: dict, key: str, value: torch.Tensor) -> None:
    """stats[key] += value, summed in float64 (created on first use)."""
    if key in stats:
        stats[key] += value
    else:
        stats[key] = value.double()


def calibration_dtype(choice: str) -> torch.dtype:
    """The dtype of the calibration matmuls: `choice`, or for "auto" bfloat16 where the CPU multiplies it natively
    (AVX512-BF16, which AMX CPUs have too) and float32 elsewhere, where bfloat16 would be emulated and slower."""
    if choice != "auto":
        return getattr(torch, choice)
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32


@contextmanager
def gram_matmuls(calib_dtype: torch.dtype):
    """Float32 matmuls inside multiply bfloat16-rounded inputs (oneDNN, float32 sums and output: "bf32") where the
    calibration runs in bfloat16 and the CPU has AMX, else plain float32 (oneDNN ignores the setting without AMX:
    Zen 4's AVX512-BF16 keeps float32 products at float32's speed). For Gram matrices: X's
    rounded entries are what the layer's bfloat16 matmuls read anyway, 1.6x float32's speed (SmolLM2's 4096 x 1536
    batches, Intel AMX), and unlike a bfloat16 product, whose output rounding leaves a near-singular H indefinite,
    the result is the exact Gram matrix of the rounded inputs."""
    matmul = torch.backends.mkldnn.matmul
    saved = matmul.fp32_precision
    if calib_dtype == torch.bfloat16:
        matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


def dense_path_target(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, damp: float,
                      strength: float = 1.0) -> torch.Tensor:
    """The weight whose proxy loss on this model's inputs X is the error against the dense model's output.

    With X_d the dense model's inputs to the matrix (same tokens), H = X^T X and C = X_d^T X, the minimiser of
    ||X_d W^T - X What^T||^2 + lam ||W - What||^2 (the ridge the proxy carries, lam = damp * mean(diag H)) is
    W_t = W (C + lam I)(H + lam I)^-1, and the proxy's loss around W_t is that error up to a constant. So fitting
    W_t corrects what the already compressed layers changed in X. W_t = W where X = X_d (the first layer)."""
    lam = damp * gram.diagonal().mean()
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    rhs = (cross + lam * eye).T @ weight.double().T  # (C + lam I)^T W^T
    full = torch.linalg.solve(gram.double() + lam * eye, rhs).T
    return (weight.double() + strength * (full - weight.double())).to(torch.float32).contiguous()


def mix_generated(calib: torch.Tensor, generated: torch.Tensor, seed: int) -> torch.Tensor:
    """The calibration set: `calib`'s first samples with `generated` in place of the rest, in a seeded order (the
    tuning holds out the last samples: either kind)."""
    mixed = torch.cat([calib[: len(calib) - len(generated)], generated])
    return mixed[torch.randperm(len(mixed), generator=torch.Generator().manual_seed(seed))]


def _mlp_sensitivity_hooks(mlp: nn.Module, sums: dict, active) -> list:
    """Hooks adding up, per intermediate channel j, act(g_j)^2 (how far an error in up_proj's row j moves
    act(g) * u) and (u_j act'(g_j))^2 (the same for gate_proj's row j) over the calibration tokens, while
    `active()` holds."""
    gate = {}

    @torch.autocast("cpu", enabled=False)
    def record_gate(_mod, _args, out):
        if active():
            gate["g"] = out.detach().reshape(-1, out.shape[-1]).float()

    @torch.autocast("cpu", enabled=False)
    def record_up(_mod, _args, out):
        if not active():
            return
        with torch.enable_grad():  # act_fn is elementwise: its slope is the gradient of its sum
            g = gate.pop("g").requires_grad_()
            act = mlp.act_fn(g)
            (slope,) = torch.autograd.grad(act, g, torch.ones_like(act))
        u = out.detach().reshape(-1, out.shape[-1]).float()
        for name, w in (("mlp.up_proj", act.detach()), ("mlp.gate_proj", u * slope)):
            sums[name] = sums.get(name, 0) + w.pow(2).sum(0).double()

    return [mlp.gate_proj.register_forward_hook(record_gate), mlp.up_proj.register_forward_hook(record_up)]


class _Capture(nn.Module):
    """Stands in for a decoder layer: records the call's keyword arguments, passes hidden states through."""

    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def forward(self, hidden_states, *args, **kwargs):
        self.sink.append(kwargs)
        return hidden_states


class LayerwiseCompressor:
    def __init__(self, model_dir: Path, out_dir: Path, settings: Settings, overwrite: bool = False):
        from transformers import AutoConfig

        self.model_dir, self.out_dir, self.settings = model_dir, out_dir, settings
        self.config = AutoConfig.from_pretrained(model_dir)
        check_model(self.config, settings)
        self.weights = CheckpointWeights(model_dir)
        self.n_layers = self.config.num_hidden_layers
        self.fingerprint = settings.fingerprint(model_dir)
        self.progress = self._open_output(overwrite)
        self.calib_dtype = calibration_dtype(settings.calib_dtype)
        # per layer, o_proj's and down_proj's row weights where asked for (read from the norms, no calibration)
        self.residual_rows = (residual_row_weights(self.weights, self.n_layers)
                              if settings.method == "armor" and settings.residual_row_weights else None)

    @property
    def start_method(self) -> str:
        return "sparsegpt" if self.settings.uses_hessian else "nowag-p"

    # ---- output directory and resume state ----
    def _open_output(self, overwrite: bool) -> dict:
        out, progress_file = self.out_dir, self.out_dir / PROGRESS
        if out.exists() and overwrite:
            shutil.rmtree(out)
        if out.exists() and any(out.iterdir()):
            if not progress_file.is_file():
                raise UserError(f"'{out}' is not empty and holds no compression run; pick an empty --out "
                                f"or pass --overwrite")
            try:
                progress = json.loads(progress_file.read_text())
            except ValueError:
                raise UserError(f"'{progress_file}' is corrupt; pass --overwrite to start again") from None
            differences = self._differences(progress.get("fingerprint"))
            if differences:
                raise UserError(f"'{out}' holds a different run ({'; '.join(differences)}): resume it with the "
                                f"settings it started with, or use another --out, or pass --overwrite")
            progress["fingerprint"] = self.fingerprint
            self._move_distilled(progress)
            for i, digest in progress["shards"].items():
                shard = out / self.shard_name(int(i))
                if not shard.is_file() or _sha256(shard) != digest:
                    raise UserError(f"finished layer {i} in '{shard}' is missing or corrupt; pass --overwrite to "
                                    f"start again")
            if progress["layers_done"]:
                log.info("resuming: %d of %d layers already compressed", progress["layers_done"], self.n_layers)
            return progress
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create '{out}' ({err.strerror}); choose another --out") from None
        progress = {"fingerprint": self.fingerprint, "layers_done": 0, "shards": {}, "matrices": [],
                    "seconds": 0.0, "phase_seconds": dict.fromkeys(PHASES, 0.0), "complete": False}
        try:
            _atomic_json(progress_file, progress)
        except OSError as err:
            raise UserError(f"cannot write to '{out}' ({err.strerror}); choose another --out") from None
        return progress

    def _differences(self, stored: dict | None) -> list[str]:
        """How a stored run's fingerprint differs from this run's (empty: the same run), one phrase per setting
        as its flag, e.g. "--mlp-row-weights False there, True here". A run started by an older version lacks the
        settings added since; it ran as their defaults (or SETTINGS_BEFORE_ADDED) say, so it resumes when this run
        asks for that."""
        if not stored:
            return ["no fingerprint of its settings"]
        settings, defaults = stored.get("settings", {}), {**asdict(Settings()), **SETTINGS_BEFORE_ADDED}
        now = self.fingerprint["settings"]
        settings = {**{k: defaults[k] for k in now.keys() - settings.keys() if k in defaults}, **settings}
        out = [f"--{k.replace('_', '-')} {settings.get(k)!r} there, {now.get(k)!r} here"
               for k in sorted(now.keys() | settings.keys()) if settings.get(k) != now.get(k)]
        if stored.get("source") != self.fingerprint["source"]:
            out.append(f"model {stored.get('source')} there, {self.fingerprint['source']} here")
        elif stored.get("source_hash") != self.fingerprint["source_hash"]:
            out.append("the model's files changed since it started")
        return out

    @contextmanager
    def _phase(self, name: str):
        """Add the block's wall time to phase `name` (kept in the progress file, so a resumed run adds up)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            phases = self.progress.setdefault("phase_seconds", dict.fromkeys(PHASES, 0.0))
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - began

    def _record_peak_rss(self, stage: str, layer: int | None = None) -> None:
        """The process's peak resident memory as `stage`'s (the largest over resumed runs): "layer_wise" is taken
        after each layer, before any distillation; "with_distillation" after it, so it covers both. Linux's
        high-water mark is reset after each reading, so `per_layer[i]` is the peak while layer i was compressed
        (layer 0's, or a resumed run's first, includes loading the model and the calibration pass before it):
        that is what shows whether the memory grows with depth."""
        peaks = self.progress.setdefault("peak_rss_bytes", {})
        now = _peak_rss_since_reset()
        peaks[stage] = max(peaks.get(stage, 0), peaks.get("layer_wise", 0), now)
        if layer is not None:
            per_layer = peaks.setdefault("per_layer", [])
            per_layer.extend([0] * (layer + 1 - len(per_layer)))  # 0: layers a run before per-layer records did
            per_layer[layer] = now

    @staticmethod
    def shard_name(i: int) -> str:
        return f"model-layer-{i:05d}.safetensors"

    # ---- the model skeleton and layer-0 inputs ----
    def _skeleton(self):
        from transformers import AutoModelForCausalLM

        self.config._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        body = model.model
        body.embed_tokens.load_state_dict(self.weights.load("model.embed_tokens."), assign=True)
        body.rotary_emb = type(body.rotary_emb)(config=self.config)  # real (non-meta) inv_freq buffers
        return body

    @torch.no_grad()
    def _layer_inputs(self, body, calib: torch.Tensor) -> tuple[list[torch.Tensor], list[dict]]:
        """Embeddings of the calibration batches and the keyword arguments each decoder layer receives."""
        real_layers, real_norm = body.layers, body.norm
        kwargs_per_layer: list[dict] = []
        body.layers = nn.ModuleList(_Capture(kwargs_per_layer) for _ in range(self.n_layers))
        body.norm = nn.Identity()
        hidden = []
        for batch in calib.split(self.settings.batch_size):
            kwargs_per_layer.clear()
            hidden.append(body(input_ids=batch, use_cache=False).last_hidden_state)
        body.layers, body.norm = real_layers, real_norm
        body.embed_tokens = None  # no longer needed: free it
        # every batch has the same shape and no padding, so the last batch's kwargs hold for all batches
        return hidden, [dict(kw) for kw in kwargs_per_layer]

    # ---- one layer ----
    def _load_layer(self, body, i: int, source: CheckpointWeights | None = None):
        layer = body.layers[i]
        prefix = f"{LAYER_PREFIX}{i}."
        source = source or self.weights
        state = source.load(prefix)
        names = armor_names_in(state)
        if names:
            swap_in_armor(layer, names, {k: tuple(v.shape) for k, v in state.items()}, self.dtype, kernel=CALIB_KERNEL)
        layer.load_state_dict(state, assign=True, strict=True)
        return layer

    def _calib_matmuls(self):
        """Where the layers' calibration forwards and the block-wise tuning run their matmuls in the calibration
        dtype (the residual stream, the norms, the losses and Adam's state stay in float32)."""
        lower = self.calib_dtype == torch.bfloat16 and self.dtype != torch.bfloat16
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=lower)

    @torch.no_grad()
    def _run(self, layer, hidden: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
        with self._calib_matmuls():
            return [layer(h, **kwargs) for h in hidden]

    @torch.no_grad()
    def _statistics(self, layer, hidden, kwargs, dense_hidden=None):
        """The calibration statistics of the layer's linear inputs (keyed by LINEARS' input names), the (dense)
        layer's outputs, and where `dense_hidden` is given (the dense model's inputs to this layer) its outputs on
        those too, with each input's cross term C = X_dense^T X (`stats[name]["C"]`)."""
        need_full = self.settings.method == "sparsegpt" or self.settings.uses_hessian
        same_inputs = dense_hidden is hidden  # the first layer: nothing compressed yet, nothing to correct
        if same_inputs:
            dense_hidden = None
        stats: dict[str, dict[str, torch.Tensor]] = {}
        inputs: dict[str, torch.Tensor] = {}  # this batch's inputs, for the cross term
        dense_pass = False
        n_fit = sum(len(h) for h in hidden) - (self.settings.bcd_holdout if self.settings.uses_hessian else 0)

        def hook(name):
            @torch.autocast("cpu", enabled=False)
            def record(_mod, args, _out):
                # products per batch (a few thousand tokens each), summed over batches in float64: a float64 matmul
                # costs this CPU ~4x the time and changes nothing that matters here. H has float32 sums and output
                # even where the forwards run bfloat16 (gram_matmuls: bfloat16-rounded inputs at most): a bfloat16
                # product's output rounding (~0.2% of each entry) leaves a near-singular H indefinite, which
                # SparseGPT's Cholesky refuses. The cross term C needs no such property.
                x, s = args[0].float(), stats.setdefault(name, {})
                keep = min(max(fitted, 0), len(x))  # the batch's samples that are fitted; the rest are held out
                if keep < len(x) and not dense_pass:  # held-out samples: only their Gram matrix (--bcd-holdout)
                    held = x[keep:].reshape(-1, x.shape[-1])
                    with gram_matmuls(self.calib_dtype):
                        _accumulate(s, "H_val", held.T @ held)
                x = x[:keep].reshape(-1, x.shape[-1])
                if not len(x):
                    return
                if dense_pass:
                    _accumulate(s, "C", x.to(self.calib_dtype).T @ inputs.pop(name))
                    return
                if need_full:  # h is then H's diagonal (taken below), not a pass of its own over x
                    with gram_matmuls(self.calib_dtype):
                        _accumulate(s, "H", x.T @ x)
                else:
                    _accumulate(s, "h", x.pow(2).sum(0))
                if dense_hidden is not None:
                    inputs[name] = x.to(self.calib_dtype)
            return record

        # q/k/v (and gate/up) read one input: gather each input's statistics once, on its first reader
        readers: dict[str, str] = {}
        for name, source in LINEARS.items():
            readers.setdefault(source, name)
        handles = [layer.get_submodule(name).register_forward_hook(hook(source)) for source, name in readers.items()]
        sensitivity = {}
        if self.settings.uses_hessian and self.settings.mlp_row_weights:
            handles += _mlp_sensitivity_hooks(layer.mlp, sensitivity, lambda: not dense_pass)
        outputs, dense_outputs = [], []
        try:
            with self._phase("gram"), self._calib_matmuls():
                for b, h in enumerate(hidden):
                    fitted = n_fit - b * len(hidden[0])  # samples of this batch that fit (the rest held out)
                    dense_pass = False
                    outputs.append(layer(h, **kwargs))
                    if dense_hidden is not None:
                        dense_pass = True
                        dense_outputs.append(layer(dense_hidden[b], **kwargs))
        finally:
            for handle in handles:
                handle.remove()
        for gathered in stats.values():
            if "H" in gathered:
                gathered["h"] = gathered["H"].diagonal().clone()
        if sensitivity:  # each row's weight: its sensitivity times the squared norm of down_proj's column it feeds
            columns = layer.mlp.down_proj.weight.float().pow(2).sum(0)
            stats["row_weights"] = {name: (w.float() * columns).clamp_min(1e-30) for name, w in sensitivity.items()}
        if same_inputs:
            return stats, outputs, outputs
        return stats, outputs, dense_outputs if dense_hidden is not None else None

    def _compress_matrix(self, i: int, name: str, linear: nn.Linear, stats: dict, bar,
                         row_weights: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
        s = self.settings
        weight, bias = linear.weight.data, linear.bias.data if linear.bias is not None else None
        h = stats["h"].float()
        record = {"layer": i, "matrix": name, "shape": list(weight.shape)}
        if s.method == "armor":
            seed = s.seed * 1_000_003 + i * 101 + list(LINEARS).index(name)

            def progress(it, value):
                if it % 10 == 0:
                    bar.set_postfix_str(f"L{i} {name} it {it}/{s.iters} loss {value:.4f}")

            cfg = ArmorConfig(block_size=s.block_size, iters=s.iters, lr=s.lr, patience=s.patience,
                              discrete_steps=s.discrete_steps, scale_value_lr=s.scale_value_lr)
            gram, start, target = h, None, weight  # the paper's proxy starts from NoWag-P (ARMOR's own default start)
            if self.settings.uses_hessian:
                gram = stats["H"].float()
                if "C" in stats:
                    target = dense_path_target(weight, stats["H"], stats["C"], s.hessian_damp, s.input_correction)
                    record["target_shift"] = float((target - weight.float()).norm() / weight.float().norm())
                with self._phase("pruning"):
                    start = baselines.sparsegpt(target, gram, damp=s.sparsegpt_damp)
                # A ridge on H keeps BCD from fitting the few calibration tokens (docs/algorithm.md).
                gram = baselines.ridge(gram, s.hessian_damp)
            holdout = stats["H_val"].float() if "H_val" in stats else None
            with self._phase("bcd"):
                res = armor(target, gram, cfg, seed=seed, progress=progress, start=start, row_weights=row_weights,
                            holdout_gram=holdout)
            module = ArmorLinear.from_factors(res.a_blocks, res.core, res.mask, res.b_blocks, bias, dtype=weight.dtype,
                                              kernel=CALIB_KERNEL)
            record.update(loss_start=res.start_loss, loss_final=res.final_loss, iters=res.iters,
                          loss_stored=proxy_loss(target, module.dense_weight(), gram, row_weights),
                          bytes=module.packed_bytes(), dense_bytes=module.dense_bytes(), kept_iter=res.kept_iter)
            if holdout is not None:
                record.update(holdout_start=res.holdout_start, holdout_final=res.holdout_final)
            if row_weights is not None:  # then every loss of the record is the row-weighted one
                record["row_weighted"] = True
        else:
            with self._phase("pruning"):
                if s.method == "magnitude":
                    pruned = baselines.magnitude(weight)
                elif s.method == "wanda":
                    pruned = baselines.wanda(weight, h)
                elif s.method == "nowag-p":
                    pruned = baselines.nowag_p(weight, h)
                else:
                    pruned = baselines.sparsegpt(weight, stats["H"].float(), damp=s.sparsegpt_damp)
            module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device="cpu")
            module.weight.data.copy_(pruned)
            if bias is not None:
                module.bias.data.copy_(bias)
            record.update(loss_final=proxy_loss(weight, pruned, h), bytes=weight.numel() * weight.element_size(),
                          dense_bytes=weight.numel() * weight.element_size())
        return module, record

    def _compress_layer(self, i: int, layer, hidden, kwargs, bar, dense_hidden=None):
        """Compress `layer`'s matrices in place; the records, and the dense model's outputs of this layer where
        `dense_hidden` (its inputs) is given."""
        s = self.settings
        stats, dense_outputs, dense_path = self._statistics(layer, hidden, kwargs, dense_hidden)
        residual = self.residual_rows[i] if self.residual_rows else {}
        row_weights = {**stats.get("row_weights", {}), **residual}
        records = []
        for name in LINEARS:
            module, record = self._compress_matrix(i, name, layer.get_submodule(name), stats[LINEARS[name]], bar,
                                                   row_weights.get(name))
            layer.set_submodule(name, module)
            records.append(record)
        if s.method == "armor" and s.tune_epochs > 0:
            with self._phase("tuning"), self._calib_matmuls():
                targets = dense_outputs
                if dense_path is not None:  # the dense model's output, by the same share as the matrices' targets
                    targets = [o + s.input_correction * (d - o) for o, d in zip(dense_outputs, dense_path)]
                result = block_tuning.tune_layer(layer, list(LINEARS), hidden, targets, kwargs, s.tune_epochs,
                                                 s.tune_lr, s.tune_holdout, s.tune_micro_batch,
                                                 residual.get("mlp.down_proj"))
            log.info("layer %d: held-out layer-output error %.4g -> %.4g (tuning, %d epochs kept)", i,
                     result["holdout_error_start"], result["holdout_error_final"], result["epochs_kept"])
            for record in records:  # its loss_* fields describe the BCD result, `tuning` what was stored
                record["tuning"] = result
        return records, dense_path

    def _write_layer(self, i: int, layer) -> str:
        prefix = f"{LAYER_PREFIX}{i}."
        tensors = {prefix + k: v.contiguous() for k, v in layer.state_dict().items()}
        path = self.out_dir / self.shard_name(i)
        _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        return _sha256(path)

    def _replay_layer(self, body, i: int, stored: CheckpointWeights, hidden, dense_hidden, kwargs):
        """The next layer's inputs from a layer compressed before (and the dense model's, where tracked)."""
        if dense_hidden is not None:
            with self._phase("load"):
                layer = self._load_layer(body, i)
            with self._phase("calibration_forward"):
                dense_hidden = self._run(layer, dense_hidden, kwargs)
        with self._phase("load"):
            layer = self._load_layer(body, i, stored)
        with self._phase("calibration_forward"):
            hidden = self._run(layer, hidden, kwargs)
        return hidden, dense_hidden

    # ---- the whole run ----
    def _with_generated(self, calib: torch.Tensor, tokenizer) -> torch.Tensor:
        """`calib` with the share `calib_generated` of its samples replaced by the dense model's own text (sampled
        once and kept in the output directory, so a resumed run calibrates on the same tokens), shuffled in a seeded
        order (the tuning holds out the last samples: either kind)."""
        from compress.generated_text import generated_samples

        s = self.settings
        k = max(1, round(s.calib_samples * s.calib_generated))
        path = self.out_dir / GENERATED
        if path.is_file():
            generated = load_file(path)["input_ids"]
        else:
            generated = generated_samples(self.model_dir, tokenizer, k, s.seq_len, s.seed, self.calib_dtype,
                                          s.calib_generated_len)
            _atomic_write(path, lambda tmp: save_file({"input_ids": generated}, tmp))
        return mix_generated(calib, generated, s.seed)

    def run(self) -> dict:
        from transformers import AutoTokenizer

        from compress.datasets import calibration_samples

        if self.progress.get("complete"):
            log.info("'%s' is already complete", self.out_dir)
            return json.loads((self.out_dir / SUMMARY).read_text())
        s = self.settings
        self.dtype = self.weights.load("model.embed_tokens.")["weight"].dtype
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        calib = calibration_samples(tokenizer, s.calib_samples, s.seq_len, s.seed)
        started = time.time()
        if s.calib_generated > 0:
            with self._phase("generate"):
                calib = self._with_generated(calib, tokenizer)
        if self.progress["layers_done"] < self.n_layers:
            self._compress_layers(calib, started)
        weight_map = self._write_model_files()
        if s.distill_epochs and "distillation" not in self.progress:
            self._distill(calib)  # rewrites layer shards in place: same names, tensors and sizes
        return self._finish(weight_map)

    def _compress_layers(self, calib: torch.Tensor, started: float) -> None:
        """The layer-wise pass: every layer not finished before compressed, written and recorded in turn."""
        s = self.settings
        with self._phase("load"):
            body = self._skeleton()
        with self._phase("calibration_forward"):
            hidden, layer_kwargs = self._layer_inputs(body, calib)
        dense_hidden = hidden if s.corrects_inputs else None  # the dense model's inputs to layer i
        done = self.progress["layers_done"]
        stored = CheckpointWeights(self.out_dir) if done else None
        bar = tqdm(range(self.n_layers), desc=f"compress ({s.method})", unit="layer")
        for i in bar:
            if i < done:  # finished before: replay the stored layer (and the dense one) to rebuild the activations
                hidden, dense_hidden = self._replay_layer(body, i, stored, hidden, dense_hidden, layer_kwargs[i])
            else:
                with self._phase("load"):
                    layer = self._load_layer(body, i)
                records, dense_hidden = self._compress_layer(i, layer, hidden, layer_kwargs[i], bar, dense_hidden)
                with self._phase("write"):
                    digest = self._write_layer(i, layer)
                with self._phase("calibration_forward"):
                    hidden = self._run(layer, hidden, layer_kwargs[i])
                self.progress["shards"][str(i)] = digest
                self.progress["matrices"].extend(records)
                self.progress["layers_done"] = i + 1
                self._record_peak_rss("layer_wise", layer=i)
                self.progress["seconds"] += time.time() - started
                started = time.time()
                _atomic_json(self.out_dir / PROGRESS, self.progress)
                final = sum(r["loss_final"] for r in records) / len(records)
                if s.method == "armor":
                    start = sum(r["loss_start"] for r in records) / len(records)
                    log.info("layer %d/%d: mean %s proxy loss %.4f -> %.4f (%s start -> ARMOR)", i + 1,
                             self.n_layers, s.proxy, start, final, self.start_method)
                else:
                    log.info("layer %d/%d: mean proxy loss %.4f (%s)", i + 1, self.n_layers, final, s.method)
            body.layers[i] = body.layers[i].to("meta")  # drop the layer's memory before the next one
            _return_freed_memory()

    # ---- end-to-end distillation (compress/distillation.py) ----
    def _distill(self, calib: torch.Tensor) -> None:
        """Distil the written checkpoint towards the dense model; a kept result replaces the layer shards."""
        from transformers import AutoModelForCausalLM

        import model_executors  # noqa: F401  registers the ARMOR format with transformers

        began = time.time()

        def matmuls():  # the model is held in float32; its matmuls run in the calibration dtype
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.calib_dtype == torch.bfloat16)

        for i in range(self.n_layers):  # what a run killed before its distillation's commit point wrote
            self._distilled_path(i).unlink(missing_ok=True)
        with self._phase("distill"):
            dense = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
            with matmuls():
                target = distillation.teacher(dense, calib)
            del dense
            _return_freed_memory()  # what glibc kept of the dense model (SmolLM2: ~100 of its ~600 MiB)
            model = AutoModelForCausalLM.from_pretrained(self.out_dir, dtype=torch.float32).eval()
            shards = {}  # each improving epoch rewrites the shards beside the layer-wise ones
            result = distillation.distill(model, calib, target, self.settings.distill_epochs,
                                          self.settings.distill_lr, matmuls,
                                          keep=lambda tuned: shards.update(self._write_distilled(tuned)))
            log.info("distillation: held-out KL to the dense model %s (%d epochs kept%s)",
                     " -> ".join(f"{kl:.4f}" for kl in result["held_out_kl"]), result["epochs_kept"],
                     ", decoder layers recomputed to fit in memory" if result["recomputed_layers"] else "")
            if result["epochs_kept"]:
                result["shards"] = shards
        self.progress["seconds"] += time.time() - began
        self._record_peak_rss("with_distillation")
        self.progress["distillation"] = result  # the commit point: from here a resume moves the shards in
        _atomic_json(self.out_dir / PROGRESS, self.progress)
        self._move_distilled(self.progress)

    def _write_distilled(self, model) -> dict[str, str]:
        """Each layer shard with the distilled tensors, written beside it (`.NAME.distilled`); their digests."""
        tuned, digests = distillation.checkpoint_state(model), {}
        for i in range(self.n_layers):
            path = self.out_dir / self.shard_name(i)
            tensors = {k: tuned[k].to(v.dtype).contiguous() for k, v in load_file(path).items()}
            save_file(tensors, str(self._distilled_path(i)), metadata={"format": "pt"})
            digests[str(i)] = _sha256(self._distilled_path(i))
        return digests

    def _distilled_path(self, i: int) -> Path:
        return self.out_dir / f".{self.shard_name(i)}.distilled"

    def _move_distilled(self, progress: dict) -> None:
        """Put a recorded distillation's shards in place of the layer-wise ones (a resume finishes what a killed
        run started: each move is atomic, and a shard already moved is left alone)."""
        shards = progress.get("distillation", {}).get("shards", {})
        for i, digest in shards.items():
            if self._distilled_path(int(i)).is_file():
                os.replace(self._distilled_path(int(i)), self.out_dir / self.shard_name(int(i)))
            progress["shards"][i] = digest
        if shards:
            _atomic_json(self.out_dir / PROGRESS, progress)

    def _write_model_files(self) -> dict[str, str]:
        """Everything but the layer shards: the base weights, the index, the config (with the format), the
        tokenizer and other files of the source; the index's weight map."""
        out = self.out_dir
        base = {k: v.contiguous() for k, v in self.weights.load("", strip=False).items() if not k.startswith(LAYER_PREFIX)}
        _atomic_write(out / "model-base.safetensors", lambda p: save_file(base, str(p), metadata={"format": "pt"}))
        weight_map = {k: "model-base.safetensors" for k in base}
        for i in range(self.n_layers):
            with safe_open(out / self.shard_name(i), "pt") as fh:
                weight_map.update({k: self.shard_name(i) for k in fh.keys()})
        total = sum((out / f).stat().st_size for f in set(weight_map.values()))
        _atomic_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})

        config = json.loads((self.model_dir / "config.json").read_text())
        modules = [f"{LAYER_PREFIX}{i}.{n}" for i in range(self.n_layers) for n in LINEARS]
        if self.settings.method == "armor":
            config["quantization_config"] = fmt.quantization_config(self.settings.block_size, modules)
        else:
            config.pop("quantization_config", None)
        _atomic_json(out / "config.json", config)
        skip = {"config.json", "model.safetensors.index.json", PROGRESS, SUMMARY, "armor_import.json"}
        for file in self.model_dir.iterdir():
            if file.is_file() and file.suffix != ".safetensors" and file.name not in skip:
                shutil.copy2(file, out / file.name)
        return weight_map

    def _finish(self, weight_map: dict[str, str]) -> dict:
        out = self.out_dir
        summary = self._summary(weight_map)
        _atomic_json(out / SUMMARY, summary)
        self.progress["complete"] = True
        _atomic_json(out / PROGRESS, self.progress)
        return summary

    def _summary(self, weight_map) -> dict:
        recs = self.progress["matrices"]
        dense_params = sum(r["shape"][0] * r["shape"][1] for r in recs)
        overhead = 0
        if self.settings.method == "armor":
            b = self.settings.block_size
            overhead = sum((r["shape"][0] + r["shape"][1]) * b for r in recs)  # entries of A and B
        files = {self.out_dir / f for f in set(weight_map.values())}
        summary = {
            "method": self.settings.method, "settings": self.settings.relevant(), "source": str(self.model_dir),
            "seconds": round(self.progress["seconds"], 1), "calib_dtype": str(self.calib_dtype).removeprefix("torch."),
            "phase_seconds": {k: round(v, 1) for k, v in self.progress.get("phase_seconds", {}).items()},
            "peak_rss_bytes": self.progress.get("peak_rss_bytes", {}),
            "matrices": len(recs),
            "dense_params_compressed": dense_params,
            "overhead_params": overhead, "overhead_pct_of_dense": 100.0 * overhead / dense_params,
            "checkpoint_bytes": sum(f.stat().st_size for f in files),
            "compressed_matrix_bytes": sum(r["bytes"] for r in recs),
            "dense_matrix_bytes": sum(r["dense_bytes"] for r in recs),
            "mean_proxy_loss": sum(r["loss_final"] for r in recs) / len(recs),
        }
        if self.settings.method == "armor":
            summary.update(proxy=self.settings.proxy, start_method=self.start_method,
                           mean_proxy_loss_start=sum(r["loss_start"] for r in recs) / len(recs))
        tuned = [r["tuning"] for r in recs if "tuning" in r]  # every matrix of a layer holds its layer's result
        if tuned:
            summary["mean_holdout_layer_error"] = {
                k: sum(t[f"holdout_error_{k}"] for t in tuned) / len(tuned) for k in ("start", "final")}
        if "distillation" in self.progress:
            summary["distillation"] = {k: v for k, v in self.progress["distillation"].items() if k != "shards"}
        return summary


def compress_checkpoint(model_dir: Path, out_dir: Path, settings: Settings, overwrite: bool = False) -> dict:
    return LayerwiseCompressor(Path(model_dir), Path(out_dir), settings, overwrite).run()
