"""The engine: vLLM's AsyncLLM and its OpenAI application built from the parsed Namespace as
`vllm serve` builds them; its request and error types for the KServe routes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aim_runtime.serving import process_env
from aim_runtime.serving.vllm_adapter.arguments import parse_or_raise, vllm_serve_parser
from aim_runtime.serving.vllm_adapter.versions import BUILD_APP, INIT_APP_STATE, entry

log = logging.getLogger(__name__)

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


@contextlib.contextmanager
def without_http_instrumentation() -> Iterator[None]:
    """While vLLM builds its application: no HTTP instrumentation on it. `vllm serve` instruments
    its application with prometheus-fastapi-instrumentator (the `http_requests_total`,
    `http_request_duration_*` and `http_re*_size_bytes` series). The runtime counts every
    request once, on every listener and protocol, in `aim_requests_total{protocol,
    status_class}` (serving/asgi.py `CountedRequests`); the instrumentation counted vLLM's
    routes a second time, and for that walked the application's route table on every request
    and wrapped every streamed chunk. Its `instrument` adds nothing for the block's duration:
    taken out of `user_middleware` afterwards, the middleware's series stayed exported, since
    `build_app`'s SageMaker bootstrap (model_hosting_container_standards) already builds the
    middleware stack, which creates them. Where vLLM no longer uses the package, nothing to do.
    The patch holds for one synchronous call on the event loop's thread, where nothing else
    builds an application."""
    try:
        from prometheus_fastapi_instrumentator import Instrumentator
    except ImportError:
        yield
        return
    instrument = Instrumentator.instrument
    setattr(Instrumentator, "instrument", lambda self, app, *args, **kwargs: self)  # noqa: B010
    try:
        yield
    finally:
        setattr(Instrumentator, "instrument", instrument)  # noqa: B010


async def start_engine(argv: list[str], env: dict[str, str],
                       client: EngineClient | None = None) -> Engine:
    """Build the AsyncLLM (in a worker thread, so the server keeps answering probes while the
    weights load), then vLLM's OpenAI application with its state, as `vllm serve` does. With
    `client`, the AsyncLLM is one API server's client of engine cores already launched
    (`launch_api_servers`)."""
    process_env.export(env, "the vLLM engine")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    args = parse_or_raise(vllm_serve_parser(), argv)
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
        with without_http_instrumentation():
            app = entry(BUILD_APP)(app_args, tasks, llm.vllm_config.model_config)
        await entry(INIT_APP_STATE)(llm, app.state, app_args, tasks)
        # vLLM's engine-error handler reads `vllm serve`'s uvicorn server here and sets its
        # should_exit once the engine has errored; without it the handler itself failed (a 500
        # for a client's bad string). Nothing reads this one: the runtime's engine watch
        # (serving/lifecycle.py) sees the same death and stops every listener with exit code 1.
        app.state.server = argparse.Namespace(should_exit=False)
    except BaseException:
        llm.shutdown()
        raise
    engine = Engine(llm=llm, app=app, args=args)
    engine.log_stats_periodically()
    return engine
