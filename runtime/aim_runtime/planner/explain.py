"""Plain-text renderings of an inventory and a plan, for people and for start-up logs."""

from __future__ import annotations

from collections.abc import Iterable

from aim_runtime.checkpoint.parameters import human_count
from aim_runtime.errors import TriedCandidate
from aim_runtime.hardware import Inventory
from aim_runtime.planner.catalog import engine_args_to_argv
from aim_runtime.planner.plan import Plan
from aim_runtime.planner.rocm import AppliedRule
from aim_runtime.planner.roofline import describe as describe_roofline
from aim_runtime.settings import CPU_PRODUCT, GIB


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def describe_inventory(inventory: Inventory) -> str:
    """One line per device, then the host."""
    host = inventory.host
    limit = f", limit {gib(host.memory_limit_bytes)}" if host.memory_limit_bytes else ""
    lines = [f"source: {inventory.source}"]
    if inventory.nodes > 1:
        lines.append(f"nodes: {inventory.nodes} identical nodes, {inventory.device_count} GPUs "
                     "in all; the devices below are one node's")
    if not inventory.devices:
        lines.append("accelerator: CPU (no AMD GPU available to this process)")
    for d in inventory.devices:
        extra = ", ".join(part for part in (
            f"partition {d.compute_partition}" if d.compute_partition else "",
            f"memory {d.memory_partition}" if d.memory_partition else "",
            f"PCI {d.pci_bus_id}" if d.pci_bus_id else "",
            f"renderD{d.render_minor}" if d.render_minor is not None else "",
        ) if part)
        suffix = f", {extra}" if extra else ""
        lines.append(f"gpu {d.index}: {d.product} {d.isa} id {d.pci_device_id}, "
                     f"{gib(d.vram_bytes)}, {d.compute_units} CUs{suffix}")
    lines.append(f"host: {host.cpu_cores} cores ({host.cpu_model or 'unknown CPU'}), "
                 f"{gib(host.ram_bytes)} RAM{limit}")
    lines.extend(f"note: {note}" for note in inventory.notes)
    return "\n".join(lines)


def summarize_plan(plan: Plan) -> str:
    """A few lines: what was chosen, on what, with how much memory to spare."""
    m = plan.memory
    if plan.product == CPU_PRODUCT:
        where = "the CPU"
    elif plan.nodes > 1:
        where = f"{plan.nodes} nodes of {plan.devices_per_node}x {plan.product}"
    else:
        where = f"{plan.devices_used} of {plan.devices_available}x {plan.product}"
    lines = [
        f"recipe {plan.recipe_id} ({plan.recipe_source}, objective {plan.objective}) "
        f"on {where}",
        f"model {plan.model.architecture}, {human_count(plan.model.parameters)} parameters "
        f"(counted from {plan.model.parameter_source})",
        f"parallelism tp={plan.tensor_parallel_size} pp={plan.pipeline_parallel_size} "
        f"dp={plan.data_parallel_size}; {plan.precision} weights (dtype {plan.dtype}"
        + (f", quantization {plan.quantization}" if plan.quantization else "")
        + f"); KV cache {plan.kv_cache_dtype}; context {plan.max_model_len}",
        f"memory per device: {gib(m.usable_bytes)} usable of {gib(m.device_memory_bytes)}, "
        f"weights {gib(m.weight_bytes_per_device)}, overhead {gib(m.overhead_bytes_per_device)}, "
        + (f"LoRA adapters {gib(m.lora_bytes_per_device)}, " if m.lora_bytes_per_device else "")
        + f"KV cache {gib(m.kv_budget_bytes_per_device)} = {m.kv_capacity_tokens:,} tokens "
        f"({m.full_length_sequences} full-length sequences)",
    ]
    return "\n".join(lines)


def explain_plan(plan: Plan) -> str:
    """The summary, the engine settings, and every candidate tried with its verdict."""
    argv = " ".join(engine_args_to_argv(plan.engine_args))
    env = " ".join(f"{k}={v}" for k, v in sorted(plan.env.items())) or "(none)"
    parts = [
        summarize_plan(plan),
        f"engine args: {argv}",
        f"environment: {env}",
    ]
    if plan.rocm_rules:
        parts.append("ROCm rules applied (docs/planning.md, \"ROCm rules\"; a recipe's own "
                     "settings win):")
        parts.extend(format_rule(rule) for rule in plan.rocm_rules)
    if plan.roofline is not None:
        parts.extend(describe_roofline(plan.roofline))
    elif plan.product != CPU_PRODUCT:
        parts.append(f"roofline: the product table has no bandwidth/peak figures for "
                     f"{plan.product}")
    parts += ["candidates, in the order tried:", format_reasons(plan.reasons)]
    parts.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(parts)


def format_rule(rule: AppliedRule) -> str:
    """One applied rule: what it set (and what the recipe or user set instead), why, source."""
    sets = ", ".join(f"{k}={v}" for k, v in rule.sets.items()) or "(note)"
    instead = ", ".join(f"{k}={v}" for k, v in rule.overridden.items())
    kept = f"; kept instead: {instead}" if instead else ""
    return f"  {rule.id}: {sets}{kept}\n          {rule.why} [{rule.source}]"


def format_reasons(reasons: Iterable[TriedCandidate]) -> str:
    return "\n".join(
        f"  {'TAKEN  ' if r.outcome == 'taken' else 'refused'} {r.candidate}\n"
        f"          {r.detail}" for r in reasons
    ) or "  (none)"
