"""Memory math: does a model fit a layout of devices at a precision and context length?

Per device, vLLM requests `gpu_memory_utilization x VRAM`; what remains after weights and the
non-KV overhead (HIP/RCCL runtime, activations of one `max_num_batched_tokens` step, sampler
logits) holds the KV cache (vllm/v1/worker/gpu_worker.py `determine_available_memory`).

- Weights: linear decoder weights at the plan's precision; embeddings, lm_head, norms stay 16-bit.
  Tensor parallelism shards everything; pipeline parallelism splits the layers, with the embedding
  on the first stage and the lm_head on the last.
- KV per token per device: 2 x layers x max(1, kv_heads // tp) x head_dim x bytes; MLA models
  store one latent of kv_lora_rank + qk_rope_head_dim per layer, replicated on every TP rank.
  Every layer is counted as full attention; sliding-window layers need less, so this errs safe.
- The overhead constants are estimates (no GPU here to measure on); at start-up the server
  compares vLLM's actual KV cache size with `kv_capacity_tokens` and exports the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.checkpoint.lora import COLUMN_PARALLEL, linear_layer_shapes
from aim_runtime.settings import GIB

PRECISION_BYTES = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
    # group-quantized int4: 4 bits + a 16-bit scale and 4-bit zero per group of 128
    "int4": (4 + 20 / 128) / 8,
    # MXFP4: 4 bits + one 8-bit shared exponent per 32 values
    "mxfp4": (4 + 8 / 32) / 8,
}
KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "bfloat16": 2, "float16": 2}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
GPU_RUNTIME_OVERHEAD_BYTES = 2 * GIB  # HIP context, allocator slack, HIP graphs
RCCL_OVERHEAD_BYTES = GIB // 2  # communication buffers when a replica spans devices
CPU_RUNTIME_OVERHEAD_BYTES = 3 * GIB // 2  # API process + engine core process (measured ~1.1 GiB)
CPU_KV_CACHE_GRANULE = 64 * 1024**2  # CPU KV caches are sized to need, in steps of 64 MiB


@dataclass(frozen=True)
class Layout:
    """How devices are split: tensor x pipeline parallel ranks per replica, dp replicas."""

    tp: int
    pp: int = 1
    dp: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp

    def __str__(self) -> str:
        return f"tp={self.tp} pp={self.pp} dp={self.dp}"


@dataclass(frozen=True)
class BatchShape:
    """The engine's step size, which sizes activation memory."""

    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass(frozen=True)
class LoraShape:
    """What vLLM reserves for LoRA adapters: `max_loras` slots of rank `max_lora_rank`."""

    max_loras: int
    max_lora_rank: int


def lora_bytes_per_device(facts: ModelFacts, lora: LoraShape, dtype: str, layout: Layout) -> int:
    """Adapter slots vLLM allocates up front when LoRA is on: for every slot and every wrapped
    linear layer (each slice of the merged qkv and gate/up layers has its own A), A (rank x
    input) and B (output x rank) at the compute dtype, sharded like the layer; with a mixture of
    experts, the same for every expert's gate, up and down (vllm/lora/layers: the
    `lora_a_stacked`/`lora_b_stacked` buffers, fused_moe's per-expert ones)."""
    tp = layout.tp
    per_layer = 0
    for module, (inputs, outputs) in linear_layer_shapes(facts).items():
        if module in COLUMN_PARALLEL:
            per_layer += inputs + math.ceil(outputs / tp)
        else:
            per_layer += math.ceil(inputs / tp) + outputs
    if facts.moe is not None:
        hidden, width = facts.hidden_size, math.ceil(facts.moe.expert_intermediate_size / tp)
        per_layer += facts.moe.num_experts * (2 * (hidden + width) + (width + hidden))
    decoder_layers = math.ceil(facts.num_layers / layout.pp)
    return (lora.max_loras * lora.max_lora_rank * per_layer * decoder_layers
            * compute_dtype_bytes(dtype))


def default_block_size(on_gpu: bool, mla: bool) -> int:
    """Tokens per KV-cache block when none is given: 16 on GPUs; 128 on the CPU, 16 for MLA
    there (vLLM's `CpuPlatform.check_and_update_config`)."""
    return 16 if on_gpu or mla else 128


class MemoryEstimate(BaseModel):
    """The memory budget of one device of one replica."""

    model_config = ConfigDict(frozen=True)

    device_memory_bytes: int
    usable_bytes: int
    weight_bytes_per_device: int
    overhead_bytes_per_device: int
    kv_budget_bytes_per_device: int
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    block_size: int
    full_length_sequences: float
    lora_bytes_per_device: int = 0  # adapter slots (LoRA on)


def vllm_batch_defaults(device_memory_bytes: int, on_gpu: bool = True) -> BatchShape:
    """vLLM's API-server defaults by device memory, and the CPU platform's own
    (`EngineArgs.get_batch_defaults`, one CPU worker)."""
    if not on_gpu:
        return BatchShape(2048, 128)
    if device_memory_bytes >= 160 * GIB:
        return BatchShape(16384, 1024)
    if device_memory_bytes >= 70 * GIB:
        return BatchShape(8192, 1024)
    return BatchShape(2048, 256)


def compute_dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 2)


def kv_dtype_bytes(kv_cache_dtype: str, dtype: str) -> int:
    return KV_DTYPE_BYTES.get(kv_cache_dtype, compute_dtype_bytes(dtype))


def weight_bytes_by_role(facts: ModelFacts, precision: str, dtype: str) -> tuple[int, int, int]:
    """(embedding, lm_head, decoder) bytes of the whole model at a precision."""
    params = facts.parameters
    unquantized = compute_dtype_bytes(dtype)
    embedding = params.embedding * unquantized
    lm_head = params.lm_head * unquantized
    if precision == facts.weight_precision and facts.checkpoint_bytes:
        # The checkpoint already is this precision: its size is exact.
        return embedding, lm_head, max(facts.checkpoint_bytes - embedding - lm_head, 0)
    linear_bytes = PRECISION_BYTES[precision] if precision != "fp32" else unquantized
    decoder = int(params.linear * linear_bytes) + params.other * unquantized
    return embedding, lm_head, decoder


def weight_bytes_per_device(facts: ModelFacts, precision: str, dtype: str, layout: Layout) -> int:
    embedding, lm_head, decoder = weight_bytes_by_role(facts, precision, dtype)
    stage: float = embedding + lm_head + decoder
    if layout.pp > 1:
        # The lm_head of a tied model is a copy of the embedding on the last stage.
        last_head = lm_head or embedding
        stage_layers = math.ceil(facts.num_layers / layout.pp) / facts.num_layers
        stage = decoder * stage_layers + max(embedding, last_head)
    return math.ceil(stage / layout.tp)


def kv_bytes_per_token(facts: ModelFacts, kv_bytes: int, layout: Layout) -> int:
    """KV cache bytes one token occupies on each device of a replica."""
    layers = math.ceil(facts.num_layers / layout.pp)
    if facts.mla is not None:
        return layers * (facts.mla.kv_lora_rank + facts.mla.qk_rope_head_dim) * kv_bytes
    kv_heads = max(1, facts.num_kv_heads // layout.tp)
    return 2 * layers * kv_heads * facts.head_dim * kv_bytes


def overhead_bytes(facts: ModelFacts, layout: Layout, batch: BatchShape, dtype: str,
                   on_gpu: bool) -> int:
    """Non-KV, non-weight memory per device: runtime + one step's activations + sampler logits."""
    act_bytes = compute_dtype_bytes(dtype)
    if facts.moe is not None:
        mlp_width = facts.moe.experts_per_token * facts.moe.expert_intermediate_size
    else:
        mlp_width = facts.intermediate_size or 4 * facts.hidden_size
    per_token = (4 * facts.hidden_size + 2 * mlp_width // layout.tp) * act_bytes
    activations = batch.max_num_batched_tokens * per_token
    logits = batch.max_num_seqs * math.ceil(facts.vocab_size / layout.tp) * 4
    if not on_gpu:
        return CPU_RUNTIME_OVERHEAD_BYTES + activations + logits
    runtime = GPU_RUNTIME_OVERHEAD_BYTES + (RCCL_OVERHEAD_BYTES if layout.tp * layout.pp > 1 else 0)
    return runtime + activations + logits


def estimate(
    facts: ModelFacts, *, precision: str, dtype: str, kv_cache_dtype: str, layout: Layout,
    device_memory_bytes: int, usable_fraction: float, max_model_len: int, batch: BatchShape,
    on_gpu: bool, kv_cache_memory_bytes: int | None = None, needed_tokens: int = 0,
    block_size: int | None = None, lora: LoraShape | None = None,
) -> MemoryEstimate:
    """The memory budget of one device for one candidate plan.

    On GPUs the KV cache takes what is left of the usable memory. On the CPU (where
    `device_memory_bytes` is the host memory the pod may use) vLLM allocates a fixed KV cache up
    front, so it is sized to `needed_tokens` (in 64 MiB steps, as start-up time grows with it)
    unless `kv_cache_memory_bytes` fixes it.
    """
    usable = int(device_memory_bytes * usable_fraction)
    weights = weight_bytes_per_device(facts, precision, dtype, layout)
    overhead = overhead_bytes(facts, layout, batch, dtype, on_gpu)
    adapters = lora_bytes_per_device(facts, lora, dtype, layout) if lora else 0
    free = max(usable - weights - overhead - adapters, 0)
    per_token = kv_bytes_per_token(facts, kv_dtype_bytes(kv_cache_dtype, dtype), layout)
    if on_gpu:
        kv_budget = free
    else:
        wanted = kv_cache_memory_bytes or max(
            CPU_KV_CACHE_GRANULE,
            math.ceil(needed_tokens * per_token / CPU_KV_CACHE_GRANULE) * CPU_KV_CACHE_GRANULE)
        kv_budget = wanted if wanted <= free else 0
    block = block_size or default_block_size(on_gpu, facts.mla is not None)
    capacity = (kv_budget // (per_token * block)) * block if per_token else 0
    return MemoryEstimate(
        device_memory_bytes=device_memory_bytes,
        usable_bytes=usable,
        weight_bytes_per_device=weights,
        overhead_bytes_per_device=overhead,
        lora_bytes_per_device=adapters,
        kv_budget_bytes_per_device=kv_budget,
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=capacity,
        block_size=block,
        full_length_sequences=math.floor(capacity * 100 / max_model_len) / 100,
    )
