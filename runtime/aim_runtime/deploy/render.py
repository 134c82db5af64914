"""Render: an InferenceService for a model and GPU type, from the planner the pod runs at start-up.

The GPU count (`amd.com/gpu`), the node selector (the AMD node labeller's
`amd.com/gpu.device-id`), the `/dev/shm` size and the planner pins come from one plan, and the pins
(`AIM_*` variables) make the pod re-derive that same plan, so what is deployed and what the pod
selects agree by construction. Works offline from a `config.json`.

Multi-node (`--nodes N`): the `aim-runtime-multinode` runtime, a `workerSpec` with
`pipelineParallelSize` N (nodes) and `tensorParallelSize` the GPUs of each node, under KServe's
rules for it: Standard mode, `pvc://` (ReadWriteMany) or `oci://` storage, no autoscaling, no
canary.

Canaries: in Knative mode the output is the existing InferenceService with the new predictor and
`canaryTrafficPercent`; in Standard mode (KServe >= 0.20) it is the stable InferenceService (read
from `--stable FILE`) with a `spec.canary` entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aim_runtime import pipeline, settings
from aim_runtime.errors import AimError, NoFitError
from aim_runtime.hardware.products import lookup_product
from aim_runtime.planner.catalog import Catalog
from aim_runtime.planner.plan import Plan
from aim_runtime.settings import GPUS_PER_NODE, serving_precision

RUNTIME_NAME = "aim-runtime"
MULTINODE_RUNTIME_NAME = "aim-runtime-multinode"
WORKER_CONTAINER = "worker-container"
MULTINODE_STORAGE = ("pvc://", "oci://")
MODEL_FORMAT = "aim"
GPU_RESOURCE = "amd.com/gpu"
DEVICE_ID_LABEL = "amd.com/gpu.device-id"
AUTO_COUNTS = (1, 2, 4, 8)
# The runtime drains in-flight requests on SIGTERM (--graceful-shutdown-seconds); the pod gets
# 20 s more to stop the engine before the kubelet kills it.
TERMINATION_GRACE_SECONDS = settings.GRACEFUL_SHUTDOWN_SECONDS.default + 20
DEFAULT_SUPPLEMENTAL_GROUPS = (44,)  # "video" on Debian/Ubuntu hosts; add the nodes' render GID
MODES = ("standard", "knative")
COMPILE_CACHE_MOUNT = "/compile-cache"
LORA_MOUNT = "/mnt/adapters"
# Longest request a route lets through (spec.predictor.timeout): KServe's Gateway API route cuts
# requests at 60 s unless set; Knative's default max-revision-timeout-seconds is 600.
REQUEST_TIMEOUT_SECONDS = {"standard": 1800, "knative": 600}
# Knative fails a revision that is not ready within its progress deadline (default 600 s); the
# runtime's start-up probe allows 60 minutes for large checkpoints.
KNATIVE_PROGRESS_DEADLINE = "3900s"


@dataclass(frozen=True)
class RenderRequest:
    model: Path
    gpu: str
    model_id: str | None = None
    count: int | None = None
    name: str | None = None
    namespace: str | None = None
    storage_uri: str | None = None
    objective: str | None = None
    mode: str = "standard"
    canary_of: str | None = None
    traffic: int | None = None
    stable: Path | None = None
    supplemental_groups: tuple[int, ...] = DEFAULT_SUPPLEMENTAL_GROUPS
    nodes: int = 1
    service_account: str | None = None  # holds the Secret with HF_TOKEN for gated models
    compile_cache_pvc: str | None = None  # kernel and compile caches (AIM_COMPILE_CACHE_DIR)
    lora_pvc: str | None = None  # CLAIM[/PATH] holding LoRA adapters (AIM_LORA_DIR)
    max_loras: int | None = None
    max_lora_rank: int | None = None

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


def render(request: RenderRequest, catalog: Catalog) -> tuple[dict[str, Any], Plan]:
    """The InferenceService (as a dict) and the plan it was made from."""
    _validate(request)
    if request.multi_node:
        plan = plan_for_nodes(request, catalog)
    else:
        plan = plan_for_gpu(request, catalog)
    predictor = predictor_spec(plan, request)
    name = service_name(request)
    annotations = {"serving.kserve.io/deploymentMode": request.mode.capitalize(),
                   "aim.amd.com/recipe": plan.recipe_id}
    if request.multi_node:
        annotations["serving.kserve.io/autoscalerClass"] = "none"  # KServe: no autoscaling
    if request.mode == "knative":  # KServe copies it onto the Knative revision
        annotations["serving.knative.dev/progress-deadline"] = KNATIVE_PROGRESS_DEADLINE
    metadata: dict[str, Any] = {
        "name": name,
        "annotations": annotations,
        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": RUNTIME_NAME},
    }
    if request.namespace:
        metadata["namespace"] = request.namespace
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": metadata, "spec": {"predictor": predictor}}
    if request.canary_of and request.mode == "knative":
        predictor["canaryTrafficPercent"] = request.traffic
    elif request.canary_of:
        isvc = _standard_canary(request, predictor)
    return isvc, plan


def plan_for_gpu(request: RenderRequest, catalog: Catalog) -> Plan:
    """The plan for `request.count` GPUs; without a count, the fewest (1, 2, 4, 8) that serve
    the model at its own precision, else the fewest that serve it at all."""
    counts = [request.count] if request.count else list(AUTO_COUNTS)
    fitting: list[Plan] = []
    last_error: NoFitError | None = None
    for devices in counts:
        try:
            planned = pipeline.run(_plan_request(request, f"{request.gpu}:{devices}"),
                                   catalog=catalog)
        except NoFitError as exc:
            last_error = exc
            continue
        native = serving_precision(planned.facts.weight_precision or "bf16", on_gpu=True)
        if planned.plan.precision == native or request.count:
            return planned.plan
        fitting.append(planned.plan)
    if fitting:
        return fitting[0]
    assert last_error is not None
    raise last_error


def plan_for_nodes(request: RenderRequest, catalog: Catalog) -> Plan:
    """The plan for `request.nodes` nodes of `request.count` (default 8) GPUs each."""
    per_node = request.count or GPUS_PER_NODE
    simulate = f"{request.gpu}:{per_node}x{request.nodes}"
    return pipeline.run(_plan_request(request, simulate), catalog=catalog).plan


def _plan_request(request: RenderRequest, simulate: str) -> pipeline.PlanRequest:
    """The GPUs are elsewhere: plan without this machine's environment. With adapters, the
    LoRA slots the pod will reserve are budgeted as the pod's planner budgets them."""
    overrides: dict[str, Any] = {"objective": request.objective}
    if request.lora_pvc:
        overrides.update(enable_lora=True, max_loras=request.max_loras,
                         max_lora_rank=request.max_lora_rank)
    return pipeline.PlanRequest(model=request.model, model_id=request.model_id,
                                simulate=simulate, cli_overrides=overrides)


def predictor_spec(plan: Plan, request: RenderRequest) -> dict[str, Any]:
    """The predictor: model, pins, resources, node selector, /dev/shm (and the worker pods)."""
    devices = pod_devices(plan, request)
    model: dict[str, Any] = {
        "modelFormat": {"name": MODEL_FORMAT},
        "runtime": MULTINODE_RUNTIME_NAME if request.multi_node else RUNTIME_NAME,
        "storageUri": storage_uri_for(request),
        "env": [{"name": k, "value": v} for k, v in planner_pins(plan, request).items()],
        "resources": pod_resources(devices),
    }
    predictor: dict[str, Any] = {} if request.multi_node else {"minReplicas": 1}
    predictor["timeout"] = REQUEST_TIMEOUT_SECONDS[request.mode]
    if request.mode == "standard":
        # A new pod would need a second set of GPUs while the old one runs.
        predictor["deploymentStrategy"] = {"type": "Recreate"}
    if request.service_account:
        predictor["serviceAccountName"] = request.service_account
    predictor.update(pod_placement(plan, request, devices))
    if request.compile_cache_pvc:
        predictor["volumes"].append({"name": "compile-cache", "persistentVolumeClaim": {
            "claimName": request.compile_cache_pvc}})
        model["env"].append({"name": "AIM_COMPILE_CACHE_DIR", "value": COMPILE_CACHE_MOUNT})
        model["volumeMounts"] = [{"name": "compile-cache", "mountPath": COMPILE_CACHE_MOUNT}]
    if request.lora_pvc:
        _add_adapters(predictor, model, request)
    predictor["model"] = model
    if request.multi_node:
        worker: dict[str, Any] = {"name": WORKER_CONTAINER, "resources": pod_resources(devices)}
        predictor["workerSpec"] = {
            "pipelineParallelSize": plan.nodes,
            "tensorParallelSize": plan.devices_per_node,
            **pod_placement(plan, request, devices),
            "containers": [worker],
        }
        if request.compile_cache_pvc:  # the head's Ray workers on these nodes compile too
            predictor["workerSpec"]["volumes"].append(predictor["volumes"][-1])
            worker["volumeMounts"] = list(model["volumeMounts"])
    return predictor


def _add_adapters(predictor: dict[str, Any], model: dict[str, Any],
                  request: RenderRequest) -> None:
    """The adapters' volume at LORA_MOUNT (AIM_LORA_DIR: loaded at start, watched) and the
    LoRA limits as `vllm serve` flags."""
    claim, sub_path = lora_claim(request)
    predictor["volumes"].append({"name": "lora-adapters", "persistentVolumeClaim": {
        "claimName": claim, "readOnly": True}})
    mount = {"name": "lora-adapters", "mountPath": LORA_MOUNT, "readOnly": True}
    if sub_path:
        mount["subPath"] = sub_path
    model.setdefault("volumeMounts", []).append(mount)
    model["env"].append({"name": "AIM_LORA_DIR", "value": LORA_MOUNT})
    limits = {"--max-loras": request.max_loras, "--max-lora-rank": request.max_lora_rank}
    model["args"] = [f"{flag}={value}" for flag, value in limits.items() if value]


def pod_resources(devices: int) -> dict[str, Any]:
    """CPU, memory and GPUs of one pod driving `devices` GPUs."""
    memory_gib = host_memory_gib(devices, shm_size_gib(devices))
    return {
        "requests": {"cpu": str(2 + 2 * devices), "memory": f"{memory_gib}Gi",
                     GPU_RESOURCE: str(devices)},
        "limits": {"memory": f"{2 * memory_gib}Gi", GPU_RESOURCE: str(devices)},
    }


def pod_placement(plan: Plan, request: RenderRequest, devices: int) -> dict[str, Any]:
    """Pod-level fields shared by the predictor and the multi-node workers. Knative sets the
    termination grace period itself (to the revision timeout) and refuses ours."""
    placement: dict[str, Any] = {}
    if request.mode == "standard":
        placement["terminationGracePeriodSeconds"] = TERMINATION_GRACE_SECONDS
    placement.update({
        "affinity": gpu_affinity(plan.product),
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                            "supplementalGroups": list(request.supplemental_groups)},
        "volumes": [{"name": "dshm", "emptyDir": {
            "medium": "Memory", "sizeLimit": f"{shm_size_gib(devices)}Gi"}}],
    })
    return placement


def gpu_affinity(product_name: str) -> dict[str, Any]:
    """Nodes whose GPUs are this product, whichever PCI function the node exposes (physical,
    SR-IOV virtual or hybrid), as the AMD node labeller labels them."""
    values = list(lookup_product(product_name).node_label_values)
    term = {"matchExpressions": [{"key": DEVICE_ID_LABEL, "operator": "In", "values": values}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}


def planner_pins(plan: Plan, request: RenderRequest) -> dict[str, str]:
    """AIM_* variables that make the pod's planner take this plan again."""
    pins = {
        "AIM_OBJECTIVE": plan.objective,
        "AIM_PRECISION": plan.precision,
        "AIM_KV_CACHE_DTYPE": plan.kv_cache_dtype,
        "AIM_MAX_MODEL_LEN": str(plan.max_model_len),
        "AIM_TENSOR_PARALLEL_SIZE": str(plan.tensor_parallel_size),
        "AIM_PIPELINE_PARALLEL_SIZE": str(plan.pipeline_parallel_size),
        "AIM_DATA_PARALLEL_SIZE": str(plan.data_parallel_size),
    }
    if plan.recipe_source == "curated":
        pins["AIM_RECIPE_ID"] = plan.recipe_id
    if request.model_id:
        pins["AIM_MODEL_ID"] = request.model_id
    return pins


def shm_size_gib(devices: int) -> int:
    """/dev/shm for vLLM's shared-memory broadcast and RCCL: 2 GiB per device, 2 to 32 GiB
    (AMD's GPU operator calls 16 GiB comfortable for 8-rank all-reduce)."""
    return min(32, max(2, 2 * devices))


def host_memory_gib(devices: int, shm_gib: int) -> int:
    """Host memory to request: the API and engine processes (~8 GiB), a worker per device
    (~6 GiB each: HIP runtime, loader buffers) and the /dev/shm it may fill."""
    return 8 + 6 * devices + shm_gib


def pod_devices(plan: Plan, request: RenderRequest) -> int:
    """GPUs of one pod: a node's share on several nodes, else the plan's."""
    return plan.devices_per_node if request.multi_node else plan.devices_used


def service_name(request: RenderRequest) -> str:
    """The service's name: the canary's stable service, the one given, or the model's."""
    return request.canary_of or request.name or default_name(request)


def lora_claim(request: RenderRequest) -> tuple[str, str]:
    """(claim, path in it) of `--lora-pvc CLAIM[/PATH]`."""
    claim, _, sub_path = (request.lora_pvc or "").partition("/")
    return claim, sub_path


def default_name(request: RenderRequest) -> str:
    source = request.model_id or request.model.resolve().name
    if source == "config.json":
        source = request.model.resolve().parent.name
    slug = re.sub(r"[^a-z0-9]+", "-", source.split("/")[-1].lower()).strip("-")
    return slug[:40].rstrip("-") or "model"


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=100)


def storage_uri_for(request: RenderRequest) -> str:
    """`--storage-uri`, else hf://<model id>."""
    if request.storage_uri:
        return request.storage_uri
    if request.model_id:
        return f"hf://{request.model_id}"
    raise AimError("no storage URI: give --storage-uri (pvc://, s3://, oci://, hf://) or "
                   "--model-id (then hf://<id>)")


def _standard_canary(request: RenderRequest, predictor: dict[str, Any]) -> dict[str, Any]:
    stable = _read_stable(request)
    stable_name = stable["spec"]["predictor"].get("name")
    canary_name = request.name or "canary"
    if canary_name == stable_name:
        raise AimError(f"canary name {canary_name!r} equals the stable predictor's name",
                       "choose another with --name")
    predictor["name"] = canary_name
    # The CRD requires the container name in canaries (it relaxes that for spec.predictor only).
    predictor["model"] = {"name": "kserve-container", **predictor["model"]}
    predictor.pop("minReplicas", None)
    stable["spec"]["canary"] = [{"predictor": predictor, "trafficPercent": request.traffic}]
    return stable


def _read_stable(request: RenderRequest) -> dict[str, Any]:
    if request.stable is None:
        raise AimError(
            "a Standard-mode canary extends the running InferenceService",
            f"save it first: kubectl get isvc {request.canary_of} -o yaml > stable.yaml, "
            "then pass --stable stable.yaml (or use --mode knative)")
    try:
        stable = yaml.safe_load(request.stable.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AimError(f"cannot read {request.stable}: {exc}") from exc
    if not isinstance(stable, dict) or not (stable.get("spec") or {}).get("predictor"):
        raise AimError(f"{request.stable}: not an InferenceService with spec.predictor")
    if stable.get("metadata", {}).get("name") != request.canary_of:
        raise AimError(f"{request.stable} is InferenceService "
                       f"{stable.get('metadata', {}).get('name')!r}, not {request.canary_of!r}")
    stable.pop("status", None)
    metadata = stable["metadata"]
    stable["metadata"] = {k: metadata[k] for k in ("name", "namespace", "labels", "annotations")
                          if k in metadata}
    return stable


def validate_hardware(request: RenderRequest) -> None:
    """The GPU product, count and nodes, as every renderer needs them."""
    if request.count is not None and request.count < 1:
        raise AimError(f"--count {request.count}: expected a positive number of GPUs")
    try:
        lookup_product(request.gpu)
    except KeyError as exc:
        raise AimError(f"--gpu {request.gpu}: {exc.args[0]}") from exc
    if request.nodes < 1:
        raise AimError(f"--nodes {request.nodes}: expected a positive number of nodes")


def _validate(request: RenderRequest) -> None:
    if request.mode not in MODES:
        raise AimError(f"--mode {request.mode}: expected one of {', '.join(MODES)}")
    validate_hardware(request)
    if request.lora_pvc and request.multi_node:
        raise AimError(f"--lora-pvc with --nodes {request.nodes}: every node's vLLM worker reads "
                       "the adapters, and only the head mounts them", "serve adapters on one node")
    if (request.max_loras or request.max_lora_rank) and not request.lora_pvc:
        raise AimError("--max-loras/--max-lora-rank size the adapter slots of --lora-pvc",
                       "give --lora-pvc CLAIM[/PATH] with the adapters")
    if bool(request.canary_of) != (request.traffic is not None):
        raise AimError("--canary-of and --traffic go together")
    if request.traffic is not None and not 0 <= request.traffic <= 100:
        raise AimError(f"--traffic {request.traffic}: expected a percentage, 0 to 100")
    if request.multi_node:
        _validate_multi_node(request)


def _validate_multi_node(request: RenderRequest) -> None:
    """KServe's own rules for workerSpec, said before kubectl does."""
    if request.mode != "standard":
        raise AimError(f"--nodes {request.nodes} with --mode {request.mode}: KServe runs "
                       "multi-node only in Standard mode", "drop --mode knative")
    if request.canary_of:
        raise AimError(f"--nodes {request.nodes} with --canary-of: KServe does not combine "
                       "multi-node (workerSpec) with canaries",
                       "roll out a second InferenceService and switch clients over")
    if not (request.storage_uri or "").startswith(MULTINODE_STORAGE):
        raise AimError(
            f"--nodes {request.nodes}: storage {request.storage_uri or '(none)'} — every node "
            "reads the same weights, so KServe requires pvc:// (ReadWriteMany) or oci://",
            "fill a ReadWriteMany PVC with manifests/model-cache/download-job.yaml and pass "
            "--storage-uri pvc://NAME/PATH")
