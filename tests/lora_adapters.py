"""LoRA adapters made here, in PEFT's on-disk format (adapter_config.json and
adapter_model.safetensors with `base_model.model.<module>.lora_A/lora_B.weight` tensors), with
random weights from a fixed seed: for the tiny model, or deliberately wrong ones."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = ("q_proj", "v_proj")


def make_adapter(directory: Path, base: Path, rank: int = 8, seed: int = 0,
                 hidden_size: int | None = None) -> Path:
    """An adapter for the model at `base` (its config.json gives the shapes); `hidden_size`
    overrides the width, which makes an adapter of another base model."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden = hidden_size or config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    outputs = {"q_proj": config["num_attention_heads"] * head_dim,
               "v_proj": config["num_key_value_heads"] * head_dim}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(
                rank, hidden, generator=generator, dtype=torch.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(
                outputs[module], rank, generator=generator, dtype=torch.float32) * 0.01
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "lora_dropout": 0.0, "bias": "none", "target_modules": list(TARGETS),
        "base_model_name_or_path": config.get("_name_or_path", str(base)),
        "fan_in_fan_out": False, "inference_mode": True}, indent=2))
    return directory
