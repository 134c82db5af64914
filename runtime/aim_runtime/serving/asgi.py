"""The listener's ASGI layers, outermost first as uvicorn serves them: the access log, the
recipe header, the request counter, the fast path to vLLM's application, and the body rule of
the v2 binary extension. Pure ASGI each, so a streamed response streams."""

from __future__ import annotations

import logging
import re
from typing import Any

from aim_runtime import openai_requests
from aim_runtime.serving import metrics
from aim_runtime.serving.model import AimModel
from aim_runtime.serving.paths import protocol_of, route_path, vllm_mount_point
from aim_runtime.serving.protocol_errors import not_ready_yet

RECIPE_HEADER = openai_requests.RECIPE_HEADER


def access_logged(app: Any, log_format: str) -> Any:
    """`--access_log_format`: one line per request on stdout in asgi-logger's format (e.g.
    `%(h)s "%(r)s" %(s)s %(M)sms`), for every request, the gate's refusals included. uvicorn's
    own access handlers are cleared so that no line is written twice."""
    from asgi_logger import AccessLoggerMiddleware

    logging.getLogger("uvicorn.access").handlers = []
    logged = AccessLoggerMiddleware(app, format=log_format)
    logging.getLogger("access").propagate = False
    return logged


V2_INFER_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
JSON_LENGTH_HEADER = b"inference-header-content-length"


class WholeBodyIsJson:
    """The binary tensor data extension: a v2 infer request without
    `Inference-Header-Content-Length` is all JSON. KServe decodes a body FastAPI did not parse as
    JSON (the reference client sends no JSON content type) as binary and refuses it for the
    missing header; naming the whole body's length as the JSON part says what the protocol says."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and \
                V2_INFER_PATH.match(scope["path"]):
            headers = dict(scope["headers"])
            if JSON_LENGTH_HEADER not in headers and b"content-length" in headers:
                scope = {**scope, "headers": [*scope["headers"],
                                              (JSON_LENGTH_HEADER, headers[b"content-length"])]}
        await self.app(scope, receive, send)


class RecipeHeaderMiddleware:
    """Adds `x-aim-recipe` to every HTTP response (pure ASGI: streaming stays streaming)."""

    def __init__(self, app: Any, recipe_id: str) -> None:
        self.app = app
        self.header = (RECIPE_HEADER.encode(), recipe_id.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


class CountedRequests:
    """`aim_requests_total{protocol, status_class}`: every HTTP request but probes and scrapes,
    counted when its status is sent (a request that raises before answering counts as 5xx, as
    uvicorn answers it; one dropped before any answer is not counted)."""

    def __init__(self, app: Any, root_routes: bool) -> None:
        self.app = app
        self.root_routes = root_routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        protocol = protocol_of(route_path(scope), self.root_routes) \
            if scope["type"] == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        answered = False

        async def counted_send(message: dict) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                metrics.count_request(protocol, metrics.status_class(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        except Exception:
            if not answered:
                metrics.count_request(protocol, "5xx")
            raise


class VllmFastPath:
    """The listener's application: requests for vLLM's OpenAI routes go through the gate
    (`openai`) straight to vLLM's application, as if mounted at their prefix; all others to
    KServe's FastAPI application (`kserve_app`).

    Why not KServe's mount alone: a streamed response passes every chunk through each layer
    above the mount (Starlette's error and exception middleware), and every request is matched
    against KServe's route table first. Skipping them brings the front end's CPU per streamed
    token to `vllm serve`'s (benchmarks/results/front_end_profile.md). Errors keep their shape:
    the gate and the adapter guard (serving/lora.py) answer their refusals in OpenAI's shape, and
    vLLM's application has its own error handlers, as under `vllm serve`; anything else raised
    on the way is a bug, which uvicorn answers 500 and logs with its traceback."""

    def __init__(self, kserve_app: Any, openai: Any, root_routes: bool) -> None:
        self.kserve_app = kserve_app
        self.openai = openai
        self.root_routes = root_routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            prefix = vllm_mount_point(route_path(scope), self.root_routes)
            if prefix is not None:
                root_path = scope.get("root_path", "")
                await self.openai({**scope, "app_root_path": scope.get("app_root_path", root_path),
                                   "root_path": root_path + prefix}, receive, send)
                return
        await self.kserve_app(scope, receive, send)


class OpenAIApplication:
    """vLLM's OpenAI application once the engine is loaded; until then (and after the engine
    died) an OpenAI-shaped 503. Pure ASGI: a mounted application sees the path below its mount
    and `request.app` is vLLM's own, whose state holds its serving objects."""

    def __init__(self, model: AimModel) -> None:
        self.model = model

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app = self.model.openai_app
        if app is not None:
            await app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        await not_ready_yet(self.model.name)(scope, receive, send)
