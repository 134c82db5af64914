"""The same requests to the bare vLLM OpenAI server and to ours, on the same model with the same
engine arguments (the plan's): status codes and response shapes (field names and JSON types) must
agree, with no exception (docs/serving.md, "Compatibility with vllm serve": differences found,
none)."""

from __future__ import annotations

import json

import httpx
import pytest

from aim_runtime import pipeline
from aim_runtime.planner.catalog import engine_args_to_argv
from servers import bare_vllm_server

pytestmark = pytest.mark.serving

MESSAGES = [{"role": "user", "content": "Hello there"}]
CASES = {
    "completion": {"model": "tiny", "prompt": "Once upon", "max_tokens": 4, "temperature": 0,
                   "logprobs": 1},
    "completion, n=2 with echo": {"model": "tiny", "prompt": "Once upon", "max_tokens": 3,
                                  "n": 2, "echo": True, "seed": 3},
    "completion stream": {"model": "tiny", "prompt": "Once upon", "max_tokens": 4,
                          "stream": True, "stream_options": {"include_usage": True}},
    "chat": {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "logprobs": True,
             "top_logprobs": 1},
    "chat stream": {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}},
    "unknown model": {"model": "nope", "prompt": "x"},
    "prompt too long": {"model": "tiny", "prompt": "hello " * 3000, "max_tokens": 4},
    "negative max_tokens": {"model": "tiny", "prompt": "x", "max_tokens": -1},
    "wrong type": {"model": "tiny", "prompt": "x", "max_tokens": "many"},
    "empty messages": {"model": "tiny", "messages": []},
    "malformed JSON": b'{"model": "tiny", "prompt": ',
}


@pytest.fixture(scope="module")
def bare_vllm(work_dir, tiny_model):
    plan = pipeline.run(pipeline.PlanRequest(model=tiny_model)).plan
    process = bare_vllm_server(work_dir, tiny_model, engine_args_to_argv(plan.engine_args))
    process.start()
    try:
        yield process.wait_ready()
    finally:
        process.dismiss()


def shape(value):
    """JSON value -> its structure: dict keys with shapes, first list element, type names."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def differences(ours, theirs, path="") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{path}.{k}: only in vllm serve" for k in theirs.keys() - ours.keys()]
        found += [f"{path}.{k}: only in aim-runtime" for k in ours.keys() - theirs.keys()]
        for key in ours.keys() & theirs.keys():
            found += differences(ours[key], theirs[key], f"{path}.{key}")
        return found
    if isinstance(ours, list) and isinstance(theirs, list):
        if ours and theirs:
            return differences(ours[0], theirs[0], path + "[]")
        return []
    return [] if ours == theirs else [f"{path}: {ours} here, {theirs} in vllm serve"]


def call(base: str, path: str, body) -> tuple[int, object]:
    with httpx.Client(timeout=120) as client:
        if isinstance(body, bytes):
            response = client.post(base + path, content=body,
                                   headers={"content-type": "application/json"})
            return response.status_code, shape(response.json())
        if not body.get("stream"):
            response = client.post(base + path, json=body)
            return response.status_code, shape(response.json())
        with client.stream("POST", base + path, json=body) as response:
            lines = list(response.iter_lines())
        events = [json.loads(line[6:]) for line in lines
                  if line.startswith("data: ") and line != "data: [DONE]"]
        # The SSE framing (which fields each event has, in order, and how the stream ends), then
        # the first event, a middle one and the last one.
        framing = [line.split(":", 1)[0] for line in lines[:8]], lines[-1] if lines else None
        if lines and lines[-1].startswith("data: ") and lines[-1] != "data: [DONE]":
            framing = framing[0], "data: <json>"
        return response.status_code, {"framing": framing, "first": shape(events[0]),
                                      "middle": shape(events[1]), "last": shape(events[-1])}


# Every other route both serve: (path under our /openai, same path on `vllm serve`, body).
ROUTE_CASES = {
    "responses": ("/v1/responses", {"model": "tiny", "input": "Hello", "max_output_tokens": 8}),
    "responses stream": ("/v1/responses", {"model": "tiny", "input": "Hello",
                                           "max_output_tokens": 8, "stream": True}),
    "responses without input": ("/v1/responses", {"model": "tiny"}),
    "anthropic messages": ("/v1/messages", {"model": "tiny", "max_tokens": 8,
                                            "messages": MESSAGES}),
    "anthropic messages stream": ("/v1/messages", {"model": "tiny", "max_tokens": 8,
                                                   "messages": MESSAGES, "stream": True}),
    "anthropic messages without max_tokens": ("/v1/messages", {"model": "tiny",
                                                               "messages": MESSAGES}),
    "tokenize": ("/tokenize", {"model": "tiny", "prompt": "Hello there"}),
    "tokenize chat": ("/tokenize", {"model": "tiny", "messages": MESSAGES}),
    "detokenize": ("/detokenize", {"model": "tiny", "tokens": [5, 6, 7]}),
    "detokenize bad tokens": ("/detokenize", {"model": "tiny", "tokens": "five"}),
}


@pytest.mark.parametrize("case", list(ROUTE_CASES))
def test_every_route_both_serve_answers_alike(server, bare_vllm, case):
    path, body = ROUTE_CASES[case]
    our_status, ours = call(server.url + "/openai", path, body)
    their_status, theirs = call(bare_vllm.url, path, body)
    assert our_status == their_status
    assert differences(ours, theirs) == []


@pytest.mark.parametrize("case", list(CASES))
def test_same_status_and_shape_as_vllm_serve(server, bare_vllm, case):
    body = CASES[case]
    route = "/chat/completions" if isinstance(body, dict) and "messages" in body \
        else "/completions"
    our_status, ours = call(server.url + "/openai/v1", route, body)
    their_status, theirs = call(bare_vllm.url + "/v1", route, body)
    assert our_status == their_status
    assert differences(ours, theirs) == []


def test_models_listing_has_the_same_shape(server, bare_vllm):
    ours = httpx.get(server.url + "/openai/v1/models").json()
    theirs = httpx.get(bare_vllm.url + "/v1/models").json()
    assert differences(shape(ours), shape(theirs)) == []
    assert ours["data"][0]["max_model_len"] == theirs["data"][0]["max_model_len"]
