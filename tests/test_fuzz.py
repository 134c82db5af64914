"""Property-based fuzzing of every inference route with generated bodies (wrong types, huge
numbers, unicode, deep nesting, huge strings, missing fields, raw bytes): the answer is never a
5xx (overload's documented 503 aside) and the server stays healthy. Over gRPC, generated
ModelInfer messages (bad names, datatypes, shapes, contents, raw contents and parameters) never
end INTERNAL or UNKNOWN. One shared server, `bounded` (tests/conftest.py), seeded runs."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BOUNDED_MAX_BODY

pytestmark = pytest.mark.serving

EXAMPLES_PER_ROUTE = 270  # 6 routes: with gRPC's 400, over 2,000 seeded examples

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
small_ints = st.integers(min_value=-5, max_value=16)
prompts = (st.text(max_size=200) | st.lists(st.text(max_size=30), max_size=3)
           | st.lists(st.integers(min_value=-10, max_value=5000), max_size=20)
           | st.lists(st.lists(st.integers(0, 5000), max_size=5), max_size=3))
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"]) | json_values,
     "content": st.text(max_size=100) | json_values}), max_size=3) | json_values
plausible = {  # values vLLM accepts: near-valid bodies should mostly be served
    "max_tokens": st.integers(3, 16), "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1), "top_k": st.sampled_from([-1, 1, 5, 50]),
    "n": st.integers(1, 3), "seed": st.integers(0, 2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "logprobs": st.integers(0, 5), "ignore_eos": st.booleans(), "min_tokens": st.integers(0, 2),
}
valid_prompts = (st.text(min_size=1, max_size=200)
                 | st.lists(st.integers(0, 4000), min_size=1, max_size=20))
sampling = {
    "max_tokens": small_ints | json_values, "temperature": st.floats(-1, 3) | json_values,
    "top_p": st.floats(-1, 2) | json_values, "top_k": small_ints | json_values,
    "n": st.integers(-2, 3) | json_values, "seed": st.integers(-2**65, 2**65) | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3) | json_values,
    "presence_penalty": st.floats(-3, 3) | json_values, "logprobs": small_ints | json_values,
    "ignore_eos": st.booleans() | json_values, "min_tokens": small_ints | json_values,
    "frequency_penalty": st.floats(-3, 3) | json_values,
}


def bodies(fields: dict, required: dict, sampling_fields: dict | None = None
           ) -> st.SearchStrategy:
    """Near-valid bodies (the required fields right, sampling plausible), bodies with any subset
    of the route's fields holding plausible or junk values, junk JSON, raw bytes, deep nesting,
    and huge strings."""
    near_valid = st.fixed_dictionaries(required, optional=sampling_fields or plausible)
    structured = st.fixed_dictionaries({}, optional={**fields, "junk": json_values})
    deep = st.integers(1, 3000).map(lambda d: b'{"prompt": ' + b"[" * d + b"]" * d + b"}")
    huge = st.integers(1, 2 * BOUNDED_MAX_BODY).map(lambda n: json.dumps({"text_input": "a" * n,
                                                                 "prompt": "a" * n}).encode())
    return st.one_of(near_valid, near_valid, structured, structured, json_values,
                     st.binary(max_size=300), deep, huge)


OPENAI_COMPLETION = {"model": st.just("tiny") | json_values, "prompt": prompts | json_values,
                     "stream": st.booleans() | json_values, "echo": st.booleans() | json_values,
                     "logit_bias": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
                     **sampling}
OPENAI_CHAT = {"model": st.just("tiny") | json_values, "messages": messages,
               "stream": st.booleans() | json_values,
               "tools": json_values, "response_format": json_values,
               "top_logprobs": small_ints | json_values, **sampling}
V2_INFER = {"inputs": st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["text_input", "x"]) | json_values,
     "datatype": st.sampled_from(["BYTES", "FP32", "INT64"]) | json_values,
     "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
     "data": st.lists(st.text(max_size=50), max_size=3) | json_values}), max_size=2) | json_values,
    "parameters": st.fixed_dictionaries({}, optional=sampling) | json_values,
    "id": st.text(max_size=10) | json_values}
GENERATE = {"text_input": st.text(max_size=200) | json_values,
            "parameters": st.fixed_dictionaries({}, optional=sampling) | json_values,
            **sampling}
V1_PREDICT = {"instances": st.lists(st.text(max_size=50) | json_values, max_size=3) | json_values,
              "parameters": st.fixed_dictionaries({}, optional=sampling) | json_values}

user_messages = st.lists(st.fixed_dictionaries(
    {"role": st.just("user"), "content": st.text(min_size=1, max_size=100)}), min_size=1,
    max_size=3)
# v2 routes return one text per prompt: no `n` (the runtime refuses it by name).
plausible_v2 = {k: v for k, v in plausible.items() if k != "n"}
text_tensor = st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=3).map(
    lambda data: [{"name": "text_input", "datatype": "BYTES", "shape": [len(data)],
                   "data": data}])
ROUTES = {  # route: (every field, plausible or junk; the fields a valid body needs)
    "/openai/v1/completions": (OPENAI_COMPLETION, {"model": st.just("tiny"),
                                                   "prompt": valid_prompts}),
    "/openai/v1/chat/completions": (OPENAI_CHAT, {"model": st.just("tiny"),
                                                  "messages": user_messages}),
    "/v2/models/tiny/infer": (V2_INFER, {"inputs": text_tensor}, plausible_v2),
    "/v2/models/tiny/generate": (GENERATE, {"text_input": st.text(min_size=1, max_size=200)},
                                 plausible_v2),
    "/v2/models/tiny/generate_stream": (GENERATE,
                                        {"text_input": st.text(min_size=1, max_size=200)},
                                        plausible_v2),
    "/v1/models/tiny:predict": (V1_PREDICT, {"instances": st.lists(
        st.text(min_size=1, max_size=50), min_size=1, max_size=3)}, plausible_v2),
}


@pytest.mark.parametrize("path", list(ROUTES))
def test_fuzzed_bodies_never_get_a_server_error(bounded, path):
    statuses: Counter = Counter()
    with httpx.Client(base_url=bounded.url, timeout=120) as client:

        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        @given(body=bodies(*ROUTES[path]))
        def post(body):
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = client.post(path, content=content,
                                   headers={"content-type": "application/json"})
            statuses[response.status_code] += 1
            overload = response.status_code == 503 and "server busy" in response.text
            assert response.status_code < 500 or overload, (
                response.status_code, response.text[:400], content[:300])

        post()
        assert sum(statuses.values()) >= EXAMPLES_PER_ROUTE
        assert statuses[200] >= EXAMPLES_PER_ROUTE // 10  # the happy path was exercised too
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        sane = client.post("/openai/v1/completions",
                           json={"model": "tiny", "prompt": "still fine?", "max_tokens": 3})
        assert sane.status_code == 200, sane.text


# --- gRPC v2: generated ModelInfer messages ------------------------------------------------------

GRPC_EXAMPLES = 400
GRPC_FAULTS = {"StatusCode.INTERNAL", "StatusCode.UNKNOWN", "StatusCode.DEADLINE_EXCEEDED"}


def grpc_strategies() -> st.SearchStrategy:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    int64s = st.integers(-2**63, 2**63 - 1)
    parameter = st.one_of(st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
                          st.builds(lambda v: pb.InferParameter(int64_param=v),
                                    st.integers(-5, 16) | int64s),
                          st.builds(lambda v: pb.InferParameter(string_param=v),
                                    st.text(max_size=20)))
    parameters = st.dictionaries(st.sampled_from([*plausible, "junk", ""]) | st.text(max_size=8),
                                 parameter, max_size=4)
    contents = st.builds(
        lambda texts, ints, floats: pb.InferTensorContents(
            bytes_contents=texts, int64_contents=ints, fp32_contents=floats),
        st.lists(st.binary(max_size=60) | st.text(max_size=60).map(str.encode), max_size=3),
        st.lists(int64s, max_size=2), st.lists(st.floats(width=32), max_size=2))
    tensor = st.builds(
        lambda name, datatype, shape, body: pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=shape, contents=body),
        st.sampled_from(["text_input", "x", ""]) | st.text(max_size=6),
        st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", ""]) | st.text(max_size=6),
        st.lists(st.integers(-2, 4) | int64s, max_size=3), contents)
    junk = st.builds(
        lambda name, inputs, raw, params: pb.ModelInferRequest(
            model_name=name, inputs=inputs, raw_input_contents=raw, parameters=params),
        st.sampled_from(["tiny", "tiny", "absent", ""]), st.lists(tensor, max_size=2),
        st.lists(st.binary(max_size=40), max_size=2), parameters)
    # Near-valid: a right text tensor, parameters plausible (the happy path is reached too).
    near_valid = st.builds(
        lambda texts, tokens, params: pb.ModelInferRequest(
            model_name="tiny", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="text_input", datatype="BYTES", shape=[len(texts)],
                contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]))],
            parameters={"max_tokens": pb.InferParameter(int64_param=tokens), **params}),
        st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=3), st.integers(1, 8),
        parameters)
    return st.one_of(near_valid, junk)


def test_fuzzed_grpc_messages_never_get_an_internal_error(bounded):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    statuses: Counter = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{bounded.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)

        @settings(max_examples=GRPC_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(request=grpc_strategies())
        def infer(request):
            try:
                stub.ModelInfer(request, timeout=120)
                statuses["OK"] += 1
            except grpc.RpcError as error:
                statuses[str(error.code())] += 1
                assert str(error.code()) not in GRPC_FAULTS, (error.code(), error.details(),
                                                              str(request)[:300])

        infer()
        assert sum(statuses.values()) >= GRPC_EXAMPLES
        assert statuses["OK"] >= GRPC_EXAMPLES // 20, statuses  # the happy path was reached
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


# --- Schemathesis: every operation of both OpenAPI documents the server publishes ----------------

# (document, where its paths are mounted): KServe's application, vLLM's under KServe's prefix.
OPENAPI_DOCUMENTS = [("/openapi.json", ""), ("/openai/openapi.json", "/openai")]
SCHEMATHESIS_EXAMPLES = 12  # per operation


@pytest.mark.parametrize(("document", "mount"), OPENAPI_DOCUMENTS, ids=["kserve", "vllm"])
def test_schemathesis_finds_no_server_error_in_the_published_operations(bounded, document,
                                                                          mount):
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import Failure, FailureGroup

    schema = schemathesis.openapi.from_url(bounded.url + document, timeout=30)
    schema.config.update(base_url=bounded.url + mount)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:

        @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call(timeout=120)
            if mount and response.status_code == 501 and "NotImplementedError" in response.text:
                return  # vLLM's own answer for what this model lacks, as under `vllm serve`
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except (Failure, FailureGroup) as failure:  # collected, not shrunk
                failures.append(f"{case.operation.label}: {str(failure)[:600]}")

        call()
    assert not failures, "\n".join(failures)
    assert httpx.get(bounded.url + "/v2/health/ready", timeout=10).status_code == 200
