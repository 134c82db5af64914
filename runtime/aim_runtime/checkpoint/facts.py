"""Inspect: what a model needs, read from its directory without loading any weight.

`config.json` gives the architecture; safetensors headers (the first 8 + N bytes of each file), when
the weights are present, give the exact parameter count and checkpoint size. Without weights the
count is computed from the config alone, so a plan can be made before anything is downloaded.
Multimodal configs keep the language model under `text_config`; its fields win over the top level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from aim_runtime.checkpoint.parameters import (
    CheckpointSummary,
    ParameterCount,
    count_from_config,
    read_checkpoint,
)
from aim_runtime.checkpoint.shapes import (
    Dimensions,
    HybridFacts,
    MLAFacts,
    MoEFacts,
    QuantizationFacts,
)
from aim_runtime.errors import ModelFactsError
from aim_runtime.settings import Precision

DTYPE_TO_PRECISION: dict[str, Precision] = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
}
# The names model families give the decoder's layer count (one list for every reader of it).
LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
DEFAULT_MAX_POSITIONS = 2048  # what vLLM assumes when a config names no context length
# `save_pretrained` omits values equal to the config class's defaults; these are the defaults of
# the classes whose omitted values matter here (transformers' Gemma*/GPT-2 configuration classes).
CONFIG_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": {"tie_word_embeddings": True},
    "gemma2": {"tie_word_embeddings": True},
    "gemma3_text": {"tie_word_embeddings": True, "vocab_size": 262208,
                    "max_position_embeddings": 131072},
    "gpt2": {"tie_word_embeddings": True},
}
# Model types whose attention has learned sinks (vLLM's GptOssAttention): not every attention
# backend supports them.
ATTENTION_SINK_MODEL_TYPES = ("gpt_oss",)
# Multimodal model types whose attention is bidirectional over image tokens (vLLM's
# `MM_PREFIX_LM_MODELS`, transformers_utils/model_arch_config_convertor.py): only some attention
# backends support that prefix.
MM_PREFIX_MODEL_TYPES = ("bagel", "gemma3", "molmo2", "moondream3", "paligemma", "umm")
# Model types with one shared expert of the routed experts' width that the config does not name.
ONE_SHARED_EXPERT_MODEL_TYPES = ("llama4_text", "llama4")
# Layer-type names of state (recurrent) layers in `layer_types` / `layers_block_type`.
STATE_LAYER_TYPES = ("linear_attention", "mamba", "mamba2", "mamba1", "linear", "ssm")


class ModelFacts(Dimensions):
    """Everything the planner needs to know about a model: its dimensions (the part a parameter
    count is computed from) and the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    hf_id: str | None = None
    architecture: str
    max_position_embeddings: int
    sliding_window: int | None = None
    dtype: str
    hybrid: HybridFacts | None = None
    quantization: QuantizationFacts | None = None
    multimodal: bool = False
    # Multimodal with bidirectional attention over image tokens (vLLM's mm-prefix LMs).
    multimodal_prefix: bool = False
    attention_sinks: bool = False
    custom_code: bool = False
    parameters: ParameterCount
    checkpoint_bytes: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def weight_precision(self) -> Precision | None:
        """Precision of the checkpoint's linear weights (None: an unrecognised quantization)."""
        if self.quantization is not None:
            return self.quantization.weight_precision
        return DTYPE_TO_PRECISION.get(self.dtype, "bf16")

    @property
    def is_prequantized(self) -> bool:
        return self.quantization is not None


def load_model_facts(model: str | Path, hf_id: str | None = None) -> ModelFacts:
    """Read facts from a model directory (or a path to its config.json)."""
    path = Path(model)
    config_path = path if path.is_file() else path / "config.json"
    if not config_path.is_file():
        raise ModelFactsError(
            f"no config.json at {config_path}",
            "point --model at a local model directory (the runtime never downloads from a hub "
            "at plan time); in KServe the storage initializer fills /mnt/models",
        )
    config = _read_config(config_path)
    model_dir = config_path.parent
    checkpoint = read_checkpoint(model_dir)
    return facts_from_config(config, str(model_dir), hf_id=hf_id, checkpoint=checkpoint)


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFactsError(f"cannot read {config_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelFactsError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFactsError(f"{config_path} must hold a JSON object")
    return config


def facts_from_config(
    config: dict[str, Any], path: str, hf_id: str | None = None,
    checkpoint: CheckpointSummary | None = None
) -> ModelFacts:
    """Build facts from a parsed config (and the checkpoint's header summary, if any)."""
    text = _language_config(config)
    reader = _ConfigReader(text, path)
    heads = reader.required_int("num_attention_heads", "n_head", "num_heads")
    hidden = reader.required_int("hidden_size", "n_embd", "d_model")
    notes: list[str] = []
    max_positions = reader.optional_int(
        "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len"
    )
    if max_positions is None:
        max_positions = DEFAULT_MAX_POSITIONS
        notes.append(f"no context length in config; assuming {DEFAULT_MAX_POSITIONS} like vLLM")
    facts: dict[str, object] = dict(
        path=path,
        hf_id=hf_id or _hf_id_from_config(config),
        architecture=_architecture(config, path),
        model_type=str(text.get("model_type") or config.get("model_type") or "unknown"),
        num_layers=reader.required_int(*LAYER_COUNT_FIELDS),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=reader.optional_int("num_key_value_heads", "n_head_kv", "num_kv_heads",
                                         "multi_query_group_num") or heads,
        head_dim=reader.optional_int("head_dim") or _mla_qk_head_dim(reader) or hidden // heads,
        intermediate_size=reader.optional_int("intermediate_size", "ffn_dim", "n_inner"),
        vocab_size=reader.required_int("vocab_size", "padded_vocab_size"),
        max_position_embeddings=max_positions,
        sliding_window=_sliding_window(text),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        dtype=_dtype(config, text),
        moe=_moe(reader),
        mla=_mla(reader),
        hybrid=_hybrid(reader),
        quantization=_quantization(config.get("quantization_config") or
                                   text.get("quantization_config")),
        multimodal="vision_config" in config,
        multimodal_prefix="vision_config" in config and str(
            config.get("model_type")) in MM_PREFIX_MODEL_TYPES,
        attention_sinks=str(text.get("model_type")) in ATTENTION_SINK_MODEL_TYPES,
        custom_code="auto_map" in config,
        notes=tuple(notes),
    )
    if checkpoint is not None and checkpoint.parameters is not None:
        parameters = checkpoint.parameters
    else:
        # Dimensions only (no parameters yet): what the counting needs.
        parameters = count_from_config(Dimensions.model_validate(facts), config)
    return ModelFacts.model_validate({
        **facts, "parameters": parameters,
        "checkpoint_bytes": checkpoint.total_bytes if checkpoint is not None else None,
    })


def _language_config(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config")
    merged = {**config, **text} if isinstance(text, dict) else config
    defaults = CONFIG_CLASS_DEFAULTS.get(str(merged.get("model_type")), {})
    return {**defaults, **merged}


class _ConfigReader:
    """Typed access to config fields that go by several names across model families."""

    def __init__(self, config: dict[str, Any], path: str) -> None:
        self.config = config
        self.path = path

    def optional_int(self, *names: str) -> int | None:
        for name in names:
            value = self.config.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelFactsError(
                    f"{self.path}/config.json: field {name!r} has value {value!r}; "
                    "expected a non-negative integer"
                )
            return value
        return None

    def required_int(self, *names: str) -> int:
        value = self.optional_int(*names)
        if value is None or value == 0:
            raise ModelFactsError(
                f"{self.path}/config.json has no {' / '.join(names)}",
                "is this a decoder-only language model? the planner needs its dimensions",
            )
        return value


def _architecture(config: dict[str, Any], path: str) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    raise ModelFactsError(f"{path}/config.json has no 'architectures' list")


def _hf_id_from_config(config: dict[str, Any]) -> str | None:
    name = config.get("_name_or_path")
    if isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "/")):
        return name
    return None


def _dtype(config: dict[str, Any], text: dict[str, Any]) -> str:
    for source in (text, config):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str) and value in DTYPE_TO_PRECISION:
                return {"half": "float16", "float": "float32"}.get(value, value)
    return "bfloat16"


def _sliding_window(text: dict[str, Any]) -> int | None:
    if text.get("use_sliding_window") is False:
        return None
    window = text.get("sliding_window")
    return window if isinstance(window, int) and window > 0 else None


def _moe(reader: _ConfigReader) -> MoEFacts | None:
    experts = reader.optional_int("num_local_experts", "num_experts", "n_routed_experts",
                                  "moe_num_experts")
    if not experts or experts <= 1:
        return None
    config = reader.config
    expert_size = reader.optional_int("moe_intermediate_size", "intermediate_size") or 0
    shared_experts = reader.optional_int("n_shared_experts") or (
        1 if config.get("model_type") in ONE_SHARED_EXPERT_MODEL_TYPES else 0)
    shared = reader.optional_int("shared_expert_intermediate_size") or (
        shared_experts * expert_size)
    dense = reader.optional_int("first_k_dense_replace") or 0
    if isinstance(config.get("mlp_only_layers"), list):
        dense += len(config["mlp_only_layers"])
    step = reader.optional_int("decoder_sparse_step", "interleave_moe_layer_step") or 1
    if step > 1:
        layers = reader.required_int(*LAYER_COUNT_FIELDS)
        dense += layers - layers // step
    return MoEFacts(
        num_experts=experts,
        experts_per_token=reader.optional_int("num_experts_per_tok", "moe_topk",
                                              "num_experts_per_token", "experts_per_token") or 1,
        expert_intermediate_size=expert_size,
        shared_expert_intermediate_size=shared,
        dense_layers=dense,
        dense_intermediate_size=reader.optional_int("intermediate_size_mlp"),
    )


def _hybrid(reader: _ConfigReader) -> HybridFacts | None:
    """State (Mamba, Gated DeltaNet) and attention layers of a hybrid model, from whichever of
    `layer_types`, `layers_block_type`, `hybrid_override_pattern` (Nemotron-H: M = Mamba,
    * = attention) or `full_attention_interval` the config has."""
    config = reader.config
    layers = reader.required_int(*LAYER_COUNT_FIELDS)
    kinds = config.get("layer_types") or config.get("layers_block_type")
    pattern = config.get("hybrid_override_pattern")
    interval = reader.optional_int("full_attention_interval")
    if isinstance(kinds, list) and all(isinstance(k, str) for k in kinds):
        state = sum(1 for k in kinds if k.lower() in STATE_LAYER_TYPES)
        attention = sum(1 for k in kinds if "attention" in k.lower()) - (
            sum(1 for k in kinds if k.lower() == "linear_attention"))
    elif isinstance(pattern, str):
        state, attention = pattern.count("M"), pattern.count("*")
    elif interval:
        attention = layers // interval
        state = layers - attention
    else:
        return None
    if state == 0:
        return None
    return HybridFacts(attention_layers=attention, state_layers=state,
                       state_elements_per_layer=_state_elements(reader))


def _state_elements(reader: _ConfigReader) -> int | None:
    """Recurrent state of one layer: conv state + SSM state, in elements (vLLM's
    `MambaStateShapeCalculator`): Gated DeltaNet (`linear_*` fields, Qwen3-Next) or Mamba2."""
    key_heads = reader.optional_int("linear_num_key_heads")
    if key_heads:
        key_dim = key_heads * (reader.optional_int("linear_key_head_dim") or 0)
        value_heads = reader.optional_int("linear_num_value_heads") or 0
        value_head = reader.optional_int("linear_value_head_dim") or 0
        kernel = reader.optional_int("linear_conv_kernel_dim") or 4
        conv = (2 * key_dim + value_heads * value_head) * (kernel - 1)
        return conv + value_heads * (reader.optional_int("linear_key_head_dim") or 0) * value_head
    heads = reader.optional_int("mamba_n_heads", "mamba_num_heads")
    head_dim = reader.optional_int("mamba_d_head", "mamba_head_dim")
    d_state = reader.optional_int("mamba_d_state", "ssm_state_size")
    if heads and head_dim and d_state:
        groups = reader.optional_int("mamba_n_groups", "n_groups") or 1
        kernel = reader.optional_int("mamba_d_conv", "conv_kernel") or 4
        inner = heads * head_dim
        return (inner + 2 * groups * d_state) * (kernel - 1) + heads * head_dim * d_state
    return None


def _mla_qk_head_dim(reader: _ConfigReader) -> int | None:
    if not reader.optional_int("kv_lora_rank"):
        return None
    return (reader.optional_int("qk_nope_head_dim") or 0) + (
        reader.optional_int("qk_rope_head_dim") or 0) or None


def _mla(reader: _ConfigReader) -> MLAFacts | None:
    kv_lora_rank = reader.optional_int("kv_lora_rank")
    if not kv_lora_rank:
        return None
    return MLAFacts(
        kv_lora_rank=kv_lora_rank,
        q_lora_rank=reader.optional_int("q_lora_rank"),
        qk_rope_head_dim=reader.optional_int("qk_rope_head_dim") or 0,
        qk_nope_head_dim=reader.optional_int("qk_nope_head_dim") or 0,
        v_head_dim=reader.optional_int("v_head_dim") or 0,
    )


def _quantization(config: Any) -> QuantizationFacts | None:
    if not isinstance(config, dict):
        return None
    method = str(config.get("quant_method", "unknown")).lower()
    bits = config.get("bits") if isinstance(config.get("bits"), int) else None
    group = config.get("group_size") if isinstance(config.get("group_size"), int) else None
    precision: Precision | None
    if method in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        precision = "fp8"
    elif method in ("mxfp4", "gpt_oss_mxfp4"):
        precision = "mxfp4"
    elif method in ("awq", "gptq", "auto_gptq", "auto_awq", "awq_marlin", "gptq_marlin"):
        bits = bits or 4
        precision = "int4" if bits == 4 else "int8" if bits == 8 else None
    elif method == "bitsandbytes":
        bits = 4 if config.get("load_in_4bit") else 8
        precision = "int4" if bits == 4 else "int8"
    elif method in ("compressed-tensors", "quark"):
        precision, bits = _precision_from_scheme(config)
    else:
        precision = None
    return QuantizationFacts(method=method, weight_precision=precision, bits=bits,
                             group_size=group)


def _precision_from_scheme(config: dict[str, Any]) -> tuple[Precision | None, int | None]:
    """compressed-tensors / quark: find the weight scheme (num_bits + type, or an fp8 dtype)."""
    text = json.dumps(config).lower()
    if '"fp8' in text or '"float8' in text or ('"num_bits": 8' in text and '"float"' in text):
        return "fp8", 8
    if "mxfp4" in text or '"fp4' in text:
        return "mxfp4", 4
    if '"num_bits": 4' in text or '"int4' in text or '"uint4' in text:
        return "int4", 4
    if '"num_bits": 8' in text or '"int8' in text:
        return "int8", 8
    return None, None
