"""Roofline: the ceilings the hardware puts on a plan, from the product table and the plan's own
memory figures.

Decode is bound by HBM bandwidth: every step, each device of a replica reads its share of the
weights the step touches and the KV cache of every sequence in the step, so

    step time >= pp x (weights read per micro-batch + micro-batch x context x KV bytes per token)
                 / HBM bandwidth,                      micro-batch = ceil(concurrency / pp)

and a replica decodes `concurrency` tokens per step. The weights read are the device's weights
less the input embedding (a decode step gathers a few of its rows) and less the routed experts no
token of the micro-batch is sent to: with k of E experts per token and uniform routing, a
micro-batch of m tokens touches a share 1 - (1 - k/E)^m of each layer's experts.

Prefill is bound by the peak matrix throughput of the precision the weights compute in (bf16 for
16-bit, weight-only int4/int8 and vLLM's default MXFP4 path, which dequantizes to bf16; fp8 for
FP8 weights): FLOPs per prompt token = 2 x the linear parameters a token passes through (routed
experts at k/E, the LM head not at all: logits are computed for the last token only) plus
attention, 2 x layers x heads x head dim x the prompt length (the causal average of QK^T and AV).

The planned point is the plan's own: `max_model_len`-token sequences, as many as the KV cache
holds (the planner's full-length sequences) up to `max_num_seqs`; and one sequence with a short
context for the single-user ceiling. `decode_tokens_per_s()` gives any other point. These are
upper bounds: kernels, launch overheads and scheduling take a share no roofline shows.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.hardware.products import GpuProduct
from aim_runtime.planner.memory import (
    PRECISION_BYTES,
    Layout,
    MemoryEstimate,
    compute_dtype_bytes,
)

# The precision a weight format computes in on vLLM (matrix math, not storage). MXFP4 as read in
# 0.32-0.34's MXFP4 MoE oracle: W4A16 by default on gfx942 and gfx950 (bf16 arithmetic).
COMPUTE_PRECISION = {"bf16": "bf16", "fp16": "bf16", "fp32": "bf16", "fp8": "fp8",
                     "int8": "bf16", "int4": "bf16", "mxfp4": "bf16"}


class Roofline(BaseModel):
    """Per replica (tensor x pipeline parallel devices) unless named per device."""

    model_config = ConfigDict(frozen=True)

    product: str
    hbm_bytes_per_s: float  # per device
    compute_precision: str
    peak_flops: float  # per device, dense, in compute_precision
    devices_per_replica: int
    pipeline_stages: int
    replicas: int
    dense_weight_bytes: int  # per device, read every decode step
    expert_weight_bytes: int  # per device, routed experts (read in the share tokens touch)
    experts: int
    experts_per_token: int
    kv_bytes_per_token: int  # per device
    linear_flops_per_token: float  # per replica, 2 x active linear parameters
    attention_flops_per_token_per_position: float  # x prompt length
    # The planned point
    concurrency: int
    context_tokens: int
    decode_single_tokens_per_s: float  # one sequence, short context (weights only)
    decode_per_sequence_tokens_per_s: float  # at `concurrency` sequences of `context_tokens`
    decode_aggregate_tokens_per_s: float  # same point, all sequences of one replica
    prefill_prompt_tokens: int
    prefill_tokens_per_s: float  # one replica

    def weight_bytes_read(self, micro_batch: int) -> float:
        """Bytes of weights one device reads for a micro-batch of decode tokens."""
        if self.experts and self.expert_weight_bytes:
            untouched = (1 - self.experts_per_token / self.experts) ** max(1, micro_batch)
            return self.dense_weight_bytes + self.expert_weight_bytes * (1 - untouched)
        return float(self.dense_weight_bytes + self.expert_weight_bytes)

    def decode_tokens_per_s(self, concurrency: int, context_tokens: int) -> float:
        """Aggregate decode ceiling of one replica at `concurrency` sequences of
        `context_tokens` tokens each."""
        concurrency = max(1, concurrency)
        micro = math.ceil(concurrency / self.pipeline_stages)
        step_bytes = self.pipeline_stages * (self.weight_bytes_read(micro)
                                             + micro * context_tokens * self.kv_bytes_per_token)
        return concurrency * self.hbm_bytes_per_s / step_bytes

    def prefill_tokens_per_s_at(self, prompt_tokens: int) -> float:
        flops = self.linear_flops_per_token + \
            self.attention_flops_per_token_per_position * prompt_tokens
        return self.peak_flops * self.devices_per_replica / flops


def routed_expert_parameters(facts: ModelFacts) -> int:
    """Parameters of the routed experts (gate, up and down of each), all layers."""
    moe = facts.moe
    if moe is None:
        return 0
    return ((facts.num_layers - moe.dense_layers) * moe.num_experts * 3 * facts.hidden_size
            * moe.expert_intermediate_size)


def compute_roofline(facts: ModelFacts, product: GpuProduct, precision: str, dtype: str,
                     layout: Layout, memory: MemoryEstimate, max_model_len: int,
                     max_num_seqs: int, max_num_batched_tokens: int) -> Roofline | None:
    """The roofline of one plan; None when the product table has no figures for the GPU."""
    compute = COMPUTE_PRECISION.get(precision, "bf16")
    bandwidth, peak = product.hbm_bytes_per_s, product.peak_flops(compute)
    if bandwidth is None or peak is None:
        return None
    stage_share = math.ceil(facts.num_layers / layout.pp) / facts.num_layers
    experts = routed_expert_parameters(facts)
    expert_bytes = min(memory.weight_bytes_per_device, int(
        experts * PRECISION_BYTES.get(precision, 2.0) * stage_share / layout.tp))
    embedding = 0
    if layout.pp == 1 and not facts.tie_word_embeddings:
        embedding = math.ceil(facts.parameters.embedding * compute_dtype_bytes(dtype) / layout.tp)
    dense_bytes = max(0, memory.weight_bytes_per_device - expert_bytes - embedding)
    moe = facts.moe
    active_linear = facts.parameters.linear - (
        experts * (1 - moe.experts_per_token / moe.num_experts) if moe else 0)
    concurrency = max(1, min(max_num_seqs, memory.kv_capacity_tokens // max_model_len))
    prompt = min(max_model_len, max_num_batched_tokens)
    roofline = Roofline(
        product=product.name, hbm_bytes_per_s=bandwidth, compute_precision=compute,
        peak_flops=peak, devices_per_replica=layout.tp * layout.pp,
        pipeline_stages=layout.pp, replicas=layout.dp, dense_weight_bytes=dense_bytes,
        expert_weight_bytes=expert_bytes, experts=moe.num_experts if moe else 0,
        experts_per_token=moe.experts_per_token if moe else 0,
        kv_bytes_per_token=memory.kv_bytes_per_token,
        linear_flops_per_token=2.0 * active_linear,
        attention_flops_per_token_per_position=2.0 * facts.num_layers
        * facts.num_attention_heads * facts.head_dim,
        concurrency=concurrency, context_tokens=max_model_len,
        decode_single_tokens_per_s=0.0, decode_per_sequence_tokens_per_s=0.0,
        decode_aggregate_tokens_per_s=0.0, prefill_prompt_tokens=prompt,
        prefill_tokens_per_s=0.0,
    )
    aggregate = roofline.decode_tokens_per_s(concurrency, max_model_len)
    return roofline.model_copy(update={
        "decode_single_tokens_per_s": roofline.decode_tokens_per_s(1, 0),
        "decode_per_sequence_tokens_per_s": aggregate / concurrency,
        "decode_aggregate_tokens_per_s": aggregate,
        "prefill_tokens_per_s": roofline.prefill_tokens_per_s_at(prompt),
    })


def describe(roofline: Roofline) -> list[str]:
    """Plain-text lines for `plan --explain`."""
    r = roofline
    replicas = f" (x{r.replicas} replicas)" if r.replicas > 1 else ""
    prefill_flops = r.linear_flops_per_token + \
        r.attention_flops_per_token_per_position * r.prefill_prompt_tokens
    micro = math.ceil(r.concurrency / r.pipeline_stages)
    return [
        f"roofline ({r.product}: HBM {r.hbm_bytes_per_s / 1e12:.1f} TB/s, "
        f"{r.peak_flops / 1e12:,.1f} dense {r.compute_precision} TFLOPS per device; "
        f"per replica of {r.devices_per_replica} GPU(s){replicas}):",
        f"  decode, one sequence, short context: <= {r.decode_single_tokens_per_s:,.1f} "
        f"tokens/s (reads {_gb(r.weight_bytes_read(1))} of weights per device per step)",
        f"  decode, {r.concurrency} sequences of {r.context_tokens:,} tokens: <= "
        f"{r.decode_per_sequence_tokens_per_s:,.1f} tokens/s each, "
        f"{r.decode_aggregate_tokens_per_s:,.1f} in aggregate (reads "
        f"{_gb(r.weight_bytes_read(micro))} of weights + "
        f"{_gb(r.concurrency * r.context_tokens * r.kv_bytes_per_token)} of KV cache per device "
        "per step)",
        f"  prefill, {r.prefill_prompt_tokens:,}-token prompts: <= "
        f"{r.prefill_tokens_per_s:,.0f} tokens/s ({prefill_flops / 1e9:,.1f} GFLOP per token)",
    ]


def _gb(value: float) -> str:
    return f"{value / 1e9:,.2f} GB"
