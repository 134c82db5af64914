"""The guard that keeps `make test-fast` free of servers (tests/conftest.py): what it counts as
starting a serving process."""

from __future__ import annotations

import sys

import pytest

from conftest import starts_a_server

PY = sys.executable


@pytest.mark.parametrize(("command", "starts"), [
    ([PY, "-m", "aim_runtime", "serve", "--model_dir", "/m"], True),
    ([PY, "-m", "aim_runtime", "worker", "--head-address", "h:1"], True),
    ("aim-runtime serve", True),
    ([PY, "-c", "import sys\nfrom aim_runtime.cli import main\nsys.exit(main(['serve']))"],
     True),
    ([PY, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"], True),
    (["vllm", "serve", "/m"], True),
    ([PY, "-m", "benchmarks.run", "--smoke"], True),
    ([PY, "-m", "benchmarks.warm_start"], True),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet"], True),
    ([PY, "-m", "aim_runtime", "serve", "--help"], False),  # prints, serves nothing
    ([PY, "-m", "aim_runtime", "plan", "--model", "/m"], False),
    ([PY, "-m", "benchmarks.report"], False),
    (["make", "-n", "test"], False),
    (["git", "log", "--oneline"], False),
])
def test_what_counts_as_starting_a_server(command, starts):
    assert starts_a_server(command) == starts
