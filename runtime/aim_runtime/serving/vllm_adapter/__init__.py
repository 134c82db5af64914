"""The one door to vLLM: its engine, its OpenAI application, its argument parser, its errors, and
the window of vLLM releases the runtime supports. Inside serving/, only this package imports
vLLM (pyproject.toml's import contracts).

vLLM's `vllm serve` argument parser is the single source of truth for engine settings: the plan's
engine args become `vllm serve` flags, the user's own vLLM flags follow them (so they win), and the
result is parsed by vLLM itself into the Namespace that `AsyncEngineArgs.from_cli_args`,
`build_app` and `init_app_state` take, exactly as `vllm serve` does. The OpenAI surface
(completions, chat, responses, Anthropic messages, tokenize, models, pooling routes for pooling
models) is vLLM's own FastAPI application, built from that Namespace, so requests and responses
are `vllm serve`'s by construction; the KServe server mounts it (serving/asgi.py). KServe's own
OpenAI layer, which imports vLLM internals and breaks with every vLLM release, is not used.

vLLM moves its entrypoints between releases; where a name lives is found by trying the known
locations newest first (`versions.entry`), never by comparing version numbers, and the supported
window is one table (SUPPORTED_VLLM).

The rooms: `versions` (the window, where each release keeps things), `arguments` (the parser and
the checks made with it), `engine` (the engine, its application, its request and error types),
`api_servers` (several API server processes over one set of engine cores).
"""

from aim_runtime.serving.vllm_adapter.api_servers import (
    ApiServers,
    cache_vllm_environment,
    freeze_startup_heap,
    launch_api_servers,
    setup_multiprocess_metrics,
    title_api_server,
)
from aim_runtime.serving.vllm_adapter.arguments import (
    check_recipe_args,
    check_settings,
    engine_argv,
    parse_vllm_args,
    vllm_serve_parser,
)
from aim_runtime.serving.vllm_adapter.engine import (
    Engine,
    EngineClient,
    completion_request,
    engine_dead_error_type,
    error_response,
    start_engine,
    vllm_error_type,
)
from aim_runtime.serving.vllm_adapter.versions import (
    PARSER_DESTS_READ,
    SUPPORTED_KSERVE,
    SUPPORTED_VLLM,
    build_versions,
    check_versions,
    installed_versions,
    supported_pair,
)

__all__ = [
    "PARSER_DESTS_READ", "SUPPORTED_KSERVE", "SUPPORTED_VLLM", "ApiServers", "Engine",
    "EngineClient", "build_versions", "cache_vllm_environment", "check_recipe_args",
    "check_settings", "check_versions", "completion_request", "engine_argv",
    "engine_dead_error_type", "error_response", "freeze_startup_heap", "installed_versions",
    "launch_api_servers", "parse_vllm_args", "setup_multiprocess_metrics", "start_engine",
    "supported_pair", "title_api_server", "vllm_error_type", "vllm_serve_parser",
]
