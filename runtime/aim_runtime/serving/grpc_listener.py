"""The gRPC v2 listener: KServe's servicer behind the API-key interceptor, with KServe's
exception-to-status interceptor taught vLLM's errors (serving/protocol_errors.py maps them)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from kserve.errors import InvalidInput
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer

from aim_runtime.serving import metrics
from aim_runtime.serving.protocol_errors import (
    EngineErrorResponse,
    bearer_matches,
    grpc_status,
    grpc_status_class,
)
from aim_runtime.serving.vllm_adapter import (
    engine_dead_error_type,
    error_response,
    vllm_error_type,
)

log = logging.getLogger(__name__)

GRPC_SERVICE = "/inference.GRPCInferenceService/"
# Probes need no key, as on HTTP; the model repository (load/unload) is never served.
GRPC_OPEN_METHODS = {"ServerLive", "ServerReady", "ModelReady"}
GRPC_REPOSITORY_METHODS = {"RepositoryModelLoad", "RepositoryModelUnload"}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The gate's API keys on the gRPC listener: `authorization: Bearer <key>` metadata, compared
    in constant time; keyless calls end with UNAUTHENTICATED, as HTTP answers 401."""

    def __init__(self, api_keys: tuple[str, ...]) -> None:
        self.keys = [key.encode() for key in api_keys if key]

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method.removeprefix(GRPC_SERVICE)
        if method in GRPC_REPOSITORY_METHODS:
            return _grpc_refusal(grpc.StatusCode.PERMISSION_DENIED,
                                 "the model repository is not served: one model per server")
        if self.keys and method not in GRPC_OPEN_METHODS and not self._authorized(details):
            return _grpc_refusal(grpc.StatusCode.UNAUTHENTICATED,
                                 "missing or invalid API key (authorization: Bearer <key>)")
        return await continuation(details)

    def _authorized(self, details: Any) -> bool:
        metadata = {key.lower(): value for key, value in details.invocation_metadata or ()}
        return bearer_matches(metadata.get("authorization", ""), self.keys)


def _grpc_refusal(code: grpc.StatusCode, message: str) -> Any:
    async def refuse(request: Any, context: Any) -> None:
        _count(code)
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


def _count(code: grpc.StatusCode | None) -> None:
    metrics.count_request("grpc", grpc_status_class(code))


class AimExceptionToStatus(ExceptionToStatusInterceptor):
    """KServe's exception-to-status interceptor, plus what vLLM says of a request, where KServe
    answered INTERNAL: vLLM's error responses and errors by the HTTP status vLLM gives them
    (a dead engine UNAVAILABLE, a bad request INVALID_ARGUMENT), and ValueError and TypeError
    INVALID_ARGUMENT, as the HTTP routes answer them 400."""

    async def intercept(self, method: Any, request_or_iterator: Any,
                        context: grpc.aio.ServicerContext, method_name: str) -> Any:
        """KServe's interceptor, each call but the probes counted by its status (a streamed
        response when it starts)."""
        counted = method_name.removeprefix(GRPC_SERVICE) not in GRPC_OPEN_METHODS
        try:
            response = await super().intercept(method, request_or_iterator, context,
                                               method_name)
        except BaseException:
            if counted:
                _count(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        if counted:
            _count(context.code())
        return response

    async def handle_exception(self, ex: Exception, request_or_iterator: Any,
                               context: grpc.aio.ServicerContext, method_name: str) -> None:
        if isinstance(ex, engine_dead_error_type()):  # the pod is about to restart
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the engine is dead: {ex}")
        elif isinstance(ex, (EngineErrorResponse, vllm_error_type())):
            status = ex.status_code if isinstance(ex, EngineErrorResponse) else \
                error_response(ex)[0]
            await context.abort(grpc_status(status), str(ex))
        elif isinstance(ex, (ValueError, TypeError)) and not isinstance(ex, InvalidInput):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class AimGRPCServer(GRPCServer):
    """KServe's gRPC v2 server with the API-key interceptor in front of KServe's own."""

    def __init__(self, *args: Any, api_keys: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_keys = api_keys

    async def start(self, max_workers: int) -> None:
        from concurrent import futures

        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
        from kserve.protocol.grpc.interceptors import LoggingInterceptor
        from kserve.protocol.grpc.servicer import InferenceServicer

        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(AuthInterceptor(self.api_keys), LoggingInterceptor(),
                          AimExceptionToStatus()),
            options=[(f"grpc.{name}", self._kwargs.get(f"grpc_{name}")) for name in (
                "max_send_message_length", "max_receive_message_length")],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        log.info("gRPC v2 on port %d (API keys %s)", self._port,
                 "required" if self.api_keys else "not configured")
        await self._server.start()
        await self._server.wait_for_termination()
