import json

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
    for proc, text in ((missing, "does not exist"), (corrupt, "not a GGUF file"), (broken, "could not read"),
                       (unknown, "unknown bundled model")):
        assert proc.returncode == 2, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
