"""Several API server processes over one set of engine cores, launched as `vllm serve` launches
them (serving/api_server_group.py supervises them)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aim_runtime.errors import AimError
from aim_runtime.serving import process_env
from aim_runtime.serving.vllm_adapter.arguments import parse_or_raise, vllm_serve_parser

log = logging.getLogger(__name__)

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
    start-up heap (torch, transformers, the application); docs/serving.md ("Several API server
    processes") says what that saves. Returns the objects frozen."""
    import gc

    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()
    return gc.get_freeze_count()


def cache_vllm_environment() -> None:
    """What vLLM's engine core and workers do once initialised (vllm.envs.enable_envs_cache),
    and `vllm serve`'s API server does not: every VLLM_* variable read once and kept, instead
    of read from os.environ at every use (the output processor reads one for every token it
    streams). Nothing writes the environment once the engine is up: serving/process_env.py,
    its one writer, runs during start-up."""
    from vllm import envs

    envs.enable_envs_cache()


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
    process_env.export(env, "the engine cores and API servers")
    import multiprocessing

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine import utils as engine_utils
    from vllm.v1.executor import Executor
    from vllm.v1.utils import shutdown

    count = len(sockets)
    engine_args = AsyncEngineArgs.from_cli_args(parse_or_raise(vllm_serve_parser(), argv))
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
