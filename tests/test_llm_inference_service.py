"""KServe's LLM path: our LLMInferenceServiceConfig presets over KServe's own (vendored, unchanged),
merged and rendered as the controller does, then the `main` container run exactly as rendered
(command, args, env, port) on the CPU engine: /health as the preset's probes ask, OpenAI at /v1
through the openai SDK, the vllm:* series llm-d's scheduler reads, over HTTPS with a certificate
that is replaced while serving.

Merge (KServe `config_merge.go`): KServe's well-known presets first, then the service's
`baseRefs`, then the service itself, as a strategic merge (containers, env and volumes by name,
ports by containerPort, mounts by mountPath; command/args lists replaced whole). Templates are
rendered by tests/go_template.py with `.` the LLMInferenceService."""

from __future__ import annotations

import copy
import datetime
import ipaddress
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import go_template
import kube_schema
from aim_runtime.deploy.llm import render_llm
from aim_runtime.deploy.render import RenderRequest
from aim_runtime.errors import AimError
from aim_runtime.serving import cluster
from lora_adapters import make_adapter
from servers import REPO, ServerProcess, free_port, server_environment
from testkit import MODELS

STOCK = kube_schema.FIXTURES / "llmisvcconfig"
OURS = REPO / "serving_runtimes" / "llm"
EXAMPLES = REPO / "manifests" / "llminferenceservice"
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}
TLS_DIR = "/var/run/kserve/tls"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Kubernetes' strategic merge, for the fields presets use."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        field = MERGE_KEYS[key]
        merged_list = list(base)
        for item in patch:
            index = next((i for i, b in enumerate(merged_list) if b.get(field) == item[field]),
                         None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def well_known(service: dict[str, Any]) -> list[str]:
    """KServe's workload presets for this shape of service (config_merge.go)."""
    spec = service["spec"]
    if spec.get("prefill"):
        return ["config-llm-prefill-template", "config-llm-decode-template"]
    if spec.get("worker"):
        pipeline = (spec.get("parallelism") or {}).get("pipeline")
        return ["config-llm-worker-pipeline-parallel" if pipeline
                else "config-llm-worker-data-parallel"]
    return ["config-llm-template"]


def preset(name: str) -> dict[str, Any]:
    """A preset by the name the controller looks up: ours first (we ship one well-known name
    KServe does not), else KServe's vendored one."""
    for path in [*OURS.glob("*.yaml"), *STOCK.glob("*.yaml")]:
        document = load(path)
        if document.get("kind") == "LLMInferenceServiceConfig" and \
                document["metadata"]["name"] in (name, f"kserve-{name}"):
            return document
    raise LookupError(name)


def merged_spec(service: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for name in well_known(service):
        spec = merge(spec, preset(name)["spec"])
    for ref in service["spec"].get("baseRefs", []):
        spec = merge(spec, preset(ref["name"])["spec"])
    return merge(spec, {k: v for k, v in service["spec"].items() if k != "baseRefs"})


def rendered(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: rendered(v, context) for k, v in node.items()}
    if isinstance(node, list):
        return [rendered(v, context) for v in node]
    return go_template.render(node, context) if isinstance(node, str) else node


def context(service: dict[str, Any], tls: bool) -> dict[str, Any]:
    service = copy.deepcopy(service)
    service["metadata"].setdefault("namespace", "default")
    service["spec"]["model"].setdefault("name", service["metadata"]["name"])
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    return {**service, "GlobalConfig": {
        "EnableTLS": tls, "SystemNamespace": "kserve", "IngressGatewayName": "kserve-gateway",
        "IngressGatewayNamespace": "kserve", "ModelBasedRoutingHeaderName": "x-model",
        "InferencePoolNamespacedName": f"{namespace}/{name}-inference-pool"}}


def main_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "main")


def flag(command: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in command if a.startswith(name + "="))


SERVICES = {path.name: load(path) for path in sorted(EXAMPLES.glob("*.yaml"))
            if path.name != "kustomization.yaml"}


# --- the presets, merged and rendered -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
@pytest.mark.parametrize("tls", [False, True])
def test_every_template_renders_for_every_example(name, tls):
    service = SERVICES[name]
    spec = rendered(merged_spec(service), context(service, tls))
    text = yaml.safe_dump(spec)
    assert "{{" not in text and "}}" not in text
    pods = [spec["template"], *(p["template"] for p in [spec.get("prefill")] if p)]
    for pod in pods:
        main = main_container(pod)
        assert main["command"][:4] == ["python3", "-m", "aim_runtime", "serve"]
        port = int(flag(main["command"], "--http_port"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["httpGet"]["port"] == port
            assert main[probe]["httpGet"]["scheme"] == ("HTTPS" if tls else "HTTP")
        assert main["readinessProbe"]["httpGet"]["path"] == "/health"
        assert ("--ssl-certfile=" + TLS_DIR + "/tls.crt" in main["command"]) == tls
        mounts = {m["mountPath"] for m in main["volumeMounts"]}  # KServe's volumes, kept
        assert {"/home", "/tmp", "/dev/shm", TLS_DIR} <= mounts
    assert kube_schema.validate(service) == []


def test_decode_listens_where_kserves_routing_sidecar_forwards():
    service = SERVICES["prefill-decode.yaml"]
    spec = rendered(merged_spec(service), context(service, False))
    sidecar = next(c for c in spec["template"]["initContainers"]
                   if c["name"] == "llm-d-routing-sidecar")
    decode, prefill = main_container(spec["template"]), main_container(spec["prefill"]["template"])
    assert flag(decode["command"], "--http_port") == flag(sidecar["command"], "--vllm-port")
    assert flag(prefill["command"], "--http_port") == flag(sidecar["command"], "--port")
    for main in (decode, prefill):
        extra = next(e["value"] for e in main["env"] if e["name"] == "VLLM_ADDITIONAL_ARGS")
        assert "NixlConnector" in extra
        assert any(e["name"] == "VLLM_NIXL_SIDE_CHANNEL_HOST" for e in main["env"])


def test_shutdown_timeout_follows_the_pods_grace_period():
    service = SERVICES["llama-3.1-8b.yaml"]
    main = main_container(rendered(merged_spec(service), context(service, False))["template"])
    grace = service["spec"]["template"]["terminationGracePeriodSeconds"]
    assert int(flag(main["command"], "--shutdown-timeout")) == grace - 15 - 5  # preStop 15 s


def test_the_multi_node_preset_forms_one_ray_cluster_per_group():
    service = SERVICES["multi-node-405b.yaml"]
    spec = rendered(merged_spec(service), context(service, False))
    leader, worker = main_container(spec["template"]), main_container(spec["worker"])
    nodes = service["spec"]["parallelism"]["pipeline"]
    assert "--role=head" in leader["command"] and flag(leader["command"], "--nodes") == str(nodes)
    assert worker["command"][3] == "worker"
    lws = {"LWS_LEADER_ADDRESS": "llama-405b-0.llama-405b", "LWS_GROUP_SIZE": str(nodes)}
    env = {e["name"]: e.get("value", "") for e in worker["env"]} | lws
    assert cluster.head_address_from_env(env) == f"llama-405b-0.llama-405b:{env['RAY_PORT']}"
    assert cluster.nodes_from_env(lws) == nodes


def test_pinned_parallelism_and_different_container_args_are_refused():
    from aim_runtime.cli.serve import normalize_argv

    service = copy.deepcopy(SERVICES["llama-3.1-8b.yaml"])
    service["spec"]["parallelism"]["tensor"] = 2
    main = main_container(rendered(merged_spec(service), context(service, False))["template"])
    with pytest.raises(AimError, match="--tensor-parallel-size is given twice: 2, then 4"):
        normalize_argv([*main["command"][4:], "--tensor-parallel-size", "4"], environ={})


# --- render ------------------------------------------------------------------------------------


# (RenderRequest options, prefill replicas) of every shape render_llm produces
LLM_RENDERS = [
    (dict(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X",
          model_id="meta-llama/Llama-3.1-8B-Instruct"), 0),
    (dict(model=MODELS / "llama-3.1-70b-instruct", gpu="MI355X", storage_uri="pvc://m/70b"), 0),
    (dict(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X", storage_uri="s3://m/8b",
          service_account="hf-models"), 2),
    (dict(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X", nodes=2,
          storage_uri="pvc://m/405b"), 0),
]


@pytest.mark.parametrize(("kwargs", "prefill"), LLM_RENDERS)
def test_rendered_services_pass_the_crd_and_pin_the_plan(catalog, kwargs, prefill):
    service, plan = render_llm(RenderRequest(**kwargs), catalog, prefill_replicas=prefill)
    assert kube_schema.validate(service) == []
    spec = service["spec"]
    assert spec["parallelism"]["tensor"] == plan.tensor_parallel_size
    env = {e["name"]: e["value"] for e in main_container(spec["template"])["env"]}
    assert env["AIM_TENSOR_PARALLEL_SIZE"] == str(plan.tensor_parallel_size)
    gpus = main_container(spec["template"])["resources"]["limits"]["amd.com/gpu"]
    assert int(gpus) == (plan.devices_per_node if plan.nodes > 1 else plan.devices_used)
    assert well_known(service)  # a shape KServe has a preset for (ours for pipeline)
    preset_names = {r["name"] for r in spec.get("baseRefs", [])}
    assert preset_names <= {"aim-runtime-llm", "aim-runtime-llm-pd"}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mode="knative"), "--mode knative: not available"),
    (dict(canary_of="x", traffic=5), "--canary-of/--traffic"),
    (dict(gpu="H100"), "--gpu H100"),
])
def test_render_refuses_what_the_llm_path_does_not_have(catalog, kwargs, message):
    base = dict(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X", storage_uri="pvc://m/8b")
    with pytest.raises(AimError, match=message):
        render_llm(RenderRequest(**{**base, **kwargs}), catalog)


# --- the container, run as rendered ------------------------------------------------------------


def self_signed(directory: Path, common_name: str) -> Path:
    """tls.crt and tls.key for 127.0.0.1, as KServe's self-signed certificate Secret holds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return directory / "tls.crt"


def trust(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


def served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


@pytest.fixture(scope="module")
def pod(tmp_path_factory, tiny_model):
    """The single-node preset's main container for a service of the tiny model, TLS on."""
    work = tmp_path_factory.mktemp("llm-pod")
    service = {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService",
               "metadata": {"name": "tiny", "namespace": "team"},
               "spec": {"model": {"uri": "pvc://models/tiny", "name": "tiny"},
                        "baseRefs": [{"name": "aim-runtime-llm"}],
                        "template": {"containers": [{"name": "main"}]}}}
    assert kube_schema.validate(service) == []
    main = main_container(rendered(merged_spec(service), context(service, True))["template"])
    port = free_port()
    declared = int(flag(main["command"], "--http_port"))
    paths = {"/mnt/models": str(tiny_model), TLS_DIR: str(work / "tls"),
             "/home": str(work / "home"), "/tmp": str(work / "tmp")}

    def local(text: str) -> str:
        """A container path (alone or as a flag's value) as the volume mounted here."""
        flag_, sep, value = text.partition("=") if text.startswith("--") else ("", "", text)
        for container_path, here in paths.items():
            if value == container_path or value.startswith(container_path + "/"):
                return flag_ + sep + here + value[len(container_path):]
        return text

    command = [sys.executable if part == "python3" else local(part) for part in main["command"]]
    command = [a.replace(f"--http_port={declared}", f"--http_port={port}") for a in command]
    # spec.model.lora: the controller appends vLLM's LoRA flags to the container's args
    adapter = make_adapter(work / "lora" / "alpha", tiny_model, rank=8)
    command += ["--enable-lora", "--max-lora-rank=8", "--max-loras=1", "--max-cpu-loras=1",
                "--lora-modules", f"alpha={adapter}"]
    env = {e["name"]: local(e["value"]) for e in main["env"] if "value" in e}
    for directory in ("home", "tmp"):
        (work / directory).mkdir()
    certificate = self_signed(work / "tls", "first")
    process = ServerProcess(command, port, work / "pod.log", server_environment(work, env))
    process.start()
    url = f"https://127.0.0.1:{port}"
    probe = main["readinessProbe"]["httpGet"]
    deadline = time.monotonic() + 600
    with httpx.Client(verify=trust(certificate), timeout=5) as client:
        while time.monotonic() < deadline:
            assert process.process.poll() is None, process.log_tail()
            try:
                if client.get(url + probe["path"]).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("never ready:\n" + process.log_tail())
    yield process, url, certificate, work
    process.dismiss()


@pytest.mark.serving
def test_the_rendered_container_serves_openai_at_v1_over_https(pod):
    import openai

    _, url, certificate, _ = pod
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused",
                           http_client=httpx.Client(verify=trust(certificate)))
    assert {m.id for m in client.models.list()} == {"tiny", "publishers/team/models/tiny",
                                                     "alpha"}  # spec.model.lora's adapter
    chat = client.chat.completions.create(model="tiny", max_tokens=4,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
    completion = client.completions.create(model="publishers/team/models/tiny", prompt="Hi",
                                           max_tokens=3)
    assert completion.choices[0].text is not None
    adapted = client.completions.create(model="alpha", prompt="Hi", max_tokens=3)
    assert adapted.model == "alpha"
    with pytest.raises(openai.NotFoundError):  # a clear 404, and the server keeps serving
        client.completions.create(model="other", prompt="Hi", max_tokens=1)
    with httpx.Client(verify=trust(certificate)) as http:
        assert http.get(url + "/health").status_code == 200
        assert http.get(url + "/v2/health/live").status_code == 200


@pytest.mark.serving
def test_the_scheduler_finds_the_vllm_series_it_reads(pod):
    _, url, certificate, _ = pod
    text = httpx.get(url + "/metrics", verify=trust(certificate)).text
    for series in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                   "vllm:kv_cache_usage_perc", "vllm:cache_config_info",
                   "vllm:lora_requests_info"):
        lines = [line for line in text.splitlines() if line.startswith(series + "{")]
        assert lines, series
        if series != "vllm:lora_requests_info":  # vLLM labels it with max_lora and adapters
            assert all('engine="' in line for line in lines), series  # llm-d's rank label
    assert "block_size=" in next(line for line in text.splitlines()
                                 if line.startswith("vllm:cache_config_info{"))


@pytest.mark.serving
def test_a_replaced_certificate_is_served_without_a_restart(pod):
    process, url, _, work = pod
    before = served_certificate(process.port)
    renewed = self_signed(work / "tls", "renewed")
    deadline = time.monotonic() + 30
    while served_certificate(process.port) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served_certificate(process.port).strip() == renewed.read_text().strip()
    assert httpx.get(url + "/health", verify=trust(renewed)).status_code == 200
    assert process.process.poll() is None


@pytest.mark.serving
def test_sigterm_stops_the_pod_cleanly_with_a_client_connection_idle(pod):
    """A client's keep-alive TLS connection, idle, does not hold the exit: closing TLS waits for
    the client's close_notify, up to 30 s (the event loop's), which held the pod that long, its
    whole grace period (terminationGracePeriodSeconds, 30 by default)."""
    process, url, certificate, _ = pod
    with httpx.Client(verify=trust(certificate)) as idle:
        assert idle.get(url + "/health").status_code == 200  # then kept alive, idle
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=25) == 0
