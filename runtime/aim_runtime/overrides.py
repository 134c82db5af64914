"""Overrides of the planner's choices, highest first: CLI flags (or ServingRuntime args), then
`AIM_*` environment variables (InferenceService env, annotations mapped to env), then the recipe.

Each value remembers where it came from, so an override that cannot work is reported by name:
"AIM_TENSOR_PARALLEL_SIZE=3: ...".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aim_runtime.errors import OverrideError

OBJECTIVES = ("latency", "throughput")
PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "mxfp4")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


@dataclass(frozen=True)
class Override:
    value: Any
    origin: str  # "--tensor-parallel-size 3" or "AIM_TENSOR_PARALLEL_SIZE=3"


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _positive_int(text: str) -> int:
    value = int(str(text).strip())
    if value < 1:
        raise ValueError("expected a positive integer")
    return value


def optional_int(text: str | None) -> int | None:
    """An integer variable that may be unset or blank."""
    return int(text) if text and text.strip() else None


def _fraction(text: str) -> float:
    value = float(str(text).strip())
    if not 0.0 < value <= 0.99:
        raise ValueError("expected a fraction in (0, 0.99]")
    return value


def _boolean(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _recipe_id(text: str) -> str:
    value = str(text).strip()
    if not value or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError("expected a recipe id such as llama-3.1-8b-mi300x-bf16-tp1")
    return value


# name -> (environment variable, CLI flag, parser)
FIELDS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "recipe_id": ("AIM_RECIPE_ID", "--recipe", _recipe_id),
    "objective": ("AIM_OBJECTIVE", "--objective", _choice(OBJECTIVES)),
    "precision": ("AIM_PRECISION", "--precision", _choice(PRECISIONS)),
    "kv_cache_dtype": ("AIM_KV_CACHE_DTYPE", "--kv-cache-dtype", _choice(KV_CACHE_DTYPES)),
    "max_model_len": ("AIM_MAX_MODEL_LEN", "--max-model-len", _positive_int),
    "tensor_parallel_size": ("AIM_TENSOR_PARALLEL_SIZE", "--tensor-parallel-size", _positive_int),
    "pipeline_parallel_size": ("AIM_PIPELINE_PARALLEL_SIZE", "--pipeline-parallel-size",
                               _positive_int),
    "data_parallel_size": ("AIM_DATA_PARALLEL_SIZE", "--data-parallel-size", _positive_int),
    "gpu_memory_utilization": ("AIM_GPU_MEMORY_UTILIZATION", "--gpu-memory-utilization",
                               _fraction),
    "min_concurrency": ("AIM_MIN_CONCURRENCY", "--min-concurrency", _positive_int),
    "trust_remote_code": ("AIM_TRUST_REMOTE_CODE", "--trust-remote-code", _boolean),
}


@dataclass(frozen=True)
class Overrides:
    """Validated overrides by field name."""

    values: Mapping[str, Override] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        override = self.values.get(name)
        return None if override is None else override.value

    def origin(self, name: str) -> str:
        return self.values[name].origin

    def __contains__(self, name: str) -> bool:
        return name in self.values


def collect_overrides(cli: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> Overrides:
    """Merge CLI values (already typed or strings; None = not given) over AIM_* variables."""
    cli = cli or {}
    environ = environ or {}
    values: dict[str, Override] = {}
    for name, (env_name, flag, parse) in FIELDS.items():
        if cli.get(name) is not None:
            values[name] = _parsed(parse, cli[name], f"{flag} {cli[name]}")
        elif environ.get(env_name, "").strip():
            values[name] = _parsed(parse, environ[env_name], f"{env_name}={environ[env_name]}")
    return Overrides(values)


def _parsed(parse: Callable[[str], Any], raw: Any, origin: str) -> Override:
    try:
        return Override(parse(str(raw)), origin)
    except ValueError as exc:
        reason = str(exc) if "expected" in str(exc) else "not a valid value"
        raise OverrideError(f"{origin}: {reason}") from exc
