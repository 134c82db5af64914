"""The candidates the planner tries, in order: curated recipes first, then derived ones.

Derived candidates follow a fixed ladder; each rung is tried over every layout before the next:

1. the checkpoint's own precision, KV cache in the model dtype, context from the model's maximum
   halving down to 32k (or the model's maximum if shorter);
2. FP8 weights quantized on load (only on FP8-capable GPUs, only for 16/32-bit checkpoints);
3. FP8 weights and an FP8 KV cache (FP8-capable GPUs);
4. the most compact of the above with contexts below 32k, down to 4k.

Layouts use every device by default (tp x pp x dp = devices). `latency` tries the widest tensor
parallelism first, `throughput` the narrowest (the remaining devices become data-parallel
replicas). Tensor parallelism must divide the attention heads, and KV heads must divide evenly or be
replicated (tp a multiple of them); pipeline parallelism is only tried when no tensor-parallel size
can use all devices. Nothing here looks at model names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.hardware.products import isa_supports_fp8, mxfp4_path
from aim_runtime.planner.catalog import Catalog, ModelMatch, Recipe
from aim_runtime.planner.memory import Layout
from aim_runtime.settings import (
    CPU_PRODUCT,
    PRECISION_TO_DTYPE,
    SIXTEEN_BIT,
    serving_precision,
)

CONTEXT_FLOOR = 32768
SHORT_CONTEXT_FLOOR = 4096


class Reason(BaseModel):
    """One candidate tried, and what happened to it (with the numbers)."""

    model_config = ConfigDict(frozen=True)

    candidate: str
    outcome: Literal["taken", "refused"]
    detail: str


@dataclass(frozen=True)
class Candidate:
    """One concrete configuration to check against memory."""

    source: Literal["curated", "derived"]
    recipe: Recipe | None
    layout: Layout
    precision: str
    quantization: str | None  # vLLM --quantization for on-load quantization, else None
    kv_cache_dtype: str
    max_model_len: int
    context_pinned: bool  # set by the user or the recipe: one full-length sequence suffices
    product_slug: str = "gpu"

    @property
    def recipe_id(self) -> str:
        if self.recipe is not None:
            return self.recipe.id
        kv = "-kvfp8" if self.kv_cache_dtype.startswith("fp8") else ""
        return (f"derived-{self.product_slug}-{self.precision}{kv}-tp{self.layout.tp}"
                f"-pp{self.layout.pp}-dp{self.layout.dp}")

    def label(self) -> str:
        kind = f"curated {self.recipe.id}" if self.recipe else "derived"
        return (f"{kind}: {self.layout}, {self.precision} weights, KV {self.kv_cache_dtype}, "
                f"context {self.max_model_len}")


@dataclass(frozen=True)
class Rung:
    precision: str
    quantization: str | None
    kv_cache_dtype: str
    contexts: tuple[int, ...]


def model_match_score(match: ModelMatch, facts: ModelFacts) -> int | None:
    """3 = Hugging Face id, 2 = architecture + shape, 1 = architecture, 0 = general; None = no."""
    if not (match.hf_ids or match.architectures or match.shape):
        return 0
    if facts.hf_id and facts.hf_id.lower() in (h.lower() for h in match.hf_ids):
        return 3
    if match.architectures and facts.architecture not in match.architectures:
        return None
    if match.shape:
        fits = all(getattr(facts, name) == value for name, value in match.shape.items())
        return 2 if fits else None
    return 1 if match.architectures else None


def native_precision(facts: ModelFacts, on_gpu: bool) -> str:
    """The precision a checkpoint runs at without quantizing it (fp32 runs as bf16 on GPUs)."""
    return serving_precision(facts.weight_precision or "bf16", on_gpu)


def compute_dtype(facts: ModelFacts, precision: str, on_gpu: bool) -> str:
    """vLLM --dtype: the precision itself when 16/32-bit, else the checkpoint's activation dtype."""
    if precision in PRECISION_TO_DTYPE:
        return PRECISION_TO_DTYPE[precision]
    dtype = facts.dtype
    return "bfloat16" if dtype == "float32" and on_gpu else dtype


def auto_contexts(model_max: int, floor: int, ceiling: int | None = None) -> tuple[int, ...]:
    """model_max, model_max/2, ... while >= floor (always at least one value)."""
    top = model_max if ceiling is None else min(model_max, ceiling)
    contexts = [top]
    while contexts[-1] // 2 >= floor:
        contexts.append(contexts[-1] // 2)
    return tuple(contexts)


def derived_ladder(facts: ModelFacts, fp8_capable: bool, on_gpu: bool,
                   pinned_precision: str | None = None, pinned_kv: str | None = None,
                   pinned_context: int | None = None) -> list[Rung]:
    """The rungs of the documented fallback ladder, narrowed by pinned overrides."""
    native = native_precision(facts, on_gpu)
    can_quantize = fp8_capable and native in SIXTEEN_BIT
    compact: tuple[str, str | None] = ("fp8", "fp8") if can_quantize else (native, None)
    long_contexts = auto_contexts(facts.max_position_embeddings, CONTEXT_FLOOR)
    short_top = min(facts.max_position_embeddings, CONTEXT_FLOOR) // 2
    rungs = [Rung(native, None, "auto", long_contexts)]
    if can_quantize:
        rungs.append(Rung("fp8", "fp8", "auto", long_contexts))
    if fp8_capable:
        rungs.append(Rung(*compact, "fp8", long_contexts))
    if short_top >= SHORT_CONTEXT_FLOOR:
        rungs.append(Rung(*compact, rungs[-1].kv_cache_dtype,
                          auto_contexts(short_top, SHORT_CONTEXT_FLOOR)))
    if pinned_precision is not None:
        kept = [r for r in rungs if r.precision == pinned_precision]
        quantization = "fp8" if pinned_precision == "fp8" and native in SIXTEEN_BIT else None
        rungs = kept or [Rung(pinned_precision, quantization, "auto", long_contexts)]
    if pinned_kv is not None:
        rungs = [replace(r, kv_cache_dtype=pinned_kv) for r in rungs]
    if pinned_context is not None:
        rungs = [replace(r, contexts=(pinned_context,)) for r in rungs]
    return list(dict.fromkeys(rungs))


def weight_precision_refusal(facts: ModelFacts, precision: str, on_gpu: bool, isa: str | None,
                             product: str) -> str | None:
    """Why weights at `precision` cannot run for this checkpoint on this device, else None."""
    checkpoint = facts.weight_precision
    if checkpoint is None:
        method = facts.quantization.method if facts.quantization else "?"
        return f"the checkpoint's quantization method {method!r} is not one the planner knows"
    if precision in SIXTEEN_BIT:
        if checkpoint not in SIXTEEN_BIT:
            return f"the checkpoint is {checkpoint}; it cannot be served as {precision}"
        if precision == "fp32" and on_gpu:
            return "fp32 serving on GPUs is not offered; use bf16"
        return None
    if precision != checkpoint and not (precision == "fp8" and checkpoint in SIXTEEN_BIT):
        return f"the checkpoint is {checkpoint}; only fp8 can be produced on load"
    if not on_gpu:
        return f"{precision} weights are not supported by vLLM's CPU backend"
    if precision == "fp8" and not isa_supports_fp8(isa):
        return f"fp8 needs MI300 series or later; {product} ({isa}) has no FP8"
    if precision == "mxfp4" and mxfp4_path(isa) is None:
        return (f"vLLM has no MXFP4 kernel for {product} ({isa}); MXFP4 runs on MI300 series "
                "(weight-only) and MI350 series (native)")
    return None


def valid_tensor_parallel(facts: ModelFacts, tp: int) -> str | None:
    """None when tp is valid for the model, else why not."""
    if facts.num_attention_heads % tp:
        return f"tp={tp} does not divide the {facts.num_attention_heads} attention heads"
    kv = facts.num_kv_heads
    if facts.mla is None and kv % tp and tp % kv:
        return f"tp={tp} neither divides nor is a multiple of the {kv} KV heads"
    group = facts.quantization.group_size if facts.quantization else None
    width = facts.moe.expert_intermediate_size if facts.moe else facts.intermediate_size
    if group and group > 0 and width and (width // tp) % group:
        return (f"tp={tp} splits the {width}-wide MLP into shards that are not a multiple of the "
                f"quantization group size {group}")
    return None


def layouts(facts: ModelFacts, devices: int, objective: str,
            with_pipeline: bool = False, per_node: int | None = None) -> list[Layout]:
    """Layouts that use all devices, in the objective's order of preference.

    Across nodes (`per_node` < devices) tensor parallelism stays inside a node and pipeline
    stages cover the rest: never tensor parallelism over the network, and one replica (data
    parallel replicas across nodes are separate InferenceServices). Within a node, pipeline
    stages are added only when no valid tensor-parallel size reaches all devices, or on request
    (`with_pipeline`, used when the user pins a parallel size).
    """
    if per_node is not None and per_node < devices:
        sizes = [tp for tp in range(per_node, 0, -1)
                 if per_node % tp == 0 and valid_tensor_parallel(facts, tp) is None]
        return [Layout(tp, devices // tp, 1) for tp in sizes
                if devices // tp <= facts.num_layers]
    tensor_sizes = [tp for tp in range(1, devices + 1)
                    if devices % tp == 0 and valid_tensor_parallel(facts, tp) is None]
    if not tensor_sizes:
        return []
    widest_first = objective == "latency"
    result = [Layout(tp, 1, devices // tp) for tp in sorted(tensor_sizes, reverse=widest_first)]
    if with_pipeline:
        for pp in range(2, min(devices, facts.num_layers) + 1):
            if devices % pp:
                continue
            for tp in sorted(tensor_sizes, reverse=widest_first):
                if (devices // pp) % tp == 0:
                    result.append(Layout(tp, pp, devices // (pp * tp)))
    elif max(tensor_sizes) < devices:
        for tp in sorted(tensor_sizes, reverse=True):
            if devices // tp <= facts.num_layers:
                result.append(Layout(tp, devices // tp, 1))
    return result


def curated_recipes(catalog: Catalog, facts: ModelFacts) -> list[tuple[int, Recipe]]:
    """Recipes whose model match accepts this model, best match first."""
    matched = [(score, r) for r in catalog.recipes
               if (score := model_match_score(r.model, facts)) is not None]
    return sorted(matched, key=lambda item: -item[0])


def curated_candidates(recipe: Recipe, facts: ModelFacts, devices: int, product_slug: str,
                       pinned_context: int | None = None) -> Iterator[Candidate]:
    """The candidates of one recipe: its layout filled with data-parallel replicas, and its
    context (or, when the recipe leaves it open, the model's maximum halving down to 4k)."""
    per_replica = recipe.tensor_parallel_size * recipe.pipeline_parallel_size
    layout = Layout(recipe.tensor_parallel_size, recipe.pipeline_parallel_size,
                    devices // per_replica)
    fixed_context = pinned_context or recipe.max_model_len
    contexts: tuple[int, ...]
    if fixed_context:
        contexts, pinned = (fixed_context,), True
    else:
        contexts = auto_contexts(facts.max_position_embeddings, SHORT_CONTEXT_FLOOR)
        pinned = False
    quantization = recipe.quantization
    if recipe.precision == "fp8" and facts.weight_precision in SIXTEEN_BIT and not quantization:
        quantization = "fp8"
    for context in contexts:
        yield Candidate("curated", recipe, layout, recipe.precision, quantization,
                        recipe.kv_cache_dtype, context, pinned, product_slug)


def product_slug(product: str) -> str:
    return "cpu" if product == CPU_PRODUCT else product.lower()
