"""The ClusterServingRuntime's container, run as KServe would run it: its command, args and env
with KServe's template variables filled (the InferenceService's name) and /mnt/models pointing
at a local model, on CPU, and (where this machine allows: root and `unshare`) on a read-only root
with only its volumes writable, as its securityContext asks. Its declared probes must answer as
Kubernetes expects, on its declared port, and the documented example request
(docs/kubernetes.md) must work against it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from servers import REPO, ServerProcess, free_port, server_environment
from testkit import run_cli

pytestmark = pytest.mark.serving

RUNTIME = yaml.safe_load((REPO / "serving_runtimes" / "aim-runtime.yaml").read_text())
CONTAINER = RUNTIME["spec"]["containers"][0]
ISVC = yaml.safe_load((REPO / "manifests" / "inferenceservice.yaml").read_text())
KUBERNETES_DOC = (REPO / "docs" / "kubernetes.md").read_text()
DECLARED_PORT = CONTAINER["ports"][0]["containerPort"]


def container_command(model_dir: Path, port: int) -> list[str]:
    """command + args as the pod runs them; the port moved consistently to a free one."""
    command = [sys.executable if part == "python3" else part for part in CONTAINER["command"]]
    args = []
    for arg in CONTAINER["args"]:
        arg = arg.replace("{{.Name}}", ISVC["metadata"]["name"])
        arg = arg.replace("/mnt/models", str(model_dir))
        arg = arg.replace(f"--http_port={DECLARED_PORT}", f"--http_port={port}")
        args.append(arg)
    return command + args


def container_env(scratch: Path) -> dict[str, str]:
    """The container's env, its home and /tmp volumes under `scratch`."""
    def local(value: str) -> str:
        return value.replace("/home/aim", f"{scratch}/home").replace("/tmp", f"{scratch}/tmp") \
            if value.startswith(("/home", "/tmp")) else value

    return {e["name"]: local(e["value"]) for e in CONTAINER["env"]}


READ_ONLY_ROOT = shutil.which("unshare") is not None and os.geteuid() == 0


def on_a_read_only_root(command: list[str], scratch: Path) -> list[str]:
    """`command` in a mount namespace of its own: / read-only, writable only its volumes
    (/dev/shm, and `scratch` for home and /tmp), each a tmpfs."""
    script = (f"mount -o remount,bind,ro / && mount -t tmpfs -o size=1g tmpfs {scratch} && "
              "mount -t tmpfs -o size=2g tmpfs /dev/shm && "
              f"mkdir -p {scratch}/home/.cache {scratch}/tmp && exec \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def probe(url: str, name: str) -> int | None:
    path = CONTAINER[name]["httpGet"]["path"]
    try:
        return httpx.get(url + path, timeout=CONTAINER[name]["timeoutSeconds"]).status_code
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def pod(tmp_path_factory, tiny_model):
    work = tmp_path_factory.mktemp("pod")
    port = free_port()
    # Short: Unix socket paths (vLLM's IPC under TMPDIR) are limited to 107 characters.
    scratch = Path(tempfile.mkdtemp(prefix="aimpod-", dir="/tmp"))
    (scratch / "home" / ".cache").mkdir(parents=True)
    (scratch / "tmp").mkdir()
    env = server_environment(work, container_env(scratch))
    command = container_command(tiny_model, port)
    if READ_ONLY_ROOT:
        command = on_a_read_only_root(command, scratch)
    process = ServerProcess(command, port, work / "pod.log", env)
    process.start()
    url = process.url
    startup = CONTAINER["startupProbe"]
    history = []
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    deadline = time.monotonic() + min(budget, 600)  # the probe's budget, capped for CI
    while time.monotonic() < deadline:
        assert process.process.poll() is None, process.log_tail()
        history.append((probe(url, "startupProbe"), probe(url, "livenessProbe")))
        if history[-1][0] == 200:
            break
        if history[-1] == (503, 200) and not hasattr(process, "early_validation"):
            process.early_validation = run_cli(  # type: ignore[attr-defined]
                "validate", "--url", url, "--timeout", "10")
        time.sleep(1)
    yield process, history
    process.dismiss()  # the namespace's tmpfs goes with it; what is left here is empty
    shutil.rmtree(scratch, ignore_errors=True)


def test_startup_probe_succeeds_and_liveness_holds_while_loading(pod):
    _, history = pod
    assert history[-1][0] == 200
    assert all(live in (200, None) for _, live in history), history
    assert any(start == 503 for start, _ in history), "the engine was never seen loading"


def test_validate_while_loading_fails_naming_readiness(pod):
    """`aim-runtime validate` run while the startup probe still answers 503."""
    process, _ = pod
    early = getattr(process, "early_validation", None)
    assert early is not None, "the startup probe was never seen at 503 with liveness 200"
    lines = early.stdout.splitlines()
    assert early.returncode == 1, early.stdout + early.stderr
    assert lines[0].split()[:2] == ["PASS", "reach"], lines
    assert lines[1].split()[:2] == ["FAIL", "ready"] and "not ready (503)" in lines[1], lines
    assert all(line.split()[0] == "SKIP" for line in lines[2:-1]), lines


def test_readiness_and_liveness_answer_on_the_declared_paths(pod):
    process, _ = pod
    assert probe(process.url, "readinessProbe") == 200
    assert probe(process.url, "livenessProbe") == 200
    model = ISVC["metadata"]["name"]
    assert httpx.get(f"{process.url}/v2/models/{model}/ready").json()["ready"] is True


def test_the_readme_kubernetes_request_works(pod):
    process, _ = pod
    block = KUBERNETES_DOC.split("<!-- k8s-curl -->\n```sh\n", 1)[1].split("```", 1)[0]
    curl_line = next(line for line in block.replace("\\\n", " ").splitlines()
                     if line.startswith("curl"))
    command = [part.replace("$SERVICE_URL", process.url) for part in shlex.split(curl_line)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    answer = json.loads(result.stdout)
    assert answer["model"] == ISVC["metadata"]["name"]
    assert answer["choices"][0]["message"]["role"] == "assistant"


def test_metrics_are_where_the_scrape_annotations_say(pod):
    process, _ = pod
    path = RUNTIME["spec"]["annotations"]["prometheus.kserve.io/path"]
    text = httpx.get(process.url + path).text
    assert "aim_plan_info{" in text and "vllm:num_requests_running" in text


@pytest.mark.skipif(not READ_ONLY_ROOT, reason="needs unshare and root to remount / read-only")
def test_the_container_serves_from_a_read_only_root(pod):
    """readOnlyRootFilesystem: the server's root is mounted read-only, and nothing it does
    (caches, compiled kernels, sockets, the model's conversion) tried to write there."""
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    process, _ = pod  # unshare and sh exec the server: the same process
    root = next(line.split() for line in Path(f"/proc/{process.process.pid}/mountinfo")
                .read_text().splitlines() if line.split()[4] == "/")
    assert "ro" in root[5].split(","), root
    assert "Read-only file system" not in process.log_path.read_text()
