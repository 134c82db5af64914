"""Plan: from the inventory, the model facts, the catalog and the overrides to engine settings.

The planner walks the candidates of `candidates.py` in order (curated recipes that match the model
and GPU, then the derived ladder) and takes the first that fits in memory with room for useful
concurrency: KV capacity for `min_concurrency` (AIM_MIN_CONCURRENCY, default in settings.py)
sequences of the full context, or for one when the context was pinned by the user or the recipe.
Every candidate tried is recorded in `reasons`, taken or refused, with the numbers; when nothing
fits, `NoFitError` lists what would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from aim_runtime import settings
from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.errors import NoFitError, OverrideError, PlanError
from aim_runtime.hardware import Inventory
from aim_runtime.hardware.products import PRODUCTS, mxfp4_path
from aim_runtime.planner.candidates import (
    Candidate,
    Reason,
    compute_dtype,
    curated_candidates,
    curated_recipes,
    derived_ladder,
    layouts,
    native_precision,
    product_slug,
    valid_tensor_parallel,
)
from aim_runtime.planner.catalog import Catalog, Recipe
from aim_runtime.planner.memory import (
    BatchShape,
    Layout,
    LoraShape,
    MemoryEstimate,
    estimate,
    lora_bytes_per_device,
)
from aim_runtime.planner.overrides import Overrides
from aim_runtime.planner.rocm import (
    AppliedRule,
    BlockBudget,
    RocmSettings,
    RuleInput,
    block_budget,
    derive,
    model_kinds,
)
from aim_runtime.planner.roofline import Roofline, compute_roofline
from aim_runtime.planner.setting import PlanSetting
from aim_runtime.planner.suggestions import no_fit_message
from aim_runtime.settings import CPU_PRODUCT, GIB


class ModelSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    hf_id: str | None
    architecture: str
    parameters: int
    parameter_source: str
    max_position_embeddings: int


# Prefixes vLLM's Ray executor copies to workers by itself (vllm/ray/ray_env.py).
RAY_COPIED_PREFIXES = ("VLLM_", "NCCL_", "UCX_", "HF_", "HUGGING_FACE_", "FLASH_ATTENTION_",
                       "LMCACHE_")


class Plan(BaseModel):
    """The chosen configuration and the proof of why it was chosen."""

    model_config = ConfigDict(frozen=True)

    recipe_id: str
    recipe_source: Literal["curated", "derived"]
    objective: str
    model: ModelSummary
    product: str
    isa: str | None
    inventory_source: str
    nodes: int
    devices_per_node: int
    devices_available: int
    devices_used: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    precision: str
    dtype: str
    quantization: str | None
    kv_cache_dtype: str
    max_model_len: int
    gpu_memory_utilization: float | None
    memory: MemoryEstimate
    engine_args: dict[str, Any]
    env: dict[str, str]
    reasons: list[Reason]
    notes: list[str]
    rocm_rules: list[AppliedRule] = []  # the ROCm rules that set env/engine args (planner/rocm.py)
    roofline: Roofline | None = None  # hardware ceilings (None: CPU, or no product figures)


def make_plan(inventory: Inventory, facts: ModelFacts, catalog: Catalog,
              overrides: Overrides | None = None) -> Plan:
    """Choose the first candidate that fits; raise NoFitError (with every reason) if none does."""
    setting = PlanSetting.create(inventory, facts, overrides or Overrides())
    if setting.multi_node and not setting.on_gpu:
        raise PlanError(f"{inventory.nodes} nodes of CPUs: multi-node serving needs GPUs "
                        "(vLLM's Ray executor refuses the CPU platform)")
    if facts.weight_precision is None:
        method = facts.quantization.method if facts.quantization else "?"
        raise PlanError(
            f"{facts.path}: quantization method {method!r} is not one the "
            "planner knows (fp8, awq, gptq, compressed-tensors, quark, mxfp4, bitsandbytes)",
            "pin a curated recipe with --recipe, or use a checkpoint in a known format",
        )
    blocker = setting.precision_refusal(native_precision(facts, setting.on_gpu))
    if blocker and "precision" not in setting.overrides.origins:
        raise NoFitError(*no_fit_message(setting, []))
    _check_overrides(setting, catalog)
    reasons: list[Reason] = []
    for candidate in _candidates(setting, catalog, reasons):
        evaluation = _evaluate(setting, candidate)
        memory, refusal = evaluation.memory, evaluation.refusal
        if refusal is None:
            reasons.append(Reason(candidate=candidate.label(), outcome="taken",
                                  detail=_fit_summary(memory)))
            return _build(setting, candidate, evaluation, reasons)
        reasons.append(Reason(candidate=candidate.label(), outcome="refused", detail=refusal))
    if not _derived_layouts(setting):
        raise NoFitError(_no_layout_message(setting), "give it fewer GPUs (or nodes)",
                         reasons=reasons)
    message, hint = no_fit_message(setting, reasons)
    raise NoFitError(message, hint, reasons=reasons)


def _no_layout_message(setting: PlanSetting) -> str:
    facts = setting.facts
    where = (f"{setting.nodes} nodes of {setting.devices_per_node}" if setting.multi_node
             else f"{setting.devices}")
    inside = " and stay inside a node" if setting.multi_node else ""
    return (f"{facts.architecture} cannot be split over {where} {setting.product} GPUs: tensor "
            f"parallelism must divide its {facts.num_attention_heads} attention heads "
            f"({facts.num_kv_heads} KV heads){inside}, and pipeline stages cannot outnumber its "
            f"{facts.num_layers} layers")


# --- overrides that cannot work are errors, before anything is tried ---------------------------


def _check_overrides(setting: PlanSetting, catalog: Catalog) -> None:
    overrides, facts = setting.overrides, setting.facts
    pinned = overrides.recipe_id
    if pinned is not None and catalog.get(pinned) is None:
        known = ", ".join(r.id for r in catalog.recipes if r.id.split("-")[0] in pinned) \
            or "see `aim-runtime recipes list`"
        raise OverrideError(f"{overrides.origin('recipe_id')}: no such recipe", f"known: {known}")
    _check_parallel_overrides(setting)
    context = overrides.max_model_len
    if context is not None and context > facts.max_position_embeddings:
        raise OverrideError(
            f"{overrides.origin('max_model_len')}: longer than the model's "
            f"{facts.max_position_embeddings}-token context",
            f"use at most {facts.max_position_embeddings}",
        )
    precision = overrides.precision
    if precision is not None:
        refusal = setting.precision_refusal(precision)
        if refusal:
            raise OverrideError(f"{overrides.origin('precision')}: {refusal}")
    kv = overrides.kv_cache_dtype
    if kv is not None and kv.startswith("fp8") and not setting.fp8_capable:
        raise OverrideError(f"{overrides.origin('kv_cache_dtype')}: an FP8 KV cache needs "
                            f"FP8 support (MI300 series or later); this is {setting.product}")


def _check_parallel_overrides(setting: PlanSetting) -> None:
    overrides = setting.overrides
    sizes = {name: getattr(overrides, name) for name in
             ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")}
    pinned = {name: size for name, size in sizes.items() if size is not None}
    if not pinned:
        return
    product = 1
    for size in pinned.values():
        product *= size
    origins = ", ".join(overrides.origin(name) for name in pinned)
    ranks, cores = sizes["data_parallel_size"], setting.inventory.host.cpu_cores
    if not setting.on_gpu and ranks is not None and ranks > cores:
        raise OverrideError(
            f"{overrides.origin('data_parallel_size')}: {ranks} CPU engines would share "
            f"{cores} cores", f"use at most {cores}")
    if product > setting.devices:
        raise OverrideError(
            f"{origins}: needs {product} devices but this pod has {setting.devices}",
            f"request amd.com/gpu: {product} or lower the parallel sizes",
        )
    if len(pinned) < 3 and setting.devices % product:
        raise OverrideError(
            f"{origins}: {product} does not divide the {setting.devices} devices",
            "set all of tensor/pipeline/data parallel sizes to use fewer devices on purpose",
        )
    tp = sizes["tensor_parallel_size"]
    if tp is not None and (why := valid_tensor_parallel(setting.facts, tp)):
        raise OverrideError(f"{overrides.origin('tensor_parallel_size')}: {why}")
    if setting.multi_node:
        _check_multi_node_overrides(setting, sizes)
    pp = sizes["pipeline_parallel_size"]
    if pp is not None and pp > setting.facts.num_layers:
        raise OverrideError(f"{overrides.origin('pipeline_parallel_size')}: more stages than "
                            f"the model's {setting.facts.num_layers} layers")


def _check_multi_node_overrides(setting: PlanSetting, sizes: dict[str, int | None]) -> None:
    overrides = setting.overrides
    tp, dp = sizes["tensor_parallel_size"], sizes["data_parallel_size"]
    if tp is not None and (tp > setting.devices_per_node or setting.devices_per_node % tp):
        raise OverrideError(
            f"{overrides.origin('tensor_parallel_size')}: tensor parallelism must stay inside a "
            f"node of {setting.devices_per_node} GPUs (never across the network)",
            f"use a divisor of {setting.devices_per_node}; pipeline stages span the nodes")
    if dp is not None and dp > 1:
        raise OverrideError(
            f"{overrides.origin('data_parallel_size')}: data-parallel replicas across nodes are "
            "separate deployments", "deploy one InferenceService per replica (or scale it)")


def ray_carry_over_env(env: dict[str, str]) -> dict[str, str]:
    """vLLM copies VLLM_*, NCCL_*, HF_*... variables to its Ray workers on other nodes; the plan's
    others (HIP_*, TORCH_*...) are named in VLLM_RAY_EXTRA_ENV_VARS_TO_COPY so every node runs
    with the same settings."""
    names = sorted(name for name in env if not name.startswith(RAY_COPIED_PREFIXES))
    return {settings.VLLM_RAY_EXTRA_ENV_VARS_TO_COPY.name: ",".join(names)} if names else {}


# --- candidates --------------------------------------------------------------------------------


def _candidates(setting: PlanSetting, catalog: Catalog,
                reasons: list[Reason]) -> Iterator[Candidate]:
    pinned_recipe = setting.overrides.recipe_id
    slug = product_slug(setting.product)
    for _score, recipe in curated_recipes(catalog, setting.facts):
        if pinned_recipe and recipe.id != pinned_recipe:
            continue
        refusal = _recipe_refusal(setting, recipe)
        if refusal:
            reasons.append(Reason(candidate=f"curated {recipe.id}", outcome="refused",
                                  detail=refusal))
            continue
        yield from curated_candidates(recipe, setting.facts, setting.devices, slug,
                                      setting.overrides.max_model_len)
    if pinned_recipe:
        return
    ladder = derived_ladder(setting.facts, setting.fp8_capable, setting.on_gpu,
                            setting.overrides.precision,
                            setting.overrides.kv_cache_dtype,
                            setting.overrides.max_model_len)
    pinned_context = setting.overrides.max_model_len is not None
    for rung in ladder:
        for context in rung.contexts:
            for layout in _derived_layouts(setting):
                yield Candidate("derived", None, layout, rung.precision, rung.quantization,
                                rung.kv_cache_dtype, context, pinned_context, slug)


def _derived_layouts(setting: PlanSetting) -> list[Layout]:
    """Preferred layouts, or with any parallel size pinned, every layout that agrees with it."""
    pins = {name: getattr(setting.overrides, f"{name}_parallel_size")
            for name in ("tensor", "pipeline", "data")}
    if all(pins.values()):
        return [Layout(pins["tensor"], pins["pipeline"], pins["data"])]
    per_node = setting.devices_per_node if setting.multi_node else None
    if not any(pins.values()):
        return layouts(setting.facts, setting.devices, setting.objective, per_node=per_node)
    everything = layouts(setting.facts, setting.devices, setting.objective, with_pipeline=True,
                         per_node=per_node)
    return [
        layout for layout in everything
        if pins["tensor"] in (None, layout.tp) and pins["pipeline"] in (None, layout.pp)
        and pins["data"] in (None, layout.dp)
    ]


def _recipe_refusal(setting: PlanSetting, recipe: Recipe) -> str | None:
    """Why a model-matching curated recipe cannot be used here, else None."""
    wanted_product = setting.product if setting.on_gpu else CPU_PRODUCT
    if wanted_product not in recipe.gpu_products:
        return f"for {', '.join(recipe.gpu_products)}; this is {wanted_product}"
    if recipe.objective and recipe.objective != setting.objective:
        return f"tuned for {recipe.objective}; the objective is {setting.objective}"
    per_replica = recipe.tensor_parallel_size * recipe.pipeline_parallel_size
    if per_replica > setting.devices:
        return f"needs {per_replica} devices per replica; this pod has {setting.devices}"
    if setting.devices % per_replica:
        return f"{per_replica} devices per replica do not divide the {setting.devices} devices"
    if setting.multi_node and per_replica != setting.devices:
        return (f"for {per_replica} devices; {setting.nodes} nodes of {setting.devices_per_node} "
                "need one replica spanning them (pipeline stages across nodes)")
    if setting.multi_node and recipe.tensor_parallel_size > setting.devices_per_node:
        return "its tensor parallelism would cross nodes"
    why = valid_tensor_parallel(setting.facts, recipe.tensor_parallel_size)
    if why:
        return why
    refusal = setting.precision_refusal(recipe.precision)
    if refusal:
        return refusal
    return _pin_conflict(setting, recipe)


def _pin_conflict(setting: PlanSetting, recipe: Recipe) -> str | None:
    overrides = setting.overrides
    if overrides.recipe_id == recipe.id:
        return None  # pinning the recipe accepts its settings
    per_replica = recipe.tensor_parallel_size * recipe.pipeline_parallel_size
    checks = {
        "precision": recipe.precision,
        "kv_cache_dtype": recipe.kv_cache_dtype,
        "tensor_parallel_size": recipe.tensor_parallel_size,
        "pipeline_parallel_size": recipe.pipeline_parallel_size,
        "data_parallel_size": setting.devices // per_replica,
    }
    for name, value in checks.items():
        if name in overrides.origins and getattr(overrides, name) != value:
            return f"has {name}={value}; {overrides.origin(name)} asks otherwise"
    if "max_model_len" in overrides.origins and recipe.max_model_len not in (
            None, overrides.max_model_len):
        return f"has max_model_len={recipe.max_model_len}; {overrides.origin('max_model_len')}"
    return None


# --- memory check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One candidate checked against memory: the estimate at the batch the engine will run
    (max_num_seqs within the block budget), and why it was refused (None: it fits)."""

    memory: MemoryEstimate
    batch: BatchShape
    wanted_batch: BatchShape  # before the block budget
    budget: BlockBudget | None  # of the estimate the budget rule judged (GPU only)
    refusal: str | None


def _evaluate(setting: PlanSetting, candidate: Candidate) -> Evaluation:
    facts = setting.facts
    dtype = compute_dtype(facts, candidate.precision, setting.on_gpu)
    refusal = setting.precision_refusal(candidate.precision)
    needed = 1 if candidate.context_pinned else setting.min_concurrency
    wanted = batch = setting.batch(candidate.recipe)

    def memory_at(shape: BatchShape) -> MemoryEstimate:
        return estimate(
            facts, precision=candidate.precision, dtype=dtype,
            kv_cache_dtype=candidate.kv_cache_dtype, layout=candidate.layout,
            device_memory_bytes=setting.device_memory_bytes,
            usable_fraction=setting.usable_fraction(candidate.recipe),
            max_model_len=candidate.max_model_len, batch=shape,
            block_size=_block_size(setting, candidate),
            on_gpu=setting.on_gpu, kv_cache_memory_bytes=setting.cpu_kv_bytes(candidate.recipe),
            needed_tokens=needed * candidate.max_model_len, lora=setting.lora(candidate.recipe),
        )

    memory = memory_at(batch)
    budget = None
    if setting.on_gpu:
        budget = block_budget(facts, memory, candidate.layout, dtype)
        capped = _rocm(setting, candidate, batch, budget).engine_args.get("max_num_seqs")
        if isinstance(capped, int) and capped < batch.max_num_seqs:
            batch = BatchShape(batch.max_num_batched_tokens, capped)
            memory = memory_at(batch)  # fewer sampler logits: the budget only grows
    return Evaluation(memory, batch, wanted, budget,
                      refusal or _memory_refusal(setting, candidate, memory, needed))


def _memory_refusal(setting: PlanSetting, candidate: Candidate, memory: MemoryEstimate,
                    needed: int) -> str | None:
    facts = setting.facts
    if candidate.max_model_len > facts.max_position_embeddings:
        return (f"context {candidate.max_model_len} exceeds the model's "
                f"{facts.max_position_embeddings}")
    if candidate.kv_cache_dtype.startswith("fp8") and not setting.fp8_capable:
        return f"an FP8 KV cache needs FP8 support; {setting.product} has none"
    fixed = (memory.weight_bytes_per_device + memory.overhead_bytes_per_device
             + memory.lora_bytes_per_device)
    lora = setting.lora(candidate.recipe)
    if memory.kv_capacity_tokens == 0 or fixed > memory.usable_bytes:
        return (f"weights {_gib(memory.weight_bytes_per_device)} + overhead "
                f"{_gib(memory.overhead_bytes_per_device)}{_lora_text(memory, lora)} per device "
                f"leave no room for a KV cache in {_gib(memory.usable_bytes)} usable"
                + _lora_fit(setting, candidate, memory, lora, needed))
    if memory.kv_capacity_tokens < needed * candidate.max_model_len:
        return (f"KV cache holds {memory.kv_capacity_tokens:,} tokens = "
                f"{memory.full_length_sequences} sequences of {candidate.max_model_len}; "
                f"needs {needed}" + _lora_fit(setting, candidate, memory, lora, needed))
    return None


def _lora_text(memory: MemoryEstimate, lora: LoraShape | None) -> str:
    if lora is None:
        return ""
    return (f" + LoRA {_gib(memory.lora_bytes_per_device)} ({lora.max_loras} adapter slots of "
            f"rank {lora.max_lora_rank})")


def _lora_fit(setting: PlanSetting, candidate: Candidate, memory: MemoryEstimate,
              lora: LoraShape | None, needed: int) -> str:
    """With LoRA on: the slot count that would fit at the asked rank (and rank 8), if any."""
    if lora is None or not setting.on_gpu:
        return ""
    dtype = compute_dtype(setting.facts, candidate.precision, setting.on_gpu)
    kv_needed = needed * candidate.max_model_len * memory.kv_bytes_per_token
    room = (memory.usable_bytes - memory.weight_bytes_per_device
            - memory.overhead_bytes_per_device - kv_needed)
    per_unit = lora_bytes_per_device(setting.facts, LoraShape(1, 1), dtype, candidate.layout)
    options = [f"{room // (per_unit * rank)} at rank {rank}" for rank in
               dict.fromkeys((lora.max_lora_rank, 8)) if room > 0 and room // (per_unit * rank)]
    if not options:
        return "; no LoRA adapter slot fits beside the KV cache it needs"
    return "; LoRA slots that would fit: " + ", ".join(options)


# --- the plan ----------------------------------------------------------------------------------


def _build(setting: PlanSetting, candidate: Candidate, evaluation: Evaluation,
           reasons: list[Reason]) -> Plan:
    facts, recipe, layout = setting.facts, candidate.recipe, candidate.layout
    memory = evaluation.memory
    dtype = compute_dtype(facts, candidate.precision, setting.on_gpu)
    utilization = setting.usable_fraction(recipe) if setting.on_gpu else None
    notes = list(setting.inventory.notes) + list(facts.notes)
    engine_args: dict[str, Any] = {
        "tensor_parallel_size": layout.tp,
        "pipeline_parallel_size": layout.pp,
        "data_parallel_size": layout.dp,
        "dtype": dtype,
        "max_model_len": candidate.max_model_len,
        "kv_cache_dtype": candidate.kv_cache_dtype,
        "trust_remote_code": _trust_remote_code(setting, recipe, notes),
    }
    if setting.on_gpu:
        engine_args["gpu_memory_utilization"] = utilization
    else:
        engine_args["kv_cache_memory_bytes"] = memory.kv_budget_bytes_per_device
    if candidate.quantization:
        engine_args["quantization"] = candidate.quantization
    if setting.multi_node:
        engine_args["distributed_executor_backend"] = "ray"  # vLLM's executor across nodes
        notes.append(f"{setting.nodes} nodes: tensor parallel {layout.tp} inside each node, "
                     f"{layout.pp} pipeline stages across them (Ray)")
    rocm = _rocm(setting, candidate, evaluation.wanted_batch, evaluation.budget)
    env = dict(rocm.env)
    engine_args.update(rocm.engine_args)
    batch = evaluation.batch
    engine_args.update(max_num_batched_tokens=batch.max_num_batched_tokens,
                       max_num_seqs=batch.max_num_seqs)
    block_size = _block_size(setting, candidate)
    if block_size is not None or setting.on_gpu:
        # On GPUs the estimate's own block size is stated too: vLLM's default moved (16 up to
        # 0.33; 64 in 0.34 for every ROCm backend but ROCM_ATTN, vllm/config/cache.py), and the
        # KV and state block counts the plan rests on must hold on every release of the window.
        engine_args["block_size"] = memory.block_size
    notes.extend(rocm.notes)
    if setting.multi_node:
        env.update(ray_carry_over_env(env))
    if candidate.context_pinned and memory.full_length_sequences < setting.min_concurrency:
        notes.append(f"only {memory.full_length_sequences} full-length sequences fit the KV "
                     f"cache at context {candidate.max_model_len}")
    if candidate.precision == "mxfp4":
        notes.append(_mxfp4_note(setting, memory))
    if setting.on_gpu and layout.tp > 1 and setting.inventory.source == "sysfs" and \
            not setting.inventory.xgmi_connected:
        notes.append("tensor parallel ranks are not all in one XGMI hive: traffic uses PCIe")
    return Plan(
        recipe_id=candidate.recipe_id,
        recipe_source=candidate.source,
        objective=setting.objective,
        model=ModelSummary(
            path=facts.path, hf_id=facts.hf_id, architecture=facts.architecture,
            parameters=facts.parameters.total, parameter_source=facts.parameters.source,
            max_position_embeddings=facts.max_position_embeddings,
        ),
        product=setting.product,
        isa=setting.isa,
        inventory_source=setting.inventory.source,
        nodes=setting.nodes,
        devices_per_node=setting.devices_per_node,
        devices_available=setting.devices,
        devices_used=layout.devices,
        tensor_parallel_size=layout.tp,
        pipeline_parallel_size=layout.pp,
        data_parallel_size=layout.dp,
        precision=candidate.precision,
        dtype=dtype,
        quantization=candidate.quantization or (
            facts.quantization.method if facts.quantization else None),
        kv_cache_dtype=candidate.kv_cache_dtype,
        max_model_len=candidate.max_model_len,
        gpu_memory_utilization=utilization,
        memory=memory,
        engine_args=engine_args,
        env=env,
        reasons=reasons,
        notes=notes,
        rocm_rules=list(rocm.applied),
        roofline=_roofline(setting, candidate, memory, batch, dtype),
    )


def _roofline(setting: PlanSetting, candidate: Candidate, memory: MemoryEstimate,
              batch: BatchShape, dtype: str) -> Roofline | None:
    product = PRODUCTS.get(setting.product)
    if not setting.on_gpu or product is None:
        return None
    return compute_roofline(setting.facts, product, candidate.precision, dtype, candidate.layout,
                            memory, candidate.max_model_len, batch.max_num_seqs,
                            batch.max_num_batched_tokens)


def _mxfp4_note(setting: PlanSetting, memory: MemoryEstimate) -> str:
    """Which of vLLM's MXFP4 paths the plan takes on this ISA."""
    weights = _gib(memory.weight_bytes_per_device)
    if mxfp4_path(setting.isa) == "native":
        return (f"MXFP4 weights ({weights} per device) on {setting.isa}, which has MX matrix "
                "cores: vLLM runs them W4A16 by default (AITER CK kernel, bf16 arithmetic); "
                "its native W4A4 kernel only when MXFP4 activations are requested")
    return (f"MXFP4 weights ({weights} per device) run weight-only on {setting.isa}, which has "
            "no MX matrix cores: vLLM's Triton kernels dequantize them and compute in bf16 "
            "(W4A16)")


def _rocm(setting: PlanSetting, candidate: Candidate, batch: BatchShape | None = None,
          budget: BlockBudget | None = None) -> RocmSettings:
    """The rule table's ROCm settings for this candidate, the recipe's own merged in."""
    facts, recipe, layout, overrides = setting.facts, candidate.recipe, candidate.layout, \
        setting.overrides
    user_args = {name: getattr(overrides, name) for name in
                 ("block_size", "max_num_seqs", "max_num_batched_tokens")
                 if getattr(overrides, name) is not None}
    recipe_block = recipe.engine_args.get("block_size") if recipe else None
    inventory = setting.inventory
    return derive(RuleInput(
        isa=setting.isa if setting.on_gpu else None, kinds=model_kinds(facts),
        precision=candidate.precision,
        quantization=candidate.quantization or (
            facts.quantization.method if facts.quantization else None),
        kv_cache_dtype=candidate.kv_cache_dtype, tensor_parallel_size=layout.tp,
        devices_per_replica=layout.tp * layout.pp, objective=setting.objective,
        head_dim=facts.head_dim,
        block_size=overrides.block_size or (recipe_block if isinstance(recipe_block, int)
                                            else None),
        max_num_seqs=batch.max_num_seqs if batch else None,
        max_num_seqs_pinned=overrides.max_num_seqs is not None, budget=budget,
        host_numa_balancing=None if inventory.is_simulated else inventory.host.numa_balancing,
        recipe_env=recipe.env if recipe else {},
        recipe_engine_args=recipe.engine_args if recipe else {}, user_engine_args=user_args,
        skip=frozenset(recipe.skip_rules) if recipe else frozenset(),
    ))


def _block_size(setting: PlanSetting, candidate: Candidate) -> int | None:
    """KV-cache block size when something sets it: the user's flag, the recipe, or a ROCm rule
    (AITER's MLA kernels: 1, AMD's vLLM guide); None leaves it to the memory estimate's
    default."""
    if setting.overrides.block_size is not None:
        return setting.overrides.block_size
    block = _rocm(setting, candidate).engine_args.get("block_size")
    return block if isinstance(block, int) else None


def _trust_remote_code(setting: PlanSetting, recipe: Recipe | None, notes: list[str]) -> bool:
    """On only when the recipe and the operator both allow it."""
    operator = bool(setting.overrides.trust_remote_code)
    allowed_by_recipe = bool(recipe and recipe.trust_remote_code)
    if operator and not allowed_by_recipe:
        notes.append("trust_remote_code requested but the recipe does not allow it: kept off")
    if setting.facts.custom_code and not (operator and allowed_by_recipe):
        notes.append("the model ships custom code (auto_map); it is not executed "
                     "(trust_remote_code off); vLLM's own implementation is used")
    return operator and allowed_by_recipe


def _fit_summary(memory: MemoryEstimate) -> str:
    lora = (f" + LoRA {_gib(memory.lora_bytes_per_device)}"
            if memory.lora_bytes_per_device else "")
    return (f"fits: weights {_gib(memory.weight_bytes_per_device)} + overhead "
            f"{_gib(memory.overhead_bytes_per_device)}{lora} of {_gib(memory.usable_bytes)} "
            "usable per "
            f"device; KV cache {memory.kv_capacity_tokens:,} tokens "
            f"({memory.full_length_sequences} full-length sequences)")


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
