"""Metrics of our own (`aim_*`), next to vLLM's `vllm:*` in the same default registry.

`aim_plan_info` carries what was selected; the start-up phases say where start-up time went; the
fallback gauges say which compromises the planner made; the two KV capacities (planned, and what
vLLM actually allocated) show how far the planner's memory estimate is from the engine's.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Info

from aim_runtime.planner.plan import Plan

PLAN = Info("aim_plan", "The recipe the planner chose, and on what")
ENGINE_CONFIG = Info("aim_engine_config",
                     "What the vLLM engine runs with, read back from its own configuration")
STARTUP_PHASE_SECONDS = Gauge("aim_startup_phase_seconds",
                              "Seconds each start-up phase took", ["phase"])
CANDIDATES_REFUSED = Gauge("aim_plan_candidates_refused",
                           "Plan candidates refused before the chosen one")
FALLBACK = Gauge("aim_plan_fallback", "1 when the plan took this fallback", ["kind"])
KV_CAPACITY_TOKENS = Gauge("aim_kv_cache_capacity_tokens",
                           "KV cache capacity per replica in tokens", ["source"])
ENGINE_ALIVE = Gauge("aim_engine_alive", "1 while the vLLM engine is loaded and healthy")
IN_FLIGHT = Gauge("aim_requests_in_flight", "Inference requests admitted and not finished")
REJECTED = Counter("aim_requests_rejected", "Requests refused by the gate", ["reason"])

FALLBACK_KINDS = ("precision", "kv_cache_dtype", "context", "devices")


def record_plan(plan: Plan, checkpoint_precision: str | None) -> None:
    PLAN.info({
        "recipe": plan.recipe_id,
        "source": plan.recipe_source,
        "product": plan.product,
        "devices": str(plan.devices_used),
        "tp": str(plan.tensor_parallel_size),
        "pp": str(plan.pipeline_parallel_size),
        "dp": str(plan.data_parallel_size),
        "dtype": plan.dtype,
        "quantization": plan.quantization or "none",
        "kv_cache_dtype": plan.kv_cache_dtype,
        "max_model_len": str(plan.max_model_len),
        "max_num_seqs": str(plan.engine_args["max_num_seqs"]),
        "max_num_batched_tokens": str(plan.engine_args["max_num_batched_tokens"]),
        "block_size": str(plan.memory.block_size),
    })
    CANDIDATES_REFUSED.set(sum(1 for r in plan.reasons if r.outcome == "refused"))
    taken = {
        "precision": checkpoint_precision not in (None, plan.precision)
        and not (checkpoint_precision == "fp32" and plan.precision == "bf16"),
        "kv_cache_dtype": plan.kv_cache_dtype.startswith("fp8"),
        "context": plan.max_model_len < plan.model.max_position_embeddings,
        "devices": plan.devices_used < plan.devices_available,
    }
    for kind in FALLBACK_KINDS:
        FALLBACK.labels(kind=kind).set(1 if taken[kind] else 0)
    KV_CAPACITY_TOKENS.labels(source="plan").set(plan.memory.kv_capacity_tokens)


def record_phase(phase: str, seconds: float) -> None:
    STARTUP_PHASE_SECONDS.labels(phase=phase).set(round(seconds, 4))
