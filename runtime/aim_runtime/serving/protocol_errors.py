"""Errors in each protocol's own shape, built here and nowhere else.

- OpenAI: `{"error": {"message", "type", "param", "code"}}`, exactly as vLLM writes it (the type
  of an HTTP error is the status phrase, `Not Found`, as vLLM's own handler says it).
- KServe: `{"error": "<message>"}`, plus `reason` on a readiness 503.
- gRPC: a status code for each HTTP status (the mapping HTTP/JSON gateways use).
- The one `Authorization: Bearer <key>` parser, for the HTTP gate and the gRPC interceptor.

Callers: the gate and the header limits (before any application, `send_error`), the adapter
guard, the v2 routes, KServe's application (`install_error_handlers`) and the gRPC listener.
"""

from __future__ import annotations

import hmac
import json
import re
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from aim_runtime.serving.paths import openai_shaped
from aim_runtime.serving.vllm_adapter import error_response, vllm_error_type

# HTTP statuses of vLLM's errors, as gRPC status codes; any other status is INTERNAL.
GRPC_STATUS_OF_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                       413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                       422: grpc.StatusCode.INVALID_ARGUMENT,
                       429: grpc.StatusCode.RESOURCE_EXHAUSTED,
                       501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}


class EngineErrorResponse(Exception):
    """A vLLM ErrorResponse to send as is (OpenAI routes) or as a KServe error (v2 routes)."""

    def __init__(self, response: Any) -> None:
        super().__init__(response.error.message)
        self.response = response

    @property
    def status_code(self) -> int:
        return int(self.response.error.code)


def grpc_status(http_status: int) -> grpc.StatusCode:
    return GRPC_STATUS_OF_HTTP.get(http_status, grpc.StatusCode.INTERNAL)


# The caller's mistakes (HTTP would answer 4xx; CANCELLED is the client's own, nginx's 499).
GRPC_CLIENT_ERRORS = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE})


def grpc_status_class(code: grpc.StatusCode | None) -> str:
    """The HTTP status class of a gRPC status, for the request counters (None: OK)."""
    if code is None or code == grpc.StatusCode.OK:
        return "2xx"
    return "4xx" if code in GRPC_CLIENT_ERRORS else "5xx"


def bearer_matches(header: bytes | str, keys: list[bytes]) -> bool:
    """`Bearer <key>` (an HTTP header or gRPC metadata) holds one of `keys`, compared in constant
    time against every key, so the time taken says nothing of which key came close."""
    raw = header.encode() if isinstance(header, str) else header
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return False
    return any([hmac.compare_digest(token.strip(), key) for key in keys])


# --- bodies -------------------------------------------------------------------------------------


def openai_body(message: str, err_type: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def kserve_body(message: str, reason: str | None = None) -> dict:
    return {"error": message, **({"reason": reason} if reason else {})}


def no_such_version(model_name: str, model_version: str) -> JSONResponse:
    """A v2 model version the model does not have: 404, as Triton answers (KServe: 501)."""
    return kserve_error(
        f"Model with name {model_name} has no version {model_version!r}: models here have one "
        f"version, unnamed (/v2/models/{model_name})", HTTPStatus.NOT_FOUND.value)


def openai_error(message: str, err_type: str, status: HTTPStatus,
                 param: str | None = None) -> JSONResponse:
    return JSONResponse(openai_body(message, err_type, status.value, param),
                        status_code=status.value)


def kserve_error(message: str, status: int) -> JSONResponse:
    return JSONResponse(kserve_body(message), status_code=status)


async def send_error(send: Any, openai: bool, status: int, error_type: str, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answered on a raw ASGI `send`, before any application: OpenAI's shape or
    KServe's."""
    payload = openai_body(message, error_type, status) if openai else kserve_body(message)
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# --- KServe's application: each exception in the shape of the path's protocol -------------------


def install_error_handlers(app: FastAPI, openai_root_routes: bool = False) -> None:
    """For each exception in KServe's application: an OpenAI-shaped answer on vLLM's paths that
    reach it (root routes outside `/v1`, like `/tokenize`), a KServe-shaped one elsewhere.
    (Errors inside vLLM's application get vLLM's own handlers.)"""
    def dispatch(for_openai: Any, for_kserve: Any) -> Any:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            if openai_shaped(request.url.path, openai_root_routes):
                return for_openai(exc)
            return for_kserve(exc)
        return handle

    unavailable = _kserve_status(HTTPStatus.SERVICE_UNAVAILABLE)
    handlers = {
        # Not ready is an answer, not an incident: no traceback per probe while loading.
        ServerNotReady: (_not_ready, _not_ready),
        ServerNotLive: (unavailable, unavailable),
        StarletteHTTPException: (_openai_http, _kserve_http),
        RequestValidationError: (_openai_validation, _kserve_validation),
        EngineErrorResponse: (_openai_engine_error, _kserve_engine_error),
        ModelNotFound: (_openai_model_not_found, _kserve_status(HTTPStatus.NOT_FOUND)),
        ModelNotReady: (_openai_not_ready, _kserve_status(HTTPStatus.SERVICE_UNAVAILABLE)),
        InvalidInput: (_openai_from_exception, _kserve_status(HTTPStatus.BAD_REQUEST)),
        vllm_error_type(): (_openai_from_exception, _kserve_from_exception),
        ValueError: (_openai_from_exception, _kserve_from_exception),
        TypeError: (_openai_from_exception, _kserve_from_exception),
        OverflowError: (_openai_from_exception, _kserve_from_exception),
    }
    for exc_type, (for_openai, for_kserve) in handlers.items():
        app.add_exception_handler(exc_type, dispatch(for_openai, for_kserve))
    app.add_exception_handler(NotImplementedError, _not_implemented)


async def _not_implemented(request: Request, exc: Exception) -> JSONResponse:
    """KServe's v2 ready and infer handlers refuse any `?model_version=` with
    NotImplementedError: a version the model does not have is a 404."""
    version = request.query_params.get("model_version")
    if version:
        return no_such_version(str(request.path_params.get("model_name", "?")), version)
    return kserve_error(str(exc) or "not implemented", HTTPStatus.NOT_IMPLEMENTED.value)


def _not_ready(exc: Exception) -> JSONResponse:
    return JSONResponse(kserve_body(str(exc), getattr(exc, "reason", None)),
                        status_code=HTTPStatus.SERVICE_UNAVAILABLE.value)


def _openai_from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, InvalidInput):
        return openai_error(str(exc), "BadRequestError", HTTPStatus.BAD_REQUEST)
    status, body = error_response(exc)
    return JSONResponse(body, status_code=status)


def _openai_http(exc: StarletteHTTPException) -> JSONResponse:
    status = HTTPStatus(exc.status_code)
    return openai_error(str(exc.detail), status.phrase, status)


def _kserve_http(exc: StarletteHTTPException) -> JSONResponse:
    return kserve_error(str(exc.detail), exc.status_code)


def _validation_problems(exc: RequestValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]


def _openai_validation(exc: RequestValidationError) -> JSONResponse:
    errors, problems = exc.errors(), _validation_problems(exc)
    param = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
    message = f"{len(errors)} validation error(s): " + "; ".join(problems) if errors else \
        "invalid request body"
    return openai_error(message, HTTPStatus.BAD_REQUEST.phrase, HTTPStatus.BAD_REQUEST, param)


def _kserve_validation(exc: RequestValidationError) -> JSONResponse:
    return kserve_error("invalid request: " + "; ".join(_validation_problems(exc)),
                        HTTPStatus.BAD_REQUEST.value)


def _openai_engine_error(exc: EngineErrorResponse) -> JSONResponse:
    return JSONResponse(exc.response.model_dump(), status_code=exc.status_code)


def _kserve_engine_error(exc: EngineErrorResponse) -> JSONResponse:
    return kserve_error(exc.response.error.message, exc.status_code)


def _openai_model_not_found(exc: ModelNotFound) -> JSONResponse:
    match = re.match(r"Model with name (.*) does not exist", str(exc))
    name = match.group(1) if match else "?"
    return openai_error(f"The model `{name}` does not exist.", "NotFoundError",
                        HTTPStatus.NOT_FOUND, "model")


def _openai_not_ready(exc: ModelNotReady) -> JSONResponse:
    return not_ready_yet(exc.model_name)


def not_ready_yet(model_name: str) -> JSONResponse:
    return openai_error(f"The model `{model_name}` is not ready yet.",
                        "ServiceUnavailableError", HTTPStatus.SERVICE_UNAVAILABLE)


def _kserve_status(status: HTTPStatus) -> Any:
    def respond(exc: Exception) -> JSONResponse:
        return kserve_error(str(exc), status.value)
    return respond


def _kserve_from_exception(exc: Exception) -> JSONResponse:
    status, body = error_response(exc)
    return kserve_error(body["error"]["message"], status)
