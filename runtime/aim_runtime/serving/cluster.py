"""Ray cluster formation for multi-node serving (KServe's workerSpec; vLLM's Ray executor).

One image, two roles:
- head (`aim-runtime serve --role head`): starts the Ray head, waits until the expected nodes and
  GPUs have joined, then vLLM runs with `--distributed-executor-backend ray`. The HTTP server is up
  meanwhile: liveness 200, readiness 503. If the workers do not all arrive within the join timeout,
  start-up fails with a message saying how many did.
- worker (`aim-runtime worker`): waits for the head's Ray GCS (up to the join timeout, else a clear
  error), joins it and stays up; a small HTTP server reports health on the probe port. If its Ray
  node process ends, the worker exits non-zero so Kubernetes restarts it.

KServe injects PIPELINE_PARALLEL_SIZE (nodes) and TENSOR_PARALLEL_SIZE (GPUs per node) into both
pods, and HEAD_SVC, the head's Service, into the workers (`head_address_from_env`). Each node
declares its GPUs to Ray from our own detection (`--num-gpus`), not Ray's, so partitions and
device-plugin visibility count the same way the planner counted them. The `ray` command is run
without a shell, with arguments built here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.serving import process_env

log = logging.getLogger(__name__)

# Where a worker pod answers its probes: KServe's HTTP port, which the workerSpec's probes ask.
WORKER_HEALTH_PORT = 8080
RAY_NODE_STARTED = "Ray runtime started"  # printed by `ray start` once the node has joined
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class ClusterSpec:
    """What the head waits for: this many nodes and GPUs in the Ray cluster."""

    nodes: int
    gpus_per_node: int
    port: int = settings.RAY_PORT.default
    join_timeout_seconds: float = settings.RAY_JOIN_TIMEOUT.default
    node_ip: str | None = None
    ray_gpus: int | None = None  # GPUs the head declares to Ray (None: gpus_per_node)

    @property
    def address(self) -> str:
        return f"{self.node_ip or '127.0.0.1'}:{self.port}"


@dataclass(frozen=True)
class ClusterStatus:
    nodes: int
    gpus: float




def nodes_from_env(environ: Mapping[str, str]) -> int:
    """Nodes of the deployment: KServe's PIPELINE_PARALLEL_SIZE (workerSpec), else the
    LeaderWorkerSet's LWS_GROUP_SIZE (LLMInferenceService), else AIM_NODES."""
    return (settings.KSERVE_PIPELINE_PARALLEL_SIZE.read(environ)
            or settings.LWS_GROUP_SIZE.read(environ)
            or settings.NODES.read(environ) or 1)


def spec_from_env(environ: Mapping[str, str], nodes: int, gpus_per_node: int) -> ClusterSpec:
    """The cluster a multi-node head forms, with what KServe injects into the pod."""
    declared = settings.KSERVE_TENSOR_PARALLEL_SIZE.read(environ)
    if declared is not None and declared != gpus_per_node:
        raise AimError(f"TENSOR_PARALLEL_SIZE={declared} (GPUs per node, from workerSpec) but "
                       f"this node has {gpus_per_node} GPU(s)",
                       "set workerSpec.tensorParallelSize to the amd.com/gpu each pod requests")
    return ClusterSpec(
        nodes=nodes, gpus_per_node=gpus_per_node,
        port=settings.RAY_PORT.read(environ),
        join_timeout_seconds=settings.RAY_JOIN_TIMEOUT.read(environ),
        node_ip=settings.POD_IP.read(environ),
        ray_gpus=settings.RAY_NUM_GPUS.read(environ),
    )


def form_cluster(spec: ClusterSpec) -> ClusterStatus:
    """Head role: start the Ray head, wait for every node, and point vLLM's Ray executor at it."""
    start_head(spec)
    status = wait_for_cluster(spec)
    process_env.export({"RAY_ADDRESS": spec.address}, "vLLM's Ray executor")
    return status


def head_address_from_env(environ: Mapping[str, str]) -> str:
    """The head's Ray address as a worker reaches it: RAY_HEAD_ADDRESS, else the leader of a
    LeaderWorkerSet (LWS_LEADER_ADDRESS, LLMInferenceService), else the head Service KServe
    names in HEAD_SVC (0.15+: `<isvc>-head-<generation>`), else `<ISVC_NAME>-head`."""
    given = settings.RAY_HEAD_ADDRESS.read(environ)
    if given:
        return given
    port = settings.RAY_PORT.read(environ)
    leader = settings.LWS_LEADER_ADDRESS.read(environ)
    if leader:  # a LeaderWorkerSet (LLMInferenceService workers)
        return f"{leader}:{port}"
    namespace = settings.POD_NAMESPACE.read(environ)
    isvc = settings.KSERVE_ISVC_NAME.read(environ)
    service = settings.KSERVE_HEAD_SVC.read(environ) or (f"{isvc}-head" if isvc else None)
    if not (service and namespace):
        raise AimError("no head address: set RAY_HEAD_ADDRESS (host:port), or HEAD_SVC and "
                       "POD_NAMESPACE (KServe sets them in multi-node deployments)")
    return f"{service}.{namespace}.svc.cluster.local:{port}"


def ray_command(*args: str) -> list[str]:
    """The `ray` CLI of this environment."""
    found = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    return [found, *args]


def start_head(spec: ClusterSpec) -> None:
    args = ["start", "--head", f"--port={spec.port}", "--disable-usage-stats",
            "--include-dashboard=false"]
    if spec.node_ip:
        args.append(f"--node-ip-address={spec.node_ip}")
    args.append(f"--num-gpus={spec.gpus_per_node if spec.ray_gpus is None else spec.ray_gpus}")
    _run_ray(args, "could not start the Ray head")


def stop_ray() -> None:
    subprocess.run(ray_command("stop", "--force"), capture_output=True, timeout=60, check=False)


def wait_for_cluster(spec: ClusterSpec) -> ClusterStatus:
    """Block until `spec.nodes` nodes with `spec.nodes * spec.gpus_per_node` GPUs are alive."""
    import ray

    wanted_gpus = spec.nodes * spec.gpus_per_node
    ray.init(address=spec.address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        deadline = time.monotonic() + spec.join_timeout_seconds
        while True:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            status = ClusterStatus(len(alive), sum(n["Resources"].get("GPU", 0) for n in alive))
            if status.nodes >= spec.nodes and status.gpus >= wanted_gpus:
                log.info("Ray cluster formed: %d nodes, %g GPUs", status.nodes, status.gpus)
                return status
            if time.monotonic() > deadline:
                raise AimError(
                    f"only {status.nodes} of {spec.nodes} nodes ({status.gpus:g} of "
                    f"{wanted_gpus} GPUs) joined the Ray cluster at {spec.address} within "
                    f"{spec.join_timeout_seconds:g} s",
                    "check the worker pods (kubectl get pods -l "
                    "serving.kserve.io/inferenceservice=<name>): they must reach the head on "
                    f"port {spec.port}; AIM_RAY_JOIN_TIMEOUT waits longer")
            log.info("waiting for the Ray cluster: %d of %d nodes, %g of %d GPUs", status.nodes,
                     spec.nodes, status.gpus, wanted_gpus)
            time.sleep(POLL_SECONDS)
    finally:
        ray.shutdown()  # only this driver disconnects; the cluster stays


def wait_for_head(address: str, timeout_seconds: float) -> None:
    """Block until the head's Ray GCS answers, or fail clearly. Each check is cut at the
    deadline: `ray health-check` retries an address that does not answer for about 40 s."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if _head_answers(address, max(deadline - time.monotonic(), HEALTH_CHECK_FLOOR_SECONDS)):
            return
        if time.monotonic() > deadline:
            raise AimError(f"the Ray head at {address} did not answer within "
                           f"{timeout_seconds:g} s",
                           "is the head pod running? (its Service <isvc>-head must exist); "
                           "AIM_RAY_JOIN_TIMEOUT waits longer")
        time.sleep(POLL_SECONDS)


HEALTH_CHECK_FLOOR_SECONDS = 5.0  # what `ray health-check` needs to start and answer


def _head_answers(address: str, within_seconds: float) -> bool:
    try:
        check = subprocess.run(ray_command("health-check", f"--address={address}"),
                               capture_output=True, timeout=within_seconds, check=False)
    except subprocess.TimeoutExpired:
        return False
    return check.returncode == 0


class WorkerHealth:
    """Probe answers of a worker: live while the process runs and its Ray node is up, ready once
    it has joined the head."""

    def __init__(self) -> None:
        self.joined = False
        self.failed = False

    def serve(self, port: int) -> ThreadingHTTPServer:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/v2/health/live":
                    status = 503 if health.failed else 200
                elif self.path == "/v2/health/ready":
                    status = 200 if health.joined and not health.failed else 503
                else:
                    status = 404
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": %d}' % status)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def worker_gpus(environ: Mapping[str, str]) -> int:
    """GPUs a worker node declares to Ray: AIM_RAY_NUM_GPUS, else what detection finds."""
    declared = settings.RAY_NUM_GPUS.read(environ)
    if declared is not None:
        return declared
    from aim_runtime.hardware import detect

    inventory = detect(environ=dict(environ))
    if inventory.is_simulated or not inventory.devices:
        raise AimError(f"this worker has no AMD GPU to offer ({inventory.source} inventory)",
                       "request amd.com/gpu in workerSpec (or set AIM_RAY_NUM_GPUS)")
    return len(inventory.devices)


def run_worker(address: str, timeout_seconds: float, health: WorkerHealth, ray_gpus: int,
               node_ip: str | None = None) -> int:
    """Join the head and stay up until the Ray node process ends (SIGTERM ends it too)."""
    wait_for_head(address, timeout_seconds)
    args = ["start", f"--address={address}", "--block", "--disable-usage-stats",
            f"--num-gpus={ray_gpus}"]
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    log.info("joining the Ray cluster at %s", address)
    node = subprocess.Popen(ray_command(*args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stopping: list[int] = []  # a plain list: a signal handler must not take locks

    def terminate(signum: int, frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)  # `ray start --block` stops this node's Ray

    signal.signal(signal.SIGTERM, terminate)
    assert node.stdout is not None
    for line in node.stdout:  # Ray's own output, passed through; it says when the node is up
        sys.stdout.write(line)
        sys.stdout.flush()
        if RAY_NODE_STARTED in line:
            health.joined = True
            log.info("joined the Ray cluster at %s", address)
    code = node.wait()
    if stopping:
        return 0
    health.failed = True
    log.error("the Ray node process ended with code %d", code)
    return code or 1


def _run_ray(args: list[str], what: str) -> None:
    result = subprocess.run(ray_command(*args), capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AimError(f"{what}: " + " | ".join(tail), "see the pod's log for Ray's output")


def worker_main(head_address: str | None, join_timeout: float, health_port: int) -> int:
    """`aim-runtime worker` (cli/worker.py): join the head at `head_address`, else the one
    KServe's environment names, and stay up."""
    address = head_address or head_address_from_env(os.environ)
    gpus = worker_gpus(os.environ)
    health = WorkerHealth()
    health.serve(health_port)
    log.info("worker: %d GPU(s), head at %s", gpus, address)
    return run_worker(address, join_timeout, health, gpus, settings.POD_IP.read())
