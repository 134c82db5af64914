"""Overrides of the planner's choices, highest first: CLI flags (or ServingRuntime args), then
`AIM_*` environment variables (InferenceService env, annotations mapped to env), then the recipe.

Each value remembers where it came from, so an override that cannot work is reported by name:
"AIM_TENSOR_PARALLEL_SIZE=3: ...". The engine's batch shape (`--max-num-batched-tokens`,
`--max-num-seqs`, `--block-size`) and the LoRA slots (`--enable-lora`, `--max-loras`,
`--max-lora-rank`) have no `AIM_*` variable: they come from `vllm serve` flags given to
`aim-runtime serve`, and reach the memory estimate like every other override.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import OverrideError
from aim_runtime.settings import KvCacheDtype, Objective, Precision, Variable

# Overrides the planner alone knows (the rest are `vllm serve` flags too, parsed by vLLM's parser
# when serving), and the engine's batch shape, which has no AIM_* variable.
PLANNER_ONLY = ("recipe_id", "objective", "precision", "min_concurrency")
BATCH_SHAPE = ("max_num_batched_tokens", "max_num_seqs", "block_size")
_CLI_ONLY_PARSERS = {**dict.fromkeys(BATCH_SHAPE, settings.positive_int),
                     "max_loras": settings.positive_int, "max_lora_rank": settings.positive_int,
                     "enable_lora": settings.boolean}


def override_variable(name: str) -> Variable[Any] | None:
    """The AIM_* variable of an override (AIM_<NAME>), None for a `vllm serve` flag only."""
    return settings.REGISTRY.get(f"AIM_{name.upper()}")


def override_flag(name: str) -> str:
    """The override's command-line flag: its variable's, else `vllm serve`'s."""
    variable = override_variable(name)
    if variable is not None and variable.flag is not None:
        return variable.flag
    return settings.flag_for(name)


@dataclass(frozen=True)
class Overrides:
    """Validated overrides; None = not given. `origins` says where each given one came from."""

    recipe_id: str | None = None
    objective: Objective | None = None
    precision: Precision | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    data_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    min_concurrency: int | None = None
    trust_remote_code: bool | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    block_size: int | None = None
    enable_lora: bool | None = None
    max_loras: int | None = None
    max_lora_rank: int | None = None
    origins: Mapping[str, str] = field(default_factory=dict)

    def origin(self, name: str) -> str:
        """`--flag value` or `AIM_NAME=value` of a given override."""
        return self.origins[name]


FIELDS = tuple(f.name for f in fields(Overrides) if f.name != "origins")


def collect_overrides(cli: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> Overrides:
    """Merge CLI values (already typed or strings; None = not given) over AIM_* variables."""
    cli = cli or {}
    environ = environ if environ is not None else {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in FIELDS:
        variable = override_variable(name)
        if cli.get(name) is not None:
            raw = str(cli[name])
            origins[name] = f"{override_flag(name)} {raw}"
            values[name] = _parse_cli(name, variable, raw, origins[name])
        elif variable is not None and variable.is_set(environ):
            values[name] = variable.read(environ)
            origins[name] = f"{variable.name}={environ[variable.name]}"
    return Overrides(**values, origins=origins)


def _parse_cli(name: str, variable: Variable[Any] | None, raw: str, origin: str) -> Any:
    if variable is not None:
        return variable.parse_value(raw, origin)
    try:
        return _CLI_ONLY_PARSERS[name](raw)
    except ValueError as exc:
        raise OverrideError(f"{origin}: {exc}") from exc
