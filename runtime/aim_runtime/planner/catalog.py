"""Catalog: curated recipes, one YAML file per model x GPU family, validated strictly.

A file names the model it is for, the GPU products, shared engine args and ROCm environment, and a
list of `recipes` (variants: precision, parallelism, objective). Each variant resolves to one
`Recipe`, whose env and engine args are the file's overlaid by the variant's. Unknown keys are
errors; every error names the file, the field and the value. YAML is loaded with `safe_load` only.

Settings the planner owns (parallel sizes, dtype, quantization, KV dtype, context length, memory
utilisation) are typed fields of a recipe and may not also appear under `engine_args`, so there is
one source of truth for each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aim_runtime import settings
from aim_runtime.errors import RecipeError
from aim_runtime.hardware.products import PRODUCTS
from aim_runtime.planner.rocm import RULE_IDS
from aim_runtime.settings import CPU_PRODUCT, KvCacheDtype, Objective, Precision

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Typed recipe fields; engine_args may not repeat them.
PLANNER_OWNED_ARGS = {
    "model", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "dtype",
    "quantization", "kv_cache_dtype", "max_model_len", "gpu_memory_utilization",
    "kv_cache_memory_bytes", "trust_remote_code",
}
# Device visibility belongs to the device plugin; vLLM on ROCm fails when HIP and CUDA lists differ.
FORBIDDEN_ENV = {"HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"}
ArgValue = str | int | float | bool | list[str | int | float] | dict[str, Any] | None
# libyaml's safe loader when PyYAML was built with it (several times faster), else the pure one.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelMatch(_Strict):
    """Which models a recipe is for. Empty = any model (a general recipe).

    `shape` matches config dimensions (e.g. num_layers, hidden_size, num_kv_heads), so fine-tunes
    of a base model pick up its recipe without any reliance on names.
    """

    hf_ids: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    shape: dict[str, int] = Field(default_factory=dict)

    @field_validator("shape")
    @classmethod
    def _known_shape_fields(cls, shape: dict[str, int]) -> dict[str, int]:
        unknown = set(shape) - SHAPE_FIELDS
        if unknown:
            raise ValueError(f"unknown shape field(s) {sorted(unknown)}; "
                             f"use {sorted(SHAPE_FIELDS)}")
        return shape


SHAPE_FIELDS = {"num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                "vocab_size", "intermediate_size", "max_position_embeddings"}


class ExpectedPerformance(_Strict):
    """A published or measured figure, always with where it came from."""

    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    ttft_ms_p50: float | None = None
    conditions: str = ""
    source: str


class RecipeVariant(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    objective: Objective | None = None
    precision: Precision
    quantization: str | None = None
    kv_cache_dtype: KvCacheDtype = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=0.99)
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1 << 20)
    trust_remote_code: bool = False
    engine_args: dict[str, ArgValue] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    skip_rules: tuple[str, ...] = ()  # ids of ROCm rules (planner/rocm.py) this recipe opts out of
    performance: ExpectedPerformance | None = None
    notes: str = ""


class RecipeFile(_Strict):
    schema_version: Literal[1] = 1
    model: ModelMatch
    gpu_products: tuple[str, ...] = Field(min_length=1)
    source: str = ""
    notes: str = ""
    engine_args: dict[str, ArgValue] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    skip_rules: tuple[str, ...] = ()
    recipes: tuple[RecipeVariant, ...] = Field(min_length=1)

    @field_validator("gpu_products")
    @classmethod
    def _known_products(cls, products: tuple[str, ...]) -> tuple[str, ...]:
        for name in products:
            if name != CPU_PRODUCT and name not in PRODUCTS:
                raise ValueError(f"unknown GPU product {name!r}; known: "
                                 f"{', '.join([*PRODUCTS, CPU_PRODUCT])}")
        return products


class Recipe(RecipeVariant):
    """A resolved recipe: a variant with its file's model match, GPU products and shared engine
    args and env merged in. What the planner matches and turns into engine settings."""

    file: str
    model: ModelMatch
    gpu_products: tuple[str, ...]
    source: str


class Catalog(BaseModel):
    """All recipes, by id, with the directories they came from."""

    model_config = ConfigDict(frozen=True)

    recipes: tuple[Recipe, ...]
    directories: tuple[str, ...]

    def get(self, recipe_id: str) -> Recipe | None:
        return next((r for r in self.recipes if r.id == recipe_id), None)


def packaged_recipe_dir() -> Path:
    """The curated recipes: inside the wheel when installed, else the repository's."""
    packaged = Path(__file__).parents[1] / "recipes"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "recipes"


def load_catalog(directories: Iterable[Path] | None = None) -> Catalog:
    """Load and validate every `*.yaml` under the directories; all errors are reported at once."""
    dirs = list(directories) if directories is not None else [packaged_recipe_dir()]
    recipes: list[Recipe] = []
    errors: list[str] = []
    for directory in dirs:
        if not directory.is_dir():
            errors.append(f"{directory}: recipe directory does not exist")
            continue
        for file in sorted(directory.rglob("*.yaml")):
            try:
                recipes.extend(load_recipe_file(file))
            except RecipeError as exc:
                errors.append(str(exc))
    errors.extend(_duplicate_id_errors(recipes))
    if errors:
        raise RecipeError("\n".join(errors), "fix the recipe files named above")
    return Catalog(recipes=tuple(recipes), directories=tuple(str(d) for d in dirs))


def load_recipe_file(file: Path) -> list[Recipe]:
    """Parse and validate one recipe file into resolved recipes."""
    try:
        document = yaml.load(file.read_text(), Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{file}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise RecipeError(f"{file}: cannot read: {exc}") from exc
    if not isinstance(document, dict):
        raise RecipeError(f"{file}: top level must be a mapping with 'model', 'gpu_products' "
                          f"and 'recipes', got {type(document).__name__}")
    try:
        parsed = RecipeFile.model_validate(document)
    except ValidationError as exc:
        raise RecipeError("\n".join(_format_validation_error(file, exc))) from exc
    problems = _semantic_problems(parsed)
    if problems:
        raise RecipeError("\n".join(f"{file}: {p}" for p in problems))
    return [_resolve(file, parsed, variant) for variant in parsed.recipes]


def _resolve(file: Path, parsed: RecipeFile, variant: RecipeVariant) -> Recipe:
    engine_args = {settings.name_of_flag(k): v for k, v in parsed.engine_args.items()}
    engine_args.update({settings.name_of_flag(k): v for k, v in variant.engine_args.items()})
    return Recipe.model_validate({
        **variant.model_dump(),
        "engine_args": engine_args,
        "env": {**parsed.env, **variant.env},
        "skip_rules": tuple(dict.fromkeys((*parsed.skip_rules, *variant.skip_rules))),
        "notes": "\n".join(n for n in (parsed.notes, variant.notes) if n),
        "file": str(file), "model": parsed.model, "gpu_products": parsed.gpu_products,
        "source": parsed.source,
    })


def _semantic_problems(parsed: RecipeFile) -> list[str]:
    problems: list[str] = []
    scopes = [("", parsed.engine_args, parsed.env)] + [
        (f"recipes[{i}].", v.engine_args, v.env) for i, v in enumerate(parsed.recipes)
    ]
    for prefix, engine_args, env in scopes:
        for name in engine_args:
            normalized = settings.name_of_flag(name)
            if normalized in PLANNER_OWNED_ARGS:
                problems.append(f"{prefix}engine_args.{name}: set the recipe field "
                                f"'{normalized}' instead (the planner owns it)")
        for name in env:
            if not ENV_NAME.match(name):
                problems.append(f"{prefix}env.{name}: not a valid environment variable name")
            elif name in FORBIDDEN_ENV:
                problems.append(f"{prefix}env.{name}: device visibility is set by the device "
                                "plugin, not by recipes")
    skips = [("", parsed.skip_rules)] + [
        (f"recipes[{i}].", v.skip_rules) for i, v in enumerate(parsed.recipes)]
    for prefix, skip in skips:
        problems.extend(f"{prefix}skip_rules: no ROCm rule {rule!r}; rules: {', '.join(RULE_IDS)}"
                        for rule in skip if rule not in RULE_IDS)
    cpu_only = set(parsed.gpu_products) == {CPU_PRODUCT}
    if CPU_PRODUCT in parsed.gpu_products and not cpu_only:
        problems.append("gpu_products: CPU cannot share a recipe file with GPU products")
    for i, variant in enumerate(parsed.recipes):
        if variant.kv_cache_memory_bytes is not None and not cpu_only:
            problems.append(f"recipes[{i}].kv_cache_memory_bytes: value "
                            f"{variant.kv_cache_memory_bytes} is for CPU recipes; GPU recipes "
                            "size the KV cache with gpu_memory_utilization")
    return problems


def _duplicate_id_errors(recipes: list[Recipe]) -> list[str]:
    seen: dict[str, str] = {}
    errors = []
    for recipe in recipes:
        if recipe.id in seen:
            errors.append(f"{recipe.file}: recipe id {recipe.id!r} is already defined in "
                          f"{seen[recipe.id]}")
        else:
            seen[recipe.id] = recipe.file
    return errors


def _format_validation_error(file: Path, exc: ValidationError) -> list[str]:
    lines = []
    errors = exc.errors()
    failing = {tuple(e["loc"][:1]) for e in errors if len(e["loc"]) > 1}
    for error in errors:
        if error["type"] == "too_short" and tuple(error["loc"]) in failing:
            continue  # a list whose items failed also looks empty to pydantic; say it once
        location = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in error["loc"]
        ).replace(".[", "[")
        value = error.get("input")
        shown = "" if error["type"] == "missing" else f" (value: {value!r})"
        lines.append(f"{file}: {location or '<top>'}: {error['msg']}{shown}")
    return lines


def engine_args_to_argv(engine_args: dict[str, ArgValue]) -> list[str]:
    """Engine args as `vllm serve` flags: True -> `--flag`, False -> `--no-flag`, None -> bare
    flag, lists -> repeated values, dicts -> JSON."""
    argv: list[str] = []
    for name, value in engine_args.items():
        flag = settings.flag_for(name)
        if value is True or value is None:
            argv.append(flag)
        elif value is False:
            argv.append(settings.flag_for("no_" + name))
        elif isinstance(value, list):
            argv.extend([flag, *(str(v) for v in value)])
        elif isinstance(value, dict):
            argv.extend([flag, json.dumps(value)])
        else:
            argv.extend([flag, str(value)])
    return argv
