"""Validate custom resources against the vendored CRDs as the Kubernetes API server does.

The API server checks a custom resource against its CRD version's `openAPIV3Schema` (a structural
schema) and, with `kubectl apply`'s default `--validate=strict`, refuses fields the schema does not
declare instead of pruning them. This module turns that schema into a JSON-Schema (draft 4, the
dialect OpenAPI v3.0 schemas follow) with the Kubernetes extensions spelled out:

- pruning: an object schema with `properties` and no `additionalProperties` admits no other key,
  unless `x-kubernetes-preserve-unknown-fields: true`;
- `x-kubernetes-int-or-string`: an integer or a string;
- `nullable: true`: null as well;
- `x-kubernetes-list-type: set`: unique items; `map`: items unique by `x-kubernetes-list-map-keys`
  (checked after the schema, as the API server does);
- `metadata`: the name as a DNS-1123 subdomain (the API server's rule for custom resources), label
  keys and values as Kubernetes' label syntax.

CEL rules (`x-kubernetes-validations`) are evaluated by `cel_rules` where a CRD has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

FIXTURES = Path(__file__).parent / "fixtures" / "kserve"
CRD_FILES = sorted([*FIXTURES.glob("crds/*.yaml"), *FIXTURES.glob("other-crds/*.yaml")])

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KEYWORDS = {"type", "required", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "minItems", "maxItems", "minLength", "maxLength",
            "minProperties", "maxProperties", "uniqueItems", "multipleOf", "format"}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def translate(node: dict[str, Any]) -> dict[str, Any]:
    """One OpenAPI v3 structural schema node as a draft-4 JSON-Schema."""
    out: dict[str, Any] = {key: value for key, value in node.items() if key in KEYWORDS}
    if "properties" in node:
        out["properties"] = {name: translate(sub) for name, sub in node["properties"].items()}
    if "items" in node:
        out["items"] = translate(node["items"])
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = translate(additional)
    elif additional is not None:
        out["additionalProperties"] = additional
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [translate(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = translate(node["not"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@dataclass(frozen=True, eq=False)
class CrdVersion:
    """One served version of a CRD: its kind, schema and validator."""

    group: str
    kind: str
    version: str
    scope: str
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def errors(self, document: dict[str, Any]) -> list[str]:
        """Every reason the API server would refuse `document` (empty: accepted)."""
        body = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
        validator = _validator(self)
        problems = [f"{_path(error.absolute_path)}: {error.message}"
                    for error in validator.iter_errors(body)]
        problems += list(_list_map_duplicates(self.schema, body, ""))
        problems += _metadata_errors(document.get("metadata") or {})
        return problems


@cache
def _validator(version: CrdVersion) -> jsonschema.Draft4Validator:
    schema = translate(version.schema)
    for key in ("apiVersion", "kind", "metadata"):  # checked by the API server itself
        schema.get("properties", {}).pop(key, None)
    return jsonschema.Draft4Validator(schema)


def _path(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) or "<root>"


def _list_map_duplicates(schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
    """Items of `x-kubernetes-list-type: map` lists must differ in their key fields."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key) or (extra if isinstance(extra, dict) else None)
            if sub:
                yield from _list_map_duplicates(sub, item, f"{where}.{key}")
    elif isinstance(value, list):
        keys = schema.get("x-kubernetes-list-map-keys")
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen: set[tuple[Any, ...]] = set()
            for index, item in enumerate(value):
                identity = tuple(item.get(k) for k in keys) if isinstance(item, dict) else ()
                if identity in seen:
                    duplicate = dict(zip(keys, identity, strict=True))
                    yield f"{where}[{index}]: Duplicate value: {duplicate}"
                seen.add(identity)
        for index, item in enumerate(value):
            yield from _list_map_duplicates(schema.get("items", {}), item, f"{where}[{index}]")


def _metadata_errors(metadata: dict[str, Any]) -> list[str]:
    problems = []
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (len(label) > 63 or not LABEL_NAME.match(label)
                or (prefix and not DNS1123_SUBDOMAIN.match(prefix))):
            problems.append(f"metadata.labels: invalid key {key!r}")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"metadata.labels.{key}: invalid value {value!r}")
    for key, value in (metadata.get("annotations") or {}).items():
        if not isinstance(value, str):
            problems.append(f"metadata.annotations.{key}: must be a string, got {value!r}")
    return problems


@cache
def crd_versions() -> dict[tuple[str, str], CrdVersion]:
    """(apiVersion, kind) -> the served CRD version, for every vendored CRD."""
    found: dict[tuple[str, str], CrdVersion] = {}
    for path in CRD_FILES:
        for crd in yaml.load_all(path.read_text(), Loader=SAFE_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                entry = CrdVersion(spec["group"], spec["names"]["kind"], version["name"],
                                   spec["scope"], version["schema"]["openAPIV3Schema"])
                found[(entry.api_version, entry.kind)] = entry
    return found


def is_custom(document: dict[str, Any]) -> bool:
    return (document.get("apiVersion"), document.get("kind")) in crd_versions()


def validate(document: dict[str, Any]) -> list[str]:
    """The API server's schema verdict on a custom resource (empty: accepted)."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key not in crd_versions():
        return [f"no CRD serves {key[0]} {key[1]}"]
    return crd_versions()[key].errors(document)
