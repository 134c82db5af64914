"""Which protocol a request path belongs to: open to probes, vLLM's OpenAI application (and so
OpenAI-shaped errors), or KServe's. One place for the gate, the listener and the error
handlers."""

from __future__ import annotations

import re

# Probes and Prometheus: KServe's health routes, vLLM's /health (the LLMInferenceService probes),
# the metrics.
OPEN_PATHS = re.compile(
    r"^/(?:metrics|health|v2/health/(?:live|ready)|v2/models/[^/]+/ready)?$")
OPENAI_PREFIX = "/openai"  # KServe's prefix for OpenAI routes
# KServe's own routes; with root routes every other path is vLLM's.
KSERVE_PATHS = re.compile(
    r"^/(?:v2(?:/.*)?|v1/models/[^/]+(?::(?:predict|explain))?|metrics)?$")


def openai_shaped(path: str, root_routes: bool) -> bool:
    """Whether errors on this path take OpenAI's shape (vLLM's routes) or KServe's."""
    if path.startswith(OPENAI_PREFIX + "/"):
        return True
    return root_routes and not KSERVE_PATHS.match(path)


def vllm_mount_point(path: str, root_routes: bool) -> str | None:
    """Where vLLM's application is mounted for this request path, if the fast path takes it:
    `/openai` for KServe's OpenAI prefix; with root routes, the root for the paths under `/v1`
    that are not KServe's v1 protocol. (Other root paths of vLLM's, like `/tokenize`, reach it
    through KServe's application.)"""
    if path.startswith(OPENAI_PREFIX + "/"):
        return OPENAI_PREFIX
    if root_routes and path.startswith("/v1/") and not KSERVE_PATHS.match(path):
        return ""
    return None


def route_path(scope: dict) -> str:
    """The request's path below the server's root path (uvicorn's `--root-path`)."""
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    return path[len(root_path):] if root_path and path.startswith(root_path + "/") else path


PROTOCOLS = ("openai", "anthropic", "v2", "v1", "other")
ANTHROPIC_PATH = re.compile(r"/v1/messages(?:/count_tokens)?$")


def protocol_of(path: str, root_routes: bool) -> str | None:
    """The protocol a request speaks, for the request counters; None for probes and metrics."""
    if OPEN_PATHS.match(path):
        return None
    if ANTHROPIC_PATH.search(path) and vllm_mount_point(path, root_routes) is not None:
        return "anthropic"
    if openai_shaped(path, root_routes):
        return "openai"
    if path.startswith("/v2/"):
        return "v2"
    return "v1" if path.startswith("/v1/") else "other"
