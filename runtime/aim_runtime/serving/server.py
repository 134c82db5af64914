"""Serve: KServe's ModelServer with the changes an LLM runtime needs.

- The bind address is configurable (KServe's REST server always binds 0.0.0.0).
- Probes tell the truth: `/v2/health/ready` is 503 until the engine is loaded and while it is
  unhealthy; `/v2/health/live` turns 503 once the engine has died (KServe answers 200 for both).
- Errors keep the protocol's shape: OpenAI routes answer like `vllm serve` (400 for bad input,
  404 for an unknown model), v2 routes like KServe (`{"error": "..."}`), gRPC with a status
  code, never 422 or 500 for a client mistake (serving/protocol_errors.py).
- The v2 generate extension (`/generate`, `/generate_stream`) is added (serving/v2_routes.py);
  gRPC v2 needs the API key too (serving/grpc_listener.py).
- Every response names the recipe in `x-aim-recipe`, so canary versions can be told apart.
- The OpenAI surface is vLLM's own application (serving/vllm_adapter/), served under
  `/openai` (KServe's prefix: `/openai/v1/chat/completions`...) and, with `--openai-root-routes`,
  at the root exactly where `vllm serve` serves it (`/v1/...`, `/tokenize`, `/health`...). Until
  the engine is loaded those paths answer 503 in OpenAI's shape. Its hot paths bypass KServe's
  FastAPI stack (`VllmFastPath`, serving/asgi.py), so a streamed token costs what it costs
  under `vllm serve`.

`GET /v1/models` belongs to two protocols: KServe's v1 (a list of model names) and OpenAI's (the
models with their metadata). Without root routes it is KServe's; with them it is OpenAI's, which is
what `vllm serve` clients call, and KServe's v1 predict routes (`/v1/models/{name}:predict`) keep
working next to it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.rest.server import RESTServer
from starlette.middleware.errors import ServerErrorMiddleware
from uvicorn.importer import import_from_string

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.serving import metrics
from aim_runtime.serving.api_server_group import GroupMember
from aim_runtime.serving.asgi import (
    RECIPE_HEADER,
    CountedRequests,
    OpenAIApplication,
    RecipeHeaderMiddleware,
    VllmFastPath,
    WholeBodyIsJson,
    access_logged,
)
from aim_runtime.serving.dataplane import AimDataPlane, AimModelRepository
from aim_runtime.serving.gate import GateSettings, GateState, RequestGate
from aim_runtime.serving.grpc_listener import AimGRPCServer
from aim_runtime.serving.header_limits import HeaderLimits
from aim_runtime.serving.inputs import ServerInputs
from aim_runtime.serving.lifecycle import EngineLifecycle, EngineSpec
from aim_runtime.serving.listener import ListenerOptions, cut_tls_closes_short
from aim_runtime.serving.model import AimModel
from aim_runtime.serving.protocol_errors import install_error_handlers
from aim_runtime.serving.v2_routes import add_generate_routes, add_version_routes

log = logging.getLogger(__name__)

class AimRESTServer(RESTServer):
    """KServe's REST server, bound to `host`, with our routes, gate, headers and error
    handlers. On SIGTERM, after the drain delay (readiness 503 `draining`, requests still
    served; AIM_DRAIN_SECONDS), uvicorn stops accepting, lets in-flight requests finish for up
    to the grace period, then KServe stops the model."""

    def __init__(self, *args: Any, host: str, recipe_id: str, model: AimModel,
                 gate: GateSettings, openai_root_routes: bool = False,
                 drain_seconds: float = 0.0, listener: ListenerOptions | None = None,
                 sock: socket.socket | None = None, member: GroupMember | None = None,
                 **kwargs: Any) -> None:
        # Set before KServe's constructor builds the application with the methods below.
        self.recipe_id = recipe_id
        self.aim_model = model
        self.gate_settings = gate
        self.gate_state = GateState(
            engine_capacity=model.lifecycle.capacity,
            shared_in_flight=member.group.in_flight if member else None,
            server_index=member.index if member else 0)
        self.openai_root_routes = openai_root_routes
        self.listener = listener
        self.sock = sock  # this API server's own socket on the pod's port, bound by the supervisor
        self.member = member
        super().__init__(*args, **kwargs)
        self.config.host = host
        if self.config.ssl_certfile:
            cut_tls_closes_short(self._server)
        if listener is not None:  # h11's own bound, when uvicorn runs h11 (HeaderLimits holds both)
            self.config.h11_max_incomplete_event_size = listener.max_header_bytes
        if listener is not None:  # mutual TLS and ciphers: `vllm serve`'s flags, uvicorn's own
            if listener.ssl_ca_certs:
                self.config.ssl_ca_certs = listener.ssl_ca_certs
            if listener.ssl_cert_reqs is not None:
                self.config.ssl_cert_reqs = listener.ssl_cert_reqs
            if listener.ssl_ciphers:
                self.config.ssl_ciphers = listener.ssl_ciphers
        if drain_seconds > 0:
            self._delay_exit(drain_seconds)

    def _delay_exit(self, seconds: float) -> None:
        """uvicorn's own SIGTERM handler, run `seconds` after the signal instead of at once. A
        second SIGTERM, or SIGINT, is not delayed."""
        exit_now = self._server.handle_exit

        def handle_exit(sig: int, frame: Any) -> None:
            if sig != signal.SIGTERM or not self.aim_model.lifecycle.drain():
                exit_now(sig, frame)
                return
            log.info("SIGTERM: draining for %g s (readiness 503, still serving), then shutting "
                     "down", seconds)
            timer = threading.Timer(seconds, exit_now, (sig, None))
            timer.daemon = True
            timer.start()

        self._server.handle_exit = handle_exit

    async def start(self) -> None:
        """KServe's start, on the supervisor's socket when there is one."""
        self.create_application()
        await self._server.serve(sockets=[self.sock] if self.sock is not None else None)

    def create_application(self) -> None:
        """KServe's FastAPI application with our routes, behind the listener's application
        (`listener_app`), which uvicorn serves."""
        super().create_application()
        self.config.app = self.listener_app(import_from_string(FASTAPI_APP_IMPORT_STRING))
        if self.member is not None:  # one of several API servers: warm this one, in process
            self.aim_model.lifecycle.warm_up_through(self.config.app)

    def listener_app(self, kserve_app: FastAPI) -> Any:
        """What uvicorn serves: vLLM's routes straight to vLLM's application through the gate
        (`VllmFastPath`), everything else to KServe's. The recipe header is uvicorn's default
        response header, added once per response where it writes the status line; with an
        access log it is a middleware instead, inside the log, which reads it from the
        response (asgi-logger sees only the application's headers)."""
        openai = RequestGate(OpenAIApplication(self.aim_model), settings=self.gate_settings,
                             state=self.gate_state, root_routes=self.openai_root_routes)
        app: Any = VllmFastPath(kserve_app, openai, self.openai_root_routes)
        limits = self.listener or ListenerOptions()
        app = HeaderLimits(app, limits.max_header_bytes, limits.max_header_count,
                           self.openai_root_routes)
        app = CountedRequests(app, self.openai_root_routes)
        if not self.access_log_format:
            self.config.headers = [(RECIPE_HEADER, self.recipe_id)]
            return app
        # Inside Starlette's error middleware, where KServe's application had its access log:
        # directly under uvicorn, abruptly dropped streams went unnoticed (and ran to their
        # end) in about half the runs of tests/test_reliability.py's fifty disconnects.
        return ServerErrorMiddleware(access_logged(RecipeHeaderMiddleware(app, self.recipe_id),
                                                   self.access_log_format))

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition of every series: this process's, or the pod's when several
        API server processes serve it (serving/metrics.py, multiprocess mode)."""
        if self.member is not None:
            self.member.publish_engine_phases()
        encoder, content_type = metrics.encoder_for(request.headers.get("accept"))
        return Response(content=encoder(metrics.scrape_registry()),
                        headers={"content-type": content_type})

    async def dataplane_ready(self) -> Response:
        """Readiness as vLLM's /health answers it: 200, empty."""
        await self.dataplane.ready()
        return Response(status_code=HTTPStatus.OK.value)

    def stop_serving(self) -> None:
        """Ask uvicorn to shut down gracefully (as on SIGTERM)."""
        self._server.should_exit = True

    def _register_endpoints(self, app: FastAPI) -> None:
        add_generate_routes(app, self.aim_model)
        add_version_routes(app, self.dataplane)  # before KServe's, which answer 501
        super()._register_endpoints(app)
        # One model per server, chosen at start-up: KServe's repository (load/unload) is not
        # served, on HTTP as on gRPC.
        app.router.routes = [r for r in app.router.routes
                             if not getattr(r, "path", "").startswith("/v2/repository")
                             and getattr(r, "path", "") != "/metrics"]
        app.add_api_route("/metrics", self.metrics, methods=["GET"])
        if self.openai_root_routes:
            # vLLM's /health, for probes that know `vllm serve` (LLMInferenceService presets):
            # 200 once loaded and warmed, 503 with the reason otherwise (also while draining).
            app.add_api_route("/health", self.dataplane_ready, methods=["GET"])
            # `vllm serve`'s paths at the root: those under /v1 take the fast path (GET
            # /v1/models is OpenAI's, not KServe's v1), the rest (`/tokenize`, `/ping`...) this
            # mount, behind KServe's own routes.
            app.router.routes = [r for r in app.router.routes
                                 if getattr(r, "path", None) != "/v1/models"]
            app.mount("", OpenAIApplication(self.aim_model))

    def _add_exception_handlers(self, app: FastAPI) -> None:
        super()._add_exception_handlers(app)
        install_error_handlers(app, self.openai_root_routes)

    def _add_middlewares(self, app: FastAPI) -> None:
        """Our gate (the recipe header and the access log are the listener's, see
        `listener_app`). KServe's own TimingMiddleware is left out on purpose: per request it
        re-matches the route table to name a metric, measures CPU time and writes two
        `kserve.trace` log lines, which cost ~6% of the front end's CPU under streaming load
        (py-spy, see docs/performance.md). Request latencies are in vLLM's
        Prometheus histograms (`vllm:e2e_request_latency_seconds`,
        `vllm:time_to_first_token_seconds`)."""
        app.add_middleware(WholeBodyIsJson)
        app.add_middleware(RequestGate, settings=self.gate_settings, state=self.gate_state,
                           root_routes=self.openai_root_routes)


class AimModelServer(ModelServer):
    """ModelServer with our data plane and REST server. One model, one uvicorn worker, built
    from start-up's `ServerInputs` and the engine's `EngineSpec`.

    `exit_code` becomes 1 when the engine dies: the server then shuts down so that Kubernetes
    restarts the pod (liveness has already turned 503).

    With `sock` it accepts on that listening socket (bound by start-up, so that a taken port
    fails before the engine loads). With `member` it is one of the pod's API server processes
    (serving/api_server_group.py): it counts admissions pod-wide, and is ready only once all of
    them are."""

    def __init__(self, inputs: ServerInputs, engine: EngineSpec,
                 member: GroupMember | None = None, sock: socket.socket | None = None) -> None:
        args, listener = inputs.args, inputs.listener
        self.lifecycle = EngineLifecycle(engine, inputs.names[0], on_death=self._engine_died,
                                         on_ready=self._ready_callback(args, member))
        model = AimModel(inputs.names[0], self.lifecycle)
        super().__init__(
            registered_models=AimModelRepository(model), http_port=inputs.http_port,
            grpc_port=args.grpc_port, workers=1, max_threads=args.max_threads,
            max_asyncio_workers=args.max_asyncio_workers, enable_grpc=args.enable_grpc,
            enable_docs_url=args.enable_docs_url,
            enable_latency_logging=args.enable_latency_logging,
            access_log_format=args.access_log_format, event_loop=args.event_loop,
            timeout_keep_alive=args.timeout_keep_alive,
            grace_period=listener.graceful_shutdown_seconds,
            ssl_certfile=listener.ssl_certfile, ssl_keyfile=listener.ssl_keyfile)
        self.drain_seconds = settings.DRAIN_SECONDS.read()
        self.listener = listener
        self.openai_root_routes = args.openai_root_routes
        self.member = member
        self.sock = sock
        self.dataplane = AimDataPlane(self.registered_models, self.lifecycle, member)
        metrics.track_state(self.dataplane.state, lambda: len(model.adapter_names()))
        self.aim_model = model
        self.recipe_id = inputs.plan.recipe_id
        self.host = args.host
        self.gate = GateSettings(api_keys=inputs.api_keys,
                                 max_request_bytes=args.max_request_bytes,
                                 max_queued=args.max_queued_requests)
        self.exit_code = 0
        self._background: set[asyncio.Task[None]] = set()  # held until done
        for alias in inputs.names[1:]:
            self.register_model(model, alias)

    def _ready_callback(self, args: Any, member: GroupMember | None) -> Callable[[], None]:
        """What happens once warmed up: a pre-fill Job stops; one of several API servers tells
        its peers."""
        if args.exit_after_warmup:
            return self._warmed
        if member is not None:
            return member.mark_ready
        return lambda: None

    def _warmed(self) -> None:
        log.info("warmed up: stopping (--exit-after-warmup)")
        if self._rest_server is not None:
            self._rest_server.stop_serving()

    def _engine_died(self, reason: str) -> None:
        """Stop every listener, so that the process ends (KServe waits on all of them)."""
        log.error("stopping: the engine is dead (%s); exiting non-zero for a restart", reason)
        self.exit_code = 1
        if self._rest_server is not None:
            self._rest_server.stop_serving()
        if self._grpc_server is not None:  # called on the event loop (the engine watch)
            stopping = asyncio.get_running_loop().create_task(self._grpc_server.stop())
            stopping.add_done_callback(_log_failure("stopping the gRPC listener"))
            self._background.add(stopping)
            stopping.add_done_callback(self._background.discard)

    def start(self, models: list[Any]) -> None:
        run = event_loop_runner(self.event_loop)  # a refusal before anything is built
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = AimRESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, access_log_format=self.access_log_format, workers=1,
            grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive, ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile, host=self.host, recipe_id=self.recipe_id,
            model=self.aim_model, gate=self.gate, openai_root_routes=self.openai_root_routes,
            drain_seconds=self.drain_seconds, listener=self.listener, sock=self.sock,
            member=self.member,
        )
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            from kserve.model_server import args as kserve_args

            self._grpc_server = AimGRPCServer(
                self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_args), grace_period=self.grace_period,
                api_keys=self.gate.api_keys)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.register_signal_handler()
        run(self._serve_on_this_loop())

    async def _serve_on_this_loop(self) -> None:
        # KServe sets the loop's exception handler and executor before asyncio.run makes a new
        # loop, so they never reach the loop that serves; here they do.
        self.setup_event_loop()
        await self._serve()


def event_loop_runner(event_loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """What runs the server on the event loop KServe's `--event-loop` names: uvloop for `auto`
    (the default) and `uvloop`, as `vllm serve` runs its server; the standard library's for
    `asyncio`.

    KServe passes the flag to uvicorn's config, but uvicorn installs a loop only when it runs
    the server itself; KServe runs it inside `asyncio.run`, so its server always ran on the
    standard loop."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if event_loop == "uvloop":
                raise AimError("--event-loop uvloop: uvloop is not installed",
                               "install uvloop, or use --event-loop asyncio") from exc
        else:
            log.info("event loop: uvloop (--event-loop %s)", event_loop)
            return uvloop.run
    log.info("event loop: asyncio (--event-loop %s)", event_loop)
    return asyncio.run


def _log_failure(what: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", what, task.exception())
    return done
