# Development tasks. The two README commands: `make serve` and `make test`.
# Both create .venv and install the CPU development stack on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := locks/cpu.txt
# The oldest vLLM of the supported window (pyproject extra `cpu-oldest`), for the tests that meet
# vLLM itself; the main venv has the newest.
OLDEST_VENV ?= .venv-oldest
OLDEST_BIN := $(OLDEST_VENV)/bin
OLDEST_STAMP := $(OLDEST_VENV)/.installed-stamp
OLDEST_LOCK := locks/cpu-oldest.txt
WINDOW_TESTS := tests/test_serving.py tests/test_compatibility.py tests/test_startup.py \
	tests/test_api_servers.py

.PHONY: install serve test test-oldest lint bench lock

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

$(STAMP): $(LOCK)
	$(call install_locked,$(VENV),$(LOCK))

$(OLDEST_STAMP): $(OLDEST_LOCK)
	$(call install_locked,$(OLDEST_VENV),$(OLDEST_LOCK))

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

# The whole suite on the newest vLLM, then the tests that meet vLLM itself (serving,
# compatibility, start-up) on the oldest vLLM of the supported window.
test: lint $(OLDEST_STAMP)
	$(BIN)/python -m pytest $(ARGS)
	$(OLDEST_BIN)/python -m pytest $(WINDOW_TESTS)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_BIN)/python -m pytest $(WINDOW_TESTS) $(ARGS)

bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)
