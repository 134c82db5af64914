"""Parameter counts: exact from safetensors headers, or computed from config.json.

Parameters are split the way quantization treats them: `linear` weights of the decoder (what FP8
or INT4 shrinks) versus `embedding`, `lm_head` and `other` (norms, biases, vision tower), which stay
in 16-bit. A safetensors file starts with a little-endian u64 N and N bytes of JSON mapping each
tensor name to {dtype, shape, data_offsets}; reading that is enough.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from aim_runtime.checkpoint.shapes import Dimensions
from aim_runtime.errors import ModelFactsError

SAFETENSORS_HEADER_LIMIT_BYTES = 100 * 1024 * 1024  # a larger header is not a real file's
# Tensors that describe quantization rather than hold parameters.
QUANT_AUX_SUFFIXES = ("_scale", "_scale_inv", ".scales", ".qzeros", ".g_idx", "_zero_point",
                      ".zeros", "input_scale", "weight_scale")
PACKED_DTYPES = ("I32", "U32", "U8", "I8")
NON_GATED_MLP = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2",
                 "gpt_bigcode", "mpt"}
FOUR_NORM_LAYERS = {"gemma2", "gemma3", "gemma3_text"}
QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"}
QKV_BIAS = {"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"}


def human_count(value: int) -> str:
    """8.03B, 70.55B, 598.34K: parameter counts at a readable scale."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(value)


class ParameterCount(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: int
    embedding: int
    lm_head: int
    linear: int
    other: int
    source: Literal["safetensors", "config"]


@dataclass(frozen=True)
class CheckpointSummary:
    """What the safetensors headers say: exact sizes, and counts unless weights are bit-packed."""

    files: int
    total_bytes: int
    parameters: ParameterCount | None


def read_checkpoint(model_dir: Path) -> CheckpointSummary | None:
    """Summarise the safetensors checkpoint in a directory; None when there is none."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    parts = {"embedding": 0, "lm_head": 0, "linear": 0, "other": 0}
    total_bytes = 0
    packed = False
    for file in files:
        for name, info in read_safetensors_header(file).items():
            begin, end = info["data_offsets"]
            total_bytes += end - begin
            if name.endswith(QUANT_AUX_SUFFIXES):
                continue
            packed = packed or info["dtype"] in PACKED_DTYPES
            parts[_tensor_role(name, info["shape"])] += math.prod(info["shape"])
    parameters = None
    if not packed:
        parameters = ParameterCount(total=sum(parts.values()), source="safetensors", **parts)
    return CheckpointSummary(files=len(files), total_bytes=total_bytes, parameters=parameters)


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """Tensor table of one safetensors file, without the metadata entry."""
    try:
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ModelFactsError(f"{file}: too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > SAFETENSORS_HEADER_LIMIT_BYTES:
                raise ModelFactsError(f"{file}: header length {header_len} is implausible")
            header = json.loads(handle.read(header_len))
    except OSError as exc:
        raise ModelFactsError(f"cannot read {file}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFactsError(f"{file}: safetensors header is not valid JSON: {exc}") from exc
    header.pop("__metadata__", None)
    for name, info in header.items():
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= info.keys()):
            raise ModelFactsError(f"{file}: tensor {name!r} has a malformed header entry")
    checked: dict[str, Any] = header
    return checked


def _tensor_role(name: str, shape: list[int]) -> str:
    lowered = name.lower()
    if "lm_head" in lowered:
        return "lm_head"
    if "embed" in lowered or lowered.endswith(("wte.weight", "wpe.weight")):
        return "embedding"
    if len(shape) < 2 or "norm" in lowered or any(v in lowered for v in ("vision", "visual")):
        return "other"
    return "linear"


def count_from_config(facts: Dimensions, config: dict[str, Any]) -> ParameterCount:
    """Parameters computed from the architecture (`facts` carries the decoded dimensions)."""
    embedding = facts.vocab_size * facts.hidden_size
    lm_head = 0 if facts.tie_word_embeddings else embedding
    attention = _attention_params(facts)
    layers_linear = 0
    for layer in range(facts.num_layers):
        layers_linear += attention + _mlp_params(facts, layer)
    norms_per_layer = 4 if facts.model_type in FOUR_NORM_LAYERS else 2
    other = facts.num_layers * (norms_per_layer * facts.hidden_size + _attention_extras(facts))
    other += facts.hidden_size + _vision_params(config.get("vision_config"), facts.hidden_size)
    total = embedding + lm_head + layers_linear + other
    return ParameterCount(total=total, embedding=embedding, lm_head=lm_head,
                          linear=layers_linear, other=other, source="config")


def _attention_params(facts: Dimensions) -> int:
    hidden, heads = facts.hidden_size, facts.num_attention_heads
    mla = facts.mla
    if mla is not None:
        qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank:
            q = hidden * mla.q_lora_rank + mla.q_lora_rank * heads * qk_head
        else:
            q = hidden * heads * qk_head
        kv_a = hidden * (mla.kv_lora_rank + mla.qk_rope_head_dim)
        kv_b = mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        return q + kv_a + kv_b + heads * mla.v_head_dim * hidden
    q_size = heads * facts.head_dim
    kv_size = facts.num_kv_heads * facts.head_dim
    return hidden * (q_size + 2 * kv_size) + q_size * hidden


def _attention_extras(facts: Dimensions) -> int:
    """Norms inside attention and q/k/v biases: small, but part of the count."""
    extras = 0
    if facts.mla is not None:
        extras += facts.mla.kv_lora_rank + (facts.mla.q_lora_rank or 0)
    if facts.model_type in QK_NORM:
        extras += 2 * facts.head_dim
    if facts.model_type in QKV_BIAS:
        extras += (facts.num_attention_heads + 2 * facts.num_kv_heads) * facts.head_dim
    return extras


def _mlp_params(facts: Dimensions, layer: int) -> int:
    hidden = facts.hidden_size
    matrices = 2 if facts.model_type in NON_GATED_MLP else 3
    moe = facts.moe
    if moe is None or layer < moe.dense_layers:
        width = (moe.dense_intermediate_size if moe else None) or facts.intermediate_size
        return matrices * hidden * (width or 4 * hidden)
    experts = moe.num_experts * matrices * hidden * moe.expert_intermediate_size
    shared = matrices * hidden * moe.shared_expert_intermediate_size
    router = moe.num_experts * hidden
    return experts + shared + router


def _vision_params(vision: Any, text_hidden: int) -> int:
    """A ViT tower estimated from its config (attention 4h^2 + MLP 2hi per layer) + projector."""
    if not isinstance(vision, dict):
        return 0
    hidden = int(vision.get("hidden_size") or 0)
    layers = int(vision.get("num_hidden_layers") or vision.get("depth") or 0)
    intermediate = int(vision.get("intermediate_size") or 4 * hidden)
    patch = int(vision.get("patch_size") or 14)
    image = int(vision.get("image_size") or 224)
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden
    embeddings = 3 * patch * patch * hidden + (image // patch) ** 2 * hidden
    return layers * per_layer + embeddings + hidden * text_hidden
