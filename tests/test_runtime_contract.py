"""The ClusterServingRuntime's container, run as KServe would run it: its command, args and env
with KServe's template variables filled (the InferenceService's name) and /mnt/models pointing
at a local model, on CPU. Its declared probes must answer as Kubernetes expects, on its declared
port, and the README's example request must work against it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
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
README = (REPO / "README.md").read_text()
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


def container_env(home: Path) -> dict[str, str]:
    return {e["name"]: e["value"].replace("/home/aim", str(home)) for e in CONTAINER["env"]}


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
    env = server_environment(work, container_env(work / "home"))
    process = ServerProcess(container_command(tiny_model, port), port, work / "pod.log", env)
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
    process.dismiss()


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
    block = README.split("<!-- k8s-curl -->\n```sh\n", 1)[1].split("```", 1)[0]
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
