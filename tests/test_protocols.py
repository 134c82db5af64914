"""Every protocol with the clients people use, in their default modes, against a real server with
an API key (the session's guarded server, tests/conftest.py): the KServe v2 protocol's reference
client (Triton's `tritonclient`) over HTTP (binary tensor data in and out, as it sends by
default, and JSON) and gRPC (raw input contents), the `openai` SDK (Responses API) and the
`anthropic` SDK (Messages); auth on both listeners; and vLLM's own paths at the root with
`--openai-root-routes`."""

from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servers import REPO, aim_server
from testkit import API_KEY as KEY

pytestmark = pytest.mark.serving



def auth() -> dict[str, str]:
    """A fresh header dict each call: tritonclient adds its own headers to the one it is given."""
    return {"authorization": f"Bearer {KEY}"}

PROMPTS = np.array([b"Hello there", b"Once upon a time"], dtype=np.object_)


def http_client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def v2_inputs(binary: bool = True) -> list:
    text = httpclient.InferInput("text_input", [len(PROMPTS)], "BYTES")
    text.set_data_from_numpy(PROMPTS, binary_data=binary)
    return [text]


# --- KServe v2 over HTTP: tritonclient's defaults ---------------------------------------------


@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary-in", "json-in"])
def test_v2_http_reference_client_infers_with_binary_outputs(guarded, binary_inputs):
    client = http_client(guarded)
    outputs = [httpclient.InferRequestedOutput("text_output")]  # binary_data=True: the default
    result = client.infer("tiny", v2_inputs(binary_inputs), outputs=outputs,
                          parameters={"max_tokens": 4, "temperature": 0}, headers=auth())
    texts = result.as_numpy("text_output")
    assert texts.shape == (2,) and all(isinstance(t, bytes) and t for t in texts)
    assert result.get_output("text_output")["parameters"]["binary_data_size"] > 0


def test_v2_http_reference_client_with_json_outputs(guarded):
    client = http_client(guarded)
    outputs = [httpclient.InferRequestedOutput("text_output", binary_data=False)]
    result = client.infer("tiny", v2_inputs(binary=False), outputs=outputs,
                          parameters={"max_tokens": 3}, headers=auth())
    assert len(result.get_output("text_output")["data"]) == 2


def test_v2_http_metadata_readiness_and_auth(guarded):
    client = http_client(guarded)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    metadata = client.get_model_metadata("tiny", headers=auth())
    assert metadata["inputs"][0]["name"] == "text_input"
    with pytest.raises(InferenceServerException) as refused:
        client.infer("tiny", v2_inputs(), parameters={"max_tokens": 2})
    assert refused.value.status() == "401"
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("tiny", v2_inputs(), parameters={"beam_width": 2},
                     headers=auth())
    assert unknown.value.status() == "400" and "beam_width" in unknown.value.message()


def test_v2_http_model_repository_is_not_served(guarded):
    response = httpx.post(guarded.url + "/v2/repository/models/tiny/unload", headers=auth())
    assert response.status_code == 404


# --- KServe v2 over gRPC (the client runs in its own process: tests/v2_grpc_client.py) ------


@pytest.fixture(scope="module")
def grpc_outcomes(guarded) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "tests" / "v2_grpc_client.py"),
                             f"127.0.0.1:{guarded.grpc_port}", KEY], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_v2_grpc_reference_client_infers_with_raw_contents(grpc_outcomes):
    texts = grpc_outcomes["infer"]["value"]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_v2_grpc_refuses_keyless_calls_but_answers_probes(grpc_outcomes):
    for probe in ("live", "ready", "model_ready"):
        assert grpc_outcomes[probe] == {"value": True}, probe
    for call in ("infer_keyless", "infer_wrong_key", "metadata_keyless",
                 "server_metadata_keyless"):
        assert grpc_outcomes[call]["status"] == "StatusCode.UNAUTHENTICATED", call
    assert grpc_outcomes["metadata"] == {"value": "text_input"}


def test_v2_grpc_errors_have_status_codes_and_the_repository_is_closed(grpc_outcomes):
    assert grpc_outcomes["invalid"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert grpc_outcomes["absent"]["status"] == "StatusCode.NOT_FOUND"
    assert grpc_outcomes["unload"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert grpc_outcomes["ready_after"] == {"value": True}  # and it keeps serving


# --- OpenAI and Anthropic SDKs ---------------------------------------------------------------


def test_openai_responses_api(guarded):
    client = openai.OpenAI(base_url=guarded.url + "/openai/v1", api_key=KEY, max_retries=0)
    response = client.responses.create(model="tiny", input="Hello", max_output_tokens=8)
    assert response.object == "response" and response.output
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/openai/v1", api_key="wrong",
                      max_retries=0).responses.create(model="tiny", input="x")


def test_anthropic_messages(guarded):
    client = anthropic.Anthropic(base_url=guarded.url + "/openai", api_key=KEY, max_retries=0,
                                 default_headers=auth())
    message = client.messages.create(model="tiny", max_tokens=8,
                                      messages=[{"role": "user", "content": "Hello"}])
    assert message.role == "assistant" and message.content
    with client.messages.stream(model="tiny", max_tokens=8,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join(stream.text_stream)
    assert stream.get_final_message().usage.output_tokens > 0 and isinstance(text, str)


# --- vllm serve's paths at the root ------------------------------------------------------------


def test_root_routes_serve_clients_written_for_vllm_serve(guarded):
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert completion.choices[0].message.role == "assistant"
    models = httpx.get(guarded.url + "/v1/models", headers=auth()).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"  # OpenAI's shape
    tokens = httpx.post(guarded.url + "/tokenize", headers=auth(),
                        json={"model": "tiny", "prompt": "Hello"}).json()
    assert tokens["count"] > 0
    assert httpx.get(guarded.url + "/health").status_code == 200  # open, for probes
    # KServe's v1 predict route is still there, next to OpenAI's /v1/models.
    predict = httpx.post(guarded.url + "/v1/models/tiny:predict", headers=auth(),
                         json={"instances": ["Hello"], "parameters": {"max_tokens": 2}})
    assert predict.status_code == 200 and len(predict.json()["predictions"]) == 1
    refused = httpx.post(guarded.url + "/v1/chat/completions", json={"model": "tiny"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "AuthenticationError"


# --- a pooling model: vLLM's pooling routes -------------------------------------------------------


@pytest.fixture(scope="module")
def pooled(work_dir, tiny_model):
    """The tiny model served as an embedding model (vLLM's --runner pooling --convert embed)."""
    process = aim_server(work_dir, tiny_model, "--runner", "pooling", "--convert", "embed",
                         name="tiny").start()
    try:
        yield process.wait_ready()
    finally:
        process.dismiss()


def test_pooling_models_serve_embeddings_score_and_pooling(pooled):
    client = openai.OpenAI(base_url=pooled.url + "/openai/v1", api_key="unused", max_retries=0)
    embedded = client.embeddings.create(model="tiny", input=["Hello", "there"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 64
    score = httpx.post(pooled.url + "/openai/v1/score",
                       json={"model": "tiny", "text_1": "a cat", "text_2": "a dog"}).json()
    assert isinstance(score["data"][0]["score"], float)
    pooling = httpx.post(pooled.url + "/openai/pooling", json={"model": "tiny", "input": "x"})
    assert pooling.status_code == 200 and pooling.json()["data"][0]["object"] == "pooling"


def test_pooling_models_refuse_text_generation_clearly(pooled):
    completion = httpx.post(pooled.url + "/openai/v1/completions",
                            json={"model": "tiny", "prompt": "x"})
    assert completion.status_code == 404  # as `vllm serve` answers: no such route
    generate = httpx.post(pooled.url + "/v2/models/tiny/generate", json={"text_input": "hi"})
    assert generate.status_code == 400
    assert "pooling model" in generate.json()["error"]


def test_v2_grpc_typed_contents_and_parameters(guarded):
    """`contents` (typed, not raw) and typed InferParameters, as the protocol's own messages
    (KServe's generated ones; Triton's client always sends raw contents)."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    request = pb.ModelInferRequest(
        model_name="tiny", id="typed-1",
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text_input", datatype="BYTES", shape=[2],
            contents=pb.InferTensorContents(bytes_contents=[b"Hello", b"Once upon"]))],
        parameters={"max_tokens": pb.InferParameter(int64_param=3),
                    "seed": pb.InferParameter(int64_param=7)})
    with grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=[("authorization", f"Bearer {KEY}")],
                                   timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=60)
    assert response.id == "typed-1"
    (output,) = response.outputs
    assert output.name == "text_output" and output.datatype == "BYTES"
    # Typed contents in, typed contents out (raw output contents answer raw inputs).
    assert len(output.contents.bytes_contents) == 2 and not response.raw_output_contents
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("parameters", "prompt"), [
    ({"max_tokens": -1}, b"Hello"),
    ({"max_tokens": 2**62}, b"Hello"),
    ({"max_tokens": 2}, b"word " * 40_000),  # 200k characters: longer than the context
], ids=["negative max_tokens", "absurd max_tokens", "prompt past the context"])
def test_v2_grpc_bad_requests_are_invalid_argument_not_internal(guarded, parameters, prompt):
    """What HTTP answers 400 is INVALID_ARGUMENT over gRPC, naming the problem; the server
    keeps serving."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    def request(text: bytes, **values: int) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(
            model_name="tiny", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="text_input", datatype="BYTES", shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[text]))],
            parameters={k: pb.InferParameter(int64_param=v) for k, v in values.items()})

    metadata = [("authorization", f"Bearer {KEY}")]
    with grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request(prompt, **parameters), metadata=metadata, timeout=60)
        still = stub.ModelInfer(request(b"Hello", max_tokens=2), metadata=metadata, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details() and refused.value.details() != "Internal server error"
    assert still.outputs[0].name == "text_output"
