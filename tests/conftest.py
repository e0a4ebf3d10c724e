"""Shared fixtures: the real bundled model (imported once per machine into ARMOR_HOME) and helpers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ARMOR_HOME", str(ROOT / ".cache" / "armor-home"))
if not torch.cuda.is_available():
    # Triton kernels (the GPU decode path) run on CPU tensors through Triton's interpreter; it must be on
    # before triton is first imported, since its standard library is decorated at import
    os.environ.setdefault("TRITON_INTERPRET", "1")


def run_cli(*args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """Run `armor ARGS` in a fresh interpreter and capture its output."""
    return subprocess.run([sys.executable, "-m", "armor_serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def dense_model() -> Path:
    from compress.model_import import bundled_gguf, import_gguf

    return import_gguf(bundled_gguf("smollm2"))


@pytest.fixture(scope="session")
def tokenizer(dense_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(dense_model)


SMALL = ["--calib-samples", "8", "--seq-len", "256"]


def compress_fixture(factory, dense_model: Path, name: str, *extra: str) -> Path:
    out = factory.mktemp(name) / "ckpt"
    proc = run_cli("compress", "--model", str(dense_model), "--out", str(out), *SMALL, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def armor_ckpt(tmp_path_factory, dense_model) -> Path:
    # the layer-wise pass alone (tests/test_distillation.py distils the same run); developers iterating on the server
    # may reuse a checkpoint made with the same settings (SMALL, --iters 30 --distill-epochs 0)
    if os.environ.get("ARMOR_TEST_CHECKPOINT"):
        return Path(os.environ["ARMOR_TEST_CHECKPOINT"]).resolve()
    return compress_fixture(tmp_path_factory, dense_model, "armor", "--method", "armor", "--iters", "30",
                            "--distill-epochs", "0")


@pytest.fixture(scope="session")
def nowag_ckpt(tmp_path_factory, dense_model) -> Path:
    return compress_fixture(tmp_path_factory, dense_model, "nowag", "--method", "nowag-p")


@pytest.fixture(scope="session")
def sparsegpt_ckpt(tmp_path_factory, dense_model) -> Path:
    return compress_fixture(tmp_path_factory, dense_model, "sparsegpt", "--method", "sparsegpt")


ENGINES = ["transformers", "vllm"]


@pytest.fixture(scope="session", params=ENGINES)
def server(request, armor_ckpt):
    """`armor serve` on the ARMOR fixture, each engine in turn (one at a time: pytest groups the tests by
    engine), shared by every module that talks to the server as a client."""
    from server_util import Server

    if request.param == "vllm":
        pytest.importorskip("vllm")
    srv = Server(armor_ckpt, request.param, "--max-concurrent", "2", "--max-queue", "8").wait_ready()
    yield srv
    errors = srv.server_errors()
    assert srv.stop() == 0
    assert "Traceback" not in srv.stderr(), srv.stderr()[-4000:]  # a clean SIGTERM shutdown, engine included
    assert errors == 0, f"{errors} requests got a 5xx: " + srv.stderr()[-4000:]  # no client ever made it fail
