"""`aim-runtime render`: InferenceServices from the plan, offline from a config.json, that the
pod's own planner agrees with; and `aim-runtime download --verify-only` on local copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aim_runtime.checkpoint.download import verify
from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.deploy.render import RenderRequest, render
from aim_runtime.errors import AimError, NoFitError
from aim_runtime.hardware import detect
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import make_plan
from testkit import MODELS, REPO, run_cli

from kserve_models import lost_fields, round_trip

PRODUCT_LABEL = {"MI300X": "74a1", "MI325X": "74a5", "MI355X": "75a3", "MI250": "740c",
                 "MI210": "740f"}


def affinity_ids(pod: dict) -> set[str]:
    """The `amd.com/gpu.device-id` values a pod may be scheduled on."""
    affinity = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = affinity["nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("amd.com/gpu.device-id", "In")
    return set(expression["values"])


def pod_plan(isvc: dict, model: Path, catalog, model_id=None):
    """What the pod's planner selects: the GPUs the manifest requests, the AIM_* it sets."""
    predictor = isvc["spec"]["predictor"]
    gpus = int(predictor["model"]["resources"]["requests"]["amd.com/gpu"])
    product = next(p for p, label in PRODUCT_LABEL.items() if label in affinity_ids(predictor))
    env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
    facts = load_model_facts(model, hf_id=env.get("AIM_MODEL_ID", model_id))
    return make_plan(detect(simulate=f"{product}:{gpus}", environ={}), facts, catalog,
                     collect_overrides({}, env))


CASES = [
    ("llama-3.1-8b-instruct", "MI300X", None, 1),
    ("llama-3.1-8b-instruct", "MI210", None, 1),
    ("llama-3.1-70b-instruct", "MI300X", None, 2),
    ("llama-3.1-70b-instruct", "MI250", None, 4),
    ("llama-3.1-405b-instruct", "MI300X", None, 8),
    ("llama-3.1-405b-instruct", "MI355X", None, 4),
    ("deepseek-v3", "MI300X", None, 4),
    ("mixtral-8x7b-instruct-v0.1", "MI325X", 8, 8),
    ("qwen3-30b-a3b", "MI355X", 2, 2),
    ("gemma-3-27b-it", "MI300X", None, 1),
]


@pytest.mark.parametrize(("model", "gpu", "count", "expected_gpus"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_rendered_service_agrees_with_the_pods_plan(catalog, model, gpu, count, expected_gpus):
    request = RenderRequest(model=MODELS / model / "config.json", gpu=gpu, count=count,
                            storage_uri="pvc://models/x")
    isvc, plan = render(request, catalog)
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["resources"]["requests"]["amd.com/gpu"] == str(expected_gpus)
    assert plan.devices_used == expected_gpus
    assert PRODUCT_LABEL[gpu] in affinity_ids(predictor)
    shm = predictor["volumes"][0]["emptyDir"]["sizeLimit"]
    assert shm == f"{min(32, max(2, 2 * expected_gpus))}Gi"
    again = pod_plan(isvc, MODELS / model, catalog)
    for field in ("recipe_id", "tensor_parallel_size", "pipeline_parallel_size",
                  "data_parallel_size", "precision", "kv_cache_dtype", "max_model_len"):
        assert getattr(again, field) == getattr(plan, field), field
    back, problems = round_trip(isvc)
    assert problems == [] and lost_fields(isvc, back) == []


def test_auto_count_prefers_the_checkpoints_own_precision(catalog):
    """405B fits 4 MI300X only in FP8; without --count the fewest GPUs at bf16 (8) are taken,
    and an explicit count is honoured with whatever fallback it needs."""
    _, plan = render(RenderRequest(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X",
                                   storage_uri="pvc://m/x"), catalog)
    assert plan.precision == "bf16" and plan.devices_used == 8
    _, fp8_plan = render(RenderRequest(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X",
                                       count=4, storage_uri="pvc://m/x"), catalog)
    assert fp8_plan.precision == "fp8" and fp8_plan.devices_used == 4


def test_knative_canary_is_the_same_service_with_traffic_percent(catalog):
    isvc, _ = render(RenderRequest(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X",
                                   model_id="meta-llama/Llama-3.1-8B-Instruct",
                                   objective="throughput", mode="knative",
                                   canary_of="chat", traffic=10), catalog)
    assert isvc["metadata"]["name"] == "chat"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["AIM_RECIPE_ID"] == "llama-3.1-8b-mi300x-fp8-kvfp8-tp1-throughput"


def test_standard_canary_extends_the_stable_service(catalog, tmp_path):
    stable = yaml.safe_load((REPO / "manifests" / "inferenceservice.yaml").read_text())
    stable["status"] = {"url": "http://x"}
    stable["metadata"]["resourceVersion"] = "123"
    (tmp_path / "stable.yaml").write_text(yaml.safe_dump(stable))
    isvc, _ = render(RenderRequest(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X",
                                   model_id="meta-llama/Llama-3.1-8B-Instruct",
                                   objective="throughput", canary_of="llama-3-1-8b-instruct",
                                   traffic=25, stable=tmp_path / "stable.yaml",
                                   name="fp8"), catalog)
    assert isvc["spec"]["predictor"] == stable["spec"]["predictor"]
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 25 and canary["predictor"]["name"] == "fp8"
    assert "status" not in isvc and "resourceVersion" not in isvc["metadata"]
    back, problems = round_trip(isvc)
    assert problems == [] and lost_fields(isvc, back) == []


@pytest.mark.parametrize(("options", "message"), [
    (dict(canary_of="x", traffic=10), "extends the running InferenceService"),
    (dict(canary_of="x"), "--canary-of and --traffic go together"),
    (dict(canary_of="x", traffic=150, mode="knative"), "expected a percentage"),
    (dict(mode="serverless"), "--mode serverless"),
    (dict(gpu="H100"), "unknown GPU product"),
    (dict(storage_uri=None), "no storage URI"),
])
def test_render_errors(catalog, options, message):
    base = dict(model=MODELS / "llama-3.1-8b-instruct", gpu="MI300X", storage_uri="pvc://m/x")
    with pytest.raises(AimError, match=message):
        render(RenderRequest(**{**base, **options}), catalog)


def test_render_says_what_would_fit_when_nothing_does(catalog):
    with pytest.raises(NoFitError, match="what would fit"):
        render(RenderRequest(model=MODELS / "llama-3.1-405b-instruct", gpu="MI210",
                             storage_uri="pvc://m/x"), catalog)


def test_render_command_prints_yaml_and_the_plan():
    result = run_cli("render", "--model", str(MODELS / "qwen3-32b" / "config.json"),
                     "--model-id", "Qwen/Qwen3-32B", "--gpu", "MI355X", "--count", "2",
                     "--supplemental-groups", "44,992")
    assert result.returncode == 0, result.stderr
    isvc = yaml.safe_load(result.stdout)
    assert isvc["metadata"]["name"] == "qwen3-32b"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "hf://Qwen/Qwen3-32B"
    assert isvc["spec"]["predictor"]["securityContext"]["supplementalGroups"] == [44, 992]
    assert result.stderr.startswith("# plan: qwen3-32b-mi355x-bf16-tp2-latency on 2x MI355X")


# --- several nodes --------------------------------------------------------------------------------


def head_plan(isvc: dict, model: Path, catalog):
    """What the multi-node head's planner selects: workerSpec's nodes x GPUs (which KServe
    injects as PIPELINE_PARALLEL_SIZE and TENSOR_PARALLEL_SIZE) and the AIM_* pins."""
    predictor = isvc["spec"]["predictor"]
    worker = predictor["workerSpec"]
    gpus = int(predictor["model"]["resources"]["requests"]["amd.com/gpu"])
    assert gpus == worker["tensorParallelSize"]
    product = next(p for p, label in PRODUCT_LABEL.items() if label in affinity_ids(predictor))
    env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
    facts = load_model_facts(model, hf_id=env.get("AIM_MODEL_ID"))
    inventory = detect(simulate=f"{product}:{gpus}x{worker['pipelineParallelSize']}",
                       environ={})
    return make_plan(inventory, facts, catalog, collect_overrides({}, env))


NODE_CASES = [("llama-3.1-405b-instruct", "MI300X", None, 2),
              ("llama-3.1-405b-instruct", "MI250", None, 2),
              ("deepseek-v3", "MI300X", 8, 2),
              ("llama-3.1-70b-instruct", "MI355X", 4, 2)]


@pytest.mark.parametrize(("model", "gpu", "count", "nodes"), NODE_CASES,
                         ids=[f"{c[0]}-{c[1]}x{c[3]}" for c in NODE_CASES])
def test_multi_node_service_agrees_with_the_heads_plan(catalog, model, gpu, count, nodes):
    request = RenderRequest(model=MODELS / model, gpu=gpu, count=count, nodes=nodes,
                            storage_uri="pvc://aim-models/x")
    try:
        isvc, plan = render(request, catalog)
    except NoFitError:
        pytest.fail(f"{model} should fit {nodes} nodes of {count or 8}x {gpu}")
    predictor = isvc["spec"]["predictor"]
    per_node = count or 8
    assert predictor["model"]["runtime"] == "aim-runtime-multinode"
    assert predictor["workerSpec"]["pipelineParallelSize"] == nodes
    assert predictor["workerSpec"]["tensorParallelSize"] == per_node
    (worker,) = predictor["workerSpec"]["containers"]
    assert worker["name"] == "worker-container"
    assert worker["resources"] == predictor["model"]["resources"]
    assert predictor["workerSpec"]["affinity"] == predictor["affinity"]
    assert "minReplicas" not in predictor  # KServe: no autoscaling across nodes
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    again = head_plan(isvc, MODELS / model, catalog)  # the pins skip candidates: fewer reasons
    assert again.model_dump(exclude={"reasons"}) == plan.model_dump(exclude={"reasons"})
    assert plan.tensor_parallel_size <= per_node and plan.nodes == nodes
    back, problems = round_trip(isvc)
    assert problems == [] and lost_fields(isvc, back) == []


@pytest.mark.parametrize(("options", "message"), [
    (dict(storage_uri="hf://meta-llama/Llama-3.1-405B-Instruct"), "requires pvc:// .* or oci://"),
    (dict(storage_uri=None, model_id="meta-llama/Llama-3.1-405B-Instruct"), "requires pvc://"),
    (dict(mode="knative"), "only in Standard mode"),
    (dict(canary_of="llama", traffic=10), "does not combine multi-node"),
    (dict(nodes=0), "--nodes 0: expected a positive number"),
])
def test_multi_node_render_refuses_what_kserve_would(catalog, options, message):
    base = dict(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X", nodes=2,
                storage_uri="oci://registry.example/models/llama-405b:1")
    with pytest.raises(AimError, match=message):
        render(RenderRequest(**{**base, **options}), catalog)


# --- download verification -----------------------------------------------------------------------


def test_verify_accepts_a_complete_model(tiny_model):
    summary = verify(tiny_model)
    assert summary["architecture"] == "LlamaForCausalLM"
    assert summary["files"]["model.safetensors"]["bytes"] == (
        tiny_model / "model.safetensors").stat().st_size


def test_verify_checks_hashes_when_the_hub_gives_them(tiny_model):
    with pytest.raises(AimError, match=r"SHA-256 \w+ differs from the hub's 00ff"):
        verify(tiny_model, {"model.safetensors": "00ff"})


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        if item.is_file():
            (target / item.name).write_bytes(item.read_bytes())
    return target


def test_verify_rejects_truncated_and_missing_shards(tiny_model, tmp_path):
    truncated = copy_model(tiny_model, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(AimError, match="truncated or padded"):
        verify(truncated)
    missing = copy_model(tiny_model, tmp_path / "missing")
    index = {"metadata": {}, "weight_map": {"a": "model.safetensors",
                                           "b": "model-00002-of-00002.safetensors"}}
    (missing / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(AimError, match=r"model-00002-of-00002\.safetensors: named by"):
        verify(missing)


def test_download_command_without_network_is_a_clear_error(tmp_path):
    result = run_cli("download", "--model-id", "meta-llama/Llama-3.1-8B-Instruct",
                     "--dest", str(tmp_path / "m"), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "error: cannot download meta-llama/Llama-3.1-8B-Instruct" in result.stderr


def test_download_verify_only_writes_the_manifest(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "cached")
    result = run_cli("download", "--verify-only", "--dest", str(model), "--gpu", "MI300X:1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((model / "aim-verified.json").read_text())
    assert manifest["plan"] == {"gpu": "MI300X:1", "recipe_id": "derived-mi300x-bf16-tp1-pp1-dp1"}
