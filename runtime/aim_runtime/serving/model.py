"""The one model object: a KServe `Model` for the v1/v2 protocols, owning the vLLM engine.

KServe registers it before the engine exists (so the HTTP server, its probes and /metrics are up
while the weights load); `start_engine` builds the vLLM engine and vLLM's OpenAI application next
to the server, and readiness (`healthy`) is true only while that engine is loaded and healthy.
OpenAI requests go to vLLM's application (mounted by serving/asgi.py); v2 `infer` and `generate`
requests are turned into vLLM completion requests served by the same serving objects, so every
protocol shares one validation and one sampling path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import (
    InferOutput,
    InferRequest,
    InferResponse,
    to_http_parameters,
)

from aim_runtime.serving import metrics
from aim_runtime.serving.cluster import ClusterSpec, form_cluster, stop_ray
from aim_runtime.serving.compile_cache import CompileCache
from aim_runtime.serving.lora import AdapterGuard, Adapters
from aim_runtime.serving.protocol_errors import EngineErrorResponse
from aim_runtime.serving.vllm_adapter import (
    Engine,
    EngineClient,
    completion_request,
    freeze_startup_heap,
    start_engine,
)
from aim_runtime.serving.warmup import WarmupPlan, WarmupTarget, warm_up

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
HEALTH_CHECK_INTERVAL_SECONDS = 2.0


class AimModel(Model):
    """Serves one vLLM engine over KServe v1/v2; its OpenAI application is `openai_app`."""

    def __init__(self, name: str, engine_argv: list[str], env: dict[str, str],
                 on_engine_death: Callable[[str], None] | None = None,
                 cluster: ClusterSpec | None = None, warmup: WarmupTarget | None = None,
                 stall_seconds: float = 600.0, compile_cache: CompileCache | None = None,
                 on_warmed: Callable[[], None] | None = None,
                 adapters: Adapters | None = None, client: EngineClient | None = None) -> None:
        super().__init__(name)
        self.client = client  # one of several API servers: a client of shared engine cores
        self.warmup_app: Any | None = None  # set: warm up in process, through this application
        self.adapters = adapters  # AIM_LORA_DIR: loaded before readiness, then watched
        self._openai_app: Any | None = None
        self.compile_cache = compile_cache
        self.on_warmed = on_warmed  # told once the model is ready (the server may stop then)
        self.warmup = warmup
        self.warmed = warmup is None or warmup.extent == "off"
        self.draining = False  # SIGTERM received: still serving, no longer ready
        self.stall_seconds = stall_seconds
        self.engine_argv = engine_argv
        self.env = env
        self.cluster = cluster  # multi-node head: form the Ray cluster before the engine
        self.on_engine_death = on_engine_death
        self.vllm_engine: Engine | None = None
        self.ready = True  # registered now; readiness comes from healthy()
        self.engine = True  # ask KServe to run start_engine() next to the server

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """KServe would mark the model ready here; readiness waits for the engine instead."""

    async def start_engine(self) -> None:
        if self.cluster is not None:
            await self._form_cluster(self.cluster)
        started = time.monotonic()
        log.info("loading the vLLM engine")
        self.vllm_engine = await start_engine(self.engine_argv, self.env, self.client)
        metrics.record_phase("engine", time.monotonic() - started)
        metrics.ENGINE_CONFIG.info(self.vllm_engine.effective_config())
        capacity = self.vllm_engine.kv_capacity_tokens
        if capacity is not None:
            metrics.KV_CAPACITY_TOKENS.labels(source="engine").set(capacity)
        metrics.ENGINE_ALIVE.set(1)
        log.info("engine ready in %.1f s (KV cache: %s tokens)", time.monotonic() - started,
                 capacity)
        self.vllm_engine.monitor = asyncio.create_task(self._watch_engine())
        await self._load_adapters(self.vllm_engine)
        await self._warm_up()
        frozen_at = time.monotonic()
        frozen = freeze_startup_heap()
        log.info("start-up heap frozen for the garbage collector: %d objects (%.2f s)", frozen,
                 time.monotonic() - frozen_at)
        self.warmed = True
        if self.compile_cache is not None:
            self.compile_cache.mark_complete()
        if self.on_warmed is not None:
            self.on_warmed()

    async def _load_adapters(self, engine: Engine) -> None:
        """The adapter directory's adapters, before readiness; then it is watched."""
        if engine.max_lora_rank is not None:
            self._openai_app = AdapterGuard(engine.app, self.adapters, self.adapter_names)
        if self.adapters is None or engine.max_lora_rank is None:
            return
        self.adapters.max_rank = engine.max_lora_rank
        try:
            await self.adapters.sync(engine.load_adapter, engine.unload_adapter,
                                     engine.adapter_names)
        except OSError as exc:  # unreadable now; the watcher tries again
            log.warning("adapter directory %s: %s", self.adapters.directory, exc)
        engine.lora_watch = asyncio.create_task(
            self.adapters.watch(engine.load_adapter, engine.unload_adapter,
                                engine.adapter_names))

    def adapter_names(self) -> set[str]:
        """LoRA adapters served now, each under its own model name."""
        engine = self.vllm_engine
        return engine.adapter_names() if engine is not None else set()

    async def _warm_up(self) -> None:
        """Requests through our own listener before readiness (serving/warmup.py)."""
        engine = self.vllm_engine
        if self.warmed or engine is None or self.warmup is None:
            return
        started = time.monotonic()
        config = engine.effective_config()
        plan = WarmupPlan(
            extent=self.warmup.extent, url=self.warmup.url, model=self.name,
            api_key=self.warmup.api_key,
            max_num_batched_tokens=int(config["max_num_batched_tokens"]),
            max_num_seqs=int(config["max_num_seqs"]), max_model_len=engine.max_model_len,
            tools=bool(getattr(engine.args, "enable_auto_tool_choice", False)),
            structured_outputs=engine.completions is not None,
            warmers=self.client.count if self.client is not None else 1)
        failed = 0
        try:
            sent = await warm_up(plan, self.warmup_app) if engine.completions is not None else 0
        except Exception as exc:  # the listener or a request failed: serve anyway
            log.warning("warm-up incomplete: %s: %s", type(exc).__name__, exc)
            sent, failed = 0, 1
        metrics.WARMUP_REQUESTS.labels(outcome="ok").set(sent)
        metrics.WARMUP_REQUESTS.labels(outcome="failed").set(failed)
        seconds = time.monotonic() - started
        metrics.record_phase("warmup", seconds)
        log.info("warm-up: %d request(s) in %.1f s (%s); ready", sent, seconds,
                 self.warmup.extent)

    async def _form_cluster(self, spec: ClusterSpec) -> None:
        started = time.monotonic()
        log.info("multi-node head: starting Ray, waiting for %d nodes with %d GPUs each "
                 "(up to %g s)", spec.nodes, spec.gpus_per_node, spec.join_timeout_seconds)
        await asyncio.to_thread(form_cluster, spec)
        metrics.record_phase("cluster", time.monotonic() - started)

    async def _watch_engine(self) -> None:
        """Poll engine health and progress; on death or a stall (requests running and no token
        produced for `stall_seconds`), liveness turns false and the owner is told."""
        engine = self.vllm_engine
        last_progress, last_generated = time.monotonic(), -1.0
        while engine is not None and await engine.healthy():
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_SECONDS)
            running, generated = metrics.engine_progress()
            if running == 0 or generated != last_generated:
                last_progress, last_generated = time.monotonic(), generated
            elif time.monotonic() - last_progress > self.stall_seconds:
                engine.dead_reason = (
                    f"stalled: {running:g} request(s) running and no token produced for "
                    f"{self.stall_seconds:g} s (AIM_STALL_SECONDS)")
                break
        metrics.ENGINE_ALIVE.set(0)
        reason = engine.dead_reason if engine else "engine missing"
        log.error("the vLLM engine died: %s", reason)
        if self.on_engine_death is not None:
            self.on_engine_death(reason or "unknown")

    async def healthy(self) -> bool:
        return (self.vllm_engine is not None and self.warmed and not self.draining
                and await self.vllm_engine.healthy())

    def not_ready_reason(self) -> str:
        """Why readiness is 503: loading, warming, draining, stalled or dead (for the probe's
        body)."""
        engine = self.vllm_engine
        if engine is None:
            return "loading"
        if engine.dead_reason is not None:
            return "stalled" if engine.dead_reason.startswith("stalled") else "dead"
        if self.draining:
            return "draining"
        return "warming" if not self.warmed else "unhealthy"

    def engine_capacity(self) -> int | None:
        """Sequences the engine runs at once, all data-parallel ranks (None until loaded)."""
        return self.vllm_engine.running_capacity if self.vllm_engine is not None else None

    @property
    def engine_dead(self) -> bool:
        return self.vllm_engine is not None and self.vllm_engine.dead_reason is not None

    def stop(self) -> None:
        if self.vllm_engine is not None:
            self.vllm_engine.shutdown()
        if self.cluster is not None:
            stop_ray()
        self.ready = False

    def _completions(self) -> Any:
        """The engine's completion serving object; a pooling model has none (400, not 500)."""
        completions = self._engine().completions
        if completions is None:
            raise InvalidInput("this model is served as a pooling model: v2 text generation is "
                               "not available; use /openai/v1/embeddings, /openai/pooling, "
                               "/openai/score or /openai/rerank")
        return completions

    def _engine(self) -> Engine:
        if self.vllm_engine is None or self.vllm_engine.dead_reason is not None:
            raise ModelNotReady(self.name)
        return self.vllm_engine

    # --- OpenAI ----------------------------------------------------------------------------

    @property
    def openai_app(self) -> Any | None:
        """vLLM's OpenAI application, once the engine is loaded and alive (else None)."""
        engine = self.vllm_engine
        if engine is None or engine.dead_reason is not None:
            return None
        return self._openai_app or engine.app

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
