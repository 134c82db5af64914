"""Round-trip YAML objects through the `kserve` SDK's model classes (and the Kubernetes client's,
which they nest), reporting every field the classes do not know and every value lost on the way.

The SDK's own ApiClient only resolves `kserve.models` names, so nested Kubernetes types
(V1ObjectMeta, V1Container...) are resolved here from `kubernetes.client.models` too.
"""

from __future__ import annotations

import re
from typing import Any

import kserve.models
import kubernetes.client.models
from kserve import ApiClient
from kserve.configuration import Configuration

KIND_TO_CLASS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "LocalModelCache"): "V1alpha1LocalModelCache",
    ("serving.kserve.io/v1alpha1", "LocalModelNodeGroup"): "V1alpha1LocalModelNodeGroup",
    ("serving.kserve.io/v1alpha1", "ClusterStorageContainer"): "V1alpha1ClusterStorageContainer",
    ("serving.kserve.io/v1alpha2", "LLMInferenceService"): "V1alpha2LLMInferenceService",
    ("serving.kserve.io/v1alpha2", "LLMInferenceServiceConfig"):
        "V1alpha2LLMInferenceServiceConfig",
}
PASS_THROUGH = {"str", "int", "float", "bool", "object", "date", "datetime"}
STRICT = Configuration()
STRICT.client_side_validation = True


def is_kserve(document: dict) -> bool:
    return (document.get("apiVersion"), document.get("kind")) in KIND_TO_CLASS


def round_trip(document: dict) -> tuple[dict, list[str]]:
    """(the document as the SDK serialises it back, problems found on the way in)."""
    class_name = KIND_TO_CLASS[(document["apiVersion"], document["kind"])]
    problems: list[str] = []
    model = _build(document, class_name, document["kind"], problems)
    return ApiClient().sanitize_for_serialization(model), problems


def lost_fields(original: Any, back: Any, path: str = "") -> list[str]:
    """Paths whose value did not survive the round trip. Keys the SDK adds with an empty value
    (it fills required strings such as a model's container `name` with "") are not losses."""
    if isinstance(original, dict) and isinstance(back, dict):
        lost = [f"{path}.{k}" for k in original if k not in back]
        for key in original.keys() & back.keys():
            lost += lost_fields(original[key], back[key], f"{path}.{key}")
        return lost
    if isinstance(original, list) and isinstance(back, list) and len(original) == len(back):
        return [p for i, (a, b) in enumerate(zip(original, back, strict=True))
                for p in lost_fields(a, b, f"{path}[{i}]")]
    return [] if original == back else [f"{path}: {original!r} became {back!r}"]


def _build(data: Any, type_name: str, path: str, problems: list[str]) -> Any:
    if type_name.startswith("list["):
        inner = type_name[5:-1]
        if not isinstance(data, list):
            problems.append(f"{path}: expected a list")
            return data
        return [_build(item, inner, f"{path}[{i}]", problems) for i, item in enumerate(data)]
    if type_name.startswith("dict("):
        inner = re.match(r"dict\(([^,]+), (.+)\)$", type_name).group(2)
        return {key: _build(value, inner, f"{path}.{key}", problems)
                for key, value in (data or {}).items()}
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models,
                                                               type_name, None)
    if type_name in PASS_THROUGH or cls is None:  # quantities, IntOrString...: kept as given
        return data
    if not isinstance(data, dict):
        problems.append(f"{path}: expected an object ({type_name})")
        return data
    json_to_attr = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key in data.keys() - json_to_attr.keys():
        problems.append(f"{path}.{key}: unknown to {type_name}")
    kwargs = {json_to_attr[key]: _build(value, cls.openapi_types[json_to_attr[key]],
                                        f"{path}.{key}", problems)
              for key, value in data.items() if key in json_to_attr}
    try:
        if cls.__module__.startswith("kserve."):
            return cls(**kwargs, local_vars_configuration=STRICT)
        return cls(**kwargs)  # the Kubernetes client's models are pydantic models
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}: {type_name}: {exc}")
        return data
