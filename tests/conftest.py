"""Shared fixtures: the generated tiny model and one real server per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from servers import ServerProcess, aim_server

ACCESS_LOG_FORMAT = 'access %(h)s "%(r)s" %(s)s %(M)sms recipe=%({x-aim-recipe}o)s'


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def tiny_model(work_dir) -> Path:
    """The embedded default model, built here from scratch (tokenizer trained, random weights)."""
    from aim_runtime.checkpoint.tiny_model import ensure_default_model

    return ensure_default_model(work_dir / "aim-tiny-random")


@pytest.fixture(scope="session")
def server(work_dir, tiny_model) -> ServerProcess:
    """`aim-runtime serve` on the tiny model: real KServe ModelServer, real vLLM CPU engine,
    with an access log."""
    process = aim_server(work_dir, tiny_model, "--access_log_format", ACCESS_LOG_FORMAT).start()
    try:
        process.wait_ready(also_probe=("/v2/health/live",))
        yield process
    finally:
        process.stop()
