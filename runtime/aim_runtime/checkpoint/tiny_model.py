"""The embedded default model: a tiny Llama with random weights and a tokenizer trained here.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on Python's own standard-library
source, the weights are random with a fixed seed, so the same files come out every time. Its text
is gibberish by construction; it exists so `aim-runtime serve` works on a laptop or in CI with the
real engine and server. Built once into the cache directory and reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aim_runtime import settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "aim-tiny-random"
VOCAB_SIZE = 4096
HF_ID = "aim-runtime/aim-tiny-random"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
# ChatML; tools are listed in a system turn the way Hermes-style models (and vLLM's `hermes`
# tool parser) expect, so tool calling works end to end with this model.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{{ part['text'] }}{%- endif %}{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,  # vLLM's CPU attention needs head_dim >= 32
    "max_position_embeddings": 2048,
}
# float32, as its recipe serves it: the same kernels on every CPU (docs/cpu-dev-stack.md, "One
# model, every CPU").
DTYPE = "float32"


def default_cache_dir() -> Path:
    return settings.cache_root() / DEFAULT_MODEL_NAME


def ensure_default_model(target: Path | None = None) -> Path:
    """The default model's directory, building it first if it is not there yet."""
    target = target or default_cache_dir()
    if _is_current(target):
        return target
    if target.exists():
        log.info("rebuilding the embedded default model at %s (built by an older runtime)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build_model(staging)
        if target.exists() and not _is_current(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)  # atomic: concurrent builders leave one complete copy
        except OSError:
            if not _is_current(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the embedded default model at %s", target)
    return target


def _is_current(directory: Path) -> bool:
    """A complete build of this version of the model (its weights in DTYPE)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    built_dtype = config.get("dtype", config.get("torch_dtype"))
    return built_dtype == DTYPE and (directory / "model.safetensors").is_file()


def build_model(directory: Path, seed: int = 0) -> None:
    """Write tokenizer, config and random safetensors weights into `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
        torch_dtype=DTYPE,
        **ARCHITECTURE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, DTYPE))
    model.save_pretrained(directory, safe_serialization=True)
    config_path = directory / "config.json"
    saved = json.loads(config_path.read_text())
    saved["_name_or_path"] = HF_ID  # the id its curated CPU recipe matches
    config_path.write_text(json.dumps(saved, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": config.eos_token_id, "bos_token_id": config.bos_token_id}))
    (directory / "README.md").write_text(
        "Embedded default model of AIM Runtime: random weights, gibberish output.\n")


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


def _corpus() -> list[str]:
    """Text that exists on every Python install: the standard library's own source."""
    stdlib = Path(os.__file__).parent
    files = sorted(stdlib.glob("*.py"))[:60]
    return [f.read_text(errors="ignore") for f in files]
