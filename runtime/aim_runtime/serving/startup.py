"""`aim-runtime serve`: detect -> inspect -> plan -> explain -> engine -> serve.

The command line is cli/serve.py's (`ServeCommand`); what it leaves is `vllm serve`'s, parsed
here by vLLM's own parser. Start-up finds and reads the model before it imports vLLM (a wrong
path fails in a second), binds the listeners before the engine loads (a taken port fails before
the weights load), then builds the server and serves.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aim_runtime import pipeline, settings
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import engine_args_to_argv
from aim_runtime.planner.explain import summarize_plan
from aim_runtime.planner.overrides import FIELDS
from aim_runtime.planner.plan import Plan, ray_carry_over_env
from aim_runtime.serving import metrics
from aim_runtime.serving.api_server_count import api_server_count
from aim_runtime.serving.cluster import nodes_from_env, spec_from_env
from aim_runtime.serving.inputs import ServeCommand, ServerInputs
from aim_runtime.serving.listener import check_port_free, listener_options, listening_sockets
from aim_runtime.serving.model_location import model_location
from aim_runtime.serving.phases import CURRENT_PHASE, phase

if TYPE_CHECKING:  # imported when serving starts: they import KServe and vLLM
    from aim_runtime.serving.api_server_group import ApiServerGroup, GroupMember
    from aim_runtime.serving.lifecycle import EngineSpec
    from aim_runtime.serving.server import AimModelServer
    from aim_runtime.serving.vllm_adapter import EngineClient

log = logging.getLogger("aim_runtime")

def kserve_parser() -> argparse.ArgumentParser:
    """KServe's model-server flags, the parent of `aim-runtime serve`'s parser."""
    from kserve.model_server import parser

    return parser


@dataclass(frozen=True)
class ApiServerSpec:
    """What each of several API server processes starts from: the server's inputs, the
    group's shared memory, and the start-up phases timed before the processes existed."""

    inputs: ServerInputs
    group: ApiServerGroup
    phases: dict[str, float]


@dataclass(frozen=True)
class Prepared:
    """What start-up produced before serving: the plan, the server's inputs, and how many API
    server processes serve it."""

    plan: Plan
    inputs: ServerInputs
    api_servers: int = 1


def serve_main(command: ServeCommand) -> int:
    """`aim-runtime serve`: start-up errors are AimErrors (the CLI prints them); serving ends
    with the server's exit code (with several API server processes, the supervisor's)."""
    from aim_runtime.serving.engine_log import tap_standard_output

    tap_standard_output()  # before the engine processes start: they inherit it
    try:
        prepared = prepare(command)
        with phase("listen"):
            sockets = bind_listeners(prepared.inputs, prepared.api_servers)
        if prepared.api_servers > 1:
            return _serve_with_api_servers(prepared, sockets)
        server = build_server(prepared.inputs, sock=sockets[0])
    except AimError as exc:
        report_start_up_failure(exc)
        raise
    return _run(server)


def report_start_up_failure(error: AimError) -> None:
    """The termination message of a start-up that failed, naming the phase it failed in."""
    write_termination_message(f"start-up failed in phase {CURRENT_PHASE[-1]}: {error}")


def bind_listeners(inputs: ServerInputs, count: int) -> list[socket.socket]:
    """The HTTP port's listening sockets, one per API server, and the gRPC port checked free,
    before any engine loads: a taken port is one clear error, not a failure after the engine
    has loaded."""
    host = inputs.args.host
    try:
        sockets = listening_sockets(host, inputs.http_port, count)
    except OSError as exc:
        raise AimError(f"cannot listen on {host}:{inputs.http_port}: {exc}",
                       _listen_hint(exc)) from exc
    if inputs.args.enable_grpc:
        try:
            check_port_free(inputs.args.grpc_port)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise AimError(f"cannot listen on the gRPC port {inputs.args.grpc_port}: {exc}",
                           "another process holds the port; pick --grpc_port, or "
                           "--enable_grpc false") from exc
    return sockets


def _listen_hint(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "another process holds the port; pick --http_port"
    if error.errno == errno.EACCES:
        return "ports below 1024 need a privilege the runtime does not ask for; pick 1024 or up"
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return "--host must be an address of this host (0.0.0.0 or :: for every address)"
    return "check --host and --http_port"


def _run(server: AimModelServer) -> int:
    """Serve until the server stops; its exit code."""
    lifecycle = server.lifecycle
    try:
        server.start([server.aim_model])
    except Exception as exc:
        log.error("serving stopped: %s: %s", type(exc).__name__, exc)
        write_termination_message(f"serving stopped: {type(exc).__name__}: {exc}")
        lifecycle.stop()
        return 1
    lifecycle.stop()
    if server.exit_code and lifecycle.dead_reason:
        write_termination_message(f"the vLLM engine died: {lifecycle.dead_reason}")
    return server.exit_code


def _serve_with_api_servers(prepared: Prepared, sockets: list[socket.socket]) -> int:
    """Become the supervisor of `prepared.api_servers` API server processes over shared
    engine cores (serving/api_server_group.py), each accepting on one of `sockets`."""
    from aim_runtime.serving import engine_log
    from aim_runtime.serving.api_server_group import ApiServerGroup, supervise
    from aim_runtime.serving.vllm_adapter import launch_api_servers, setup_multiprocess_metrics

    inputs, count = prepared.inputs, prepared.api_servers
    group = ApiServerGroup.create(count)
    setup_multiprocess_metrics()  # before the processes start: they inherit the directory
    engine_log.send_phases_to(group.record_engine_phase)
    spec = ApiServerSpec(inputs=inputs, group=group, phases=metrics.phases_recorded())
    listen = f"{inputs.args.host}:{inputs.http_port}"
    log.info("serving with %d API server processes on %s over shared engine cores", count,
             listen)
    env = engine_spec(inputs).env

    def start() -> Any:
        return launch_api_servers(list(inputs.vllm_argv), dict(env), serve_api_server, spec,
                                  sockets, listen)

    shutdown = settings.DRAIN_SECONDS.read() + inputs.listener.graceful_shutdown_seconds
    code = supervise(start, group, shutdown_seconds=shutdown)
    if code:
        write_termination_message("an API server or engine process died; see the log")
    return code


def serve_api_server(listen_address: str, sock: socket.socket, spec: ApiServerSpec,
                     client_config: dict[str, Any]) -> None:
    """One API server process (spawned by `launch_api_servers`): a whole server whose AsyncLLM
    is a client of the shared engine cores, accepting on the socket the supervisor bound for
    it."""
    from aim_runtime.serving.api_server_group import GroupMember
    from aim_runtime.serving.vllm_adapter import EngineClient, build_versions, title_api_server

    settings.configure_logging("INFO", timestamps=True)
    client = EngineClient.from_client_config(client_config)
    title_api_server(client.index)
    for name, seconds in spec.phases.items():
        metrics.record_phase(name, seconds)
    metrics.record_plan(spec.inputs.plan, spec.inputs.facts.weight_precision)
    metrics.record_build(build_versions())
    log.info("API server %d of %d (pid %d) on %s", client.index + 1, client.count,
             os.getpid(), listen_address)
    server = build_server(spec.inputs, client=client,
                          member=GroupMember(spec.group, client.index), sock=sock)
    code = _run(server)
    if code:
        raise SystemExit(code)


def write_termination_message(text: str) -> None:
    """What `kubectl describe pod` shows for a failed container: the kubelet reads the
    container's termination-message file (AIM_TERMINATION_LOG, Kubernetes' default path)."""
    target = settings.TERMINATION_LOG.read()
    if not settings.TERMINATION_LOG.is_set() and not target.exists():
        return  # not in a Kubernetes container (the kubelet creates the file)
    try:
        target.write_text(text[:4000] + "\n")
    except OSError:
        log.debug("no termination log at %s", target)


def prepare(command: ServeCommand) -> Prepared:
    """Everything before the server starts; errors here are AimErrors (clear, fast, non-zero)."""
    args = command.args
    rest = _with_adapter_directory(list(command.vllm_argv))
    nodes = _node_count(args)
    # The model is found and read before vLLM is imported: a wrong path fails in a second.
    model_dir, model_source = model_location(args.model_dir, args.model_id)
    with phase("inspect"):
        facts = pipeline.inspect_model(model_dir, args.model_id, os.environ)
    from aim_runtime.serving.vllm_adapter import (  # vLLM itself is imported by the parse
        build_versions,
        check_versions,
        engine_argv,
        parse_vllm_args,
    )

    versions = check_versions()  # from the packages' metadata: before the import
    with phase("import"):
        vllm_args, explicit = parse_vllm_args(rest)
    metrics.record_build(build_versions())
    log.info("vllm %s, kserve %s", versions["vllm"], versions["kserve"])
    vllm_overrides = {dest: getattr(vllm_args, dest) for dest in explicit if dest in FIELDS}
    request = pipeline.request_from_args(
        args, model_dir, nodes=nodes,
        overrides={**pipeline.cli_overrides(args), **vllm_overrides})
    with phase("detect"):
        inventory = pipeline.detect_inventory(request)
    if inventory.is_simulated:
        raise AimError(f"the inventory is {inventory.source} ({inventory.product}), not real "
                       "hardware: it can be planned for, not served on",
                       "unset AIM_GPU_PRODUCT/AIM_GPU_COUNT, or use `aim-runtime plan`")
    cluster = (spec_from_env(os.environ, nodes, inventory.devices_per_node)
               if args.role == "head" else None)
    planned = pipeline.plan_on(inventory, request, phase=phase, facts=facts)
    plan = planned.plan
    metrics.record_plan(plan, planned.facts.weight_precision)
    for line in summarize_plan(plan).splitlines():
        log.info("plan: %s", line)
    log.info("plan: engine args %s", " ".join(engine_args_to_argv(plan.engine_args)))
    for note in plan.notes:
        log.info("plan: note: %s", note)

    listener = listener_options(args, vllm_args, explicit, set(command.explicit))
    http_port = listener.served_port(args.http_port)
    names = list(vllm_args.served_model_name or [args.model_name])
    argv_for_vllm = engine_argv(plan, model_source, names, rest)
    keys = [*settings.API_KEY.read(), *(vllm_args.api_key or [])]
    if keys:
        log.info("API keys required on inference routes (%d key(s))", len(keys))
    inputs = ServerInputs(args=args, plan=plan, names=tuple(names),
                          vllm_argv=tuple(argv_for_vllm), api_keys=tuple(keys),
                          listener=listener, facts=planned.facts, http_port=http_port,
                          cluster=cluster)
    count, why = api_server_count(plan, vllm_args, explicit, args)
    log.info("plan: API servers: %d process%s (%s)", count,
             "es" if count > 1 else "", why)
    return Prepared(plan=plan, inputs=inputs, api_servers=count)


def _node_count(args: argparse.Namespace) -> int:
    """1 for a single-node server; the deployment's node count for a multi-node head."""
    nodes: int = args.nodes or nodes_from_env(os.environ)
    if args.role == "head" and nodes < 2:
        raise AimError("--role head: a multi-node head needs the node count, 2 or more",
                       "KServe sets PIPELINE_PARALLEL_SIZE from workerSpec.pipelineParallelSize;"
                       " outside KServe pass --nodes N")
    if args.role == "single" and nodes > 1:
        raise AimError(f"{nodes} nodes (PIPELINE_PARALLEL_SIZE/--nodes) but --role is single: "
                       "the worker nodes would wait for a Ray head that never starts",
                       "use the aim-runtime-multinode ServingRuntime (it passes --role head)")
    return nodes


def _with_adapter_directory(rest: list[str]) -> list[str]:
    """With AIM_LORA_DIR, LoRA is on (unless the flags say otherwise) and vLLM's adapter API
    is served (behind the gate's API keys, and only for paths inside the directory)."""
    directory = settings.LORA_DIR.read()
    if directory is None:
        return rest
    if not directory.is_dir():
        raise AimError(f"AIM_LORA_DIR={directory}: not a directory",
                       "create it (it may be empty: adapters added later are loaded)")
    given = {settings.flag_of_token(token) for token in rest}
    if "--no-enable-lora" in given:
        raise AimError(f"AIM_LORA_DIR={directory} with --no-enable-lora: the adapters would not "
                       "be served", "drop one of them")
    return rest if "--enable-lora" in given else [*rest, "--enable-lora"]


def engine_env(plan: Plan, cache_env: dict[str, str], lora: bool) -> dict[str, str]:
    """The engine's environment: the plan's, the compile caches' (AIM_COMPILE_CACHE_DIR), vLLM's
    adapter API switch with an adapter directory (served behind the gate and the adapter guard,
    serving/lora.py); on a multi-node head, every variable also named for vLLM to copy to its Ray
    workers on the other nodes (which mount the same cache volume at the same path)."""
    copy = settings.VLLM_RAY_EXTRA_ENV_VARS_TO_COPY
    # One request may ask for n completions; vLLM allows 16384, enough to monopolise a replica.
    max_n = settings.VLLM_MAX_N_SEQUENCES.read() or settings.MAX_N.read()
    env = {**plan.env, **cache_env, settings.VLLM_MAX_N_SEQUENCES.name: str(max_n),
           **({settings.VLLM_ALLOW_RUNTIME_LORA_UPDATING.name: "True"} if lora else {})}
    if plan.nodes > 1:
        ours = copy.parse(ray_carry_over_env(env).get(copy.name, ""))
        env[copy.name] = ",".join(sorted({*ours, *copy.read()}))  # the operator's names kept
    return env


def engine_spec(inputs: ServerInputs, client: EngineClient | None = None) -> EngineSpec:
    """What this process's engine starts from: the engine's arguments and environment, the
    compile caches (prepared here), the adapter directory, and the warm-up through this
    server's own listener."""
    from aim_runtime.serving.compile_cache import CompileCache, validity
    from aim_runtime.serving.lifecycle import EngineSpec
    from aim_runtime.serving.lora import Adapters
    from aim_runtime.serving.warmup import WarmupTarget

    args, plan = inputs.args, inputs.plan
    cache_root = settings.COMPILE_CACHE_DIR.read()
    compile_cache = CompileCache(cache_root, validity(plan)) if cache_root else None
    if compile_cache is not None:
        compile_cache.prepare()
    lora_dir = settings.LORA_DIR.read()
    loopback = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    scheme = "https" if inputs.listener.tls else "http"
    warmup = WarmupTarget(extent=args.warmup, url=f"{scheme}://{loopback}:{inputs.http_port}",
                          api_key=inputs.api_keys[0] if inputs.api_keys else None)
    return EngineSpec(
        argv=inputs.vllm_argv,
        env=engine_env(plan, compile_cache.env() if compile_cache else {}, lora=bool(lora_dir)),
        cluster=inputs.cluster, warmup=warmup, stall_seconds=settings.STALL_SECONDS.read(),
        compile_cache=compile_cache,
        adapters=(Adapters(lora_dir, inputs.facts, settings.LORA_WATCH_SECONDS.read())
                  if lora_dir else None),
        client=client)


def build_server(inputs: ServerInputs, client: EngineClient | None = None,
                 member: GroupMember | None = None,
                 sock: socket.socket | None = None) -> AimModelServer:
    """The server (its model and engine lifecycle within), accepting on `sock` when given;
    with `client` and `member`, one of several API server processes."""
    from aim_runtime.serving.server import AimModelServer

    return AimModelServer(inputs, engine_spec(inputs, client), member=member, sock=sock)
