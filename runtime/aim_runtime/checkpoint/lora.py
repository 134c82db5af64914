"""LoRA adapters on disk (PEFT's format), checked against the base model before the engine sees
them, so that a bad adapter is a clear client error and not an engine failure.

An adapter directory holds `adapter_config.json` (`peft_type: LORA`, rank `r`, target modules)
and `adapter_model.safetensors` (or `.bin`): per wrapped linear layer, `lora_A` (rank x input)
and `lora_B` (output x rank). The tensor shapes come from the safetensors header alone (no
weights are read), and each must match the base model's layer it adapts: an adapter made for
another base model has other widths (or more layers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.checkpoint.parameters import read_safetensors_header
from aim_runtime.errors import ModelFactsError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TENSOR = re.compile(r"layers\.(\d+)\.[\w.]*?(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class AdapterFacts:
    """What an adapter directory says about itself."""

    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape (safetensors only)


def read_adapter(directory: Path) -> AdapterFacts:
    """The adapter's facts; ValueError saying what is missing or unreadable."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory} has no {CONFIG_FILE}")
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        raise ValueError(f"{directory} has no adapter weights ({' or '.join(WEIGHT_FILES)})")
    try:
        config = json.loads(config_path.read_text())
        rank = int(config["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{config_path}: not a LoRA adapter config ({exc})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{config_path}: peft_type {config.get('peft_type')}, not LORA")
    targets = config.get("target_modules") or ()
    shapes = _safetensors_shapes(weights[0]) if weights[0].suffix == ".safetensors" else {}
    return AdapterFacts(rank=rank, target_modules=tuple(targets) if isinstance(targets, list)
                        else (str(targets),),
                        base_model=config.get("base_model_name_or_path"), shapes=shapes)


def adapter_problem(directory: Path, facts: ModelFacts, max_rank: int) -> str | None:
    """Why this adapter cannot serve on this base model with this rank limit, else None."""
    try:
        adapter = read_adapter(directory)
    except ValueError as exc:
        return str(exc)
    if adapter.rank > max_rank:
        return (f"rank {adapter.rank} exceeds the server's max_lora_rank {max_rank} "
                "(start the server with a larger --max-lora-rank)")
    expected = linear_layer_shapes(facts)
    for name, shape in adapter.shapes.items():
        match = TENSOR.search(name)
        if match is None or len(shape) != 2:
            continue
        layer, module, kind = int(match[1]), match[2], match[3]
        if layer >= facts.num_layers:
            return (f"made for another base model: {name} adapts layer {layer}; this model has "
                    f"{facts.num_layers} layers")
        if module not in expected or (facts.moe is not None and module in MLP_MODULES):
            continue  # an expert's or a dense layer's MLP: widths differ by layer, not checked
        inputs, outputs = expected[module]
        width, wanted = (shape[1], inputs) if kind == "A" else (shape[0], outputs)
        if width != wanted:
            side = "input" if kind == "A" else "output"
            return (f"made for another base model: {name} has {side} width {width}; this "
                    f"model's {module} has {wanted}")
    return None


MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
# vLLM shards these by their output (column-parallel); o_proj and down_proj by their input.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def linear_layer_shapes(facts: ModelFacts) -> dict[str, tuple[int, int]]:
    """(input, output) width of each linear layer of a decoder layer an adapter may wrap,
    unsharded (for a mixture of experts: the shared expert's MLP, if any)."""
    hidden = facts.hidden_size
    q_out = facts.num_attention_heads * facts.head_dim
    kv_out = facts.num_kv_heads * facts.head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out),
              "o_proj": (q_out, hidden)}
    inter = (facts.moe.shared_expert_intermediate_size if facts.moe is not None
             else facts.intermediate_size)
    if inter:
        shapes |= {"gate_proj": (hidden, inter), "up_proj": (hidden, inter),
                   "down_proj": (inter, hidden)}
    return shapes


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (checkpoint/parameters.py reads it)."""
    try:
        header = read_safetensors_header(path)
    except ModelFactsError as exc:
        raise ValueError(f"{path}: not a safetensors file ({exc})") from None
    return {name: tuple(entry["shape"]) for name, entry in header.items()}
