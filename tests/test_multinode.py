"""Multi-node roles for real, on one machine and without GPUs: a Ray head formed the way
`serve --role head` forms it, a worker process (`aim-runtime worker`, its GPU declared with
AIM_RAY_NUM_GPUS) joining it, the head's wait ending only when every node and GPU is there,
truthful worker probes, a worker that never arrives, a head that never answers, and where the
head address comes from in KServe.

vLLM refuses its Ray executor on the CPU platform, so the distributed engine itself runs only on
GPU nodes (docs/multi-node.md)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from aim_runtime.errors import AimError
from aim_runtime.serving import cluster
from aim_runtime.serving.cluster import (
    ClusterSpec,
    head_address_from_env,
    nodes_from_env,
    spec_from_env,
)
from servers import free_port, server_environment

pytestmark = pytest.mark.slow  # Ray processes and workers of its own

pytest.importorskip("ray")


def worker_process(tmp_path: Path, head_address: str, *extra: str,
                   env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp_path / f"worker-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "aim_runtime", "worker", "--head-address", head_address,
         "--health-port", str(port), *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
        env=server_environment(tmp_path, {"AIM_RAY_NUM_GPUS": "1", **(env or {})}))
    return process, port, log


def health(port: int, route: str) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/{route}", timeout=5).status_code
    except httpx.TransportError:
        return None


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def formed(tmp_path_factory):
    """A head started and waited on by `form_cluster` (what the head role runs before the
    engine), and one worker process that joins it while the head waits."""
    tmp_path = tmp_path_factory.mktemp("ray")
    spec = ClusterSpec(nodes=2, gpus_per_node=1, port=free_port(), node_ip="127.0.0.1",
                       join_timeout_seconds=180)
    outcome: dict = {}

    def head() -> None:
        try:
            outcome["status"] = cluster.form_cluster(spec)
        except Exception as exc:  # reported by the tests
            outcome["error"] = exc
        outcome["done_at"] = time.monotonic()

    saved_address = os.environ.get("RAY_ADDRESS")
    waiting = threading.Thread(target=head)
    waiting.start()
    wait_for(lambda: subprocess.run(cluster.ray_command("health-check",
                                                        f"--address={spec.address}"),
                                    capture_output=True).returncode == 0, 120, "the Ray head")
    head_up_at = time.monotonic()
    worker, port, log = worker_process(tmp_path, spec.address)
    try:
        waiting.join(timeout=240)
        yield {"spec": spec, "worker": worker, "port": port, "log": log,
               "head_up_at": head_up_at, **outcome}
    finally:
        if worker.poll() is None:
            worker.kill()
        cluster.stop_ray()
        if saved_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved_address


def test_the_head_waits_until_every_node_and_gpu_has_joined(formed):
    assert "error" not in formed, formed.get("error")
    assert formed["status"] == cluster.ClusterStatus(nodes=2, gpus=2.0)
    assert formed["done_at"] > formed["head_up_at"]  # it waited for the worker
    # the head can see the node before `ray start` has printed its banner to the worker
    wait_for(lambda: "joined the Ray cluster" in formed["log"].read_text(), 30,
             "the worker to report that it joined")
    assert os.environ["RAY_ADDRESS"] == formed["spec"].address  # for vLLM's Ray executor


def test_a_joined_worker_is_live_and_ready(formed):
    wait_for(lambda: health(formed["port"], "ready") == 200, 30, "worker readiness")
    assert health(formed["port"], "live") == 200


def test_a_worker_that_never_arrives_is_a_clear_error_not_a_hang(formed):
    spec = dataclasses.replace(formed["spec"], nodes=3, join_timeout_seconds=3)
    started = time.monotonic()
    with pytest.raises(AimError) as error:
        cluster.wait_for_cluster(spec)
    assert time.monotonic() - started < 60
    assert "only 2 of 3 nodes (2 of 3 GPUs) joined the Ray cluster" in str(error.value)
    assert "AIM_RAY_JOIN_TIMEOUT" in error.value.hint


def test_sigterm_stops_a_worker_cleanly(formed):
    worker = formed["worker"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert health(formed["port"], "live") is None  # its probe server went with it


def test_a_worker_whose_ray_node_dies_exits_non_zero(formed, tmp_path):
    worker, port, log = worker_process(tmp_path, formed["spec"].address)
    try:
        wait_for(lambda: health(port, "ready") == 200, 120, "the second worker to join")
        raylets = [p for p in psutil.Process(worker.pid).children(recursive=True)
                   if p.name() == "raylet"]
        assert len(raylets) == 1
        raylets[0].kill()
        assert worker.wait(timeout=120) != 0  # Kubernetes restarts it; it joins again
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "the Ray node process ended" in log.read_text()


def test_a_worker_whose_head_never_answers_gives_up_clearly(tmp_path):
    worker, port, log = worker_process(tmp_path, f"127.0.0.1:{free_port()}",
                                       "--join-timeout", "6")
    try:
        wait_for(lambda: health(port, "live") is not None or worker.poll() is not None, 30,
                 "the worker's probe server")
        if worker.poll() is None:
            assert health(port, "live") == 200 and health(port, "ready") == 503
        # within its join timeout and slack: not after `ray health-check`'s own ~40 s of retries
        assert worker.wait(timeout=35) != 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "did not answer within 6 s" in log.read_text()


def test_a_worker_without_gpus_is_refused(tmp_path):
    env = server_environment(tmp_path)
    env.pop("AIM_RAY_NUM_GPUS", None)
    result = subprocess.run([sys.executable, "-m", "aim_runtime", "worker", "--head-address",
                             "127.0.0.1:1"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "this worker has no AMD GPU to offer" in result.stderr


# --- what KServe injects -------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "address"), [
    ({"RAY_HEAD_ADDRESS": "10.0.0.5:6379", "HEAD_SVC": "ignored"}, "10.0.0.5:6379"),
    ({"HEAD_SVC": "llama-head-3", "POD_NAMESPACE": "ml"},
     "llama-head-3.ml.svc.cluster.local:6379"),
    ({"ISVC_NAME": "llama", "POD_NAMESPACE": "ml", "RAY_PORT": "7000"},
     "llama-head.ml.svc.cluster.local:7000"),
])
def test_the_head_address_comes_from_kserves_environment(env, address):
    assert head_address_from_env(env) == address


def test_no_head_address_is_a_clear_error():
    with pytest.raises(AimError, match="no head address"):
        head_address_from_env({"POD_NAMESPACE": "ml"})


def test_cluster_spec_from_kserves_environment():
    env = {"PIPELINE_PARALLEL_SIZE": "4", "TENSOR_PARALLEL_SIZE": "8", "POD_IP": "10.1.1.1",
           "AIM_RAY_JOIN_TIMEOUT": "90"}
    nodes = nodes_from_env(env)
    spec = spec_from_env(env, nodes, gpus_per_node=8)
    assert (spec.nodes, spec.gpus_per_node, spec.address) == (4, 8, "10.1.1.1:6379")
    assert spec.join_timeout_seconds == 90
    assert nodes_from_env({}) == 1 and nodes_from_env({"AIM_NODES": "2"}) == 2
