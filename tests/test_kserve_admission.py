"""Every object we ship or render, held against KServe itself: the vendored CRDs (as the API
server validates custom resources) and KServe's and Knative's admission and controller rules
(tests/kserve_rules.py, each naming its source)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonpatch
import pytest
import yaml

import kserve_rules as rules
import kube_schema
from aim_runtime.deploy.render import RenderRequest, render
from aim_runtime.hardware.products import PRODUCTS
from testkit import MODELS, REPO

SHIPPED = [(path, doc) for path in sorted([*REPO.glob("serving_runtimes/**/*.yaml"),
                                           *REPO.glob("manifests/**/*.yaml")])
           if path.name != "kustomization.yaml"
           for doc in yaml.safe_load_all(path.read_text()) if doc]
RUNTIMES = {d["metadata"]["name"]: d for _, d in SHIPPED if d["kind"] == "ClusterServingRuntime"}
STOCK_RUNTIMES = [yaml.safe_load(p.read_text()) for p in
                  sorted((kube_schema.FIXTURES / "runtimes").glob("*.yaml"))]
STOCK_STORAGE = [d for d in yaml.safe_load_all(
    (kube_schema.FIXTURES / "storagecontainers" / "default.yaml").read_text()) if d]
SERVICES = [(p, d) for p, d in SHIPPED if d["kind"] == "InferenceService"]
LLAMA_8B = dict(model=MODELS / "llama-3.1-8b-instruct", model_id="meta-llama/Llama-3.1-8B-Instruct")
# `amd.com/gpu.device-id` values the AMD node labeller writes for each product: the PCI device ids
# of libdrm's amdgpu.ids (ROCm/k8s-device-plugin cmd/k8s-node-labeller/amdgpu.ids), physical,
# virtual (VF) and hybrid (HF) functions.
LABELLER_IDS = {"MI300X": {"74a1", "74b5", "74a9", "74bd"}, "MI325X": {"74a5", "74b9"},
                "MI350X": {"75a0", "75b0"}, "MI355X": {"75a3", "75b3"},
                "MI308X": {"74a2", "74b6", "74a8", "74bc"}, "MI210": {"740f"}}


def ids(items):
    return [f"{p.relative_to(REPO)}:{d['kind']}:{d['metadata']['name']}" for p, d in items]


def render_requests(stable_file: Path) -> dict[str, RenderRequest]:
    """One request for every shape `render` produces: modes, canaries, multi-node, counts; a
    Standard-mode canary extends the service in `stable_file` (`stable_service`)."""
    return {
        "standard": RenderRequest(gpu="MI300X", **LLAMA_8B),
        "standard-hf-token": RenderRequest(gpu="MI355X", service_account="hf-models",
                                           **LLAMA_8B),
        "knative": RenderRequest(gpu="MI325X", mode="knative", **LLAMA_8B),
        "tp8": RenderRequest(model=MODELS / "llama-3.1-70b-instruct", gpu="MI300X", count=8,
                             storage_uri="s3://models/llama-70b"),
        "pvc": RenderRequest(gpu="MI300X", storage_uri="pvc://models/llama", **LLAMA_8B),
        "mi250": RenderRequest(model=MODELS / "mistral-7b-instruct-v0.3", gpu="MI250",
                               model_id="mistralai/Mistral-7B-Instruct-v0.3"),
        "canary-knative": RenderRequest(gpu="MI300X", mode="knative", canary_of="chat",
                                        traffic=10, objective="throughput", **LLAMA_8B),
        "canary-standard": RenderRequest(gpu="MI300X", canary_of="chat", traffic=10,
                                         stable=stable_file, name="fp8",
                                         objective="throughput", **LLAMA_8B),
        "multinode": RenderRequest(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X",
                                   nodes=2, storage_uri="pvc://models/405b"),
        "multinode-mi355x": RenderRequest(model=MODELS / "deepseek-v3", gpu="MI355X", nodes=2,
                                          count=8, storage_uri="oci://registry/deepseek:v3"),
        "multinode-compile-cache": RenderRequest(
            model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X", nodes=2,
            storage_uri="pvc://models/405b", compile_cache_pvc="aim-compile-cache"),
        "lora": RenderRequest(gpu="MI300X", storage_uri="pvc://models/llama",
                              lora_pvc="models/adapters", max_loras=4, **LLAMA_8B),
    }


STABLE_REQUEST = RenderRequest(gpu="MI300X", name="chat", **LLAMA_8B)


def rendered_variants(tmp: Path, catalog) -> list[tuple[str, dict]]:
    """One object for every shape `render` produces (render_requests), and the stable service
    the Standard-mode canary extends."""
    stable, _ = render(STABLE_REQUEST, catalog)
    stable_file = tmp / "stable.yaml"
    stable_file.write_text(yaml.safe_dump(stable))
    return [("stable", stable), *((name, render(request, catalog)[0])
                                  for name, request in render_requests(stable_file).items())]


@pytest.fixture(scope="module")
def variants(tmp_path_factory, catalog) -> list[tuple[str, dict]]:
    return rendered_variants(tmp_path_factory.mktemp("render"), catalog)


def all_services(variants) -> list[tuple[str, dict]]:
    return [(str(p.relative_to(REPO)), d) for p, d in SERVICES] + variants


# --- the CRDs, as the API server applies them -------------------------------------------------


@pytest.mark.parametrize(("path", "document"),
                         [(p, d) for p, d in SHIPPED if kube_schema.is_custom(d)],
                         ids=ids([(p, d) for p, d in SHIPPED if kube_schema.is_custom(d)]))
def test_shipped_custom_resources_pass_the_vendored_crds(path, document):
    assert kube_schema.validate(document) == []


def test_rendered_services_pass_the_vendored_crd(variants):
    for name, document in variants:
        assert kube_schema.validate(document) == [], name


def test_the_schema_check_refuses_what_the_api_server_refuses():
    service = copy.deepcopy(SERVICES[0][1])
    service["spec"]["predictor"]["gpuCount"] = 1  # unknown field: refused, not pruned
    service["spec"]["predictor"]["deploymentStrategy"] = {"type": "Sideways"}
    service["spec"]["predictor"]["model"]["env"].append({"value": "no name"})
    service["spec"]["predictor"]["timeout"] = "long"
    service["metadata"]["name"] = "Not_A_Name"
    problems = "\n".join(kube_schema.validate(service))
    assert ".spec.predictor: Additional properties are not allowed ('gpuCount'" in problems
    assert "'name' is a required property" in problems
    assert "'long' is not of type 'integer'" in problems
    assert "metadata.name: 'Not_A_Name' is not a DNS-1123 subdomain" in problems
    canary = copy.deepcopy(service)
    canary["spec"]["canary"] = [{"predictor": {"name": "x", "model": {}}}]
    assert any("'trafficPercent' is a required property" in p
               for p in kube_schema.validate(canary))


def test_list_map_keys_refuse_duplicates():
    runtime = copy.deepcopy(RUNTIMES["aim-runtime"])
    ports = runtime["spec"]["containers"][0]["ports"]
    ports.append(dict(ports[0], name="again"))
    assert any("Duplicate value" in p for p in kube_schema.validate(runtime))


# --- ClusterServingRuntimes: priorities, multi-node -------------------------------------------


def test_our_runtimes_collide_with_no_stock_runtime_nor_each_other():
    installed = [*STOCK_RUNTIMES, *RUNTIMES.values()]
    for runtime in RUNTIMES.values():
        assert rules.priority_conflicts(runtime, installed) == []


def test_the_priority_rule_refuses_a_tie_with_the_stock_multinode_runtime():
    runtime = copy.deepcopy(RUNTIMES["aim-runtime"])
    for model_format in runtime["spec"]["supportedModelFormats"]:
        if model_format["name"] == "huggingface":
            model_format["priority"] = 2  # what this runtime shipped before
    problems = rules.priority_conflicts(runtime, STOCK_RUNTIMES)
    assert problems == ["same priority assigned for the model format huggingface in the "
                        "clusterservingruntimes aim-runtime and "
                        "kserve-huggingfaceserver-multinode"]


def test_huggingface_models_choose_our_runtime_over_kserves():
    def best(runtimes):
        candidates = [(f.get("priority", 0), r["metadata"]["name"]) for r in runtimes
                      for f in r["spec"]["supportedModelFormats"]
                      if f["name"] == "huggingface" and f.get("autoSelect")
                      and not r["spec"].get("workerSpec")]
        return max(candidates)[1]

    assert best([*STOCK_RUNTIMES, *RUNTIMES.values()]) == "aim-runtime"


def test_the_multinode_runtime_passes_kserves_multinode_checks():
    assert rules.multinode_runtime_problems(RUNTIMES["aim-runtime-multinode"]) == []


def test_multinode_pods_stay_valid_after_kserve_injects_its_env():
    spec = RUNTIMES["aim-runtime-multinode"]["spec"]
    head = spec["containers"][0]
    worker = spec["workerSpec"]["containers"][0]
    assert rules.env_problems(rules.inject_env(head["env"], rules.HEAD_INJECTED)) == []
    assert rules.env_problems(rules.inject_env(worker["env"], rules.WORKER_INJECTED)) == []
    # What the runtime reads but KServe does not inject is declared by the runtime itself.
    for container in (head, worker):
        declared = {e["name"] for e in container["env"]}
        assert {"POD_IP", "POD_NAMESPACE", "RAY_PORT"} <= declared


def test_the_injection_rule_catches_a_field_ref_kserve_overwrites():
    env = [{"name": "ISVC_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert rules.env_problems(rules.inject_env(env, rules.WORKER_INJECTED)) == [
        "env ISVC_NAME: may not have both value and valueFrom"]


def test_multinode_services_follow_kserves_rules(variants):
    services = [(n, d) for n, d in all_services(variants)
                if "workerSpec" in d["spec"]["predictor"]]
    assert len(services) >= 3
    for name, service in services:
        assert rules.multinode_service_problems(service) == [], name
        predictor = service["spec"]["predictor"]
        assert rules.unknown_gpu_resources(predictor["model"]["resources"]) == []
        for container in predictor["workerSpec"].get("containers", []):
            assert rules.unknown_gpu_resources(container.get("resources", {})) == []
    broken = copy.deepcopy(services[0][1])
    broken["spec"]["predictor"]["model"]["storageUri"] = "hf://meta-llama/x"
    broken["metadata"]["annotations"].pop("serving.kserve.io/autoscalerClass")
    assert len(rules.multinode_service_problems(broken)) == 2


# --- canaries, both modes, and the documented steps -------------------------------------------


def documented_patches(path: Path) -> dict[str, list[dict]]:
    """The `kubectl patch ... -p '<json>'` commands of a manifest's header, by step name."""
    steps: dict[str, list[dict]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        label = re.match(r"#\s+(\w[\w ]*?):\s", line)
        if label:
            name = label.group(1)
        for patch in re.findall(r"kubectl patch isvc \S+ --type json -p '([^']+)'", line):
            steps.setdefault(name, []).append(json.loads(patch))
    return steps


def test_standard_canary_steps_are_accepted_by_kserve():
    path = REPO / "manifests" / "canary-standard.yaml"
    service = yaml.safe_load(path.read_text())
    assert rules.canary_problems(service) == []
    steps = documented_patches(path)
    assert set(steps) == {"shift", "promote", "roll back"}
    for step, patches in steps.items():
        current = service
        for patch in patches:
            updated = jsonpatch.apply_patch(current, patch)
            assert kube_schema.validate(updated) == [], step
            assert rules.canary_problems(updated) == [], step
            assert rules.predictor_name_change_problems(current, updated) == [], step
            current = updated
        if step in ("promote", "roll back"):
            assert "canary" not in current["spec"], step
    promoted = current_after(service, steps["promote"])
    canary_model = service["spec"]["canary"][0]["predictor"]["model"]
    assert promoted["spec"]["predictor"]["model"]["env"] == canary_model["env"]


def current_after(service: dict, patches: list[dict]) -> dict:
    for patch in patches:
        service = jsonpatch.apply_patch(service, patch)
    return service


def test_the_name_change_rule_refuses_the_old_promotion():
    service = yaml.safe_load((REPO / "manifests" / "canary-standard.yaml").read_text())
    old_promotion = [{"op": "copy", "from": "/spec/canary/0/predictor", "path": "/spec/predictor"},
                     {"op": "remove", "path": "/spec/canary"}]
    promoted = jsonpatch.apply_patch(service, old_promotion)
    assert rules.predictor_name_change_problems(service, promoted) == [
        "predictor.name change requires a model change (e.g. storageUri)"]


def test_rendered_canaries_follow_kserves_canary_rules(variants):
    for name, service in variants:
        assert rules.canary_problems(service) == [], name
    duplicate = copy.deepcopy(dict(variants)["canary-standard"])
    duplicate["spec"]["canary"].append(copy.deepcopy(duplicate["spec"]["canary"][0]))
    duplicate["spec"]["canary"][1]["predictor"]["minReplicas"] = 2
    assert rules.canary_problems(duplicate) == [
        "canary names must be unique and differ from the stable predictor's",
        "canary fp8: minReplicas is not allowed"]


def test_knative_accepts_our_knative_services(variants):
    runtime = RUNTIMES["aim-runtime"]
    header = (REPO / "manifests" / "canary-knative.yaml").read_text()
    documented_flags = set(re.findall(r"kubernetes\.podspec-[a-z-]+", header))
    knative = [(n, d) for n, d in all_services(variants)
               if d["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"]
    assert len(knative) >= 3
    for name, service in knative:
        problems, flags = rules.knative_problems(service, runtime)
        assert problems == [], name
        assert flags <= documented_flags, (name, flags - documented_flags)


def test_the_knative_rules_refuse_a_grace_period_and_a_short_deadline():
    service = yaml.safe_load((REPO / "manifests" / "canary-knative.yaml").read_text())
    service["spec"]["predictor"]["terminationGracePeriodSeconds"] = 120
    del service["metadata"]["annotations"]["serving.knative.dev/progress-deadline"]
    problems, _ = rules.knative_problems(service, RUNTIMES["aim-runtime"])
    assert "must not set the field(s): terminationGracePeriodSeconds" in problems
    assert any("progress deadline 600 s is shorter" in p for p in problems)


# --- pods: labels, storage, scheduling, security ------------------------------------------------


def test_the_network_policy_selects_every_pod_of_our_runtimes_and_no_other(variants):
    (policy,) = [d for p, d in SHIPPED if p.name == "networkpolicy.yaml"
                 and p.parent.name == "manifests"]
    selector = policy["spec"]["podSelector"]
    for name, service in all_services(variants):
        runtime = RUNTIMES[service["spec"]["predictor"]["model"]["runtime"]]
        assert rules.selects(selector, rules.predictor_pod_labels(service, runtime)), name
        if "workerSpec" in service["spec"]["predictor"]:
            labels = rules.predictor_pod_labels(service, runtime, worker=True)
            assert rules.selects(selector, labels), name
    stock = next(r for r in STOCK_RUNTIMES
                 if r["metadata"]["name"] == "kserve-huggingfaceserver")
    other = rules.predictor_pod_labels(SERVICES[0][1], stock)
    assert not rules.selects(selector, other)


def test_gated_models_get_the_token_the_kserve_way(variants):
    accounts = {d["metadata"]["name"]: d for _, d in SHIPPED if d["kind"] == "ServiceAccount"}
    for path, service in SERVICES:
        predictor = service["spec"]["predictor"]
        if predictor["model"]["storageUri"].startswith("hf://meta-llama/"):
            account = accounts[predictor["serviceAccountName"]]
            assert {"name": "hf-token"} in account["secrets"], path
    assert dict(variants)["standard-hf-token"]["spec"]["predictor"]["serviceAccountName"] == \
        "hf-models"
    caches = [d for _, d in SHIPPED if d["kind"] == "LocalModelCache"]
    assert caches and all(c["spec"]["serviceAccountName"] in accounts for c in caches)


def test_hf_downloads_use_one_storage_container():
    ours = [d for _, d in SHIPPED if d["kind"] == "ClusterStorageContainer"]
    chosen = rules.storage_container_for("hf://meta-llama/x", [*STOCK_STORAGE, *ours])
    assert chosen == "default"  # KServe's; nothing of ours competes with it for hf://
    assert not any(rules.storage_container_for("hf://x", [c]) for c in ours)


def test_routes_let_long_generations_through(variants):
    for name, service in all_services(variants):
        predictor = service["spec"]["predictor"]
        mode = service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        # KServe's HTTPRoute cuts requests at 60 s unless the predictor sets a timeout.
        assert predictor.get("timeout", 60) >= (600 if mode == "Knative" else 1800), name


@pytest.mark.parametrize("product", sorted(LABELLER_IDS))
def test_rendered_affinity_matches_every_pci_function_the_labeller_reports(product, catalog):
    service, _ = render(RenderRequest(model=MODELS / "mistral-7b-instruct-v0.3", gpu=product,
                                      storage_uri="pvc://models/mistral"), catalog)
    affinity = service["spec"]["predictor"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert expression["key"] == "amd.com/gpu.device-id" and expression["operator"] == "In"
    assert set(expression["values"]) == LABELLER_IDS[product]
    assert set(PRODUCTS[product].node_label_values) == LABELLER_IDS[product]


def pod_of(service: dict, runtime: dict) -> tuple[dict, list[dict]]:
    """The predictor pod KServe builds: the predictor's pod fields over the runtime's."""
    predictor = service["spec"]["predictor"]
    pod = {"securityContext": predictor.get("securityContext", {}),
           "volumes": [*runtime["spec"].get("volumes", []), *predictor.get("volumes", [])]}
    return pod, runtime["spec"]["containers"]


def test_pods_meet_the_restricted_pod_security_standard(variants):
    for name, service in all_services(variants):
        runtime = RUNTIMES[service["spec"]["predictor"]["model"]["runtime"]]
        pod, containers = pod_of(service, runtime)
        assert rules.restricted_problems(pod, containers) == [], name
        if "workerSpec" in runtime["spec"]:
            workers = runtime["spec"]["workerSpec"]["containers"]
            assert rules.restricted_problems(pod, workers) == [], name
    bare = {"securityContext": {}, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert len(rules.restricted_problems(bare, [{"name": "c"}])) == 5


def test_no_fixed_user_id_so_openshift_can_assign_one():
    for path, document in SHIPPED:
        assert "runAsUser" not in yaml.safe_dump(document), path


def test_single_replica_gpu_services_are_recreated_not_surged(variants):
    for name, service in all_services(variants):
        predictor = service["spec"]["predictor"]
        mode = service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        if mode != "Standard" or "autoScaling" in predictor:
            continue
        assert predictor["deploymentStrategy"] == {"type": "Recreate"}, name
