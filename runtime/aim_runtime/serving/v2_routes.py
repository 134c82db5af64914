"""KServe v2 routes of our own, registered before KServe's: Triton's generate extension, and the
versioned routes and v1 explain, which KServe answers 501 (it has no versions, and no explainer
runs here).

A model served here has one version, unnamed: a named version is a 404, as Triton answers a
version it does not have, and the unversioned routes serve. An explain request is a 404 naming
what is missing: explanations come from a KServe explainer component, which this runtime is not.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

from aim_runtime.serving.model import AimModel
from aim_runtime.serving.protocol_errors import kserve_error, no_such_version


def add_generate_routes(app: FastAPI, model: AimModel) -> None:
    """POST /v2/models/{name}/generate and /generate_stream (Triton's generate extension)."""

    def check_name(model_name: str) -> None:
        if model_name != model.name and model_name not in model.adapter_names():
            raise ModelNotFound(model_name)

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
            raise InvalidInput(f"request body is not valid JSON: {str(exc)[:200]}") from exc

    async def generate(model_name: str, request: Request) -> JSONResponse:
        check_name(model_name)
        return JSONResponse(await model.generate(await body_of(request), model_name))

    async def generate_stream(model_name: str, request: Request) -> StreamingResponse:
        check_name(model_name)
        events = await model.generate_stream(await body_of(request), request, model_name)
        return StreamingResponse(events, media_type="text/event-stream")

    app.add_api_route("/v2/models/{model_name}/generate", generate, methods=["POST"],
                      tags=["V2"])
    app.add_api_route("/v2/models/{model_name}/generate_stream", generate_stream,
                      methods=["POST"], tags=["V2"])


def add_version_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """The versioned v2 routes, `?model_version=` on the metadata route, and v1 `:explain`."""

    async def metadata(model_name: str, model_version: str | None = None) -> Any:
        if model_version:
            return no_such_version(model_name, model_version)
        return ModelMetadataResponse.model_validate(await dataplane.model_metadata(model_name))

    async def versioned(model_name: str, model_version: str) -> JSONResponse:
        await dataplane.model_metadata(model_name)  # ModelNotFound (404) for an unknown model
        return no_such_version(model_name, model_version)

    async def explain(model_name: str) -> JSONResponse:
        await dataplane.model_metadata(model_name)
        return kserve_error(
            f"model {model_name} has no explainer: explanations come from a KServe explainer "
            "component; this runtime predicts", HTTPStatus.NOT_FOUND.value)

    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"], tags=["V2"])
    for suffix, methods in (("", ["GET"]), ("/ready", ["GET"]), ("/infer", ["POST"])):
        app.add_api_route(f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}",
                          versioned, methods=methods, tags=["V2"])
    app.add_api_route("/v1/models/{model_name}:explain", explain, methods=["POST"], tags=["V1"])
