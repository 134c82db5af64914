"""Several API server processes over one set of engine cores (serving/api_server_group.py).

The count's rules are checked against vLLM's own parser; the rest on the real CPU engine with
data parallelism 2 (two engine ranks, hence two API server processes), watched from outside: both
processes and both ranks serve requests, /metrics aggregates them, admission and API keys hold
for the pod, gRPC v2 answers, and the death of an API server fails liveness and the pod; with
two API servers over one rank, so does the engine's. (SIGTERM draining both:
tests/test_reliability.py.)"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import psutil
import pytest

from servers import REPO, aim_server, free_port
from test_reliability import STREAM, metric, wait_until
from testkit import clean_environ, engine_less_model

KEY = "pod-key"
AUTH = {"authorization": f"Bearer {KEY}"}
SHORT = {"model": "tiny", "prompt": "Hello", "max_tokens": 4}


# --- how many ---------------------------------------------------------------------------------


def count_for(argv: list[str], dp: int = 1, environ: dict[str, str] | None = None,
              monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str]:
    from aim_runtime.cli.serve import serve_parser
    from aim_runtime.serving.api_server_count import api_server_count
    from aim_runtime.serving.vllm_adapter import parse_vllm_args

    for name, value in (environ or {}).items():
        assert monkeypatch is not None
        monkeypatch.setenv(name, value)
    args, rest = serve_parser().parse_known_args(argv)
    vllm_args, explicit = parse_vllm_args(rest)
    return api_server_count(SimpleNamespace(data_parallel_size=dp), vllm_args, explicit, args)


def test_one_api_server_per_data_parallel_rank_unless_told(clean_env):
    assert count_for([], dp=1) == (1, "data parallelism 1")
    count, why = count_for([], dp=4)
    assert count == 4 and "one per data-parallel rank" in why
    assert count_for(["--api-server-count", "2"], dp=1) == (2, "--api-server-count")
    assert count_for(["--api-server-count", "1"], dp=8) == (1, "--api-server-count")


def test_one_api_server_where_several_cannot_work_and_a_refusal_when_asked(
        clean_env, monkeypatch, tmp_path):
    from aim_runtime.errors import AimError

    assert count_for(["--exit-after-warmup"], dp=4)[0] == 1
    assert count_for(["--data-parallel-external-lb"], dp=4)[0] == 1
    lora = {"AIM_LORA_DIR": str(tmp_path)}
    count, why = count_for([], dp=4, environ=lora, monkeypatch=monkeypatch)
    assert count == 1 and "AIM_LORA_DIR" in why
    with pytest.raises(AimError, match="--api-server-count 2: vLLM's runtime adapter API"):
        count_for(["--api-server-count", "2"], environ=lora, monkeypatch=monkeypatch)
    with pytest.raises(AimError, match="at least one"):
        count_for(["--api-server-count", "0"])


# --- pod-wide state, pure -------------------------------------------------------------------------


def _admit_twice(counter) -> None:
    from aim_runtime.serving.gate import GateState

    state = GateState(shared_in_flight=counter, server_index=1)
    assert state.admit(limit=2) == 1 and state.admit(limit=2) == 2


def test_admission_is_counted_for_the_pod_across_processes():
    from aim_runtime.serving.api_server_group import ApiServerGroup
    from aim_runtime.serving.gate import GateState

    group = ApiServerGroup.create(2)
    other = multiprocessing.get_context("spawn").Process(target=_admit_twice,
                                                         args=(group.in_flight,))
    other.start()
    other.join(timeout=60)
    assert other.exitcode == 0
    here = GateState(shared_in_flight=group.in_flight, server_index=0)
    assert here.admit(limit=2) is None and here.in_flight == 2  # the other process holds both
    assert here.admit(limit=3) == 3 and here.release() == 2
    assert list(group.in_flight) == [0, 2]  # a refusal leaves nothing behind


def _count_forever(counter) -> None:
    from aim_runtime.serving.gate import GateState

    state = GateState(shared_in_flight=counter, server_index=1)
    while True:
        state.admit(limit=None)
        state.release()


def test_a_process_killed_while_counting_never_blocks_the_others():
    """A shared lock held by a process the kernel killed is never released: the survivors'
    next request (and liveness behind it, on the same event loop) would hang. The count is
    written by one process a slot, so the killed process's slot alone is left behind."""
    from aim_runtime.serving.api_server_group import ApiServerGroup
    from aim_runtime.serving.gate import GateState

    group = ApiServerGroup.create(2)
    other = multiprocessing.get_context("spawn").Process(target=_count_forever,
                                                         args=(group.in_flight,))
    other.start()
    wait_until(lambda: group.in_flight[1] > 0, timeout=60, interval=0.01)
    other.kill()
    other.join(timeout=10)
    here = GateState(shared_in_flight=group.in_flight, server_index=0)
    admitted: list[int | None] = []
    counting = threading.Thread(target=lambda: admitted.append(here.admit(limit=None)),
                                daemon=True)
    counting.start()
    counting.join(timeout=5)
    assert admitted and admitted[0] in (1, 2)  # at most the dead process's one left over


def test_readiness_waits_for_every_api_server_and_liveness_follows_the_pod():
    from aim_runtime.serving.api_server_group import ApiServerGroup, GroupMember
    from aim_runtime.serving.dataplane import AimDataPlane, NotReady

    async def healthy() -> bool:
        return True

    model = engine_less_model()
    model.lifecycle.engine = SimpleNamespace(healthy=healthy, dead_reason=None)  # type: ignore
    group = ApiServerGroup.create(2)
    first = GroupMember(group, 0)
    plane = AimDataPlane(None, model.lifecycle, first)
    first.mark_ready()
    with pytest.raises(NotReady) as refused:
        asyncio.run(plane.ready())
    assert refused.value.reason == "starting" and "1 of 2" in str(refused.value)
    GroupMember(group, 1).mark_ready()
    assert asyncio.run(plane.ready()) is True
    assert asyncio.run(plane.live()) == {"status": "alive"}
    group.failed.value = 1
    assert asyncio.run(plane.live()) == {"status": "dead"}


# --- data parallelism 2 on the CPU engine: two engine ranks, two API server processes --------


serving = pytest.mark.serving


@pytest.fixture(scope="module")
def pod(work_dir, tiny_model):
    """Data parallelism 2 as vLLM's CPU build runs it (two engine cores), hence two API server
    processes by default; an API key, gRPC on, an admission limit of 3 for the pod
    (max_num_seqs 1 on each rank, one queued) and 64 KiB bodies."""
    grpc_port = free_port()
    process = aim_server(work_dir, tiny_model, "--data-parallel-size", "2", "--max-num-seqs",
                         "1", "--max-queued-requests", "1", "--max-request-bytes", "65536",
                         "--enable_grpc", "true", "--grpc_port", str(grpc_port),
                         env={"AIM_API_KEY": KEY}).start()
    process.grpc_port = grpc_port
    try:
        yield process.wait_ready()
    finally:
        process.dismiss()


def post_concurrently(url: str, count: int, body: dict, headers: dict) -> list[int]:
    """`count` requests at once, each on its own connection."""
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(timeout=120) as client:  # a new connection each
            statuses.append(client.post(url, json=body, headers=headers).status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@serving
def test_both_api_servers_and_both_engine_ranks_serve_and_metrics_aggregate_them(pod):
    assert len(pod.processes("APIServer")) == 2
    assert len(pod.processes("EngineCore_DP")) == 2
    url = pod.url + "/openai/v1/completions"
    before = {s: metric(pod.url, "aim_api_server_requests_total", server=s) for s in "01"}
    by_engine = {e: metric(pod.url, "vllm:request_success_total", engine=e) for e in "01"}
    succeeded_before = metric(pod.url, "vllm:request_success_total")
    statuses = []
    for _ in range(10):  # two at a time: one for each rank
        statuses += post_concurrently(url, 2, SHORT, AUTH)
    assert statuses == [200] * 20
    served = {s: metric(pod.url, "aim_api_server_requests_total", server=s) - before[s]
              for s in "01"}
    assert served["0"] > 0 and served["1"] > 0, served
    assert served["0"] + served["1"] == 20
    assert metric(pod.url, "vllm:request_success_total") - succeeded_before == 20
    ranks = {e: metric(pod.url, "vllm:request_success_total", engine=e) - by_engine[e]
             for e in "01"}
    assert ranks["0"] > 0 and ranks["1"] > 0, ranks
    assert "plan: API servers: 2 processes (one per data-parallel rank" in \
        pod.log_path.read_text()
    assert "answered 503" not in pod.log_path.read_text()  # the warm-ups shared the limit


@serving
def test_every_series_the_rules_and_panels_read_is_exported_by_the_pod(pod):
    """The pod's exposition merges its processes' (multiprocess mode): the names the alerts and
    the dashboard read are there as in one process, with each engine rank's own samples."""
    from test_monitoring import missing_series

    # Per adapter, so not created before the first adapter request: one process still writes
    # its TYPE line, the multiprocess exposition only families with a sample.
    assert missing_series(pod.url) in ([], ["aim_lora_requests_total"])
    # vLLM's routes served first: a labelled family is written only once it has a sample.
    assert post_concurrently(pod.url + "/openai/v1/completions", 2, SHORT, AUTH) == [200] * 2
    text = httpx.get(pod.url + "/metrics", timeout=10).text
    assert not re.search(r"^http_", text, flags=re.M)
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        engines = set(re.findall(rf'^{name}{{[^}}]*engine="(\d+)"', text, flags=re.M))
        assert engines == {"0", "1"}, (name, engines)


@serving
def test_every_response_names_the_recipe_once(pod):
    """Without an access log the header is uvicorn's default one: on KServe's routes, on vLLM's
    (streamed too) and on the gate's refusals alike."""
    url = pod.url + "/openai/v1/completions"
    with httpx.Client(timeout=60) as client:
        responses = [client.get(pod.url + "/v2/health/live"), client.get(pod.url + "/metrics"),
                     client.post(url, json=SHORT), client.post(url, json=SHORT, headers=AUTH)]
        with client.stream("POST", url, json=STREAM, headers=AUTH) as stream:
            responses.append(stream)
    assert [r.status_code for r in responses] == [200, 200, 401, 200, 200]
    for response in responses:
        assert response.headers.get_list("x-aim-recipe") == ["aim-tiny-random-cpu"], \
            response.url


@serving
def test_one_exposition_for_the_pod_with_the_supervisor_s_phases(pod):
    text = httpx.get(pod.url + "/metrics", timeout=10).text
    types = re.findall(r"^# TYPE (\S+)", text, flags=re.M)
    assert len(types) == len(set(types)), "a metric family exposed twice"
    assert text.count("aim_plan_info{") == 1 and text.count("aim_engine_config_info{") == 1
    for phase in ("import", "plan", "engine", "warmup", "engine_init"):
        assert metric(pod.url, "aim_startup_phase_seconds", phase=phase) > 0, phase
    assert "pid=" not in text  # every gauge says how the processes combine


@serving
def test_overload_is_refused_fast_with_retry_after_for_the_pod(pod):
    """A request without the key is refused first. Then one stream runs on each engine rank
    (max_num_seqs 1 on each) and one waits (queue bound 1): the next requests are refused at
    once, by whichever process takes them, OpenAI- and KServe-shaped, while the three are still
    being served, undisturbed. Each event carries 20 logprobs, which keeps the streams busy
    long enough to be seen however fast the engine is."""
    url = pod.url + "/openai/v1/completions"
    assert post_concurrently(url, 6, SHORT, {}) == [401] * 6
    results = []

    def stream_to_the_end() -> None:
        body = {**STREAM, "logprobs": 20, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, headers=AUTH, timeout=300) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
        usage = json.loads(events[-2].removeprefix("data: "))["usage"]
        results.append((usage["completion_tokens"], events[-1]))

    holders = [threading.Thread(target=stream_to_the_end) for _ in range(3)]
    for thread in holders:
        thread.start()
    wait_until(lambda: metric(pod.url, "aim_requests_in_flight") == 3, timeout=30)
    refused_by_any = post_concurrently(url, 4, SHORT, AUTH)
    refused = httpx.post(url, json=SHORT, headers=AUTH, timeout=10)
    v2_refused = httpx.post(pod.url + "/v2/models/tiny/generate", json={"text_input": "x"},
                            headers=AUTH, timeout=10)
    still_in_flight = metric(pod.url, "aim_requests_in_flight")
    for thread in holders:
        thread.join(timeout=300)
    assert still_in_flight == 3  # refused while the admitted ones were being served
    assert refused_by_any == [503] * 4
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "ServiceUnavailableError"
    assert v2_refused.status_code == 503 and "server busy" in v2_refused.json()["error"]
    assert results == [(STREAM["max_tokens"], "data: [DONE]")] * 3  # every token, then the end
    assert metric(pod.url, "aim_requests_rejected_total", reason="overload") >= 6
    wait_until(lambda: metric(pod.url, "aim_requests_in_flight") == 0, timeout=60)
    assert httpx.post(url, json=SHORT, headers=AUTH, timeout=60).status_code == 200


@serving
def test_request_bodies_are_bounded_for_the_pod(pod):
    huge = {"model": "tiny", "prompt": "x" * 70_000, "max_tokens": 1}
    response = httpx.post(pod.url + "/openai/v1/completions", json=huge, headers=AUTH)
    assert response.status_code == 413
    assert "larger than 65536 bytes" in response.json()["error"]["message"]
    chunked = httpx.post(pod.url + "/v2/models/tiny/generate", headers=AUTH,
                         content=iter([b'{"text_input": "', b"y" * 70_000, b'"}']))
    assert chunked.status_code == 413 and "larger than" in chunked.json()["error"]


@serving
def test_the_openai_sdk_is_served_by_every_api_server(pod):
    """The reference client in its default mode, a new client (connection) each time, until
    both processes have answered it."""
    import openai

    before = {s: metric(pod.url, "aim_api_server_requests_total", server=s) for s in "01"}
    for _ in range(12):
        client = openai.OpenAI(base_url=pod.url + "/openai/v1", api_key=KEY)
        stream = client.completions.create(model="tiny", prompt="Hello", max_tokens=4,
                                           stream=True)
        assert [chunk.choices[0].text for chunk in stream if chunk.choices]
        client.close()
    served = {s: metric(pod.url, "aim_api_server_requests_total", server=s) - before[s]
              for s in "01"}
    assert sum(served.values()) == 12 and min(served.values()) > 0, served


@serving
def test_grpc_v2_is_served_by_the_pod(pod):
    result = subprocess.run([sys.executable, str(REPO / "tests" / "v2_grpc_client.py"),
                             f"127.0.0.1:{pod.grpc_port}", KEY], capture_output=True, text=True,
                            timeout=120)
    outcomes = json.loads(result.stdout)
    assert len(outcomes["infer"]["value"]) == 2
    assert outcomes["infer_keyless"]["status"] == "StatusCode.UNAUTHENTICATED"


def live_status(url: str, client: httpx.Client | None = None) -> int | None:
    try:
        return (client or httpx).get(url + "/v2/health/live", timeout=5).status_code
    except httpx.TransportError:
        return None


@serving
def test_an_api_server_that_dies_fails_liveness_and_the_pod(pod):
    """Last in this module: it ends the pod. With gRPC on (KServe's default): an API server's
    death fails liveness and ends the pod with 1, every listener and process gone, and
    `aim-runtime validate`, under way, fails naming the check. (A survivor answers 503 until
    the supervisor stops it, at most 5 s: with streams of its own on a busy machine it could
    answer too late to be seen, so it dies without streams in flight.)"""
    outcomes = watch_a_death(pod, "APIServer_1", streams=0, drain=0, key=KEY)
    validated = outcomes["validate"]
    lines = validated.splitlines()
    assert "connection" in lines[0] and all(ln.startswith("SKIP") for ln in lines[1:-1])


@pytest.mark.slow
def test_an_engine_that_dies_cuts_its_streams_short_and_ends_the_pod(work_dir, tiny_model):
    """The engine core's death, with streams in flight and gRPC on, two API servers over it:
    liveness 503, the streams cut short (none hangs), the pod ended with 1 within the drain
    time, and `aim-runtime validate`, under way, fails its completion check."""
    drain = 5
    process = aim_server(work_dir, tiny_model, "--api-server-count", "2", "--enable_grpc",
                         "true", "--grpc_port", str(free_port()),
                         env={"AIM_DRAIN_SECONDS": str(drain)}).start()
    try:
        process.wait_ready()
        outcomes = watch_a_death(process, "EngineCore", streams=4, drain=drain)
        complete = STREAM["max_tokens"] + 1  # every token's event, then [DONE]
        assert any("error" in o or len(o["lines"]) < complete for o in outcomes["streams"])
        # the supervisor sees it first: "stopping the pod's processes: ... EngineCore died"
        assert "EngineCore died" in process.log_path.read_text()
    finally:
        process.dismiss()


def watch_a_death(process, victim: str, streams: int, drain: float,
                  key: str | None = None) -> dict:
    """Kill the pod's process named `victim` (the engine paused first, before `streams`
    completions and an `aim-runtime validate` run, so that all are in flight at the kill
    whatever the machine's pace: a fast engine finished streams begun earlier),
    then see liveness fail (503; or, with no drain time, a refused connection), the pod end with
    1 and every process gone, the streams end and validate fail its completion check: the
    streams' outcomes and validate's output."""
    family = process.processes("VLLM::")
    (killed,) = process.processes(victim)
    # Without a drain time the pod stops at once: liveness may go from 200 to a refused
    # connection, which fails a kubelet's probe alike.
    failing = {503} if drain else {503, None}
    for engine in process.processes("EngineCore"):
        engine.suspend()
    outcomes = stream_in_background(process.url, streams, key)
    wait_until(lambda: metric(process.url, "aim_requests_in_flight") == streams, timeout=30)
    validating = validate_until(process.url, "recipe", key)
    time.sleep(0.5)
    with httpx.Client() as client:
        killed.kill()
        try:
            wait_until(lambda: live_status(process.url, client) in failing, timeout=30,
                       interval=0.05)
        except TimeoutError:
            pytest.fail("liveness never answered 503:\n" + process.log_tail(60))
    assert process.process.wait(timeout=drain + 10 + 30) == 1  # with start-up slack
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    try:  # each stream's thread notices the end on its own time
        wait_until(lambda: all(outcome.get("done") for outcome in outcomes), timeout=60)
    except TimeoutError:
        pytest.fail("an in-flight request hung")
    # validate's completion check was in flight: the engine died under it (a 5xx, then the
    # other checks fail too), or the pod stopped under it (the rest are skipped)
    validated, _ = validating.communicate(timeout=180)
    lines = validated.splitlines()
    assert validating.returncode == 1 and lines[-1].startswith("FAILED:"), validated
    assert lines[0].split()[:2] == ["FAIL", "completion"], validated
    return {"streams": outcomes, "validate": validated}


def validate_until(url: str, check: str, key: str | None = None) -> subprocess.Popen:
    """`aim-runtime validate` under way: `check` passed, the next has begun."""
    keyed = ["--api-key", key] if key else []
    running = subprocess.Popen([sys.executable, "-m", "aim_runtime", "validate", "--url", url,
                                "--timeout", "60", *keyed], stdout=subprocess.PIPE, text=True,
                               cwd=REPO, env=clean_environ())
    assert running.stdout is not None
    for line in running.stdout:
        if line.split()[:2] == ["PASS", check]:
            return running
    raise AssertionError(f"validate ended before its {check} check ({running.wait()})")


def stream_in_background(url: str, streams: int, key: str | None = None) -> list[dict]:
    """`streams` long completions, each read in a thread of its own until it ends. Each
    outcome: its data lines, an error if one ended it, and `done` once its thread is through."""
    outcomes: list[dict] = []

    def stream() -> None:
        outcome: dict = {"lines": []}
        outcomes.append(outcome)
        try:
            with httpx.stream("POST", url + "/openai/v1/completions", json=STREAM,
                              headers={"authorization": f"Bearer {key}"} if key else None,
                              timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        outcome["lines"].append(line)
        except httpx.HTTPError as exc:
            outcome["error"] = exc
        outcome["done"] = True

    for _ in range(streams):
        threading.Thread(target=stream, daemon=True).start()
    return outcomes
