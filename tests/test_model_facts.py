"""Model facts from real public configs, and exact counts from safetensors headers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from aim_runtime.checkpoint.facts import facts_from_config, load_model_facts
from aim_runtime.errors import ModelFactsError
from testkit import MODELS

# Parameter counts published on the models' Hugging Face pages (safetensors totals).
PUBLISHED_PARAMETERS = {
    "llama-3.1-8b-instruct": 8_030_261_248,
    "llama-3.1-70b-instruct": 70_553_706_496,
    "llama-3.1-405b-instruct": 405_853_388_800,
    "qwen3-32b": 32_762_123_264,
    "mistral-7b-instruct-v0.3": 7_248_023_552,
    "mixtral-8x7b-instruct-v0.1": 46_702_792_704,
    "qwen3-30b-a3b": 30_532_122_624,
    "gemma-2-9b-it": 9_241_705_984,
    "gemma-3-27b-it": 27_432_406_640,
    "deepseek-v3": 671_000_000_000,  # "671B" without the multi-token-prediction layer
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameters_from_config_match_published_counts(name):
    facts = load_model_facts(MODELS / name)
    assert facts.parameters.source == "config"
    assert facts.checkpoint_bytes is None
    assert facts.parameters.total == pytest.approx(PUBLISHED_PARAMETERS[name], rel=1e-3)
    parts = facts.parameters
    assert parts.total == parts.embedding + parts.lm_head + parts.linear + parts.other


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-3.1-8b-instruct", dict(architecture="LlamaForCausalLM", num_layers=32,
                                       num_kv_heads=8, head_dim=128, max_position_embeddings=131072,
                                       tie_word_embeddings=False, dtype="bfloat16")),
        ("qwen3-32b", dict(num_attention_heads=64, num_kv_heads=8, head_dim=128,
                           max_position_embeddings=40960, sliding_window=None)),
        ("mistral-7b-instruct-v0.3", dict(vocab_size=32768, max_position_embeddings=32768)),
        ("gemma-2-9b-it", dict(head_dim=256, tie_word_embeddings=True, sliding_window=4096)),
        ("gemma-3-27b-it", dict(architecture="Gemma3ForConditionalGeneration",
                                model_type="gemma3_text", num_layers=62, vocab_size=262208,
                                max_position_embeddings=131072, multimodal=True,
                                tie_word_embeddings=True)),
        ("deepseek-v3", dict(num_layers=61, custom_code=True, head_dim=192,
                             max_position_embeddings=163840)),
    ],
)
def test_dimensions(name, expected):
    facts = load_model_facts(MODELS / name)
    for field, value in expected.items():
        assert getattr(facts, field) == value, field


def test_moe_and_mla_facts():
    mixtral = load_model_facts(MODELS / "mixtral-8x7b-instruct-v0.1").moe
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.expert_intermediate_size) == (
        8, 2, 14336)
    qwen = load_model_facts(MODELS / "qwen3-30b-a3b").moe
    assert (qwen.num_experts, qwen.experts_per_token, qwen.expert_intermediate_size,
            qwen.dense_layers) == (128, 8, 768, 0)
    deepseek = load_model_facts(MODELS / "deepseek-v3")
    assert deepseek.moe.dense_layers == 3
    assert deepseek.moe.shared_expert_intermediate_size == 2048
    assert (deepseek.mla.kv_lora_rank, deepseek.mla.qk_rope_head_dim) == (512, 64)
    assert deepseek.quantization.method == "fp8"
    assert deepseek.weight_precision == "fp8" and deepseek.is_prequantized
    assert load_model_facts(MODELS / "llama-3.1-8b-instruct").moe is None


@pytest.mark.parametrize(
    ("quantization_config", "precision", "bits"),
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, "int4", 4),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "int8", 8),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}, "fp8", 8),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "weights": {"num_bits": 4, "type": "int", "group_size": 128}}}}, "int4", 4),
        ({"quant_method": "mxfp4"}, "mxfp4", None),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "int4", 4),
        ({"quant_method": "exotic"}, None, None),
    ],
)
def test_quantization_configs(quantization_config, precision, bits):
    config = json.loads((MODELS / "llama-3.1-8b-instruct" / "config.json").read_text())
    config["quantization_config"] = quantization_config
    facts = facts_from_config(config, "x")
    assert facts.weight_precision == precision
    assert facts.quantization.bits == bits


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "vocab_size": 256, "max_position_embeddings": 512,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def tiny_llama_tensors(config: dict) -> dict[str, np.ndarray]:
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    tensors = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
               "lm_head.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors.update({
            prefix + "self_attn.q_proj.weight": (hidden, hidden),
            prefix + "self_attn.k_proj.weight": (kv, hidden),
            prefix + "self_attn.v_proj.weight": (kv, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        })
    return {name: np.zeros(shape, dtype=np.float16) for name, shape in tensors.items()}


def write_model(directory: Path, config: dict, tensors: dict[str, np.ndarray],
                shards: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    for shard in range(shards):
        part = {n: tensors[n] for n in names[shard::shards]}
        save_file(part, str(directory / f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"),
                  metadata={"format": "pt"})
    return directory


def test_safetensors_headers_give_exact_count_and_agree_with_config(tmp_path):
    tensors = tiny_llama_tensors(TINY_CONFIG)
    model = write_model(tmp_path / "tiny", TINY_CONFIG, tensors, shards=2)
    facts = load_model_facts(model)
    exact = sum(t.size for t in tensors.values())
    assert facts.parameters.source == "safetensors"
    assert facts.parameters.total == exact
    assert facts.checkpoint_bytes == sum(t.nbytes for t in tensors.values())
    assert facts.parameters.embedding == facts.parameters.lm_head == 256 * 64
    from_config = facts_from_config(TINY_CONFIG, "tiny").parameters
    assert from_config.source == "config"
    assert from_config.model_dump(exclude={"source"}) == facts.parameters.model_dump(
        exclude={"source"})


def test_packed_int4_checkpoint_counts_from_config_but_sizes_from_headers(tmp_path):
    config = {**TINY_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4,
                                                     "group_size": 32}}
    tensors = {"model.embed_tokens.weight": np.zeros((256, 64), np.float16),
               "model.layers.0.mlp.up_proj.qweight": np.zeros((64, 16), np.int32),
               "model.layers.0.mlp.up_proj.scales": np.zeros((2, 128), np.float16)}
    facts = load_model_facts(write_model(tmp_path / "awq", config, tensors))
    assert facts.parameters.source == "config"
    assert facts.checkpoint_bytes == sum(t.nbytes for t in tensors.values())
    assert facts.weight_precision == "int4"


def test_config_path_may_be_the_file_itself(tmp_path):
    model = write_model(tmp_path / "m", TINY_CONFIG, {})
    assert load_model_facts(model / "config.json").num_layers == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("architectures"), "no 'architectures' list"),
        (lambda c: c.pop("hidden_size"), "has no hidden_size"),
        (lambda c: c.update(num_hidden_layers="32"), "field 'num_hidden_layers' has value '32'"),
        (lambda c: c.update(num_attention_heads=-1), "field 'num_attention_heads' has value -1"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, mutate, message):
    config = dict(TINY_CONFIG)
    mutate(config)
    model = write_model(tmp_path / "bad", config, {})
    with pytest.raises(ModelFactsError, match=message):
        load_model_facts(model)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ModelFactsError, match=r"no config\.json"):
        load_model_facts(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelFactsError, match="not valid JSON"):
        load_model_facts(tmp_path / "broken")
    model = write_model(tmp_path / "trunc", TINY_CONFIG, {})
    (model / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ModelFactsError, match="too short"):
        load_model_facts(model)
    (model / "model.safetensors").write_bytes((8).to_bytes(8, "little") + b"{garbage")
    with pytest.raises(ModelFactsError, match="not valid JSON"):
        load_model_facts(model)


def test_config_without_context_length_is_noted(tmp_path):
    config = {k: v for k, v in TINY_CONFIG.items() if k != "max_position_embeddings"}
    facts = load_model_facts(write_model(tmp_path / "m", config, {}))
    assert facts.max_position_embeddings == 2048
    assert any("context length" in note for note in facts.notes)
