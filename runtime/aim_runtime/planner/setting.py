"""What is fixed before the planner tries any candidate: the devices, the model, the overrides,
and the rules that follow from them alone (usable memory, the engine's batch shape, which weight
precisions can run). Shared by the plan and by the suggestions made when nothing fits."""

from __future__ import annotations

from dataclasses import dataclass

from aim_runtime import settings
from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.hardware import Inventory
from aim_runtime.hardware.products import isa_supports_fp8
from aim_runtime.planner.candidates import weight_precision_refusal
from aim_runtime.planner.catalog import Recipe
from aim_runtime.planner.memory import BatchShape, LoraShape, vllm_batch_defaults
from aim_runtime.planner.overrides import Overrides
from aim_runtime.settings import CPU_USABLE_FRACTION, DEFAULT_OBJECTIVE, Objective

VLLM_MAX_LORAS = 1  # vLLM's LoRAConfig defaults
VLLM_MAX_LORA_RANK = 16
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks


@dataclass(frozen=True)
class PlanSetting:
    """Everything fixed before candidates are tried."""

    inventory: Inventory
    facts: ModelFacts
    overrides: Overrides
    objective: Objective
    min_concurrency: int
    devices: int
    on_gpu: bool
    product: str
    isa: str | None
    device_memory_bytes: int
    nodes: int = 1
    devices_per_node: int = 1

    @classmethod
    def create(cls, inventory: Inventory, facts: ModelFacts,
               overrides: Overrides) -> PlanSetting:
        """The setting of a plan for this inventory, model and overrides."""
        on_gpu = inventory.accelerator == "rocm"
        # On CPUs each data-parallel rank vLLM is asked for is an engine of its own, with its
        # share of the host's memory; without the flag the CPU is one engine. (Which cores each
        # rank's threads use is vLLM's automatic binding.)
        cpu_ranks = overrides.data_parallel_size or 1
        return cls(
            inventory=inventory, facts=facts, overrides=overrides,
            objective=overrides.objective or DEFAULT_OBJECTIVE,
            min_concurrency=overrides.min_concurrency or settings.MIN_CONCURRENCY.default,
            devices=inventory.device_count if on_gpu else cpu_ranks,
            on_gpu=on_gpu, product=inventory.product, isa=inventory.isa,
            device_memory_bytes=(inventory.vram_bytes_per_device if on_gpu
                                 else inventory.host.usable_memory_bytes // cpu_ranks),
            nodes=inventory.nodes,
            devices_per_node=inventory.devices_per_node if on_gpu else 1,
        )

    @property
    def fp8_capable(self) -> bool:
        return self.on_gpu and isa_supports_fp8(self.isa)

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def usable_fraction(self, recipe: Recipe | None = None) -> float:
        """Share of device memory the engine may use: the override, the recipe's, vLLM's."""
        if not self.on_gpu:
            return CPU_USABLE_FRACTION
        return (self.overrides.gpu_memory_utilization
                or (recipe.gpu_memory_utilization if recipe else None)
                or settings.GPU_MEMORY_UTILIZATION.default)

    def batch(self, recipe: Recipe | None = None) -> BatchShape:
        """The engine's step: user flags, then the recipe's engine args, then vLLM's defaults."""
        defaults = vllm_batch_defaults(self.device_memory_bytes, self.on_gpu)
        args = recipe.engine_args if recipe else {}
        tokens = args.get("max_num_batched_tokens")
        seqs = args.get("max_num_seqs")
        return BatchShape(
            self.overrides.max_num_batched_tokens
            or (tokens if isinstance(tokens, int) else defaults.max_num_batched_tokens),
            self.overrides.max_num_seqs
            or (seqs if isinstance(seqs, int) else defaults.max_num_seqs),
        )

    def lora(self, recipe: Recipe | None = None) -> LoraShape | None:
        """The adapter slots vLLM will reserve (None: LoRA off): user flags, then the recipe's
        engine args, then vLLM's defaults."""
        args = recipe.engine_args if recipe else {}
        enabled = self.overrides.enable_lora
        if not (enabled if enabled is not None else args.get("enable_lora") is True):
            return None
        loras, rank = args.get("max_loras"), args.get("max_lora_rank")
        return LoraShape(
            self.overrides.max_loras or (loras if isinstance(loras, int) else VLLM_MAX_LORAS),
            self.overrides.max_lora_rank
            or (rank if isinstance(rank, int) else VLLM_MAX_LORA_RANK))

    def cpu_kv_bytes(self, recipe: Recipe | None) -> int | None:
        """A CPU KV cache size fixed by the recipe (None: sized to need)."""
        if self.on_gpu or recipe is None:
            return None
        return recipe.kv_cache_memory_bytes

    def precision_refusal(self, precision: str) -> str | None:
        """Why a weight precision cannot run for this checkpoint on these devices, else None."""
        return weight_precision_refusal(self.facts, precision, self.on_gpu, self.isa,
                                        self.product)
