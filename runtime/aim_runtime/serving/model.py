"""The one model object: a KServe `Model` for the v1/v2 protocols, over the engine's lifecycle.

KServe registers it before the engine exists (so the HTTP server, its probes and /metrics are up
while the weights load); `start_engine` has the lifecycle (serving/lifecycle.py) build the vLLM
engine and vLLM's OpenAI application next to the server, and readiness (`healthy`) is true only
while that engine is loaded, warmed and healthy.
OpenAI requests go to vLLM's application (mounted by serving/asgi.py); v2 `infer` and `generate`
requests are turned into vLLM completion requests served by the same serving objects, so every
protocol shares one validation and one sampling path.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import (
    InferOutput,
    InferRequest,
    InferResponse,
    to_http_parameters,
)

from aim_runtime.serving.lifecycle import EngineLifecycle
from aim_runtime.serving.protocol_errors import EngineErrorResponse
from aim_runtime.serving.vllm_adapter import completion_request

log = logging.getLogger(__name__)

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
# Sampling parameters accepted by the v2 `infer` and `generate` routes (vLLM completion names).
SAMPLING_PARAMETERS = {
    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
    "stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "ignore_eos", "skip_special_tokens", "include_stop_str_in_output", "logprobs",
}
# Parameters of the protocol itself (the binary tensor data extension), not of sampling: KServe's
# encoder reads them to shape the response.
PROTOCOL_PARAMETERS = {"binary_data_output"}


class AimModel(Model):
    """Serves one vLLM engine over KServe v1/v2: the protocols' translation. The engine's life
    (start, health, drain, stop) is the lifecycle's (serving/lifecycle.py)."""

    def __init__(self, name: str, lifecycle: EngineLifecycle) -> None:
        super().__init__(name)
        self.lifecycle = lifecycle
        self.ready = True  # registered now; readiness comes from healthy()
        self.engine = True  # ask KServe to run start_engine() next to the server

    def start(self) -> None:
        """KServe would mark the model ready here; readiness waits for the engine instead."""

    async def start_engine(self) -> None:
        await self.lifecycle.start()

    async def healthy(self) -> bool:
        return await self.lifecycle.healthy()

    def stop(self) -> None:
        self.lifecycle.stop()
        self.ready = False

    def adapter_names(self) -> set[str]:
        return self.lifecycle.adapter_names()

    @property
    def openai_app(self) -> Any | None:
        """vLLM's OpenAI application, once the engine is loaded and alive (else None)."""
        return self.lifecycle.openai_app

    def _completions(self) -> Any:
        """The engine's completion serving object; a pooling model has none (400, not 500)."""
        engine = self.lifecycle.live_engine()
        if engine is None:
            raise ModelNotReady(self.name)
        if engine.completions is None:
            raise InvalidInput("this model is served as a pooling model: v2 text generation is "
                               "not available; use /openai/v1/embeddings, /openai/pooling, "
                               "/openai/score or /openai/rerank")
        return engine.completions

    # --- KServe v2 -------------------------------------------------------------------------

    def get_input_types(self) -> list[dict]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]}]

    async def predict(self, payload: InferRequest | dict, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse | dict:
        """v2 infer: a batch of prompts in the BYTES tensor `text_input`, sampling parameters in
        the request's `parameters`; one completion per prompt in `text_output`.
        v1 predict: {"instances": [prompt, ...], "parameters": {...}} -> {"predictions": [...]}.
        """
        if isinstance(payload, dict):
            prompts, parameters = _v1_instances(payload)
            return {"predictions": await self._complete(prompts, parameters)}
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected a v2 inference request with a 'text_input' tensor")
        prompts = _text_input(payload)
        name = self.served_name(payload.model_name)
        texts = await self._complete(prompts, _sampling_parameters(payload), name)
        output = InferOutput(name=TEXT_OUTPUT, shape=[len(texts)], datatype="BYTES",
                             data=texts)
        # Binary outputs when the request asks (REST: binary_data_output or an output's
        # binary_data; gRPC: raw input contents in, raw output contents out).
        return InferResponse(model_name=name, infer_outputs=[output],
                             response_id=payload.id or uuid.uuid4().hex,
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)

    def served_name(self, requested: str | None) -> str:
        """The name a v2 request is served under: a LoRA adapter's, else the model's."""
        if not requested or requested == self.name:
            return self.name
        return requested if requested in self.adapter_names() else self.name

    async def _complete(self, prompts: list[str], parameters: dict[str, Any],
                        name: str | None = None) -> list[str]:
        request = self._completion_request(prompts, parameters, stream=False, name=name)
        response = _checked(await self._completions().create_completion(request, None))
        texts = [""] * len(prompts)
        for choice in response.choices:
            texts[choice.index] = choice.text
        return texts

    async def generate(self, body: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """The v2 generate extension: {"text_input": str, "parameters": {...}}."""
        prompt, parameters = _generate_body(body)
        name = self.served_name(name)
        request = self._completion_request([prompt], parameters, stream=False, name=name)
        response = _checked(await self._completions().create_completion(request, None))
        choice = response.choices[0]
        return {"model_name": name, "model_version": "", TEXT_OUTPUT: choice.text,
                "finish_reason": choice.finish_reason}

    async def generate_stream(self, body: dict[str, Any], raw_request: Any = None,
                              name: str | None = None) -> AsyncIterator[str]:
        """The v2 generate_stream extension: one SSE event per text delta."""
        prompt, parameters = _generate_body(body)
        name = self.served_name(name)
        request = self._completion_request([prompt], parameters, stream=True, name=name)
        stream = _checked(await self._completions().create_completion(
            request, raw_request))
        return self._generate_events(stream, name)

    async def _generate_events(self, stream: Any, name: str) -> AsyncIterator[str]:
        try:
            async for line in stream:
                payload = line.removeprefix("data: ").strip()
                if not payload or payload == "[DONE]":
                    continue
                chunk = json.loads(payload)
                if "error" in chunk:
                    yield f"data: {json.dumps({'error': chunk['error'].get('message')})}\n\n"
                    return
                for choice in chunk.get("choices", []):
                    event = {"model_name": name, "model_version": "",
                             TEXT_OUTPUT: choice.get("text", ""),
                             "finish_reason": choice.get("finish_reason")}
                    yield f"data: {json.dumps(event)}\n\n"
        finally:
            await stream.aclose()  # a client that went away aborts the request in the engine

    def _completion_request(self, prompts: list[str], parameters: dict[str, Any],
                            stream: bool, name: str | None = None) -> Any:
        from pydantic import ValidationError

        unknown = sorted(set(parameters) - SAMPLING_PARAMETERS)
        if unknown:
            raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; accepted: "
                               f"{', '.join(sorted(SAMPLING_PARAMETERS))}")
        try:
            return completion_request(
                {**parameters, "model": name or self.name, "prompt": prompts,
                 "stream": stream})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise InvalidInput(f"invalid parameters: {problems}") from exc


def _checked(result: Any) -> Any:
    """vLLM serving calls return an ErrorResponse instead of raising; raise it."""
    if type(result).__name__ == "ErrorResponse" and hasattr(result, "error"):
        raise EngineErrorResponse(result)
    return result


def _sampling_parameters(payload: InferRequest) -> dict[str, Any]:
    """The request's parameters as plain values (gRPC sends typed InferParameters), without the
    protocol's own."""
    parameters = payload.parameters or {}
    if payload.from_grpc:
        parameters = to_http_parameters(parameters)
    return {k: v for k, v in dict(parameters).items() if k not in PROTOCOL_PARAMETERS}


def _text_input(payload: InferRequest) -> list[str]:
    tensors = {tensor.name: tensor for tensor in payload.inputs}
    if TEXT_INPUT not in tensors:
        raise InvalidInput(f"missing input tensor '{TEXT_INPUT}' (BYTES, one prompt per element);"
                           f" got {sorted(tensors) or 'none'}")
    tensor = tensors[TEXT_INPUT]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{TEXT_INPUT}' must have datatype BYTES, not {tensor.datatype}")
    try:  # JSON data, binary tensor data (REST), contents or raw_input_contents (gRPC)
        items = list(tensor.as_numpy().flatten())
    except Exception as exc:  # malformed binary data: KServe raises several kinds
        raise InvalidInput(f"input '{TEXT_INPUT}' cannot be read as BYTES: {exc}") from exc
    try:
        prompts = [item.decode() if isinstance(item, bytes) else item for item in items]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{TEXT_INPUT}' must hold UTF-8 text: {exc}") from exc
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidInput(f"input '{TEXT_INPUT}' must hold one or more strings")
    return prompts


def _v1_instances(body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("v1 predict needs 'instances': a non-empty list of prompts")
    items = [item.get(TEXT_INPUT) if isinstance(item, dict) else item for item in instances]
    prompts = [item for item in items if isinstance(item, str) and item]
    if len(prompts) != len(items):
        raise InvalidInput(f"each instance must be a prompt string or {{'{TEXT_INPUT}': str}}")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return prompts, parameters


def _generate_body(body: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise InvalidInput("the generate request body must be a JSON object")
    prompt = body.get(TEXT_INPUT)
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput(f"'{TEXT_INPUT}' must be a non-empty string")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    top_level = {k: v for k, v in body.items() if k not in (TEXT_INPUT, "parameters", "id")}
    return prompt, {**top_level, **parameters}
