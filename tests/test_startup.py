"""`aim-runtime serve` start-up, up to the moment the server would start: the three argument
families (KServe, AIM Runtime, vLLM), vLLM flags winning over the plan, and clear failures."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aim_runtime.errors import AimError, ModelFactsError, OverrideError, PlanError
from servers import free_port, server_environment
from testkit import engine_less_model

from kfd_trees import MI300X, cards, write_tree

pytest.importorskip("vllm")

from aim_runtime.cli.serve import parse_command
from aim_runtime.serving import startup
from aim_runtime.serving import vllm_adapter as engine


def prepare_argv(argv):
    """Start-up as `aim-runtime serve ARGV` runs it, up to the server."""
    return startup.prepare(parse_command(argv))


def prepare(tiny_model, *extra):
    return prepare_argv(["--model_dir", str(tiny_model), "--host", "127.0.0.1",
                         "--enable_grpc", "false", *extra])


def built(tiny_model, *extra):
    """The server start-up would serve with (its model and engine lifecycle within)."""
    return startup.build_server(prepare(tiny_model, *extra).inputs)


def test_plan_engine_args_then_vllm_flags_which_win(clean_env, tiny_model):
    prepared = prepare(tiny_model, "--max-num-seqs", "7", "--max_model_len", "1024",
                       "--enforce-eager", "--model_name", "chatbot")
    assert prepared.plan.recipe_id == "aim-tiny-random-cpu"
    assert prepared.plan.max_model_len == 1024  # the planner saw the vLLM flag
    vllm_args, _ = engine.parse_vllm_args(list(prepared.inputs.vllm_argv))
    assert vllm_args.max_num_seqs == 7
    assert vllm_args.max_model_len == 1024
    assert vllm_args.tool_call_parser == "hermes"  # from the curated recipe
    assert vllm_args.kv_cache_memory_bytes == prepared.plan.engine_args["kv_cache_memory_bytes"]
    assert vllm_args.served_model_name == ["chatbot"]
    server = startup.build_server(prepared.inputs)
    assert server.aim_model.name == "chatbot"
    assert server.host == "127.0.0.1"


def test_served_model_name_aliases_are_registered(clean_env, tiny_model):
    server = built(tiny_model, "--served-model-name", "main", "alias")
    assert server.aim_model.name == "main"
    assert set(server.registered_models.get_models()) == {"alias"}  # "main" at start


@pytest.mark.parametrize(("args", "message"), [
    (["--frobnicate"], "invalid arguments: unrecognized arguments: --frobnicate"),
    (["--max-num-seqs", "many"], "invalid arguments: argument --max-num-seqs: invalid int"),
    (["--port", "8000"], "--port: use --http_port"),
    (["--model", "/x"], "--model: use --model-dir"),
    (["--workers", "2"], "--workers 2: one process serves one vLLM engine"),
    (["stray-positional"], "unexpected argument 'stray-positional'"),
])
def test_unknown_and_reserved_arguments_are_errors(clean_env, tiny_model, args, message):
    with pytest.raises(AimError) as error:
        prepare(tiny_model, *args)
    assert message in str(error.value)


def test_impossible_vllm_override_is_a_planner_error(clean_env, tiny_model):
    with pytest.raises(OverrideError, match="--tensor-parallel-size 2: needs 2 devices"):
        prepare(tiny_model, "--tensor-parallel-size", "2")


def test_simulated_inventory_cannot_serve(clean_env, tiny_model, monkeypatch):
    monkeypatch.setenv("AIM_GPU_PRODUCT", "MI300X")
    with pytest.raises(AimError, match="can be planned for, not served on"):
        prepare(tiny_model)


def test_missing_model_directory(clean_env, tmp_path):
    with pytest.raises(ModelFactsError, match=r"no config\.json"):
        prepare_argv(["--model_dir", str(tmp_path / "absent")])


def installed(monkeypatch, vllm: str, kserve: str) -> None:
    monkeypatch.setattr(engine.versions, "installed_versions",
                        lambda: {"vllm": vllm, "kserve": kserve})


@pytest.mark.parametrize(("vllm", "kserve"), [
    ("0.32.0", "0.21.0"), ("0.33.2", "0.21.3"), ("0.34.1+cpu", "0.21.1"),
    ("0.34.0rc1", "0.21.0")])
def test_versions_inside_the_window_pass(monkeypatch, vllm, kserve):
    installed(monkeypatch, vllm, kserve)
    assert engine.check_versions({}) == {"vllm": vllm, "kserve": kserve}


@pytest.mark.parametrize(("vllm", "kserve", "refused"), [
    ("0.35.0", "0.21.0", ["vllm 0.35.0 (supported: 0.32.x to 0.34.x)"]),
    ("0.31.9", "0.21.0", ["vllm 0.31.9 (supported: 0.32.x to 0.34.x)"]),
    ("1.32.0", "0.21.0", ["vllm 1.32.0 (supported: 0.32.x to 0.34.x)"]),
    ("0.32.0", "0.22.0", ["kserve 0.22.0 (supported: 0.21.x)"]),
    ("0.32.0", "0.20.5", ["kserve 0.20.5 (supported: 0.21.x)"]),
    ("missing", "0.21.0", ["vllm missing (supported: 0.32.x to 0.34.x)"]),
    ("garbage", "missing", ["vllm garbage (supported: 0.32.x to 0.34.x)",
                            "kserve missing (supported: 0.21.x)"]),
])
def test_versions_outside_the_window_are_refused_naming_it(monkeypatch, vllm, kserve, refused):
    installed(monkeypatch, vllm, kserve)
    with pytest.raises(AimError) as error:
        engine.check_versions({})
    assert error.value.message == "unsupported versions: " + ", ".join(refused)
    assert "AIM_SKIP_VERSION_CHECK=1" in error.value.hint
    for value in ("1", "true", " yes "):
        assert engine.check_versions({"AIM_SKIP_VERSION_CHECK": value})["vllm"] == vllm
    with pytest.raises(AimError):
        engine.check_versions({"AIM_SKIP_VERSION_CHECK": "0"})


def test_version_check_reads_the_process_environment_by_default(monkeypatch):
    installed(monkeypatch, "0.30.0", "0.21.0")
    monkeypatch.delenv("AIM_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(AimError, match=r"vllm 0\.30\.0"):
        engine.check_versions()
    monkeypatch.setenv("AIM_SKIP_VERSION_CHECK", "1")
    assert engine.check_versions()["vllm"] == "0.30.0"


def test_start_up_needs_no_kserve_openai_layer(clean_env, tiny_model, monkeypatch):
    """KServe's OpenAI layer imports vLLM internals that move with every release; the runtime
    serves vLLM's own OpenAI application instead, so start-up works without that layer."""
    for name in ("kserve.protocol.rest.openai", "kserve.protocol.rest.openai.endpoints",
                 "kserve.protocol.rest.openai.config"):
        monkeypatch.setitem(sys.modules, name, None)
    assert built(tiny_model).aim_model.openai_app is None  # it comes with the engine


def listener_of(tiny_model: Path, access_log_format: str | None = None) -> tuple[Any, Any, Any]:
    """(REST server, its KServe FastAPI application, what uvicorn serves) over an engine-less
    model."""
    from fastapi import FastAPI

    from aim_runtime.serving.gate import GateSettings
    from aim_runtime.serving.server import AimRESTServer

    server = startup.build_server(prepare_argv(
        ["--model_dir", str(tiny_model), "--enable_grpc", "false"]).inputs)
    rest = AimRESTServer("kserve.model_server:app", server.dataplane,
                         server.model_repository_extension, 0, host="127.0.0.1",
                         recipe_id="r", model=engine_less_model(), gate=GateSettings(),
                         access_log_format=access_log_format)
    app = FastAPI()
    rest._add_middlewares(app)
    return rest, app, rest.listener_app(app)


def test_the_middleware_stack_is_ours_without_kserve_timing(tiny_model):
    """KServe's TimingMiddleware (route re-matching, CPU timing, trace logs per request) is left
    out of the serving path; the gate is in, and vLLM's routes skip KServe's stack."""
    from aim_runtime.serving.asgi import (
        CountedRequests,
        OpenAIApplication,
        VllmFastPath,
        WholeBodyIsJson,
    )
    from aim_runtime.serving.gate import RequestGate
    from aim_runtime.serving.header_limits import HeaderLimits

    rest, app, served = listener_of(tiny_model)
    assert [entry.cls.__name__ for entry in app.user_middleware] == [
        RequestGate.__name__, WholeBodyIsJson.__name__]
    assert isinstance(served, CountedRequests)  # first: every request counted, refusals too
    served = served.app
    assert isinstance(served, HeaderLimits)  # then vLLM's header limits, on any parser
    served = served.app
    assert isinstance(served, VllmFastPath) and served.kserve_app is app
    assert isinstance(served.openai, RequestGate)
    assert isinstance(served.openai.app, OpenAIApplication)
    assert rest.config.headers == [("x-aim-recipe", "r")]  # uvicorn's, on every response


def test_with_an_access_log_the_recipe_header_is_where_the_log_reads_it(tiny_model):
    from asgi_logger import AccessLoggerMiddleware
    from starlette.middleware.errors import ServerErrorMiddleware

    from aim_runtime.serving.asgi import CountedRequests, RecipeHeaderMiddleware, VllmFastPath
    from aim_runtime.serving.header_limits import HeaderLimits

    rest, _, served = listener_of(tiny_model, "%(s)s recipe=%({x-aim-recipe}o)s")
    assert isinstance(served, ServerErrorMiddleware)
    assert isinstance(served.app, AccessLoggerMiddleware)
    assert isinstance(served.app.app, RecipeHeaderMiddleware)
    assert isinstance(served.app.app.app, CountedRequests)
    assert isinstance(served.app.app.app.app, HeaderLimits)
    assert isinstance(served.app.app.app.app.app, VllmFastPath)
    assert rest.config.headers == []  # not twice


@pytest.mark.parametrize("taken", ["http", "grpc"])
def test_a_taken_port_is_a_clear_error(clean_env, tiny_model, taken):
    http_port, grpc_port = free_port(), free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1" if taken == "http" else "0.0.0.0",
                 http_port if taken == "http" else grpc_port))
    holder.listen()
    inputs = prepare(tiny_model, "--http_port", str(http_port), "--enable_grpc", "true",
                     "--grpc_port", str(grpc_port)).inputs
    with holder, pytest.raises(AimError) as error:
        startup.bind_listeners(inputs, 1)
    port = http_port if taken == "http" else grpc_port
    assert f"cannot listen on {'127.0.0.1:' if taken == 'http' else 'the gRPC port '}{port}" \
        in str(error.value)
    sockets = startup.bind_listeners(inputs, 1)  # free again: the HTTP socket, gRPC checked
    assert [sock.getsockname()[1] for sock in sockets] == [http_port]
    for sock in sockets:
        sock.close()


def test_a_command_line_error_is_a_start_up_failure_with_a_termination_message(
        clean_env, tmp_path, monkeypatch):
    from aim_runtime.cli import serve

    message = tmp_path / "termination-log"
    monkeypatch.setenv("AIM_TERMINATION_LOG", str(message))
    monkeypatch.setattr(startup, "CURRENT_PHASE", ["arguments"])  # as in a fresh process
    with pytest.raises(AimError, match="--workers 2: one process serves one vLLM engine"):
        serve.main(["--workers", "2"])
    assert message.read_text().startswith("start-up failed in phase arguments: --workers 2")


def test_one_server_does_not_share_its_port_and_a_foreign_address_is_named(clean_env,
                                                                          tiny_model):
    """SO_REUSEPORT only between the pod's own API servers: a second server on the same port
    is refused, not handed half the connections; an address not this host's says so."""
    from aim_runtime.serving.listener import listening_sockets

    port = free_port()
    (first,) = listening_sockets("127.0.0.1", port, 1)
    with first, pytest.raises(OSError):
        listening_sockets("127.0.0.1", port, 1)
    inputs = prepare(tiny_model, "--host", "203.0.113.7", "--http_port", str(port)).inputs
    with pytest.raises(AimError) as error:
        startup.bind_listeners(inputs, 1)
    assert "--host must be an address of this host" in str(error.value)


@pytest.mark.slow
def test_a_taken_port_fails_start_up_before_the_engine_loads(tmp_path, tiny_model):
    """As a user meets it: one error line, exit 2, and no engine loaded first."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aim_runtime", "serve", "--model_dir", str(tiny_model),
             "--host", "127.0.0.1", "--http_port", str(port), "--enable_grpc", "false"],
            capture_output=True, text=True, env=server_environment(tmp_path), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "loading the vLLM engine" not in result.stderr + result.stdout


@pytest.mark.slow
def test_model_id_without_hub_access_is_a_clear_error(tmp_path):
    """As a user meets it: the command exits 2 with one clear line (no hub here)."""
    env = server_environment(tmp_path, {"HF_HUB_OFFLINE": "1"})
    result = subprocess.run([sys.executable, "-m", "aim_runtime", "serve", "--model_id",
                             "meta-llama/Llama-3.1-8B-Instruct"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert "error: --model_id meta-llama/Llama-3.1-8B-Instruct: cannot fetch its config.json" \
        in result.stderr


def test_model_id_naming_a_local_directory_is_served_from_it(clean_env, tiny_model):
    prepared = prepare_argv(["--model_id", str(tiny_model), "--enable_grpc", "false"])
    assert prepared.inputs.vllm_argv[:2] == ("--model", str(tiny_model))


# --- the multi-node head role --------------------------------------------------------------------


LLAMA_8B = Path(__file__).parent / "fixtures" / "models" / "llama-3.1-8b-instruct"


def head_on_fabricated_node(tmp_path, *extra):
    """`serve --role head` on a fabricated 8x MI300X node, for Llama-3.1-8B (its config alone:
    the plan is made, nothing is loaded)."""
    sys_root, dev_root = write_tree(tmp_path / "node", cards(MI300X, 8))
    return prepare(LLAMA_8B, "--role", "head", "--sys-root", str(sys_root),
                   "--dev-root", str(dev_root), *extra)


def test_head_plans_across_the_nodes_kserve_describes(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_PARALLEL_SIZE", "2")  # what KServe injects from workerSpec
    monkeypatch.setenv("TENSOR_PARALLEL_SIZE", "8")
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    prepared = head_on_fabricated_node(tmp_path)
    plan = prepared.plan
    assert (plan.nodes, plan.devices_per_node, plan.devices_used) == (2, 8, 16)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    vllm_args, _ = engine.parse_vllm_args(list(prepared.inputs.vllm_argv))
    assert vllm_args.distributed_executor_backend == "ray"
    assert vllm_args.pipeline_parallel_size == plan.pipeline_parallel_size
    cluster = startup.engine_spec(prepared.inputs).cluster
    assert cluster is prepared.inputs.cluster
    assert (cluster.nodes, cluster.gpus_per_node, cluster.address) == (2, 8, "10.1.2.3:6379")


@pytest.mark.parametrize(("env", "args", "message"), [
    ({}, [], "a multi-node head needs the node count"),
    ({"PIPELINE_PARALLEL_SIZE": "2", "TENSOR_PARALLEL_SIZE": "4"}, [],
     "TENSOR_PARALLEL_SIZE=4 (GPUs per node, from workerSpec) but this node has 8"),
    ({"PIPELINE_PARALLEL_SIZE": "two"}, [],
     "PIPELINE_PARALLEL_SIZE=two: expected a positive integer"),
])
def test_head_misconfigurations_are_clear_errors(clean_env, tmp_path, monkeypatch, env, args,
                                                 message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AimError, match=re.escape(message)):
        head_on_fabricated_node(tmp_path, *args)


def test_a_single_node_server_refuses_a_multi_node_deployment(clean_env, tiny_model,
                                                              monkeypatch):
    monkeypatch.setenv("PIPELINE_PARALLEL_SIZE", "2")
    with pytest.raises(AimError, match="use the aim-runtime-multinode ServingRuntime"):
        prepare(tiny_model)


def test_a_cpu_head_is_refused_before_anything_starts(clean_env, tiny_model):
    with pytest.raises(PlanError, match="multi-node serving needs GPUs"):
        prepare(tiny_model, "--role", "head", "--nodes", "2")


# --- `vllm serve`'s listener flags and KServe's preset templates -------------------------------


def test_vllm_listener_flags_configure_our_listener(clean_env, tiny_model, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    prepared = prepare(tiny_model, "--http_port", "8000", "--ssl-certfile", str(cert),
                       "--ssl-keyfile", str(key), "--enable-ssl-refresh",
                       "--shutdown-timeout", "15", "--disable-uvicorn-access-log")
    server = startup.build_server(prepared.inputs)
    assert (server.ssl_certfile, server.ssl_keyfile) == (str(cert), str(key))
    assert server.http_port == 8000 and server.grace_period == 15
    assert server.lifecycle.spec.warmup.url.startswith("https://127.0.0.1:8000")
    vllm_args, _ = engine.parse_vllm_args(list(prepared.inputs.vllm_argv))
    assert vllm_args.shutdown_timeout == 15  # the engine drains for as long


def test_vllm_header_limit_flags_reach_our_listener(clean_env, tiny_model):
    listener = prepare(tiny_model, "--h11-max-incomplete-event-size", "65536",
                       "--h11-max-header-count", "32").inputs.listener
    assert (listener.max_header_bytes, listener.max_header_count) == (65536, 32)
    defaults = prepare(tiny_model).inputs.listener
    assert (defaults.max_header_bytes, defaults.max_header_count) == (4 * 1024 * 1024, 256)


def test_graceful_shutdown_seconds_wins_over_shutdown_timeout(clean_env, tiny_model):
    server = built(tiny_model, "--shutdown-timeout", "15", "--graceful-shutdown-seconds", "40")
    assert server.grace_period == 40
    assert built(tiny_model).grace_period == 100  # neither: our default


@pytest.mark.parametrize(("args", "message"), [
    (["--ssl-certfile", "/a.crt"], "TLS needs both a certificate and its key"),
    (["--ssl_certfile", "/a.crt", "--ssl-certfile", "/b.crt", "--ssl-keyfile", "/k"],
     "--ssl_certfile=/a.crt (KServe's) and --ssl-certfile=/b.crt (vllm serve's) disagree"),
    (["--uds", "/tmp/s.sock"], "--uds: `vllm serve`'s option is not supported"),
    (["--headless"], "--headless: `vllm serve`'s option is not supported"),
    (["--tensor-parallel-size=1", "--tensor-parallel-size", "2"],
     "--tensor-parallel-size is given twice: 1, then 2"),
    (["-tp", "1", "--tensor-parallel-size", "2"],
     "--tensor-parallel-size is given twice: 1, then 2"),
])
def test_listener_and_pinned_flag_conflicts_are_errors(clean_env, tiny_model, args, message):
    with pytest.raises(AimError) as error:
        prepare(tiny_model, *args)
    assert message in str(error.value)


def test_api_server_count_is_the_plan_s_unless_given(clean_env, tiny_model):
    assert prepare(tiny_model).api_servers == 1  # data parallelism 1 on this machine
    assert prepare(tiny_model, "--api-server-count", "2").api_servers == 2


def test_empty_arguments_from_preset_templates_are_dropped(clean_env, tiny_model):
    prepared = prepare(tiny_model, "", "--tensor-parallel-size=1", "  ", "--tensor_parallel_size",
                       "1", "--model_name", "m")
    assert prepared.inputs.names == ("m",)
    assert prepared.plan.engine_args["tensor_parallel_size"] == 1


def test_an_adapter_directory_turns_lora_on_and_must_exist(clean_env, tiny_model, monkeypatch,
                                                           tmp_path):
    monkeypatch.setenv("AIM_LORA_DIR", str(tmp_path / "missing"))
    with pytest.raises(AimError, match=r"AIM_LORA_DIR=.*missing: not a directory"):
        prepare(tiny_model)
    (tmp_path / "adapters").mkdir()
    monkeypatch.setenv("AIM_LORA_DIR", str(tmp_path / "adapters"))
    with pytest.raises(AimError, match="with --no-enable-lora: the adapters would not be served"):
        prepare(tiny_model, "--no-enable-lora")
    prepared = prepare(tiny_model, "--max-lora-rank", "8")
    vllm_args, _ = engine.parse_vllm_args(list(prepared.inputs.vllm_argv))
    assert vllm_args.enable_lora and vllm_args.max_lora_rank == 8
    assert prepared.plan.memory.lora_bytes_per_device > 0  # the planner counted the slots
    assert startup.engine_spec(prepared.inputs).adapters.directory == tmp_path / "adapters"


def test_kv_transfer_and_kv_events_configs_reach_the_engine(clean_env, tiny_model):
    transfer = '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}'
    events = '{"enable_kv_cache_events": true, "publisher": "zmq"}'
    prepared = prepare(tiny_model, "--kv-transfer-config", transfer, "--kv-events-config", events)
    vllm_args, _ = engine.parse_vllm_args(list(prepared.inputs.vllm_argv))
    assert vllm_args.kv_transfer_config.kv_connector == "NixlConnector"
    assert vllm_args.kv_events_config.enable_kv_cache_events is True
