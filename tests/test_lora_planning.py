"""LoRA in the plan: the adapter slots vLLM reserves (max_loras x max_lora_rank over every wrapped
layer) come out of the KV cache, and a count or rank that cannot fit is refused with what would."""

from __future__ import annotations

import pytest

from aim_runtime import pipeline
from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import NoFitError
from aim_runtime.planner.memory import Layout, LoraShape, lora_bytes_per_device
from aim_runtime.settings import GIB
from testkit import MODELS, REPO

LLAMA_8B = MODELS / "llama-3.1-8b-instruct"


def plan(simulate: str, model=LLAMA_8B, **overrides):
    request = pipeline.PlanRequest(model=model, simulate=simulate, cli_overrides=overrides)
    return pipeline.run(request).plan


def test_adapter_slots_follow_the_wrapped_layers_of_llama():
    facts = load_model_facts(LLAMA_8B)
    # per layer, A's input + B's output of each slice: q 4096 + 4096, k and v 4096 + 1024 each,
    # o 4096 + 4096, gate and up 4096 + 14336 each, down 14336 + 4096 = 81,920; 32 layers; bf16
    one = lora_bytes_per_device(facts, LoraShape(1, 1), "bfloat16", Layout(tp=1))
    assert one == 81_920 * 32 * 2
    assert lora_bytes_per_device(facts, LoraShape(8, 64), "bfloat16", Layout(tp=1)) == one * 512
    sharded = lora_bytes_per_device(facts, LoraShape(1, 1), "bfloat16", Layout(tp=2))
    assert sharded < one  # the column- and row-parallel halves are sharded


def test_lora_slots_come_out_of_the_kv_cache():
    without = plan("MI300X:1")
    with_lora = plan("MI300X:1", enable_lora=True, max_loras=8, max_lora_rank=64)
    assert without.memory.lora_bytes_per_device == 0
    assert with_lora.memory.lora_bytes_per_device == pytest.approx(2.5 * GIB, rel=0.01)
    assert with_lora.memory.kv_budget_bytes_per_device == pytest.approx(
        without.memory.kv_budget_bytes_per_device - with_lora.memory.lora_bytes_per_device,
        rel=0.001)


def test_lora_follows_vllms_defaults_and_the_recipe_when_only_enabled():
    enabled = plan("MI300X:1", enable_lora=True)
    facts = load_model_facts(LLAMA_8B)
    assert enabled.memory.lora_bytes_per_device == lora_bytes_per_device(
        facts, LoraShape(1, 16), "bfloat16", Layout(tp=1))  # vLLM: 1 slot of rank 16
    assert plan("MI300X:1", max_loras=8).memory.lora_bytes_per_device == 0  # LoRA still off


def test_slots_that_cannot_fit_are_refused_with_what_would():
    with pytest.raises(NoFitError) as error:
        plan("MI300X:1", enable_lora=True, max_loras=128, max_lora_rank=512)
    assert "with 128 LoRA adapter slots of rank 512" in str(error.value)
    assert "LoRA adapter slot(s) of rank 512 on these 1 device(s) (--max-loras 32)" in \
        error.value.hint
    suggested = plan("MI300X:1", enable_lora=True, max_loras=32, max_lora_rank=512)
    assert suggested.memory.lora_bytes_per_device > 60 * GIB  # what the hint said fits does
    refused = [r.detail for r in error.value.reasons if r.outcome == "refused"]
    assert any("LoRA" in detail and "128 adapter slots of rank 512" in detail
               for detail in refused)  # each candidate says what the slots took


def test_recipe_lora_limits_are_planned(tmp_path, tiny_model):
    import yaml

    from aim_runtime.planner.catalog import load_catalog

    document = yaml.safe_load((REPO / "recipes" / "aim-tiny-random" / "cpu.yaml").read_text())
    document["recipes"][0]["engine_args"].update(enable_lora=True, max_loras=4, max_lora_rank=8)
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(document))
    catalog = load_catalog([tmp_path])
    planned = pipeline.run(pipeline.PlanRequest(model=tiny_model, environ={}), catalog=catalog)
    facts = load_model_facts(tiny_model)
    assert planned.plan.memory.lora_bytes_per_device == lora_bytes_per_device(
        facts, LoraShape(4, 8), "float32", Layout(tp=1))  # the tiny model's recipe: fp32
    assert planned.plan.engine_args["max_loras"] == 4  # and vLLM gets what was planned
