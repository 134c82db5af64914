"""`aim-runtime render --output helm-values`: the values with which the aim-model chart
(charts/aim-model) renders the same InferenceService as `render` does.

Helm cannot run the planner, so the plan's outcome travels as values (`plan`: recipe, GPUs,
nodes, pins, resources, /dev/shm, the node labels of the product) and the chart lays out the
objects around it. tests/test_helm.py renders the chart with these values for every render case
the tests have and compares the objects with `render`'s.

With `kind` LLMInferenceService the values carry what deploy/llm.py adds (the model's name,
the tensor-parallel size, prefill replicas) and the chart renders `render --kind
llminferenceservice`'s object. Not carried: a Standard-mode canary (it extends the running
InferenceService, which `render --stable` reads; a release owns its service whole).
"""

from __future__ import annotations

from typing import Any

from aim_runtime.deploy.render import (
    RenderRequest,
    lora_claim,
    planner_pins,
    pod_devices,
    pod_resources,
    service_name,
    shm_size_gib,
    storage_uri_for,
)
from aim_runtime.errors import AimError
from aim_runtime.hardware.products import lookup_product
from aim_runtime.planner.plan import Plan


def helm_values(request: RenderRequest, plan: Plan, kind: str = "InferenceService",
                prefill_replicas: int = 0) -> dict[str, Any]:
    """The aim-model chart's values for `request` served by `plan`, as a `kind`."""
    check_release_owns(request)
    devices = pod_devices(plan, request)
    name = service_name(request)
    values: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "mode": request.mode,
        "storageUri": storage_uri_for(request),
        "supplementalGroups": list(request.supplemental_groups),
        "plan": {
            "recipe": plan.recipe_id,
            "product": plan.product,
            "deviceIds": list(lookup_product(plan.product).node_label_values),
            "gpus": devices,
            "nodes": plan.nodes if request.multi_node else 1,
            "tensorParallelSize": plan.tensor_parallel_size,
            "shmSizeGi": shm_size_gib(devices),
            "resources": pod_resources(devices),
            "env": [{"name": k, "value": v} for k, v in planner_pins(plan, request).items()],
        },
    }
    if kind == "LLMInferenceService":
        values["modelName"] = request.model_id or name
    if prefill_replicas:
        values["prefillReplicas"] = prefill_replicas
    if request.service_account:
        values["serviceAccountName"] = request.service_account
    if request.traffic is not None:
        values["canaryTrafficPercent"] = request.traffic
    if request.compile_cache_pvc:
        values["compileCache"] = {"claimName": request.compile_cache_pvc}
    if request.lora_pvc:
        claim, sub_path = lora_claim(request)
        values["lora"] = {"claimName": claim, "subPath": sub_path,
                          "maxLoras": request.max_loras or 0,
                          "maxLoraRank": request.max_lora_rank or 0}
    return values


def check_release_owns(request: RenderRequest) -> None:
    """Refuse what a release cannot own: a Standard-mode canary."""
    if request.canary_of and request.mode != "knative":
        raise AimError("--output helm-values with a Standard-mode canary: the canary extends "
                       "the running InferenceService, which a release does not own",
                       "render it as a manifest (--stable FILE), or use --mode knative, where "
                       "`helm upgrade` with canaryTrafficPercent is the canary")
