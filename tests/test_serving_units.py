"""The serving layer in-process, without a server process or an engine: v2/v1 request parsing, the
parameter check that turns v2 requests into vLLM completion requests, the model's v2 routes over a
stand-in engine, and the error handlers that answer in each protocol's shape."""

from __future__ import annotations

import asyncio
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.protocol.infer_type import InferInput, InferRequest
from pydantic import BaseModel
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
from vllm.exceptions import VLLMNotFoundError, VLLMValidationError

from aim_runtime.serving.asgi import OpenAIApplication, VllmFastPath
from aim_runtime.serving.gate import lone_surrogate_field
from aim_runtime.serving.model import (
    SAMPLING_PARAMETERS,
    AimModel,
    _generate_body,
    _text_input,
    _v1_instances,
)
from aim_runtime.serving.paths import OPENAI_PREFIX
from aim_runtime.serving.protocol_errors import EngineErrorResponse, install_error_handlers
from aim_runtime.serving.server import event_loop_runner
from aim_runtime.serving.v2_routes import add_generate_routes
from testkit import engine_less_model

PREFIX = OPENAI_PREFIX


def v2_request(*inputs: InferInput, parameters: dict | None = None) -> InferRequest:
    return InferRequest(model_name="tiny", infer_inputs=list(inputs), request_id="r-1",
                        parameters=parameters)


def engine_error(message: str, code: int, param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type="BadRequestError", code=code,
                                         param=param))


# --- v2 infer: the text_input tensor --------------------------------------------------------------


@pytest.mark.parametrize(("data", "prompts"), [
    (["one"], ["one"]),
    (["one", "two"], ["one", "two"]),
    ([b"bytes", "text"], ["bytes", "text"]),  # BYTES elements arrive as bytes from binary data
    (np.array([["a", "b"], ["c", "d"]], dtype=object), ["a", "b", "c", "d"]),  # flattened
])
def test_text_input_gives_one_prompt_per_element(data, prompts):
    tensor = InferInput("text_input", [len(prompts)], "BYTES", data)
    assert _text_input(v2_request(tensor)) == prompts


@pytest.mark.parametrize(("inputs", "message"), [
    ([], "missing input tensor 'text_input' (BYTES, one prompt per element); got none"),
    ([InferInput("prompt", [1], "BYTES", ["x"])],
     "missing input tensor 'text_input' (BYTES, one prompt per element); got ['prompt']"),
    ([InferInput("text_input", [1], "INT32", [1])],
     "input 'text_input' must have datatype BYTES, not INT32"),
    ([InferInput("text_input", [0], "BYTES", [])], "input 'text_input' must hold one or more"),
    ([InferInput("text_input", [2], "BYTES", ["x", 3])],
     "input 'text_input' must hold one or more strings"),
])
def test_text_input_errors_say_what_is_expected(inputs, message):
    with pytest.raises(InvalidInput) as error:
        _text_input(v2_request(*inputs))
    assert str(error.value).startswith(message)


# --- v1 predict: instances ------------------------------------------------------------------------


def test_v1_instances_are_strings_or_text_input_objects():
    body = {"instances": ["a", {"text_input": "b"}], "parameters": {"max_tokens": 3}}
    assert _v1_instances(body) == (["a", "b"], {"max_tokens": 3})
    assert _v1_instances({"instances": ["a"]}) == (["a"], {})


@pytest.mark.parametrize(("body", "message"), [
    ({}, "v1 predict needs 'instances'"),
    ({"instances": []}, "v1 predict needs 'instances'"),
    ({"instances": "a"}, "v1 predict needs 'instances'"),
    ({"instances": [""]}, "each instance must be a prompt string"),
    ({"instances": ["a", 3]}, "each instance must be a prompt string"),
    ({"instances": [{"text_input": 3}]}, "each instance must be a prompt string"),
    ({"instances": [{"prompt": "a"}]}, "each instance must be a prompt string"),
    ({"instances": ["a"], "parameters": [1]}, "'parameters' must be a JSON object"),
])
def test_v1_instance_errors(body, message):
    with pytest.raises(InvalidInput, match=message):
        _v1_instances(body)


# --- the v2 generate extension's body -------------------------------------------------------------


def test_generate_body_merges_top_level_sampling_into_parameters_which_win():
    body = {"text_input": "hi", "id": "req-1", "max_tokens": 3, "temperature": 0.5,
            "parameters": {"max_tokens": 5}}
    assert _generate_body(body) == ("hi", {"max_tokens": 5, "temperature": 0.5})
    assert _generate_body({"text_input": "hi"}) == ("hi", {})


@pytest.mark.parametrize(("body", "message"), [
    ([], "the generate request body must be a JSON object"),
    ("hi", "the generate request body must be a JSON object"),
    ({}, "'text_input' must be a non-empty string"),
    ({"text_input": ""}, "'text_input' must be a non-empty string"),
    ({"text_input": ["a"]}, "'text_input' must be a non-empty string"),
    ({"text_input": "a", "parameters": "max_tokens=3"}, "'parameters' must be a JSON object"),
])
def test_generate_body_errors(body, message):
    with pytest.raises(InvalidInput, match=message):
        _generate_body(body)


# --- v2 parameters -> a vLLM completion request -----------------------------------------------


@pytest.fixture(scope="module")
def model() -> AimModel:
    """The model object with no engine: nothing loads, readiness stays false."""
    return engine_less_model()


def test_completion_request_carries_prompts_and_parameters(model):
    request = model._completion_request(["a", "b"], {"max_tokens": 3, "temperature": 0.0,
                                                     "stop": ["\n"], "seed": 7}, stream=True)
    assert (request.model, request.prompt, request.stream) == ("tiny", ["a", "b"], True)
    assert (request.max_tokens, request.temperature, request.stop, request.seed) == (
        3, 0.0, ["\n"], 7)


def test_every_accepted_parameter_reaches_the_request(model):
    values = {"max_tokens": 4, "min_tokens": 1, "temperature": 0.3, "top_p": 0.9, "top_k": 5,
              "min_p": 0.1, "seed": 3, "stop": ["x"], "stop_token_ids": [2],
              "presence_penalty": 0.5, "frequency_penalty": 0.25, "repetition_penalty": 1.1,
              "ignore_eos": True, "skip_special_tokens": False,
              "include_stop_str_in_output": True, "logprobs": 2}
    assert set(values) == SAMPLING_PARAMETERS  # the test covers the whole list
    request = model._completion_request(["a"], values, stream=False)
    assert {name: getattr(request, name) for name in values} == values


@pytest.mark.parametrize("parameters", [
    {"beam_width": 2}, {"n": 2}, {"model": "other"}, {"prompt": "injected"}, {"stream": True}])
def test_parameters_outside_the_list_are_refused_by_name(model, parameters):
    """Including the ones that would replace the model, the prompt or the streaming mode."""
    (name,) = parameters
    with pytest.raises(InvalidInput) as error:
        model._completion_request(["a"], parameters, stream=False)
    assert str(error.value).startswith(f"unknown parameter(s) {name}; accepted: ")
    assert ", ".join(sorted(SAMPLING_PARAMETERS)) in str(error.value)


@pytest.mark.parametrize(("parameters", "message"), [
    ({"max_tokens": "many"}, "invalid parameters: max_tokens: Input should be a valid integer"),
    ({"temperature": "hot"}, "invalid parameters: temperature: Input should be a valid number"),
    ({"stop": 3}, "invalid parameters: stop."),
])
def test_parameters_of_the_wrong_type_are_invalid_input(model, parameters, message):
    with pytest.raises(InvalidInput) as error:
        model._completion_request(["a"], parameters, stream=False)
    assert str(error.value).startswith(message)


# --- the model over a stand-in engine -------------------------------------------------------------


class StandInCompletions:
    """vLLM's completion serving object, answering from a script."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list = []

    async def create_completion(self, request, raw_request):
        self.requests.append(request)
        return self.answer(request)


def with_engine(answer) -> tuple[AimModel, StandInCompletions]:
    model = engine_less_model()
    completions = StandInCompletions(answer)
    model.lifecycle.engine = SimpleNamespace(dead_reason=None, completions=completions,
                                        max_num_seqs=4)
    return model, completions


def choices(*texts: str):
    """A completion response whose choices arrive out of order."""
    return SimpleNamespace(choices=[SimpleNamespace(index=i, text=t, finish_reason="length")
                                    for i, t in reversed(list(enumerate(texts)))])


def test_v2_infer_answers_one_text_per_prompt_in_order():
    model, completions = with_engine(lambda request: choices(*(p.upper() for p in request.prompt)))
    payload = v2_request(InferInput("text_input", [2], "BYTES", ["ab", "cd"]),
                         parameters={"max_tokens": 2})
    response = asyncio.run(model.predict(payload))
    (output,) = response.outputs
    assert (output.name, output.datatype, output.shape, output.data) == (
        "text_output", "BYTES", [2], ["AB", "CD"])
    assert (response.model_name, response.id) == ("tiny", "r-1")
    (request,) = completions.requests
    assert (request.prompt, request.max_tokens, request.stream) == (["ab", "cd"], 2, False)


def test_v1_predict_answers_predictions():
    model, _ = with_engine(lambda request: choices("x", "y"))
    answer = asyncio.run(model.predict({"instances": ["a", {"text_input": "b"}]}))
    assert answer == {"predictions": ["x", "y"]}


def test_an_engine_error_response_is_raised_with_its_status():
    model, _ = with_engine(lambda request: engine_error("prompt too long", 400, "prompt"))
    with pytest.raises(EngineErrorResponse) as error:
        asyncio.run(model.generate({"text_input": "hi"}))
    assert error.value.status_code == 400 and str(error.value) == "prompt too long"


def test_generate_stream_turns_completion_chunks_into_generate_events():
    closed = []

    async def sse(request):
        try:
            for chunk in ({"choices": [{"index": 0, "text": "Hel", "finish_reason": None}]},
                          {"choices": [{"index": 0, "text": "lo", "finish_reason": "length"}]}):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            closed.append(True)

    model, completions = with_engine(sse)

    async def collect():
        return [event async for event in await model.generate_stream(
            {"text_input": "hi", "parameters": {"max_tokens": 2}})]

    events = asyncio.run(collect())
    assert [json.loads(event.removeprefix("data: ")) for event in events] == [
        {"model_name": "tiny", "model_version": "", "text_output": "Hel", "finish_reason": None},
        {"model_name": "tiny", "model_version": "", "text_output": "lo",
         "finish_reason": "length"}]
    assert all(event.endswith("\n\n") for event in events)
    assert completions.requests[0].stream is True and closed == [True]


def test_generate_stream_stops_at_an_error_chunk_and_closes_the_stream():
    closed = []

    async def sse(request):
        try:
            yield f"data: {json.dumps({'error': {'message': 'engine failed', 'code': 500}})}\n\n"
            yield f"data: {json.dumps({'choices': [{'text': 'never'}]})}\n\n"
        finally:
            closed.append(True)

    model, _ = with_engine(sse)

    async def collect():
        return [event async for event in await model.generate_stream({"text_input": "hi"})]

    assert asyncio.run(collect()) == ['data: {"error": "engine failed"}\n\n']
    assert closed == [True]


# --- errors in the protocol's shape -----------------------------------------------------------


class Typed(BaseModel):
    max_tokens: int


RAISED = {
    "invalid-input": lambda: InvalidInput("bad input"),
    "model-not-found": lambda: ModelNotFound("nope"),
    "model-not-ready": lambda: ModelNotReady("tiny"),
    "value-error": lambda: ValueError("bad value"),
    "type-error": lambda: TypeError("bad type"),
    "overflow": lambda: OverflowError("too big"),
    "vllm-validation": lambda: VLLMValidationError("bad temperature", parameter="temperature"),
    "vllm-not-found": lambda: VLLMNotFoundError("no such adapter"),
    "engine-error": lambda: EngineErrorResponse(engine_error("prompt too long", 400, "prompt")),
    "server-not-ready": lambda: ServerNotReady(),
}


def openai_error(message: str, err_type: str, code: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


# kind -> (status, OpenAI body, KServe body)
EXPECTED = {
    "invalid-input": (400, openai_error("bad input", "BadRequestError", 400),
                      {"error": "bad input"}),
    "model-not-found": (404, openai_error("The model `nope` does not exist.", "NotFoundError",
                                          404, "model"),
                        {"error": "Model with name nope does not exist."}),
    "model-not-ready": (503, openai_error("The model `tiny` is not ready yet.",
                                          "ServiceUnavailableError", 503),
                        {"error": "Model with name tiny is not ready."}),
    "value-error": (400, openai_error("bad value", "BadRequestError", 400),
                    {"error": "bad value"}),
    "type-error": (400, openai_error("bad type", "BadRequestError", 400), {"error": "bad type"}),
    "overflow": (400, openai_error("too big", "BadRequestError", 400), {"error": "too big"}),
    "vllm-validation": (400, openai_error("bad temperature (parameter=temperature)",
                                          "BadRequestError", 400, "temperature"),
                        {"error": "bad temperature (parameter=temperature)"}),
    "vllm-not-found": (404, openai_error("no such adapter", "NotFoundError", 404),
                       {"error": "no such adapter"}),
    "engine-error": (400, openai_error("prompt too long", "BadRequestError", 400, "prompt"),
                     {"error": "prompt too long"}),
}


@pytest.fixture(scope="module")
def http() -> TestClient:
    """An app with the server's error handlers and v2/model routes, over an engine-less model,
    plus routes that raise each handled exception under the OpenAI prefix and under /v2."""
    app = FastAPI()
    install_error_handlers(app)
    model = engine_less_model()
    add_generate_routes(app, model)

    async def raise_kind(kind: str) -> None:
        raise RAISED[kind]()

    async def typed(body: Typed) -> dict:
        return body.model_dump()

    for base in (f"{PREFIX}/v1", "/v2", f"{PREFIX}-like/v1"):
        app.add_api_route(base + "/raise/{kind}", raise_kind, methods=["POST"])
        app.add_api_route(base + "/typed", typed, methods=["POST"])
    app.mount(f"{PREFIX}/v1/models", OpenAIApplication(model))  # vLLM's, once loaded
    return TestClient(app)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_handled_errors_answer_in_the_openai_shape_under_the_openai_prefix(http, kind):
    status, openai_body, _ = EXPECTED[kind]
    response = http.post(f"{PREFIX}/v1/raise/{kind}")
    assert (response.status_code, response.json()) == (status, openai_body)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_handled_errors_answer_in_the_kserve_shape_elsewhere(http, kind):
    status, _, kserve_body = EXPECTED[kind]
    for base in ("/v2", f"{PREFIX}-like/v1"):  # only the prefix as a path segment is OpenAI's
        response = http.post(f"{base}/raise/{kind}")
        assert (response.status_code, response.json()) == (status, kserve_body), base


def test_server_not_ready_is_503_not_a_traceback(http):
    response = http.post("/v2/raise/server-not-ready")
    assert (response.status_code, response.json()) == (503, {"error": "Server is not ready."})


def test_request_validation_is_400_not_422(http):
    openai = http.post(f"{PREFIX}/v1/typed", json={"max_tokens": "many"})
    assert openai.status_code == 400
    error = openai.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "body.max_tokens",
                                                              400)
    assert error["message"].startswith("1 validation error(s): body.max_tokens: Input should be a "
                                       "valid integer")
    kserve = http.post("/v2/typed", json={"max_tokens": "many"})
    assert kserve.status_code == 400
    assert kserve.json()["error"].startswith("invalid request: body.max_tokens: Input should be "
                                             "a valid integer")
    assert set(kserve.json()) == {"error"}
    malformed = http.post(f"{PREFIX}/v1/typed", content=b'{"max_tokens": ',
                          headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == 400
    assert http.post("/v2/typed", json={"max_tokens": 3}).json() == {"max_tokens": 3}


def test_unknown_routes_and_methods_keep_the_shape(http):
    missing = http.get(f"{PREFIX}/v1/nowhere")
    assert (missing.status_code, missing.json()) == (
        404, openai_error("Not Found", "Not Found", 404))
    assert http.get("/v2/nowhere").json() == {"error": "Not Found"}
    wrong_method = http.get(f"{PREFIX}/v1/typed")
    assert (wrong_method.status_code, wrong_method.json()) == (
        405, openai_error("Method Not Allowed", "Method Not Allowed", 405))


# --- the model's routes before the engine is loaded -------------------------------------------


def test_generate_checks_the_request_before_readiness(http):
    """Bad requests are 400 even while the engine loads; good ones are 503 until it is ready."""
    url = "/v2/models/tiny/generate"
    not_json = http.post(url, content=b"{not json")
    assert not_json.status_code == 400
    assert not_json.json()["error"].startswith("request body is not valid JSON: ")
    unknown = http.post(url, json={"text_input": "hi", "parameters": {"beam_width": 2}})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("unknown parameter(s) beam_width")
    assert http.post(url, json={"text_input": ""}).status_code == 400
    other = http.post("/v2/models/other/generate", json={"text_input": "hi"})
    assert (other.status_code, other.json()) == (
        404, {"error": "Model with name other does not exist."})
    loading = http.post(url, json={"text_input": "hi", "parameters": {"max_tokens": 2}})
    assert (loading.status_code, loading.json()) == (
        503, {"error": "Model with name tiny is not ready."})
    stream = http.post("/v2/models/tiny/generate_stream", json={"text_input": "hi"})
    assert stream.status_code == 503


def test_the_openai_model_list_is_503_in_the_openai_shape_while_loading(http):
    response = http.get(f"{PREFIX}/v1/models")
    assert (response.status_code, response.json()) == (
        503, openai_error("The model `tiny` is not ready yet.", "ServiceUnavailableError", 503))


# --- the fast path to vLLM's application ---------------------------------------------------------


def fast_path_client(root_routes: bool) -> TestClient:
    """VllmFastPath over two small applications standing in for KServe's and vLLM's: each
    answers which one it is and the path its own router saw."""
    started: list[str] = []

    def application(name: str, paths: list[str]) -> FastAPI:
        app = FastAPI(on_startup=[lambda: started.append(name)])
        for path in paths:
            async def where(request: Request, path: str = path) -> dict:
                return {"app": name, "route": path, "root_path": request.scope["root_path"]}
            app.add_api_route(path, where, methods=["GET", "POST"])
        return app

    kserve = application("kserve", ["/v1/models/{name}:predict", "/v1/models/{name}", "/v2/x",
                                    "/tokenize", "/openai"])
    vllm = application("vllm", ["/v1/models", "/v1/completions", "/tokenize"])
    client = TestClient(VllmFastPath(kserve, vllm, root_routes))
    client.started = started  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(("root_routes", "path", "app", "route", "root_path"), [
    (False, f"{PREFIX}/v1/completions", "vllm", "/v1/completions", PREFIX),
    (False, f"{PREFIX}/v1/models", "vllm", "/v1/models", PREFIX),
    (False, "/v1/models/tiny", "kserve", "/v1/models/{name}", ""),
    (False, "/v2/x", "kserve", "/v2/x", ""),
    (False, PREFIX, "kserve", "/openai", ""),  # the prefix alone is no route of vLLM's
    (True, "/v1/completions", "vllm", "/v1/completions", ""),
    (True, "/v1/models", "vllm", "/v1/models", ""),
    (True, f"{PREFIX}/v1/completions", "vllm", "/v1/completions", PREFIX),
    (True, "/v1/models/tiny", "kserve", "/v1/models/{name}", ""),  # KServe's v1 protocol
    (True, "/v1/models/tiny:predict", "kserve", "/v1/models/{name}:predict", ""),
    (True, "/tokenize", "kserve", "/tokenize", ""),  # vLLM's through KServe's root mount
])
def test_the_fast_path_sends_vllm_routes_to_vllm_as_if_mounted(root_routes, path, app, route,
                                                                root_path):
    response = fast_path_client(root_routes).post(path)
    assert response.json() == {"app": app, "route": route, "root_path": root_path}


def test_the_fast_path_leaves_the_lifespan_to_kserve():
    client = fast_path_client(False)
    with client:
        assert client.started == ["kserve"]  # type: ignore[attr-defined]


# --- the event loop KServe's --event-loop names -----------------------------------------------


def _loop_module(event_loop: str) -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    event_loop_runner(event_loop)(main())
    return seen[0]


@pytest.mark.parametrize("event_loop", ["auto", "uvloop"])
def test_the_server_runs_on_uvloop_as_vllm_serve_does(event_loop):
    assert _loop_module(event_loop).startswith("uvloop")


def test_event_loop_asyncio_is_the_standard_loop():
    assert _loop_module("asyncio").startswith("asyncio")


def test_event_loop_uvloop_without_uvloop_is_an_error_and_auto_falls_back(monkeypatch):
    from aim_runtime.errors import AimError

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert _loop_module("auto").startswith("asyncio")
    with pytest.raises(AimError, match="--event-loop uvloop: uvloop is not installed"):
        event_loop_runner("uvloop")


def test_event_loop_is_kserves_flag_as_users_spell_it():
    from aim_runtime.cli.serve import serve_parser

    args, rest = serve_parser().parse_known_args(["--event-loop", "asyncio"])
    assert args.event_loop == "asyncio" and rest == []


@pytest.mark.parametrize(("body", "field"), [
    (b'{"stop": ["ok", "\\ud800"]}', "body.stop[1]"),
    (b'{"parameters": {"bad_words": ["\\uDFFF x"]}}', "body.parameters.bad_words[0]"),
    (b'{"\\ud800": 1}', "body"),  # a key
    (b'{"prompt": "\\ud83d\\ude00 a pair is one character"}', None),
    (b'{"prompt": "plain"}', None),
    (b'{not json \\ud800', None),  # the application answers malformed JSON itself
])
def test_the_gate_names_the_field_holding_a_lone_surrogate(body, field):
    assert lone_surrogate_field(body) == field


def test_header_limits_count_the_whole_request_head():
    """As h11 counts it: the request line (a long query counts) and each header line."""
    from aim_runtime.serving.header_limits import HeaderLimits, head_bytes

    scope = {"type": "http", "method": "GET", "path": "/v2/models/tiny", "raw_path":
             b"/v2/models/tiny", "query_string": b"q=" + b"x" * 998,
             "headers": [(b"host", b"a"), (b"x-y", b"zz")]}
    assert head_bytes(scope) == len(b"GET /v2/models/tiny?q=" + b"x" * 998 + b" HTTP/1.1\r\n") + \
        len(b"host: a\r\n") + len(b"x-y: zz\r\n")
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    asyncio.run(HeaderLimits(app, max_bytes=1000, max_count=8, root_routes=False)(
        scope, None, send))
    assert sent[0]["status"] == 431 and b"--h11-max-incomplete-event-size" in sent[1]["body"]
    sent.clear()
    asyncio.run(HeaderLimits(app, max_bytes=2000, max_count=8, root_routes=False)(
        scope, None, send))
    assert sent[0]["status"] == 200


@pytest.mark.parametrize(("header", "matches"), [
    (b"Bearer k2", True), ("Bearer k1", True), (b"bearer k1 ", True),  # gRPC metadata is str
    (b"Bearer k3", False), (b"Basic k1", False), (b"Bearer", False), (b"", False), (b"k1", False),
])
def test_one_bearer_check_for_http_and_grpc(header, matches):
    from aim_runtime.serving.protocol_errors import bearer_matches

    assert bearer_matches(header, [b"k1", b"k2"]) == matches
