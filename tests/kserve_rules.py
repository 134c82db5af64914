"""KServe's and Knative's admission and controller rules that a CRD schema cannot express,
written out as functions. Each names the source it encodes (repository, file, function) as read at
the KServe revision of tests/fixtures/kserve (the 0.20 line released as 0.21) and Knative Serving's
main line; each returns the reasons an object would be refused (empty: accepted).

A rule written here is our reading of their code, so every rule also has a test showing it refuses
the mistake it is about (tests/test_kserve_admission.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

Doc = dict[str, Any]

# --- ClusterServingRuntime webhook ------------------------------------------------------------


def priority_conflicts(new: Doc, existing: Iterable[Doc]) -> list[str]:
    """kserve `pkg/webhook/admission/servingruntime/servingruntime_webhook.go`,
    `validateServingRuntimePriority`: two runtimes of the same kind that share a protocol version
    (and are both single- or both multi-model) may not auto-select the same model format and
    version (name compared ignoring case) with the same priority. `workerSpec` plays no part."""
    problems = []
    spec = new["spec"]
    for other in existing:
        if other["metadata"]["name"] == new["metadata"]["name"]:
            continue
        other_spec = other["spec"]
        if other_spec.get("disabled") or spec.get("disabled"):
            continue
        if bool(spec.get("multiModel")) != bool(other_spec.get("multiModel")):
            continue
        if not set(spec.get("protocolVersions") or ["v1"]) & set(
                other_spec.get("protocolVersions") or ["v1"]):
            continue
        for ours in spec.get("supportedModelFormats", []):
            for theirs in other_spec.get("supportedModelFormats", []):
                if (ours.get("autoSelect") and theirs.get("autoSelect")
                        and ours["name"].lower() == theirs["name"].lower()
                        and ours.get("version") == theirs.get("version")
                        and ours.get("priority") is not None
                        and ours.get("priority") == theirs.get("priority")):
                    problems.append(
                        f"same priority assigned for the model format {ours['name']} in the "
                        f"clusterservingruntimes {new['metadata']['name']} and "
                        f"{other['metadata']['name']}")
    return problems


def multinode_runtime_problems(runtime: Doc) -> list[str]:
    """kserve servingruntime_webhook.go `validateMultiNodeSpec`: one worker container, no
    PIPELINE_PARALLEL_SIZE / TENSOR_PARALLEL_SIZE in kserve-container's env (KServe sets them),
    known GPU resource types, sizes >= 1."""
    spec = runtime["spec"]
    worker = spec.get("workerSpec")
    if worker is None:
        return []
    problems = []
    if len(worker.get("containers", [])) > 1:
        problems.append("workerSpec may hold one container")
    for container in spec["containers"]:
        if container["name"] == "kserve-container":
            names = {e["name"] for e in container.get("env", [])}
            problems += [f"kserve-container may not set {n}" for n in
                         sorted(names & {"PIPELINE_PARALLEL_SIZE", "TENSOR_PARALLEL_SIZE"})]
    for key in ("pipelineParallelSize", "tensorParallelSize"):
        if worker.get(key, 1) < 1:
            problems.append(f"workerSpec.{key} must be >= 1")
    for container in [*spec["containers"], *worker.get("containers", [])]:
        problems += unknown_gpu_resources(container.get("resources", {}))
    return problems


# kserve `pkg/constants` DefaultGPUResourceTypeList.
KNOWN_GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "intel.com/gpu", "habana.ai/gaudi")


def unknown_gpu_resources(resources: Doc) -> list[str]:
    """kserve `pkg/utils` IsUnknownGpuResourceType: extended resources that look like GPUs must
    be a known type (or be declared with the serving.kserve.io/gpu-resource-types annotation)."""
    names = {*resources.get("requests", {}), *resources.get("limits", {})}
    return [f"unknown GPU resource type {n}" for n in sorted(names)
            if "/" in n and "gpu" in n.lower() and n not in KNOWN_GPU_RESOURCES]


# --- multi-node: what the controller injects ----------------------------------------------------

HEAD_INJECTED = ("PIPELINE_PARALLEL_SIZE", "TENSOR_PARALLEL_SIZE", "RAY_NODE_COUNT",
                 "REQUEST_GPU_COUNT", "MODEL_NAME", "MODEL_DIR")
WORKER_INJECTED = ("RAY_NODE_COUNT", "REQUEST_GPU_COUNT", "ISVC_NAME", "HEAD_SVC")


def inject_env(env: list[Doc], names: Iterable[str]) -> list[Doc]:
    """kserve `pkg/controller/v1beta1/inferenceservice/utils/utils.go` AddEnvVarToPodSpec, as the
    multi-node reconciler (`components/predictor.go` reconcileWorker / multiNodeProcess) calls it:
    an existing variable of that name gets `.value` set and keeps any `.valueFrom`."""
    merged = copy.deepcopy(env)
    for name in names:
        existing = next((e for e in merged if e["name"] == name), None)
        if existing is None:
            merged.append({"name": name, "value": "1"})
        else:
            existing["value"] = "1"
    return merged


def env_problems(env: list[Doc]) -> list[str]:
    """Kubernetes `pkg/apis/core/validation` validateEnvVarValueFrom: `valueFrom` may not be
    specified when `value` is not empty; names are unique in practice (last wins, confusing)."""
    problems = []
    for variable in env:
        if variable.get("value") and variable.get("valueFrom"):
            problems.append(f"env {variable['name']}: may not have both value and valueFrom")
    return problems


def multinode_service_problems(isvc: Doc) -> list[str]:
    """kserve `pkg/apis/serving/v1beta1/inference_service_validation.go`
    validateMultiNodeVariables: storage pvc:// or oci://, autoscalerClass none, no parallel sizes
    in the model's env, known GPU types; and multi-node only in Standard mode."""
    predictor = isvc["spec"]["predictor"]
    if "workerSpec" not in predictor:
        return []
    problems = []
    annotations = isvc["metadata"].get("annotations", {})
    if annotations.get("serving.kserve.io/deploymentMode") not in ("Standard", "RawDeployment"):
        problems.append("multi-node needs Standard mode")
    if annotations.get("serving.kserve.io/autoscalerClass") != "none":
        problems.append("Multinode only supports 'none' autoscaler")
    uri = predictor["model"].get("storageUri", "")
    if not uri.startswith(("pvc://", "oci://")):
        problems.append(f"Multinode only supports 'pvc' and 'oci' Storage Protocol({uri})")
    names = {e["name"] for e in predictor["model"].get("env", [])}
    problems += [f"model env may not set {n}" for n in
                 sorted(names & {"PIPELINE_PARALLEL_SIZE", "TENSOR_PARALLEL_SIZE"})]
    if isvc["spec"].get("canary"):
        problems.append("multi-node does not combine with canaries")
    return problems


# --- Standard-mode canaries -------------------------------------------------------------------

AUTOSCALING_FIELDS = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
                      "scaleMetricType", "autoScaling")


def canary_problems(isvc: Doc) -> list[str]:
    """kserve PR #5672 (canary rollout in RawDeployment/Standard mode), as its validation and
    kserve/website#734 state it: Standard mode only, each canary named, names unique (and not the
    stable's), traffic in total at most 100, no autoscaling fields on canaries."""
    canaries = isvc["spec"].get("canary") or []
    if not canaries:
        return []
    problems = []
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if mode not in ("Standard", "RawDeployment"):
        problems.append("spec.canary needs Standard mode")
    names = [c["predictor"].get("name") for c in canaries]
    if not all(names):
        problems.append("every canary predictor needs a name")
    if len(set(names)) != len(names) or isvc["spec"]["predictor"].get("name") in names:
        problems.append("canary names must be unique and differ from the stable predictor's")
    if sum(c.get("trafficPercent", 0) for c in canaries) > 100:
        problems.append("canary traffic adds up to more than 100")
    for canary in canaries:
        problems += [f"canary {canary['predictor'].get('name')}: {f} is not allowed"
                     for f in AUTOSCALING_FIELDS if f in canary["predictor"]]
    return problems


def predictor_name_change_problems(old: Doc, new: Doc) -> list[str]:
    """kserve inference_service_validation.go `validatePredictorNameChange` (on UPDATE): the
    predictor's name may change only together with its model (storageUri)."""
    old_predictor, new_predictor = old["spec"]["predictor"], new["spec"]["predictor"]
    if old_predictor.get("name") == new_predictor.get("name"):
        return []
    if old_predictor["model"].get("storageUri") != new_predictor["model"].get("storageUri"):
        return []
    return ["predictor.name change requires a model change (e.g. storageUri)"]


# --- Knative Serving --------------------------------------------------------------------------

# knative/serving `pkg/apis/serving/fieldmask.go` PodSpecMask: fields never allowed, and fields
# allowed only behind a config-features flag.
KNATIVE_FORBIDDEN_POD_FIELDS = ("terminationGracePeriodSeconds", "activeDeadlineSeconds",
                                "hostNetwork", "hostPID", "hostIPC", "readinessGates",
                                "priority")
KNATIVE_FLAGGED_POD_FIELDS = {
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "affinity": "kubernetes.podspec-affinity",
    "tolerations": "kubernetes.podspec-tolerations",
    "securityContext": "kubernetes.podspec-securitycontext",
    "initContainers": "kubernetes.podspec-init-containers",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
}
# fieldmask.go SecurityContextMask (container): `privileged` only as false and only from Knative
# 1.17 (knative/serving#15643); seLinuxOptions and procMount never.
KNATIVE_CONTAINER_SECURITY = ("capabilities", "readOnlyRootFilesystem", "runAsUser",
                              "runAsGroup", "runAsNonRoot", "allowPrivilegeEscalation",
                              "seccompProfile")
KNATIVE_DEFAULT_PROGRESS_DEADLINE_SECONDS = 600  # knative/serving pkg/deployment/config.go
KNATIVE_DEFAULT_MAX_REVISION_TIMEOUT_SECONDS = 600


def knative_problems(isvc: Doc, runtime: Doc) -> tuple[list[str], set[str]]:
    """What Knative refuses in a Knative-mode InferenceService on this runtime, and which
    config-features flags it needs. The runtime's container is part of the revision too."""
    annotations = isvc["metadata"].get("annotations", {})
    if annotations.get("serving.kserve.io/deploymentMode") not in ("Knative", "Serverless"):
        return [], set()
    predictor = isvc["spec"]["predictor"]
    problems = [f"must not set the field(s): {f}" for f in KNATIVE_FORBIDDEN_POD_FIELDS
                if f in predictor]
    flags = {flag for field, flag in KNATIVE_FLAGGED_POD_FIELDS.items() if field in predictor}
    if any("emptyDir" in v for v in predictor.get("volumes", [])):
        flags.add("kubernetes.podspec-volumes-emptydir")
    for container in runtime["spec"]["containers"]:
        extra = set(container.get("securityContext", {})) - set(KNATIVE_CONTAINER_SECURITY)
        problems += [f"container {container['name']}: securityContext.{f} is not allowed"
                     for f in sorted(extra)]
        if "lifecycle" in container:
            problems.append(f"container {container['name']}: lifecycle is not allowed")
        if len(container.get("ports", [])) > 1:
            problems.append(f"container {container['name']}: more than one port")
        startup = container.get("startupProbe")
        if startup:
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            deadline = _seconds(annotations.get("serving.knative.dev/progress-deadline"),
                                KNATIVE_DEFAULT_PROGRESS_DEADLINE_SECONDS)
            if deadline <= budget:
                problems.append(f"progress deadline {deadline} s is shorter than the start-up "
                                f"probe's {budget} s: the revision fails while still loading")
    timeout = predictor.get("timeout")
    if timeout is not None and timeout > KNATIVE_DEFAULT_MAX_REVISION_TIMEOUT_SECONDS:
        problems.append(f"timeout {timeout} s exceeds Knative's max-revision-timeout-seconds")
    return problems, flags


def _seconds(text: str | None, default: int) -> int:
    if text is None:
        return default
    return int(text.removesuffix("s"))


# --- the pods KServe makes ---------------------------------------------------------------------


def predictor_pod_labels(isvc: Doc, runtime: Doc, worker: bool = False) -> dict[str, str]:
    """kserve `components/predictor.go` buildObjectMeta / reconcileWorker: the pod's labels are
    the union of the runtime's (`spec.labels`, or `workerSpec.labels` for workers), the
    InferenceService's, the predictor's, then KServe's own; later ones win."""
    predictor = isvc["spec"]["predictor"]
    runtime_labels = (runtime["spec"].get("workerSpec", {}).get("labels", {}) if worker
                      else runtime["spec"].get("labels", {}))
    name = isvc["metadata"]["name"]
    return {**runtime_labels, **isvc["metadata"].get("labels", {}),
            **predictor.get("labels", {}),
            "serving.kserve.io/inferenceservice": name, "component": "predictor"}


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def storage_container_for(uri: str, containers: Iterable[Doc]) -> str | None:
    """kserve `pkg/webhook/admission/pod/storage_initializer_injector.go`
    GetContainerSpecForStorageUri: the first ClusterStorageContainer by name whose
    supportedUriFormats match (prefix or regex), skipping disabled and non-initContainer ones."""
    for container in sorted(containers, key=lambda c: c["metadata"]["name"]):
        spec = container["spec"]
        if spec.get("disabled") or spec.get("workloadType", "initContainer") != "initContainer":
            continue
        for uri_format in spec.get("supportedUriFormats", []):
            if "prefix" in uri_format and uri.startswith(uri_format["prefix"]):
                return str(container["metadata"]["name"])
    return None


# --- Pod Security Standards, "restricted" ------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def restricted_problems(pod: Doc, containers: list[Doc]) -> list[str]:
    """Kubernetes Pod Security Standards, level "restricted"
    (kubernetes.io/docs/concepts/security/pod-security-standards, and the checks in
    k8s.io/pod-security-admission/policy): non-root, no privilege escalation, all capabilities
    dropped (NET_BIND_SERVICE may be added back), seccomp RuntimeDefault or Localhost, restricted
    volume types, no host namespaces."""
    problems = []
    pod_security = pod.get("securityContext", {})
    pod_seccomp = pod_security.get("seccompProfile", {}).get("type")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} not allowed")
    for container in containers:
        security = container.get("securityContext", {})
        name = container["name"]
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot must be true")
        if 0 in (security.get("runAsUser"), pod_security.get("runAsUser")):
            problems.append(f"{name}: runAsUser 0")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities added")
        seccomp = security.get("seccompProfile", {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
    return problems
