"""LoRA adapters on the CPU engine, with adapters made here for the tiny model (random weights):
loaded from the adapter directory at start and when they appear, loaded and unloaded through
vLLM's API behind the API key, served under their own names on OpenAI and v2 routes, listed,
counted; bad adapters get a 400 naming the problem and the server keeps serving."""

from __future__ import annotations

import json
import shutil
import struct
import time

import httpx
import pytest

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.checkpoint.lora import adapter_problem
from lora_adapters import make_adapter
from servers import ServerProcess
from testkit import AUTH

# --- the adapter check, offline ---------------------------------------------------------------


def test_adapter_check_names_each_problem(tiny_model, tmp_path):
    facts = load_model_facts(tiny_model)
    good = make_adapter(tmp_path / "good", tiny_model, rank=8)
    assert adapter_problem(good, facts, max_rank=8) is None
    assert "rank 16 exceeds the server's max_lora_rank 8" in adapter_problem(
        make_adapter(tmp_path / "big", tiny_model, rank=16), facts, max_rank=8)
    other = make_adapter(tmp_path / "other", tiny_model, hidden_size=128)
    assert "made for another base model" in adapter_problem(other, facts, max_rank=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no adapter_config.json" in adapter_problem(empty, facts, max_rank=8)
    (tmp_path / "good" / "adapter_model.safetensors").unlink()
    assert "has no adapter weights" in adapter_problem(good, facts, max_rank=8)


# --- served --------------------------------------------------------------------------------------


@pytest.fixture
def lora_server(guarded):
    """The session's guarded server (tests/conftest.py) and its adapter directory."""
    return guarded, guarded.adapters


def listed(server: ServerProcess) -> set[str]:
    models = httpx.get(server.url + "/openai/v1/models", headers=AUTH, timeout=10).json()
    return {m["id"] for m in models["data"]}


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return condition()


def complete(server: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(server.url + "/openai/v1/completions", headers=AUTH, timeout=60,
                      json={"model": model, "prompt": "Hello", "max_tokens": 3})


@pytest.mark.serving
def test_the_directorys_adapter_is_served_under_its_name(lora_server):
    server, _ = lora_server
    assert {"tiny", "alpha"} <= listed(server)
    response = complete(server, "alpha")
    assert response.status_code == 200 and response.json()["model"] == "alpha"
    generated = httpx.post(server.url + "/v2/models/alpha/generate", headers=AUTH, timeout=60,
                           json={"text_input": "Hello", "parameters": {"max_tokens": 3}})
    assert generated.status_code == 200 and generated.json()["model_name"] == "alpha"
    infer = httpx.post(server.url + "/v2/models/alpha/infer", headers=AUTH, timeout=60, json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hi"]}],
        "parameters": {"max_tokens": 2}})
    assert infer.status_code == 200 and infer.json()["model_name"] == "alpha"
    assert httpx.get(server.url + "/v2/models/alpha/ready", timeout=10).status_code == 200
    assert httpx.get(server.url + "/v2/models/nobody/ready", timeout=10).status_code == 404


@pytest.mark.serving
def test_adapters_added_to_and_removed_from_the_directory_follow(lora_server, tiny_model):
    server, adapters = lora_server
    make_adapter(adapters / "beta", tiny_model, rank=4, seed=2)
    assert wait_for(lambda: "beta" in listed(server))
    assert complete(server, "beta").status_code == 200
    shutil.rmtree(adapters / "beta")
    assert wait_for(lambda: "beta" not in listed(server))
    assert complete(server, "beta").status_code == 404


@pytest.mark.serving
def test_a_symlink_out_of_the_directory_is_refused_as_the_load_api_refuses_it(
        lora_server, tiny_model, tmp_path):
    server, adapters = lora_server
    outside = make_adapter(tmp_path / "outside", tiny_model, rank=4, seed=3)
    (adapters / "escape").symlink_to(outside, target_is_directory=True)
    try:
        assert wait_for(lambda: "adapter escape not loaded: lora_path" in
                        server.log_path.read_text())
        assert "escape" not in listed(server)
        assert "outside the adapter directory" in server.log_path.read_text()
    finally:
        (adapters / "escape").unlink()


@pytest.mark.serving
def test_the_load_api_is_behind_the_key_and_reads_only_the_directory(lora_server, tiny_model):
    server, adapters = lora_server
    staging = adapters / ".staging-gamma"  # hidden: the watcher leaves it alone
    make_adapter(staging, tiny_model, rank=8, seed=3)
    load = server.url + "/openai/v1/load_lora_adapter"
    body = {"lora_name": "gamma", "lora_path": staging.name}
    assert httpx.post(load, json=body, timeout=30).status_code == 401
    loaded = httpx.post(load, json=body, headers=AUTH, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert "gamma" in listed(server) and complete(server, "gamma").status_code == 200
    unloaded = httpx.post(server.url + "/openai/v1/unload_lora_adapter", headers=AUTH,
                          timeout=30, json={"lora_name": "gamma"})
    assert unloaded.status_code == 200 and "gamma" not in listed(server)


@pytest.mark.serving
@pytest.mark.parametrize(("make", "message"), [
    (lambda d, m: make_adapter(d / ".other", m, hidden_size=128), "made for another base model"),
    (lambda d, m: make_adapter(d / ".wide", m, rank=32), "rank 32 exceeds the server's"),
    (lambda d, m: (d / ".empty").mkdir(exist_ok=True) or d / ".empty", "has no adapter_config"),
    (lambda d, m: d.parent, "is outside the adapter directory"),
    (lambda d, m: f"{d}/a\x00b", "ValueError: embedded null byte"),  # what the OS refuses
])
def test_bad_adapters_get_a_400_and_the_server_keeps_serving(lora_server, tiny_model, make,
                                                              message):
    server, adapters = lora_server
    path = make(adapters, tiny_model)
    refused = httpx.post(server.url + "/openai/v1/load_lora_adapter", headers=AUTH, timeout=30,
                         json={"lora_name": "bad", "lora_path": str(path)})
    assert refused.status_code == 400 and message in refused.json()["error"]["message"]
    assert "bad" not in listed(server)
    assert complete(server, "alpha").status_code == 200


@pytest.mark.serving
def test_the_directory_is_the_source_of_truth(lora_server):
    server, _ = lora_server
    unloaded = httpx.post(server.url + "/openai/v1/unload_lora_adapter", headers=AUTH,
                          timeout=30, json={"lora_name": "alpha"})
    assert unloaded.status_code == 200
    assert wait_for(lambda: "alpha" in listed(server))  # its directory is still there
    sagemaker = httpx.post(server.url + "/openai/adapters", headers=AUTH, timeout=30,
                           json={"name": "evil", "src": "/etc"})
    assert sagemaker.status_code == 400 and "load_lora_adapter" in sagemaker.text


@pytest.mark.serving
def test_requests_per_adapter_are_counted(lora_server):
    server, _ = lora_server
    complete(server, "alpha")
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counted = [line for line in text.splitlines()
               if line.startswith('aim_lora_requests_total{adapter="alpha"}')]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1
    assert any(line.startswith("vllm:lora_requests_info{") for line in text.splitlines())


def test_moe_adapters_are_not_held_to_the_shared_experts_widths(tmp_path):
    from aim_runtime.checkpoint.lora import adapter_problem
    from testkit import MODELS

    facts = load_model_facts(MODELS / "qwen3-30b-a3b")
    directory = tmp_path / "moe"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "target_modules": ["gate_proj", "q_proj"]}))
    q_out = facts.num_attention_heads * facts.head_dim
    write_safetensors_header(directory / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_A.weight": [8, 2048],
        "base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_B.weight": [768, 8],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": [q_out, 8]})
    assert adapter_problem(directory, facts, max_rank=8) is None
    write_safetensors_header(directory / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": [q_out + 1, 8]})
    assert "made for another base model" in adapter_problem(directory, facts, max_rank=8)


def write_safetensors_header(path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file's header only (the check reads nothing else)."""
    header = json.dumps({name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}
                         for name, shape in shapes.items()}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


@pytest.mark.serving
def test_adapters_served_and_refused_are_counted(lora_server, tmp_path):
    """aim_lora_adapters_loaded, and aim_lora_load_errors_total by where the adapter came from:
    a bad directory in the adapter directory, a bad adapter through the load API."""
    server, adapters = lora_server

    def counted() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("aim_lora_adapters_loaded", "aim_lora_load_errors_total"))}

    before = counted()
    assert before["aim_lora_adapters_loaded"] >= 1  # alpha
    (tmp_path / "empty").mkdir()
    refused = httpx.post(server.url + "/openai/v1/load_lora_adapter", headers=AUTH, timeout=30,
                         json={"lora_name": "bad", "lora_path": str(tmp_path / "empty")})
    assert refused.status_code == 400
    (adapters / "hollow").mkdir()  # no adapter_config.json: the watcher refuses it
    try:
        api, directory = ('aim_lora_load_errors_total{source="api"}',
                          'aim_lora_load_errors_total{source="directory"}')
        assert wait_for(lambda: counted()[directory] > before[directory])
        assert counted()[api] == before[api] + 1
    finally:
        (adapters / "hollow").rmdir()
