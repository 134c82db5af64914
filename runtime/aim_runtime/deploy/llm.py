"""Render: a KServe LLMInferenceService for a model and GPU type, from the same plan as the
InferenceService (render.py).

The service names our preset in `baseRefs` (serving_runtimes/llm/aim-runtime-llm.yaml), which
puts AIM Runtime in the `main` container; the plan's pins (`AIM_*`), GPUs, node affinity and
`/dev/shm` go into `spec.template`, its tensor-parallel size into `spec.parallelism.tensor` (so
the scheduler and the pod agree). Multi-node plans become a LeaderWorkerSet group: `spec.worker`
and `spec.parallelism.pipeline`, served by our `kserve-config-llm-worker-pipeline-parallel`
preset. `spec.router` asks KServe for llm-d's scheduler (prefix-cache aware routing), an
HTTPRoute and the default Gateway. With prefill replicas the service splits prefill from
decode (`spec.prefill`, our `aim-runtime-llm-pd` preset, vLLM's NIXL connector).
"""

from __future__ import annotations

from typing import Any

from aim_runtime.deploy.render import (
    TERMINATION_GRACE_SECONDS,
    RenderRequest,
    gpu_affinity,
    plan_for_gpu,
    plan_for_nodes,
    planner_pins,
    pod_devices,
    pod_resources,
    service_name,
    shm_size_gib,
    storage_uri_for,
    validate_hardware,
)
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import Catalog
from aim_runtime.planner.plan import Plan

API_VERSION = "serving.kserve.io/v1alpha2"
PRESET = "aim-runtime-llm"
PD_PRESET = "aim-runtime-llm-pd"
# Prefill and decode pods exchange the KV cache through vLLM's NIXL connector (KServe's own P/D
# sample passes it the same way: VLLM_ADDITIONAL_ARGS in both pods' main containers).
KV_TRANSFER_ARGS = '--kv-transfer-config \'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''
MAIN_CONTAINER = "main"


def render_llm(request: RenderRequest, catalog: Catalog,
               prefill_replicas: int = 0) -> tuple[dict[str, Any], Plan]:
    """The LLMInferenceService (as a dict) and the plan it was made from; with
    `prefill_replicas`, a prefill/decode split (both pools on the same plan)."""
    _validate(request)
    if prefill_replicas and request.multi_node:
        raise AimError("--prefill-replicas with --nodes: prefill/decode split across nodes is "
                       "not rendered yet", "split single-node pools, or serve multi-node whole")
    if prefill_replicas < 0:
        raise AimError(f"--prefill-replicas {prefill_replicas}: expected a number of pods")
    plan = plan_for_nodes(request, catalog) if request.multi_node else \
        plan_for_gpu(request, catalog)
    devices = pod_devices(plan, request)
    name = service_name(request)
    metadata: dict[str, Any] = {
        "name": name,
        "annotations": {"aim.amd.com/recipe": plan.recipe_id},
        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "aim-runtime"},
    }
    if request.namespace:
        metadata["namespace"] = request.namespace
    parallelism: dict[str, int] = {"tensor": plan.tensor_parallel_size}
    spec: dict[str, Any] = {
        "model": {"uri": storage_uri_for(request),
                  "name": request.model_id or name},
        "replicas": 1,
        "parallelism": parallelism,
        "template": _pod(plan, request, devices, env=True),
        "router": {"scheduler": {}, "route": {}, "gateway": {}},
    }
    if request.multi_node:
        parallelism["pipeline"] = plan.nodes
        spec["worker"] = _pod(plan, request, devices, env=False)
    elif prefill_replicas:
        spec["baseRefs"] = [{"name": PD_PRESET}]
        for pod in (spec["template"], prefill := _pod(plan, request, devices, env=True)):
            pod["containers"][0]["env"].append({"name": "VLLM_ADDITIONAL_ARGS",
                                                "value": KV_TRANSFER_ARGS})
        spec["prefill"] = {"replicas": prefill_replicas, "parallelism": dict(parallelism),
                           "template": prefill}
    else:
        spec["baseRefs"] = [{"name": PRESET}]
    return {"apiVersion": API_VERSION, "kind": "LLMInferenceService", "metadata": metadata,
            "spec": spec}, plan


def _pod(plan: Plan, request: RenderRequest, devices: int, env: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": MAIN_CONTAINER}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in planner_pins(plan, request).items()]
    container["resources"] = pod_resources(devices)
    pod: dict[str, Any] = {
        # KServe's presets give pods 60 s; ours drain for the shutdown timeout the controller
        # derives from it, so longer generations get a longer grace period.
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "affinity": gpu_affinity(plan.product),
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                            "supplementalGroups": list(request.supplemental_groups)},
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {
            "medium": "Memory", "sizeLimit": f"{shm_size_gib(devices)}Gi"}}],
    }
    if request.service_account:
        pod["serviceAccountName"] = request.service_account
    return pod


def _validate(request: RenderRequest) -> None:
    """What the InferenceService path offers and this one does not, said before kubectl does."""
    refused = {
        "--mode knative": request.mode != "standard",
        "--canary-of/--traffic (split traffic with spec.router.route instead)":
            request.canary_of is not None,
        "--compile-cache-pvc (add the volume to spec.template yourself)":
            request.compile_cache_pvc is not None,
        "--lora-pvc/--max-loras/--max-lora-rank (use spec.model.lora)":
            bool(request.lora_pvc or request.max_loras or request.max_lora_rank),
    }
    for option, given in refused.items():
        if given:
            raise AimError(f"{option}: not available with --kind llminferenceservice")
    validate_hardware(request)
