# Development tasks. The two README commands: `make serve` and `make test`.
# Both create .venv and install the CPU development stack on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := locks/cpu.txt
# vLLM's CPU build exists for 0.32 only of the supported window (0.32-0.34): the one venv runs it,
# and tests/test_vllm_release.py reads every release of the window from its wheel.

.PHONY: install serve test test-fast test-avx2 coverage check-vllm lint docs bench lock

# A venv holds exactly its lock (locks/lock.py): made anew when the lock changes, the lock
# installed without resolving anything (--no-deps), then the project itself with the locked
# build backend. tests/test_lock.py checks that the locks satisfy pyproject.toml.
define install_locked
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --no-deps --requirement $(2)
	$(1)/bin/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(1)/bin/python locks/lock.py --check
	touch $(1)/.installed-stamp
endef

# pyproject.toml too: the editable install writes its entry points (the vLLM plugin) at install.
$(STAMP): $(LOCK) pyproject.toml
	$(call install_locked,$(VENV),$(LOCK))

# Resolve pyproject.toml afresh into locks/*.txt and print what changed; commit the result.
lock:
	$(PYTHON) locks/lock.py

install: $(STAMP)

serve: install
	$(BIN)/aim-runtime serve $(ARGS)

# Style, the layering contract (pyproject [tool.importlinter]) and the type check.
lint: install
	$(BIN)/ruff check runtime tests benchmarks locks
	PYTHONPATH=runtime $(BIN)/lint-imports
	$(BIN)/mypy

# pytest on both cores (pytest-xdist): the tests that share a server run in one worker, so each
# server starts once (tests/conftest.py, `xdist_group`). WORKERS=0 runs in this process.
WORKERS ?= 2
PYTEST_ARGS := -n $(WORKERS) --dist loadgroup --no-loadscope-reorder
PYTEST := $(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole suite (on vLLM's CPU build; the other releases of the window read from their wheels).
test: lint
	$(PYTEST) $(ARGS)

# The inner loop: no server starts (tests/conftest.py fails an unmarked test that starts one).
test-fast: install
	$(PYTEST) -m "not serving and not slow" $(ARGS)

# The whole suite under coverage.py, the servers it starts measured too ([tool.coverage] in
# pyproject.toml); the report per module, then the total.
coverage: install
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest $(PYTEST_ARGS) $(ARGS)
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report

# The embedded-model tests forced onto vLLM's AVX2 kernels on an AVX-512 host (tests/isa_avx2:
# torch's CPU probes answer no for AVX-512 and AMX; torch's and oneDNN's own dispatch capped).
EMBEDDED_MODEL_TESTS := tests/test_cpu_isa.py tests/test_default_model.py tests/test_serving.py \
	tests/test_readme.py
test-avx2: install
	AIM_TEST_FORCED_ISA=avx2 PYTHONPATH=$(CURDIR)/tests/isa_avx2 ATEN_CPU_CAPABILITY=avx2 \
		ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest $(EMBEDDED_MODEL_TESTS) $(ARGS)

# A vLLM release read from its wheel against what the runtime uses (tests/vllm_release.py): the
# first step of moving the window. `make check-vllm VERSION=0.35.0`
check-vllm: install
	$(BIN)/python tests/vllm_release.py $(VERSION)

# The documentation site: the reference pages regenerated from the code, then built strictly.
docs: install
	PYTHONPATH=runtime $(BIN)/python -m aim_runtime.cli.reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)
