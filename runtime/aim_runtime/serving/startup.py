"""`aim-runtime serve`: detect -> inspect -> plan -> explain -> engine -> serve.

Arguments come in three families, parsed in this order: KServe's model-server flags (its own
parser is the parent of ours: `--http_port`, `--model_name`, `--workers`...), AIM Runtime's
(`--model_dir`, `--host`, planner overrides), and whatever is left goes to vLLM's own `vllm serve`
parser. A flag none of the three knows is an error. vLLM flags win over the plan; the ones the
planner understands (parallel sizes, context, KV dtype, memory utilisation, trust_remote_code) are
given to the planner too, so the plan and its memory check agree with what will run.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aim_runtime import pipeline, settings
from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import engine_args_to_argv
from aim_runtime.planner.explain import summarize_plan
from aim_runtime.planner.overrides import FIELDS
from aim_runtime.planner.plan import Plan, ray_carry_over_env
from aim_runtime.serving import metrics
from aim_runtime.serving.cluster import ClusterSpec, nodes_from_env, spec_from_env
from aim_runtime.serving.listener import ListenerOptions, listener_options
from aim_runtime.serving.model_location import model_location
from aim_runtime.serving.phases import CURRENT_PHASE, phase
from aim_runtime.settings import ROLES

if TYPE_CHECKING:  # imported when serving starts: they import KServe and vLLM
    from aim_runtime.serving.front_ends import FrontEnd, FrontEndGroup
    from aim_runtime.serving.model import AimModel
    from aim_runtime.serving.server import AimModelServer
    from aim_runtime.serving.vllm_adapter import EngineClient

log = logging.getLogger("aim_runtime")

# vLLM flags the runtime owns under another name.
RESERVED_VLLM_FLAGS = {"--port": "--http_port", "--host": "--host", "--model": "--model_dir"}


def serve_parser() -> argparse.ArgumentParser:
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="aim-runtime serve", parents=[kserve_parser], allow_abbrev=False,
        description="Serve a model with vLLM behind KServe (OpenAI under /openai/v1, KServe v2). "
                    "Every `vllm serve` flag is accepted too and wins over the plan.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_dir", "--model-dir", dest="model_dir",
                       help="local model directory (KServe fills /mnt/models); default: the "
                            "embedded default model (AIM_DEFAULT_MODEL), made on first use")
    model.add_argument("--model_id", "--model-id", dest="model_id",
                       help="Hugging Face id: used to match curated recipes (and AIM_MODEL_ID)")
    parser.add_argument("--host", default=settings.HOST.read(),
                        help="bind address of the HTTP server (default 0.0.0.0; AIM_HOST)")
    parser.add_argument(
        "--openai-root-routes", action=argparse.BooleanOptionalAction,
        default=settings.OPENAI_ROOT_ROUTES.read(),
        help="also serve vLLM's OpenAI routes where `vllm serve` serves them (/v1/..., "
             "/tokenize, /health...), not only under /openai; GET /v1/models is then OpenAI's "
             "(AIM_OPENAI_ROOT_ROUTES)")
    operations = parser.add_argument_group("operations")
    operations.add_argument(
        "--warmup", choices=settings.WARMUP_EXTENTS, default=settings.WARMUP.read(),
        help="requests the server sends itself after the engine loads and before it reports "
             "ready, so the first user request is as fast as the next (default full; "
             "AIM_WARMUP)")
    operations.add_argument(
        "--exit-after-warmup", action="store_true",
        help="stop once warmed up (exit 0): fills AIM_COMPILE_CACHE_DIR's caches for this "
             "model and GPU, as a Job before an InferenceService scales")
    operations.add_argument(
        "--graceful-shutdown-seconds", type=int,
        default=settings.GRACEFUL_SHUTDOWN_SECONDS.read(),
        help="on SIGTERM, how long in-flight requests may run on (default 100; keep it below "
             "the pod's terminationGracePeriodSeconds, 120 in our manifests)")
    operations.add_argument(
        "--max-queued-requests", type=int,
        default=settings.MAX_QUEUED_REQUESTS.read(),
        help="inference requests admitted beyond what the engine runs at once (max_num_seqs); "
             "more get 503 + Retry-After (default: max_num_seqs)")
    operations.add_argument(
        "--max-request-bytes", type=int,
        default=settings.MAX_REQUEST_BYTES.read(),
        help="largest request body accepted; larger gets 413 (default 32 MiB)")
    cluster = parser.add_argument_group("multi-node (KServe workerSpec)")
    cluster.add_argument(
        "--role", choices=ROLES, default=settings.ROLE.read(),
        help="head: start a Ray head, wait for the worker nodes (`aim-runtime worker`), then "
             "serve with pipeline stages across them (default single; AIM_ROLE)")
    cluster.add_argument(
        "--nodes", type=int,
        help="head: nodes in all, this one included (default: PIPELINE_PARALLEL_SIZE, which "
             "KServe sets from workerSpec.pipelineParallelSize)")
    pipeline.add_detection_args(parser, simulate=False)
    pipeline.add_planner_args(parser, vllm_names=False)
    return parser


@dataclass(frozen=True)
class ServerInputs:
    """What a server is built from, as start-up produced it (picklable: each of several API
    server processes builds its own server from it)."""

    args: argparse.Namespace
    plan: Plan
    names: tuple[str, ...]
    vllm_argv: tuple[str, ...]
    api_keys: tuple[str, ...]
    listener: ListenerOptions
    facts: ModelFacts
    cluster: ClusterSpec | None = None


@dataclass(frozen=True)
class ApiServerSpec:
    """What each of several API server processes starts from: the server's inputs, the
    group's shared memory, and the start-up phases timed before the processes existed."""

    inputs: ServerInputs
    group: FrontEndGroup
    phases: dict[str, float]


@dataclass
class Prepared:
    """What start-up produced before serving: the plan, the model object, the server, and how
    many API server processes serve it."""

    plan: Plan
    model: AimModel
    server: AimModelServer
    inputs: ServerInputs
    cluster: ClusterSpec | None = None
    api_servers: int = 1


def serve_main(argv: Sequence[str]) -> int:
    """`aim-runtime serve`: start-up errors are AimErrors (the CLI prints them); serving ends
    with the server's exit code (with several API server processes, the supervisor's)."""
    from aim_runtime.serving.engine_log import tap_standard_output

    tap_standard_output()  # before the engine processes start: they inherit it
    try:
        prepared = prepare(list(argv))
    except AimError as exc:
        write_termination_message(f"start-up failed in phase {CURRENT_PHASE[-1]}: {exc}")
        raise
    if prepared.api_servers > 1:
        return _serve_with_api_servers(prepared)
    return _run(prepared.model, prepared.server)


def _run(model: AimModel, server: AimModelServer) -> int:
    """Serve until the server stops; its exit code."""
    try:
        server.start([model])
    except Exception as exc:
        log.error("serving stopped: %s: %s", type(exc).__name__, exc)
        write_termination_message(f"serving stopped: {type(exc).__name__}: {exc}")
        model.stop()
        return 1
    model.stop()
    engine = model.vllm_engine
    if server.exit_code and engine is not None and engine.dead_reason:
        write_termination_message(f"the vLLM engine died: {engine.dead_reason}")
    return server.exit_code


def _serve_with_api_servers(prepared: Prepared) -> int:
    """Become the supervisor of `prepared.api_servers` API server processes over shared
    engine cores (serving/front_ends.py)."""
    from aim_runtime.serving import engine_log
    from aim_runtime.serving.front_ends import FrontEndGroup, listening_sockets, supervise
    from aim_runtime.serving.vllm_adapter import launch_api_servers, setup_multiprocess_metrics

    count, server = prepared.api_servers, prepared.server
    group = FrontEndGroup.create(count)
    setup_multiprocess_metrics()  # before the processes start: they inherit the directory
    engine_log.send_phases_to(group.record_engine_phase)
    try:
        sockets = listening_sockets(prepared.inputs.args.host, server.http_port, count)
    except OSError as exc:
        raise AimError(f"cannot listen on {prepared.inputs.args.host}:{server.http_port}: {exc}",
                       "another process holds the port; pick --http_port") from exc
    spec = ApiServerSpec(inputs=prepared.inputs, group=group, phases=metrics.phases_recorded())
    listen = f"{prepared.inputs.args.host}:{server.http_port}"
    log.info("serving with %d API server processes on %s over shared engine cores", count,
             listen)

    def start() -> Any:
        return launch_api_servers(list(prepared.inputs.vllm_argv), prepared.model.env,
                                  serve_api_server, spec, sockets, listen)

    shutdown = settings.DRAIN_SECONDS.read() + prepared.inputs.listener.graceful_shutdown_seconds
    code = supervise(start, group, shutdown_seconds=shutdown)
    if code:
        write_termination_message("an API server or engine process died; see the log")
    return code


def serve_api_server(listen_address: str, sock: socket.socket, spec: ApiServerSpec,
                     client_config: dict[str, Any]) -> None:
    """One API server process (spawned by `launch_api_servers`): a whole server whose AsyncLLM
    is a client of the shared engine cores, accepting on the socket the supervisor bound for
    it."""
    from aim_runtime.serving.front_ends import FrontEnd
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
    model, server = _build_server(spec.inputs, client=client,
                                  front_end=FrontEnd(spec.group, client.index), sock=sock)
    code = _run(model, server)
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


# Parallelism a caller may pin (an LLMInferenceService's spec.parallelism) while the user's own
# arguments also set it: given twice with two values is a conflict, not "the last one wins".
PINNABLE_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size",
                  "--data-parallel-size-local")
PINNABLE_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
                    "-dp": "--data-parallel-size", "-dpl": "--data-parallel-size-local"}


# KServe's LLMInferenceService convention: extra `vllm serve` flags in the main container's env
# (its presets expand it into the command line, after their own flags).
KSERVE_VLLM_ADDITIONAL_ARGS: settings.Variable[tuple[str, ...]] = settings.Variable(
    "VLLM_ADDITIONAL_ARGS", settings.shell_words, (),
    "extra `vllm serve` flags (KServe's LLMInferenceService presets)", "shell words")


def normalize_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The command line with VLLM_ADDITIONAL_ARGS appended, empty arguments dropped (KServe's
    preset templates render a conditional flag that is off to an empty string), and a pinnable
    flag given twice with different values refused."""
    extra = KSERVE_VLLM_ADDITIONAL_ARGS.read(environ)
    tokens = [token for token in [*argv, *extra] if token.strip()]
    seen: dict[str, str] = {}
    for index, token in enumerate(tokens):
        flag, _, value = token.partition("=")
        flag = flag.replace("_", "-") if flag.startswith("--") else PINNABLE_ALIASES.get(flag, flag)
        if flag not in PINNABLE_FLAGS:
            continue
        if not value and index + 1 < len(tokens):
            value = tokens[index + 1]
        if flag in seen and seen[flag] != value:
            raise AimError(f"{flag} is given twice: {seen[flag]}, then {value}",
                           "an LLMInferenceService's spec.parallelism and the container's "
                           "arguments must agree; keep one of them")
        seen[flag] = value
    return tokens


def prepare(argv: list[str]) -> Prepared:
    """Everything before the server starts; errors here are AimErrors (clear, fast, non-zero)."""
    argv = normalize_argv(argv)
    args, rest = serve_parser().parse_known_args(argv)
    _reject_reserved(rest)
    rest = _with_adapter_directory(rest)
    if args.workers != 1:
        raise AimError(f"--workers {args.workers}: one process serves one vLLM engine",
                       "scale with replicas (or data parallelism) instead")
    with phase("import"):
        from aim_runtime.serving.vllm_adapter import (
            build_versions,
            check_versions,
            engine_argv,
            parse_vllm_args,
        )

        versions = check_versions()
        vllm_args, explicit = parse_vllm_args(rest)
    metrics.record_build(build_versions())
    log.info("vllm %s, kserve %s", versions["vllm"], versions["kserve"])
    model_dir, model_source = model_location(args.model_dir, args.model_id)
    nodes = _node_count(args)
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
    planned = pipeline.plan_on(inventory, request, phase=phase)
    plan = planned.plan
    metrics.record_plan(plan, planned.facts.weight_precision)
    for line in summarize_plan(plan).splitlines():
        log.info("plan: %s", line)
    log.info("plan: engine args %s", " ".join(engine_args_to_argv(plan.engine_args)))
    for note in plan.notes:
        log.info("plan: note: %s", note)

    # One request may ask for n completions; vLLM allows 16384, enough to monopolise a replica.
    os.environ.setdefault("VLLM_MAX_N_SEQUENCES", str(settings.MAX_N.read()))
    listener = listener_options(args, vllm_args, explicit, _explicit_ours(argv))
    names = list(vllm_args.served_model_name or [args.model_name])
    argv_for_vllm = engine_argv(plan, model_source, names, rest)
    keys = [*settings.API_KEY.read(), *(vllm_args.api_key or [])]
    if keys:
        log.info("API keys required on inference routes (%d key(s))", len(keys))
    inputs = ServerInputs(args=args, plan=plan, names=tuple(names),
                          vllm_argv=tuple(argv_for_vllm), api_keys=tuple(keys),
                          listener=listener, facts=planned.facts, cluster=cluster)
    count, why = api_server_count(plan, vllm_args, explicit, args)
    log.info("plan: front end: %d API server process%s (%s)", count,
             "es" if count > 1 else "", why)
    model, server = _build_server(inputs)
    return Prepared(plan=plan, model=model, server=server, inputs=inputs, cluster=cluster,
                    api_servers=count)


def api_server_count(plan: Plan, vllm_args: argparse.Namespace, explicit: set[str],
                     args: argparse.Namespace) -> tuple[int, str]:
    """How many API server processes serve the pod, and why: `--api-server-count`, else one
    per data-parallel rank as `vllm serve` does; one where several cannot work (a refusal when
    the count was asked for)."""
    asked = "api_server_count" in explicit and vllm_args.api_server_count is not None
    count = int(vllm_args.api_server_count) if asked else plan.data_parallel_size
    if count < 1:
        raise AimError(f"--api-server-count {count}: at least one API server serves the pod",
                       "give 1 or more (default: the data-parallel size)")
    if count == 1:
        return 1, "--api-server-count" if asked else "data parallelism 1"
    single_reasons = {
        "a multi-node head serves through Ray": args.role == "head",
        "--exit-after-warmup fills caches and stops": args.exit_after_warmup,
        "vLLM's runtime adapter API (AIM_LORA_DIR) needs one API server":
            settings.LORA_DIR.read() is not None
            or os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"),
        "data-parallel ranks balanced outside the pod":
            bool(vllm_args.data_parallel_external_lb or vllm_args.data_parallel_hybrid_lb
                 or vllm_args.data_parallel_rank is not None),
    }
    reason = next((why for why, holds in single_reasons.items() if holds), None)
    if reason is None:
        return count, ("--api-server-count" if asked else
                       "one per data-parallel rank, as `vllm serve`; --api-server-count "
                       "overrides")
    if asked:
        raise AimError(f"--api-server-count {count}: {reason}",
                       "drop --api-server-count (one API server then serves the pod)")
    return 1, reason


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
    given = {token.split("=", 1)[0].replace("_", "-") for token in rest}
    if "--no-enable-lora" in given:
        raise AimError(f"AIM_LORA_DIR={directory} with --no-enable-lora: the adapters would not "
                       "be served", "drop one of them")
    return rest if "--enable-lora" in given else [*rest, "--enable-lora"]


RAY_COPY = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"


def engine_env(plan: Plan, cache_env: dict[str, str], lora: bool) -> dict[str, str]:
    """The engine's environment: the plan's, the compile caches' (AIM_COMPILE_CACHE_DIR), vLLM's
    adapter API switch with an adapter directory (served behind the gate and the adapter guard,
    serving/lora.py); on a multi-node head, every variable also named for vLLM to copy to its Ray
    workers on the other nodes (which mount the same cache volume at the same path)."""
    env = {**plan.env, **cache_env,
           **({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if lora else {})}
    if plan.nodes > 1:
        ours = ray_carry_over_env(env).get(RAY_COPY, "")
        names = {*ours.split(","), *os.environ.get(RAY_COPY, "").split(",")} - {""}
        env[RAY_COPY] = ",".join(sorted(names))  # the operator's own names kept
    return env


def _explicit_ours(argv: list[str]) -> set[str]:
    """Our options the user set (on the command line or through their AIM_* variable)."""
    given = {token.split("=", 1)[0] for token in argv}
    if "--graceful-shutdown-seconds" in given or settings.GRACEFUL_SHUTDOWN_SECONDS.is_set():
        return {"graceful_shutdown_seconds"}
    return set()


def _build_server(inputs: ServerInputs, client: EngineClient | None = None,
                  front_end: FrontEnd | None = None,
                  sock: socket.socket | None = None) -> tuple[AimModel, AimModelServer]:
    """The model and its server; with `client`, `front_end` and `sock`, one of several API
    server processes."""
    args, plan, names, api_keys = inputs.args, inputs.plan, inputs.names, inputs.api_keys
    listener, facts = inputs.listener, inputs.facts
    from aim_runtime.serving.compile_cache import CompileCache, validity
    from aim_runtime.serving.gate import GateSettings
    from aim_runtime.serving.lora import Adapters
    from aim_runtime.serving.model import AimModel
    from aim_runtime.serving.server import AimModelServer
    from aim_runtime.serving.warmup import WarmupTarget

    loopback = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    warmup = WarmupTarget(extent=args.warmup, url="", api_key=api_keys[0] if api_keys else None)
    cache_root = settings.COMPILE_CACHE_DIR.read()
    compile_cache = CompileCache(cache_root, validity(plan)) if cache_root else None
    if compile_cache is not None:
        compile_cache.prepare()
    lora_dir = settings.LORA_DIR.read()
    env = engine_env(plan, compile_cache.env() if compile_cache else {}, lora=bool(lora_dir))
    adapters = Adapters(lora_dir, facts, settings.LORA_WATCH_SECONDS.read()) if lora_dir else None
    model = AimModel(names[0], list(inputs.vllm_argv), env, cluster=inputs.cluster,
                     warmup=warmup, stall_seconds=settings.STALL_SECONDS.read(),
                     compile_cache=compile_cache, adapters=adapters, client=client)
    gate = GateSettings(api_keys=api_keys, max_request_bytes=args.max_request_bytes,
                        max_queued=args.max_queued_requests)
    server = AimModelServer(
        model, recipe_id=plan.recipe_id, host=args.host, gate=gate,
        openai_root_routes=args.openai_root_routes, exit_after_warmup=args.exit_after_warmup,
        drain_seconds=settings.DRAIN_SECONDS.read(),
        grace_period=listener.graceful_shutdown_seconds, http_port=args.http_port,
        ssl_certfile=listener.ssl_certfile, ssl_keyfile=listener.ssl_keyfile, listener=listener,
        grpc_port=args.grpc_port, workers=1, max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers, enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url, enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format, event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive, front_end=front_end, sock=sock,
    )
    # KServe moves a TLS listener from 8080 to 8443: warm up where it really listens.
    scheme = "https" if listener.tls else "http"
    model.warmup = replace(warmup, url=f"{scheme}://{loopback}:{server.http_port}")
    for alias in names[1:]:
        server.register_model(model, alias)
    return model, server


def _reject_reserved(rest: list[str]) -> None:
    for token in rest:
        flag = token.split("=", 1)[0].replace("_", "-")
        if flag in RESERVED_VLLM_FLAGS:
            raise AimError(f"{token}: use {RESERVED_VLLM_FLAGS[flag]} with aim-runtime serve")
