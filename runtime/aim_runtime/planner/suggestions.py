"""What would fit, when nothing does: more devices, FP8, or a shorter context.

Like NIM's "compatible but low memory" list, but computed: the same memory math is run for more
devices of the same kind (up to 8 per node, then whole nodes joined by pipeline parallelism) and for
shorter contexts on the devices the pod has.
"""

from __future__ import annotations

from aim_runtime.checkpoint.parameters import human_count
from aim_runtime.planner.candidates import (
    CONTEXT_FLOOR,
    Reason,
    compute_dtype,
    layouts,
    native_precision,
    weight_precision_refusal,
)
from aim_runtime.planner.memory import (
    Layout,
    LoraShape,
    estimate,
    lora_bytes_per_device,
    weight_bytes_by_role,
)
from aim_runtime.planner.setting import VLLM_LORA_RANKS, PlanSetting
from aim_runtime.settings import GIB, GPUS_PER_NODE, SIXTEEN_BIT

DEVICE_COUNTS = (1, 2, 4, 8, 16, 32, 64)
MIN_SUGGESTED_CONTEXT = 1024


def no_fit_message(setting: PlanSetting, reasons: list[Reason]) -> tuple[str, str]:
    """The error text (what does not fit, and by how much) and the hint (what would fit)."""
    facts = setting.facts
    precision = native_precision(facts, setting.on_gpu)
    blocker = weight_precision_refusal(facts, precision, setting.on_gpu, setting.isa,
                                       setting.product)
    if blocker:
        return (f"{facts.architecture} cannot run on {setting.product}: {blocker}",
                "use a GPU that supports the checkpoint's format, or a 16-bit checkpoint")
    dtype = compute_dtype(facts, precision, setting.on_gpu)
    total = sum(weight_bytes_by_role(facts, precision, dtype))
    engines = setting.devices
    where = (f"{setting.devices}x {setting.product} ({setting.device_memory_bytes / GIB:.0f} GiB "
             f"each)" if setting.on_gpu else
             f"the CPU host ({setting.device_memory_bytes / GIB:.0f} GiB usable memory"
             + (f" for each of {engines} data-parallel engines)" if engines > 1 else ")"))
    tried = sum(1 for r in reasons if r.outcome == "refused")
    lora = setting.lora()
    with_lora = "" if lora is None else (
        f" with {lora.max_loras} LoRA adapter slots of rank {lora.max_lora_rank} "
        f"({lora_bytes_per_device(facts, lora, dtype, Layout(tp=1)) / GIB:.1f} GiB unsharded)")
    message = (f"{facts.architecture} ({human_count(facts.parameters.total)} parameters, "
               f"{total / GIB:.0f} GiB of {precision} weights){with_lora} does not fit {where}; "
               f"{tried} candidate(s) refused (see --explain)")
    options = what_would_fit(setting)
    if not setting.on_gpu and engines > 1:
        options.append("fewer data-parallel engines (--data-parallel-size), each with a larger "
                       "share of the host's memory")
    hint = "what would fit: " + "; ".join(options) if options else (
        "no configuration of this product fits; use a quantized checkpoint or a larger GPU")
    return message, hint


def what_would_fit(setting: PlanSetting) -> list[str]:
    """Human-readable options, most natural first."""
    facts = setting.facts
    options: list[str] = _lora_options(setting)
    native = native_precision(facts, setting.on_gpu)
    precisions = [native]
    if setting.fp8_capable and native in SIXTEEN_BIT:
        precisions.append("fp8")
    for precision in precisions:
        count = _fewest_devices(setting, precision)
        if count is not None and count > setting.devices:
            options.append(f"{_describe_devices(count, setting.product)} at {precision}")
        elif count is not None and precision != precisions[0]:
            options.append(f"{precision} weights on these {setting.devices} device(s) "
                           f"(--precision {precision})")
    context = _longest_context(setting, precisions[-1])
    if context is not None and context < facts.max_position_embeddings:
        options.append(f"--max-model-len {context} with {precisions[-1]} weights on these "
                       f"{setting.devices} device(s)")
    full = facts.max_position_embeddings
    if setting.min_concurrency > 1 and _fits(setting, precisions[-1], setting.devices, full, 1):
        options.append(f"or accept fewer concurrent full-length sequences (--min-concurrency 1; "
                       f"now {setting.min_concurrency})")
    return options


def _lora_options(setting: PlanSetting) -> list[str]:
    """With LoRA on: the most adapter slots (at the asked rank), else the highest rank (at the
    asked slots), that fit these devices beside the KV cache the plan needs."""
    lora = setting.lora()
    if lora is None:
        return []
    precision = native_precision(setting.facts, setting.on_gpu)
    context = min(setting.facts.max_position_embeddings, CONTEXT_FLOOR)

    def fits(shape: LoraShape) -> bool:
        return _fits(setting, precision, setting.devices, context, setting.min_concurrency,
                     lora=shape)

    slots = next((n for n in _halvings(lora.max_loras) if fits(LoraShape(n, lora.max_lora_rank))),
                 None)
    if slots is not None:
        return [f"{slots} LoRA adapter slot(s) of rank {lora.max_lora_rank} on these "
                f"{setting.devices} device(s) (--max-loras {slots})"]
    lower = [r for r in reversed(VLLM_LORA_RANKS) if r < lora.max_lora_rank]
    rank = next((r for r in lower if fits(LoraShape(lora.max_loras, r))), None)
    if rank is not None:
        return [f"{lora.max_loras} LoRA adapter slots of rank {rank} on these {setting.devices} "
                f"device(s) (--max-lora-rank {rank})"]
    return []


def _halvings(start: int) -> list[int]:
    """start/2, start/4, ... down to 1."""
    values = []
    value = start // 2
    while value >= 1:
        values.append(value)
        value //= 2
    return values


def _fits(setting: PlanSetting, precision: str, devices: int, context: int, sequences: int,
          lora: LoraShape | None = None) -> bool:
    """Whether some layout of `devices` holds the weights and `sequences` x `context` tokens of
    KV cache, with the plan's LoRA slots (or `lora`)."""
    facts = setting.facts
    dtype = compute_dtype(facts, precision, setting.on_gpu)
    for layout in _layouts(setting, devices):
        memory = estimate(
            facts, precision=precision, dtype=dtype, kv_cache_dtype="auto", layout=layout,
            device_memory_bytes=setting.device_memory_bytes,
            usable_fraction=setting.usable_fraction(), max_model_len=context,
            batch=setting.batch(),
            on_gpu=setting.on_gpu, needed_tokens=sequences * context,
            lora=lora or setting.lora(),
        )
        if memory.kv_capacity_tokens >= sequences * context:
            return True
    return False


def _layouts(setting: PlanSetting, devices: int) -> list[Layout]:
    if not setting.on_gpu:  # each CPU engine holds the whole model in its share of memory
        return [Layout(tp=1)]
    if devices <= GPUS_PER_NODE:
        return layouts(setting.facts, devices, "latency")
    return layouts(setting.facts, devices, "latency", per_node=GPUS_PER_NODE)


def _fewest_devices(setting: PlanSetting, precision: str) -> int | None:
    if not setting.on_gpu:
        return None
    context = min(setting.facts.max_position_embeddings, CONTEXT_FLOOR)
    for count in DEVICE_COUNTS:
        if _fits(setting, precision, count, context, setting.min_concurrency):
            return count
    return None


def _longest_context(setting: PlanSetting, precision: str) -> int | None:
    context = setting.facts.max_position_embeddings
    while context >= MIN_SUGGESTED_CONTEXT:
        if _fits(setting, precision, setting.devices, context, 1):
            return context
        context //= 2
    return None


def _describe_devices(count: int, product: str) -> str:
    if count <= GPUS_PER_NODE:
        return f"{count}x {product}"
    return f"{count // GPUS_PER_NODE} nodes of {GPUS_PER_NODE}x {product} (multi-node)"
