"""The Kubernetes files: they parse, KServe objects round-trip through the kserve SDK's models,
core objects validate against Kubernetes' schemas, kustomize builds them, the runtime and the
manifests keep their promises, and the Dockerfile is pinned, non-root and agrees with the
runtime's command."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas

from aim_runtime.deploy.render import RenderRequest, render
from aim_runtime.serving.vllm_adapter import SUPPORTED_VLLM
from testkit import MODELS, REPO

from kserve_models import is_kserve, lost_fields, round_trip

K8S_FILES = sorted([*REPO.glob("serving_runtimes/**/*.yaml"), *REPO.glob("manifests/**/*.yaml")])
DOCUMENTS = [(path, doc) for path in K8S_FILES if path.name != "kustomization.yaml"
             for doc in yaml.safe_load_all(path.read_text()) if doc]
CRDS_WITHOUT_SDK = {("monitoring.coreos.com/v1", "ServiceMonitor")}
RUNTIME = yaml.safe_load((REPO / "serving_runtimes" / "aim-runtime.yaml").read_text())
CONTAINER = RUNTIME["spec"]["containers"][0]


def ids(items):
    return [f"{path.relative_to(REPO)}:{doc['kind']}" for path, doc in items]


def test_every_yaml_file_parses():
    assert len(K8S_FILES) >= 12
    for path in K8S_FILES:
        assert list(yaml.safe_load_all(path.read_text())), path


KSERVE_DOCS = [(p, d) for p, d in DOCUMENTS if is_kserve(d)]
CORE_DOCS = [(p, d) for p, d in DOCUMENTS
             if not is_kserve(d) and (d["apiVersion"], d["kind"]) not in CRDS_WITHOUT_SDK]


@pytest.mark.parametrize(("path", "document"), KSERVE_DOCS, ids=ids(KSERVE_DOCS))
def test_kserve_objects_round_trip_through_the_sdk(path, document):
    back, problems = round_trip(document)
    assert problems == []
    assert lost_fields(document, back) == []


def test_the_sdk_check_catches_unknown_and_invalid_fields():
    document = yaml.safe_load((REPO / "manifests" / "inferenceservice.yaml").read_text())
    document["spec"]["predictor"]["gpuCount"] = 1
    document["spec"]["predictor"]["model"]["env"].append({"value": "no name"})
    _, problems = round_trip(document)
    assert any("predictor.gpuCount: unknown" in p for p in problems)
    assert any("env[9]: V1EnvVar" in p and "name" in p for p in problems)


@pytest.mark.parametrize(("path", "document"), CORE_DOCS, ids=ids(CORE_DOCS))
def test_core_objects_validate_against_kubernetes_schemas(path, document):
    kubernetes_validate.validate(document, k8s_schemas.latest_version(), strict=True)


def test_the_schema_check_catches_mistakes():
    job = next(d for _, d in CORE_DOCS if d["kind"] == "Job")
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    broken["spec"]["backofLimit"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, k8s_schemas.latest_version(), strict=True)


def test_service_monitor_scrapes_the_runtime_port_and_path():
    (monitor,) = [d for _, d in DOCUMENTS if d["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in CONTAINER["ports"] if p["name"] == endpoint["port"])
    assert endpoint["path"] == RUNTIME["spec"]["annotations"]["prometheus.kserve.io/path"]
    assert str(port["containerPort"]) == RUNTIME["spec"]["annotations"][
        "prometheus.kserve.io/port"]


def kustomization_of(path: Path) -> Path:
    """The directory of the nearest kustomization.yaml above a file."""
    return next(p for p in path.parents if (p / "kustomization.yaml").is_file())


@pytest.mark.parametrize("directory", ["manifests", "serving_runtimes", "serving_runtimes/llm",
                                       "manifests/llminferenceservice"])
def test_kustomize_builds(directory):
    assert shutil.which("kubectl"), "kubectl is part of the development machine's image"
    result = subprocess.run(["kubectl", "kustomize", str(REPO / directory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    listed = [d for p, d in DOCUMENTS if kustomization_of(p) == REPO / directory]
    assert len(built) == len(listed)


# --- the ClusterServingRuntime ------------------------------------------------------------------


def test_runtime_selectable_by_our_format_and_huggingface():
    formats = {f["name"]: f for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert formats["aim"]["autoSelect"] and formats["huggingface"]["autoSelect"]
    assert formats["huggingface"]["priority"] == 3  # documented: wins over KServe's (1, 2)
    assert set(RUNTIME["spec"]["protocolVersions"]) == {"v1", "v2"}


def test_runtime_container_runs_the_server_as_kserve_expects():
    assert CONTAINER["name"] == "kserve-container"
    args = CONTAINER["args"]
    assert args[0] == "serve" and "--model_name={{.Name}}" in args
    assert "--model_dir=/mnt/models" in args
    (port,) = CONTAINER["ports"]
    assert f"--http_port={port['containerPort']}" in args
    probes = {name: CONTAINER[name]["httpGet"] for name in
              ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {port["containerPort"]}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    startup = CONTAINER["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600  # a 400 GB load


def test_runtime_is_non_root_and_unprivileged_with_shm():
    security = CONTAINER["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in CONTAINER["volumeMounts"]}
    env = {e["name"]: e["value"] for e in CONTAINER["env"]}
    for name in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "AIM_CACHE_DIR", "XDG_CACHE_HOME",
                 "TRITON_CACHE_DIR", "TMPDIR", "MIOPEN_USER_DB_PATH"):
        assert any(env[name] == w or env[name].startswith(w + "/") for w in writable) or \
            name == "HOME", f"{name}={env[name]} is not on a writable volume"
    assert security["runAsNonRoot"] and "runAsUser" not in security  # OpenShift assigns one
    assert security["allowPrivilegeEscalation"] is False and not security.get("privileged")
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in RUNTIME["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"] == "16Gi"  # 8-rank RCCL
    assert RUNTIME["spec"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"


def test_runtime_resources_do_not_choke_vllm():
    requests = CONTAINER["resources"]["requests"]
    assert int(requests["cpu"]) >= 4
    assert int(requests["memory"].removesuffix("Gi")) >= 16
    assert "cpu" not in CONTAINER["resources"].get("limits", {})  # no CPU throttling


# --- the multi-node runtime ---------------------------------------------------------------------

MULTINODE = yaml.safe_load((REPO / "serving_runtimes" / "aim-runtime-multinode.yaml").read_text())
HEAD = MULTINODE["spec"]["containers"][0]
WORKER_SPEC = MULTINODE["spec"]["workerSpec"]


def test_multinode_runtime_is_chosen_by_name_only():
    assert all(not f["autoSelect"] for f in MULTINODE["spec"]["supportedModelFormats"])
    assert MULTINODE["metadata"]["name"] == "aim-runtime-multinode"


def test_multinode_head_is_the_single_node_server_with_the_head_role():
    assert HEAD["name"] == "kserve-container" and HEAD["command"] == CONTAINER["command"]
    assert HEAD["args"] == [CONTAINER["args"][0], "--role=head",
                            *[a for a in CONTAINER["args"][1:] if "enable_grpc" not in a]]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert HEAD[probe]["httpGet"] == CONTAINER[probe]["httpGet"]
    startup = HEAD["startupProbe"]  # cluster formation (600 s) + a ~800 GB load
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600 + 600
    env = {e["name"]: e for e in HEAD["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "TENSOR_PARALLEL_SIZE" not in env and "PIPELINE_PARALLEL_SIZE" not in env  # KServe's
    single = {e["name"]: e.get("value") for e in CONTAINER["env"]}
    assert {k: v for k, v in single.items() if k != "HF_HUB_OFFLINE"}.items() <= \
        {k: e.get("value") for k, e in env.items()}.items()


def test_multinode_workers_run_the_same_image_and_tell_the_truth():
    (worker,) = WORKER_SPEC["containers"]
    assert worker["name"] == "worker-container"
    assert worker["image"] == HEAD["image"] and worker["command"] == HEAD["command"]
    assert worker["args"][0] == "worker"
    port = int(next(a for a in worker["args"] if a.startswith("--health-port=")).split("=")[1])
    assert worker["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    join_timeout = int(next(e["value"] for e in worker["env"]
                            if e["name"] == "AIM_RAY_JOIN_TIMEOUT"))
    startup = worker["startupProbe"]  # the worker's own clear error comes before the kubelet's
    assert startup["periodSeconds"] * startup["failureThreshold"] > join_timeout
    for key in ("env", "securityContext", "volumeMounts"):
        assert worker[key] == HEAD[key], key  # vLLM's Ray workers inherit the worker's env
    assert WORKER_SPEC["volumes"] == MULTINODE["spec"]["volumes"]


# --- the manifests ------------------------------------------------------------------------------


def all_containers(document):
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                found.extend(node.get(key) or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(document)
    return found


def test_no_secrets_in_manifests_and_tokens_come_from_secrets():
    for path, document in DOCUMENTS:
        assert document["kind"] != "Secret", path
        text = yaml.safe_dump(document)
        for match in re.finditer(r"name: (\w*(TOKEN|KEY|PASSWORD)\w*)\n(\s+)(\w+):", text):
            assert match.group(4) == "valueFrom", f"{path}: {match.group(1)} set inline"


def test_images_are_never_latest():
    for path, document in DOCUMENTS:
        for container in all_containers(document):
            image = container.get("image", "")
            if image:
                assert ":" in image and not image.endswith(":latest"), (path, image)


GPU_NODE_LABEL = "amd.com/gpu.device-id"


@pytest.mark.parametrize(("path", "document"),
                         [(p, d) for p, d in KSERVE_DOCS if d["kind"] == "InferenceService"],
                         ids=ids([(p, d) for p, d in KSERVE_DOCS
                                  if d["kind"] == "InferenceService"]))
def test_inference_services_request_gpus_on_matching_nodes(path, document):
    predictors = [document["spec"]["predictor"]] + [
        c["predictor"] for c in document["spec"].get("canary", [])]
    grace = int(next(a for a in CONTAINER["args"] if a.startswith("--graceful-shutdown-seconds"))
                .split("=")[1])
    grace += int(next(e["value"] for e in CONTAINER["env"] if e["name"] == "AIM_DRAIN_SECONDS"))
    knative = document["metadata"]["annotations"][
        "serving.kserve.io/deploymentMode"] == "Knative"
    for predictor in predictors:
        # Knative sets the grace period to the revision timeout; Standard mode sets it here.
        assert predictor.get("terminationGracePeriodSeconds", predictor.get("timeout")) >= \
            grace + 10, "drain, then stop"
        assert knative != ("terminationGracePeriodSeconds" in predictor)
        resources = predictor["model"]["resources"]
        assert resources["requests"]["amd.com/gpu"] == resources["limits"]["amd.com/gpu"]
        terms = predictor["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        (expression,) = terms[0]["matchExpressions"]
        assert expression["key"] == GPU_NODE_LABEL and "74a1" in expression["values"]  # MI300X
        assert predictor["securityContext"]["runAsNonRoot"] is True
        nodes = predictor.get("workerSpec", {}).get("pipelineParallelSize", 1)
        assert predictor["model"]["runtime"] == ("aim-runtime-multinode" if nodes > 1
                                                 else "aim-runtime")
        env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
        assert int(env["AIM_TENSOR_PARALLEL_SIZE"]) * int(env["AIM_PIPELINE_PARALLEL_SIZE"]) * \
            int(env["AIM_DATA_PARALLEL_SIZE"]) == int(resources["requests"]["amd.com/gpu"]) * nodes


RENDERED = [
    ("inferenceservice.yaml", dict(model_id="meta-llama/Llama-3.1-8B-Instruct",
                                   service_account="hf-models"), "llama-3.1-8b-instruct"),
    ("inferenceservice-70b-tp8.yaml", dict(model_id="meta-llama/Llama-3.1-70B-Instruct",
                                          count=8, service_account="hf-models"),
     "llama-3.1-70b-instruct"),
    ("canary-knative.yaml", dict(model_id="meta-llama/Llama-3.1-8B-Instruct",
                                 name="llama-3-1-8b-knative", mode="knative",
                                 service_account="hf-models"), "llama-3.1-8b-instruct"),
    ("model-cache/inferenceservice-from-pvc.yaml", dict(
        model_id="meta-llama/Llama-3.1-8B-Instruct", name="llama-3-1-8b-cached",
        storage_uri="pvc://aim-models/meta-llama/Llama-3.1-8B-Instruct",
        compile_cache_pvc="aim-compile-cache"),
     "llama-3.1-8b-instruct"),
    ("lora/inferenceservice-with-adapters.yaml", dict(
        model_id="meta-llama/Llama-3.1-8B-Instruct", name="llama-3-1-8b-lora",
        storage_uri="pvc://aim-models/meta-llama/Llama-3.1-8B-Instruct",
        lora_pvc="aim-models/adapters", max_loras=4, max_lora_rank=16),
     "llama-3.1-8b-instruct"),
    ("multinode/inferenceservice-405b-2x8.yaml", dict(
        model_id="meta-llama/Llama-3.1-405B-Instruct", name="llama-3-1-405b-instruct", nodes=2,
        storage_uri="pvc://aim-models/meta-llama/Llama-3.1-405B-Instruct"),
     "llama-3.1-405b-instruct"),
]


@pytest.mark.parametrize(("file", "options", "fixture"), RENDERED, ids=[r[0] for r in RENDERED])
def test_inference_service_manifests_are_what_render_produces(file, options, fixture, catalog):
    committed = yaml.safe_load((REPO / "manifests" / file).read_text())
    rendered, _ = render(RenderRequest(model=MODELS / fixture, gpu="MI300X", **options),
                         catalog)
    assert committed == rendered


def test_standard_canary_manifest_is_what_render_produces(catalog, tmp_path):
    base = dict(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X",
                model_id="meta-llama/Llama-3.1-8B-Instruct", service_account="hf-models")
    stable, _ = render(RenderRequest(name="llama-3-1-8b-rollout", **base), catalog)
    (tmp_path / "stable.yaml").write_text(yaml.safe_dump(stable))
    canary, _ = render(RenderRequest(name="throughput", objective="throughput", traffic=10,
                                     canary_of="llama-3-1-8b-rollout",
                                     stable=tmp_path / "stable.yaml", **base), catalog)
    assert yaml.safe_load((REPO / "manifests" / "canary-standard.yaml").read_text()) == canary


# --- the image --------------------------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile.rocm").read_text()


def test_dockerfile_base_is_pinned_to_a_supported_vllm():
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, flags=re.M).group(1)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, flags=re.M)
    assert "@sha256:" in base or re.search(r":v?\d+\.\d+\.\d+", base), base
    assert not base.endswith(":latest")
    version = re.search(r":v?(\d+)\.(\d+)\.\d+", base)
    low, high = SUPPORTED_VLLM
    assert low <= (int(version.group(1)), int(version.group(2))) < high


def test_dockerfile_runs_as_a_non_root_user():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.M)
    # Numeric and not 0: the kubelet can check runAsNonRoot without a fixed runAsUser.
    assert users and users[-1].isdigit() and users[-1] != "0"
    assert f"--uid {users[-1]} " in DOCKERFILE


def test_dockerfile_entrypoint_is_the_runtimes_command():
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE, flags=re.M).group(1)
    assert yaml.safe_load(entrypoint) == CONTAINER["command"]
    assert "--constraint" in DOCKERFILE  # the image's vLLM and torch are kept
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.version"):
        assert label in DOCKERFILE
