"""The real server (KServe ModelServer + vLLM CPU engine + the generated model), driven with the
`openai` client and httpx: OpenAI and KServe v2 routes, health, metrics, and bad input."""

from __future__ import annotations

import json
import struct

import httpx
import openai
import pytest

pytestmark = pytest.mark.serving

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "user", "content": "Say something."}]
# strict: the arguments follow the schema (OpenAI's semantics; vLLM constrains decoding to it).
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}}}}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


# --- health --------------------------------------------------------------------------------------


def test_readiness_was_503_while_loading_and_liveness_200(server, http):
    ready = [status for _, path, status in server.probes if path == "/v2/health/ready"]
    live = [status for _, path, status in server.probes if path == "/v2/health/live"]
    assert 503 in ready, "readiness never reported the engine as loading"
    assert ready[-1] == 200 and ready.index(200) > ready.index(503)
    assert all(status == 200 for status in live if status is not None)
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}


# --- OpenAI: completions -------------------------------------------------------------------------


def test_completion(client):
    completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5,
                                           extra_body={"ignore_eos": True})
    choice = completion.choices[0]
    assert isinstance(choice.text, str) and choice.text
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5


def test_completion_stream_with_usage(client):
    stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) >= 2 and "".join(texts)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_greater_than_one(client):
    completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, n=3,
                                           temperature=1.0, seed=7)
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]


def test_stop_string_cuts_the_output(client):
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                       temperature=0, extra_body={"ignore_eos": True})
    text = greedy.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), f"greedy output too short to pick a stop string from: {text!r}"
    stopped = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                        temperature=0, stop=[stop],
                                        extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(stop)]


def test_seed_makes_sampling_reproducible(client):
    def sample(seed):
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10,
                                         temperature=1.0, seed=seed,
                                         extra_body={"ignore_eos": True}).choices[0].text

    assert sample(1234) == sample(1234)
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1


def test_logprobs_and_echo(client):
    completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3,
                                           logprobs=2, echo=True,
                                           extra_body={"ignore_eos": True})
    choice = completion.choices[0]
    assert choice.text.startswith(PROMPT)
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs)
    assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs[1:])


def test_penalties_and_top_k_are_accepted(client):
    completion = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=4, presence_penalty=0.5, frequency_penalty=0.5,
        top_p=0.9, extra_body={"top_k": 5, "min_tokens": 2})
    assert completion.usage.completion_tokens >= 2


def test_structured_output_choice(client):
    completion = client.completions.create(
        model="tiny", prompt="Answer:", max_tokens=5,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert completion.choices[0].text in ("yes", "no")


# --- OpenAI: chat --------------------------------------------------------------------------------


def test_chat(client):
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage.completion_tokens <= 5


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    assert chunks[-1].usage.completion_tokens == 5


def test_chat_logprobs(client):
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3,
                                          logprobs=True, top_logprobs=2)
    entries = chat.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)


def test_chat_json_schema_response_format(client):
    schema = {"type": "object", "required": ["a"],
              "properties": {"a": {"type": "integer", "enum": [1, 2, 3]}}}
    chat = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert json.loads(chat.choices[0].message.content)["a"] in (1, 2, 3)


def whitespace_token_ids(model_dir) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return [i for i in range(tokenizer.get_vocab_size())
            if not tokenizer.decode([i], skip_special_tokens=False).strip()]


def test_tools_are_rendered_and_a_named_tool_call_is_returned(client, tiny_model):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)
    with_tools = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                                tools=[WEATHER_TOOL], tool_choice="none")
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens  # the template lists tools
    # Random weights favour whitespace, which a tool-call grammar allows without limit; the
    # logit bias (itself an API feature under test) keeps the call short.
    no_whitespace = {str(i): -100 for i in whitespace_token_ids(tiny_model)}
    forced = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=100, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        logit_bias=no_whitespace)
    call = forced.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")


def test_models_listing(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].max_model_len == 2048


# --- KServe v2 -----------------------------------------------------------------------------------


def test_v2_infer_batch_of_two(http):
    body = {"id": "req-1", "inputs": [{"name": "text_input", "shape": [2], "datatype": "BYTES",
                                       "data": ["first prompt", "second prompt"]}],
            "parameters": {"max_tokens": 4, "temperature": 0, "ignore_eos": True}}
    response = http.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "req-1" and result["model_name"] == "tiny"
    (output,) = result["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("text_output", "BYTES", [2])
    assert len(output["data"]) == 2 and all(isinstance(t, str) and t for t in output["data"])


def test_v2_infer_without_request_id_gets_one(http):
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                        "data": ["hello"]}], "parameters": {"max_tokens": 2}}
    response = http.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["id"]) == 32


def test_v1_predict(http):
    response = http.post("/v1/models/tiny:predict",
                         json={"instances": ["a prompt", {"text_input": "another"}],
                               "parameters": {"max_tokens": 3, "ignore_eos": True}})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, str) and p for p in predictions)
    bad = http.post("/v1/models/tiny:predict", json={"instances": []})
    assert bad.status_code == 400 and "instances" in bad.json()["error"]


def test_v2_model_metadata(http):
    metadata = http.get("/v2/models/tiny").json()
    assert metadata["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][0]["name"] == "text_output"


def test_v2_generate(http):
    response = http.post("/v2/models/tiny/generate",
                         json={"text_input": PROMPT, "parameters": {"max_tokens": 4,
                                                                    "ignore_eos": True}})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model_name"] == "tiny" and result["text_output"]
    assert result["finish_reason"] == "length"


def test_v2_generate_stream(http):
    with http.stream("POST", "/v2/models/tiny/generate_stream",
                     json={"text_input": PROMPT, "max_tokens": 5, "ignore_eos": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in stream.iter_lines()
                  if line.startswith("data: ")]
    assert len(events) == 5
    assert all(e["model_name"] == "tiny" and "text_output" in e for e in events)
    assert events[-1]["finish_reason"] == "length"


# --- metrics and headers -------------------------------------------------------------------------


def test_metrics_have_vllm_and_aim_series(http, client):
    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    text = http.get("/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:generation_tokens_total", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds", "aim_startup_phase_seconds",
                 "aim_plan_candidates_refused", "aim_engine_alive 1.0"):
        assert name in text, name
    info = next(line for line in text.splitlines() if line.startswith("aim_plan_info{"))
    for label in ('recipe="aim-tiny-random-cpu"', 'source="curated"', 'product="CPU"',
                  'devices="1"', 'tp="1"', 'pp="1"', 'dp="1"', 'dtype="float32"',
                  'quantization="none"', 'kv_cache_dtype="auto"'):
        assert label in info
    for phase in ("import", "detect", "inspect", "plan", "engine", "engine_load_weights",
                  "engine_init"):  # the last two: vLLM's own lines, from its engine process
        assert f'aim_startup_phase_seconds{{phase="{phase}"}}' in text, phase
    planned = [line for line in text.splitlines()
               if line.startswith("aim_kv_cache_capacity_tokens")]
    assert len(planned) == 2  # planned and what vLLM actually allocated


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/health/ready"), ("GET", "/metrics"), ("GET", "/openai/v1/models"),
    ("POST", "/openai/v1/completions"), ("POST", "/v2/models/tiny/infer"),
    ("POST", "/v2/models/nope/generate"),
])
def test_every_response_names_the_recipe(http, method, path):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1} if "completions" in path else {}
    response = http.request(method, path, json=body if method == "POST" else None)
    assert response.headers["x-aim-recipe"] == "aim-tiny-random-cpu"


# --- bad input: a 4xx in the protocol's shape, then the server still serves ----------------------

LONG_PROMPT = "hello " * 3000  # > 2048 tokens
OPENAI, KSERVE = "openai", "kserve"
BAD_REQUESTS = [
    ("malformed JSON", "/openai/v1/completions", b'{"model": "tiny", "prompt": ', 400, OPENAI),
    ("malformed JSON (chat)", "/openai/v1/chat/completions", b"{", 400, OPENAI),
    ("malformed JSON (v2)", "/v2/models/tiny/infer", b'{"inputs": [', 400, KSERVE),
    ("malformed JSON (generate)", "/v2/models/tiny/generate", b"{", 400, KSERVE),
    ("wrong type", "/openai/v1/completions",
     {"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400, OPENAI),
    ("wrong type (chat)", "/openai/v1/chat/completions",
     {"model": "tiny", "messages": "hello"}, 400, OPENAI),
    ("wrong type (v2)", "/v2/models/tiny/infer", {"inputs": "text"}, 400, KSERVE),
    ("wrong datatype (v2)", "/v2/models/tiny/infer",
     {"inputs": [{"name": "text_input", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
     400, KSERVE),
    ("missing text_input (v2)", "/v2/models/tiny/infer",
     {"inputs": [{"name": "other", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
     400, KSERVE),
    ("unknown parameter (generate)", "/v2/models/tiny/generate",
     {"text_input": "x", "parameters": {"temprature": 1}}, 400, KSERVE),
    ("unknown model", "/openai/v1/completions", {"model": "nope", "prompt": "x"}, 404, OPENAI),
    ("unknown model (chat)", "/openai/v1/chat/completions",
     {"model": "nope", "messages": MESSAGES}, 404, OPENAI),
    ("unknown model (v2)", "/v2/models/nope/infer",
     {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
     404, KSERVE),
    ("unknown model (generate)", "/v2/models/nope/generate", {"text_input": "x"}, 404, KSERVE),
    ("prompt longer than max_model_len", "/openai/v1/completions",
     {"model": "tiny", "prompt": LONG_PROMPT, "max_tokens": 5}, 400, OPENAI),
    ("prompt longer than max_model_len (chat)", "/openai/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": LONG_PROMPT}]}, 400, OPENAI),
    ("prompt longer than max_model_len (v2)", "/v2/models/tiny/infer",
     {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                  "data": [LONG_PROMPT]}]}, 400, KSERVE),
    ("prompt longer than max_model_len (generate)", "/v2/models/tiny/generate_stream",
     {"text_input": LONG_PROMPT}, 400, KSERVE),
    ("negative max_tokens", "/openai/v1/completions",
     {"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, OPENAI),
    ("absurd max_tokens", "/openai/v1/completions",
     {"model": "tiny", "prompt": "x", "max_tokens": 10**12}, 400, OPENAI),
    ("absurd max_tokens (chat)", "/openai/v1/chat/completions",
     {"model": "tiny", "messages": MESSAGES, "max_tokens": 10**9}, 400, OPENAI),
    ("negative max_tokens (v2)", "/v2/models/tiny/generate",
     {"text_input": "x", "parameters": {"max_tokens": -5}}, 400, KSERVE),
    ("empty messages", "/openai/v1/chat/completions",
     {"model": "tiny", "messages": []}, 400, OPENAI),
    ("missing prompt", "/openai/v1/completions", {"model": "tiny"}, 400, OPENAI),
    # A lone UTF-16 surrogate is a valid JSON escape but no string vLLM can encode.
    ("lone surrogate in stop", "/openai/v1/completions",
     b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "stop": ["\\ud800"]}', 400, OPENAI),
    ("lone surrogate in bad_words", "/openai/v1/completions",
     b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "bad_words": ["\\ud800"]}', 400,
     OPENAI),
    ("lone surrogate in stop (chat)", "/openai/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, '
     b'"stop": ["\\ud800"]}', 400, OPENAI),
    ("lone surrogate in stop (generate)", "/v2/models/tiny/generate",
     b'{"text_input": "x", "parameters": {"max_tokens": 2, "stop": ["\\ud800"]}}', 400,
     KSERVE),
]


@pytest.mark.parametrize(("case", "path", "body", "status", "shape"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_in_the_protocols_shape(http, client, case, path, body, status,
                                                     shape):
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if shape == OPENAI:
        assert set(error) >= {"message", "type", "param", "code"}
        assert error["code"] == status and isinstance(error["message"], str)
    else:
        assert isinstance(error, str) and error
    still = client.completions.create(model="tiny", prompt="still there?", max_tokens=2)
    assert still.choices[0].text is not None


def test_access_log_names_each_request_with_status_and_recipe(server, http):
    http.post("/openai/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    http.post("/openai/v1/completions", json={"model": "absent", "prompt": "x"})
    lines = [line for line in server.log_path.read_text().splitlines()
             if line.startswith("access ")]
    recipe = http.get("/v2/health/live").headers["x-aim-recipe"]
    assert '"POST /openai/v1/completions HTTP/1.1" 200' in "\n".join(lines)
    assert any('"POST /openai/v1/completions HTTP/1.1" 404' in line
               and line.endswith(f"recipe={recipe}") for line in lines)


def test_openai_client_raises_its_own_error_types(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="tiny", prompt=LONG_PROMPT, max_tokens=5)
    assert "maximum context length" in str(error.value)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v2/models/tiny?model_version=7", 404),
    ("GET", "/v2/models/tiny/ready?model_version=7", 404),  # KServe answered these 501
    ("POST", "/v2/models/tiny/infer?model_version=7", 404),
    ("GET", "/v2/models/tiny/versions/7", 404),
    ("GET", "/v2/models/tiny/versions/7/ready", 404),
    ("POST", "/v2/models/tiny/versions/7/infer", 404),
    ("GET", "/v2/models/nope/versions/7", 404),
    ("POST", "/v1/models/tiny:explain", 404),
    ("GET", "/v2/models/tiny", 200),  # the unversioned routes serve
    ("GET", "/v2/models/tiny?model_version=", 200),
])
def test_versions_the_model_lacks_and_explain_are_4xx_not_501(http, method, path, status):
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    response = http.request(method, path, json=body if method == "POST" else None)
    assert response.status_code == status, response.text
    if status == 404:
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    else:
        assert response.json()["name"] == "tiny"


@pytest.mark.parametrize(("path", "shape"), [("/openai/v1/completions", OPENAI),
                                             ("/v2/models/tiny/generate", KSERVE)])
def test_too_many_headers_are_431_in_the_protocols_shape(http, client, path, shape):
    """vLLM's default --h11-max-header-count (256) holds on uvicorn's httptools parser too."""
    headers = {f"x-filler-{index}": "x" for index in range(300)}
    response = http.post(path, json={"model": "tiny", "prompt": "x", "text_input": "x"},
                         headers=headers)
    assert response.status_code == 431, response.text
    error = response.json()["error"]
    message = error["message"] if shape == OPENAI else error
    assert "--h11-max-header-count" in message
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices


def binary_v2(json_part: dict, data: bytes) -> tuple[bytes, dict]:
    """A v2 REST request in the binary tensor extension's framing."""
    header = json.dumps(json_part).encode()
    return header + data, {"inference-header-content-length": str(len(header)),
                           "content-type": "application/octet-stream"}


def bytes_input(**fields) -> dict:
    return {"name": "text_input", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 8}, **fields}


@pytest.mark.parametrize(("json_part", "data"), [
    ({}, b""),
    ({"inputs": [5]}, b""),
    ({"inputs": [{k: v for k, v in bytes_input().items() if k != "name"}]},
     struct.pack("<I", 4) + b"abcd"),
    ({"inputs": [{k: v for k, v in bytes_input().items() if k != "shape"}]},
     struct.pack("<I", 4) + b"abcd"),
    ({"inputs": [bytes_input()]}, struct.pack("<I", 2**32 - 1) + b"abcd"),
    ({"inputs": [bytes_input(parameters={"binary_data_size": 6})]},
     struct.pack("<I", 2) + b"\xff\xfe"),
], ids=["no inputs", "an input that is a number", "no name", "no shape", "lying length prefix",
        "bytes that are not UTF-8"])
def test_malformed_binary_v2_requests_are_400(http, client, json_part, data):
    body, headers = binary_v2(json_part, data)
    response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices


def test_every_refusal_reason_is_exported_from_the_start(http):
    """aim_requests_rejected_total for every reason the gate knows, at 0 before any refusal (the
    plain server has no key and no refusal), so that rates and alerts on them evaluate."""
    import ast
    from pathlib import Path

    from aim_runtime.serving import metrics

    text = http.get("/metrics").text
    for reason in metrics.REJECT_REASONS:
        assert f'aim_requests_rejected_total{{reason="{reason}"}}' in text, reason
    used = set()
    for module in Path(metrics.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "reason" and \
                    isinstance(node.value, ast.Constant):
                used.add(node.value.value)
    assert used == set(metrics.REJECT_REASONS)


def test_the_build_is_exported(http):
    from prometheus_client.parser import text_string_to_metric_families

    import aim_runtime

    (sample,) = [s for family in text_string_to_metric_families(http.get("/metrics").text)
                 for s in family.samples if s.name == "aim_build_info"]
    assert sample.labels["runtime"] == aim_runtime.__version__
    assert sample.labels["vllm"].startswith("0.3") and sample.labels["kserve"].startswith("0.")
    assert sample.labels["torch"].startswith("2.") and sample.labels["rocm"] == "none"  # CPU


def test_operability_series_say_state_plan_and_warm_up(http):
    """The series dashboards and alerts read (the operability work): readiness as aim_state, the
    plan's numbers as numbers, its declared parsers as labels, the warm-up's outcome, the process
    start time, the admission limit and the adapters."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    http.post("/openai/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    samples = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    value = lambda name, **labels: samples[(name, tuple(sorted(labels.items())))]  # noqa: E731
    assert value("aim_state", state="ready") == 1
    assert sum(v for (name, _), v in samples.items() if name == "aim_state") == 1
    (plan,) = [dict(labels) for (name, labels) in samples if name == "aim_plan_info"]
    assert value("aim_plan_max_model_len") == int(plan["max_model_len"])
    assert value("aim_plan_max_num_seqs") == int(plan["max_num_seqs"])
    assert plan["tool_parser"] == "hermes" and plan["reasoning_parser"] == "none"
    assert value("aim_warmup_requests", outcome="ok") > 0
    assert value("aim_warmup_requests", outcome="failed") == 0
    assert time.time() - 3600 < value("aim_process_start_time_seconds") < time.time()
    # The queue bound defaults to the engine's capacity: twice max_num_seqs on one replica.
    assert value("aim_admission_limit") == 2 * int(plan["max_num_seqs"])
    assert value("aim_lora_adapters_loaded") == 0
    assert value("aim_lora_load_errors_total", source="api") == 0
