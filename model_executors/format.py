"""The ARMOR checkpoint format (docs/checkpoint-format.md), shared by the writer and every loader.

Per compressed linear `<prefix>` (e.g. model.layers.0.self_attn.q_proj) the safetensors hold
    <prefix>.sparse_values  (d_out, d_in/2)      kept values of the 2:4 core, model dtype
    <prefix>.sparse_meta    (d_out, d_in/8) u8   kept positions, see model_executors.sparsity
    <prefix>.a_blocks       (d_out/b, b, b)      diagonal blocks of A, model dtype
    <prefix>.b_blocks       (d_in/b, b, b)       diagonal blocks of B, model dtype
    <prefix>.bias           (d_out,)             only when the original layer has one
and the layer computes y = A (S (B x)) + bias. config.json's `quantization_config` says so.
"""
from __future__ import annotations

QUANT_METHOD = "armor"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
TENSORS = ("sparse_values", "sparse_meta", "a_blocks", "b_blocks")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantization_config(block_size: int, modules: list[str], skipped: list[str] | None = None) -> dict:
    return {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "sparsity": "2:4",
        "block_size": block_size,
        "core_layout": "values+meta_u8",
        "modules": sorted(modules),
        "modules_to_not_convert": sorted(skipped or []),
    }


def check_config(config: dict) -> dict:
    """Validate a quantization_config dict; raise ValueError that says what is wrong."""
    if config.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"quant_method is {config.get('quant_method')!r}, expected {QUANT_METHOD!r}")
    version = config.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"ARMOR format_version {version!r} is not supported (this build reads "
                         f"{list(SUPPORTED_VERSIONS)}); upgrade armor-serve or re-compress the model")
    if not isinstance(config.get("modules"), list):
        raise ValueError("ARMOR quantization_config has no 'modules' list")
    return config
