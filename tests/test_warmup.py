"""Ready means fast: the server warms itself through its own listener before readiness turns
200, readiness says why it is not ready, a stalled engine fails liveness, and start-up failures
and engine deaths leave a termination message for `kubectl describe pod`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from aim_runtime.serving.warmup import WarmupPlan, requests_for
from servers import aim_server, free_port, server_environment
from test_reliability import metric
from testkit import REPO, engine_less_model


def plan(extent: str, tools: bool = False) -> WarmupPlan:
    return WarmupPlan(extent=extent, url="http://x", model="m", api_key=None,
                      max_num_batched_tokens=2048, max_num_seqs=128, max_model_len=1024,
                      tools=tools)


def test_basic_warm_up_covers_completion_stream_and_chat():
    paths = [(path, body.get("stream", False)) for path, body in requests_for(plan("basic"))]
    assert paths == [("/completions", False), ("/completions", True),
                     ("/chat/completions", False)]


def test_full_warm_up_adds_a_planned_prefill_structured_output_and_tools_when_enabled():
    without = requests_for(plan("full"))
    prefill = [body for _, body in without if isinstance(body.get("prompt"), list)]
    assert len(prefill) == 1 and len(prefill[0]["prompt"]) == 1024 - 8  # context-bound
    assert any("structured_outputs" in body for _, body in without)
    assert not any("tools" in body for _, body in without)
    with_tools = requests_for(plan("full", tools=True))
    assert any(body.get("tool_choice") for _, body in with_tools)


def test_readiness_says_why_it_is_not_ready():
    from kserve.model_repository import ModelRepository

    from aim_runtime.serving.dataplane import AimDataPlane, NotReady

    model = engine_less_model()
    with pytest.raises(NotReady) as loading:
        asyncio.run(AimDataPlane(ModelRepository(), model.lifecycle).ready())
    assert loading.value.reason == "loading"


@pytest.mark.serving
def test_the_server_warmed_itself_before_ready(server):
    log = server.log_path.read_text()
    assert "warm-up: " in log and " request(s) in " in log
    warm = log.index("warm-up: ")
    metrics = httpx.get(server.url + "/metrics").text
    assert 'aim_startup_phase_seconds{phase="warmup"}' in metrics
    # The readiness probes answered 503 until then: the first 200 came after the warm-up line.
    assert any(status == 503 for _, path, status in server.probes if path.endswith("ready"))
    assert warm > 0
    # Then, as `vllm serve` does, the start-up heap left the garbage collector's walks.
    frozen = re.search(r"start-up heap frozen for the garbage collector: (\d+) objects", log)
    assert frozen and int(frozen.group(1)) > 100_000 and frozen.start() > warm


@pytest.mark.slow
def test_start_up_failure_leaves_a_termination_message(tmp_path):
    message = tmp_path / "termination-log"
    env = server_environment(tmp_path, {"AIM_TERMINATION_LOG": str(message)})
    result = subprocess.run([sys.executable, "-m", "aim_runtime", "serve", "--model_dir",
                             str(tmp_path / "absent")], capture_output=True, text=True,
                            timeout=300, env=env, cwd=REPO)
    assert result.returncode == 2
    text = message.read_text()
    assert text.startswith("start-up failed in phase inspect: ") and "no config.json" in text


def stop_mid_request(server, engine_core: psutil.Process, streams: contextlib.ExitStack) -> None:
    """SIGSTOP the engine core while a request runs, which is what the stall watch looks for. A
    fast CPU can finish a 2,000-token stream before a loaded client reads its first event, so
    the server's own gauge confirms a request is still running, or another is sent."""
    body = {"model": "stall", "prompt": "x", "max_tokens": 2000, "ignore_eos": True,
            "stream": True}
    for _ in range(3):
        stream = streams.enter_context(httpx.stream(
            "POST", server.url + "/openai/v1/completions", json=body, timeout=60))
        events = (line for line in stream.iter_lines() if line.startswith("data:"))
        for _ in range(5):  # a few steps: vLLM's gauge lags the first token's
            next(events)
        engine_core.send_signal(signal.SIGSTOP)
        if metric(server.url, "vllm:num_requests_running") >= 1:
            return
        engine_core.send_signal(signal.SIGCONT)  # it had already finished: once more
    pytest.fail("no request was still running when the engine was stopped, three times")


@pytest.mark.slow
def test_a_stalled_engine_fails_liveness_and_says_so(work_dir, tiny_model, tmp_path):
    """With gRPC on too: the death handler stops both listeners, so the process ends (KServe
    waits on both; a gRPC listener left open once kept a dead server running)."""
    message = tmp_path / "termination-log"
    server = aim_server(work_dir, tiny_model, "--warmup", "off", "--enable_grpc", "true",
                        "--grpc_port", str(free_port()), name="stall",
                        env={"AIM_STALL_SECONDS": "4",
                             "AIM_TERMINATION_LOG": str(message)}).start()
    try:
        server.wait_ready()
        (engine_core,) = server.processes("EngineCore")
        with contextlib.ExitStack() as streams:
            stop_mid_request(server, engine_core, streams)
            started = time.monotonic()
            statuses = []
            while time.monotonic() - started < 60 and server.process.poll() is None:
                try:
                    statuses.append(httpx.get(server.url + "/v2/health/live",
                                              timeout=5).status_code)
                except httpx.TransportError:
                    statuses.append(None)  # the listener closed: the server is stopping
                if statuses[-1] != 200:
                    break
                time.sleep(0.2)
            assert statuses[0] == 200 and statuses[-1] != 200, (  # alive, then not
                f"liveness {statuses[-1]} {time.monotonic() - started:.0f} s after the stop; "
                f"log:\n{server.log_path.read_text()[-4000:]}")
            failed_at = time.monotonic()
        # Exits for a restart, soon: a listener left open had kept a dead server up for minutes.
        assert server.process.wait(timeout=120) == 1
        assert time.monotonic() - failed_at < 30, server.log_path.read_text()[-4000:]
        assert "stalled: " in message.read_text()
        assert "no token produced for 4 s" in server.log_path.read_text()
    finally:
        for child in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGCONT)
        server.dismiss()


@pytest.mark.parametrize(("line", "phases"), [
    ("(Worker pid=1) INFO 11-30 17:09:46 [default_loader.py:501] Loading weights took 0.01 "
     "seconds", [("engine_load_weights", 0.01)]),
    ("(EngineCore pid=2) INFO [core.py:402] init engine (profile, create kv cache, warmup "
     "model) took 14.38 s", [("engine_init", 14.38)]),
    ("(EngineCore pid=2) INFO [core.py:396] init engine (profile, create kv cache, warmup "
     "model) took 95.10 s (compilation: 41.20 s)",
     [("engine_init", 95.1), ("engine_compile", 41.2)]),
    ("(Worker_TP0 pid=3) INFO [gpu_model_runner.py:6582] Graph capturing finished in 23 secs, "
     "took 0.52 GiB", [("engine_graph_capture", 23.0)]),
    ("INFO [api_server.py:1] Route: /v1/models", []),
])
def test_the_engines_own_phase_lines_are_recognised(line, phases):
    from aim_runtime.serving.engine_log import phases_of

    assert phases_of(line) == phases
