"""The shape of a model's language part, as the parameter count and the planner need it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from aim_runtime.settings import Precision


class MoEFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    dense_layers: int = 0
    # MLP width of the dense layers when it differs from the experts' (Llama 4's
    # `intermediate_size_mlp`); None: the model's `intermediate_size`.
    dense_intermediate_size: int | None = None


class HybridFacts(BaseModel):
    """Hybrid models (Mamba, Gated DeltaNet, linear attention) whose state layers keep a
    fixed-size recurrent state per sequence instead of a KV cache. vLLM keeps one such state per
    running sequence in a block of the KV-cache pool, so the pool bounds the running sequences."""

    model_config = ConfigDict(frozen=True)

    attention_layers: int
    state_layers: int
    # Conv + SSM (or recurrent) state elements of one state layer, all heads (sharded by TP);
    # None when the config's state dimensions are of a kind not read here.
    state_elements_per_layer: int | None = None


class MLAFacts(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds one compressed latent."""

    model_config = ConfigDict(frozen=True)

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int


class QuantizationFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: str
    weight_precision: Precision | None
    bits: int | None = None
    group_size: int | None = None


class Dimensions(BaseModel):
    """The dimensions a parameter count is computed from (a subset of the model facts)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int | None = None
    vocab_size: int
    tie_word_embeddings: bool
    moe: MoEFacts | None = None
    mla: MLAFacts | None = None
