"""The plan describes the engine that runs: user engine flags reach the memory estimate, vLLM's
own defaults are the planner's, MXFP4 takes the path vLLM takes on each ISA, and a real engine
started with such flags reports the configuration the plan announced."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aim_runtime import pipeline
from aim_runtime.errors import NoFitError
from aim_runtime.planner.memory import vllm_batch_defaults
from testkit import MODELS


def plan_for(model: str, simulate: str, **overrides):
    request = pipeline.PlanRequest(model=MODELS / model, simulate=simulate,
                                   cli_overrides=overrides)
    return pipeline.run(request).plan


# --- MXFP4, as vLLM runs it --------------------------------------------------------------------


@pytest.mark.parametrize(("model", "published"), [("gpt-oss-120b", 116.83e9),
                                                  ("gpt-oss-20b", 20.91e9)])
def test_gpt_oss_parameter_count_matches_the_published_figure(model, published):
    plan = plan_for(model, "MI355X:1")
    assert abs(plan.model.parameters - published) / published < 0.001


def test_mxfp4_is_native_on_gfx950():
    plan = plan_for("gpt-oss-120b", "MI355X:1")
    assert plan.precision == "mxfp4"
    assert any("on gfx950, which has MX matrix cores" in note and "W4A16 by default" in note
               for note in plan.notes)


def test_mxfp4_runs_weight_only_on_gfx942_with_the_same_weight_memory():
    on_mi300x = plan_for("gpt-oss-120b", "MI300X:1")
    on_mi355x = plan_for("gpt-oss-120b", "MI355X:1")
    assert on_mi300x.precision == "mxfp4"
    assert any("weight-only on gfx942" in note and "W4A16" in note for note in on_mi300x.notes)
    assert (on_mi300x.memory.weight_bytes_per_device
            == on_mi355x.memory.weight_bytes_per_device)
    # MXFP4: 4.25 bits per expert weight; 117B parameters fit one 192 GiB device.
    assert on_mi300x.memory.weight_bytes_per_device < 70 * 1024**3


@pytest.mark.parametrize("simulate", ["MI250:8", "MI210:4"])
def test_mxfp4_runs_weight_only_on_mi200_through_vllms_triton_kernels(simulate):
    plan = plan_for("gpt-oss-20b", simulate)
    assert plan.precision == "mxfp4"
    assert any("weight-only on gfx90a" in note for note in plan.notes)


def test_mxfp4_is_refused_on_the_cpu_backend(tmp_path):
    request = pipeline.PlanRequest(model=MODELS / "gpt-oss-20b", proc_root=tmp_path,
                                   sys_root=tmp_path, dev_root=tmp_path)
    with pytest.raises(NoFitError, match="mxfp4 weights are not supported by vLLM's CPU"):
        pipeline.run(request)


# --- engine flags reach the estimate ------------------------------------------------------------


def test_batch_flags_change_the_memory_estimate_and_the_engine_args():
    default = plan_for("llama-3.1-8b-instruct", "MI300X:1")
    small = plan_for("llama-3.1-8b-instruct", "MI300X:1", max_num_batched_tokens=2048,
                     max_num_seqs=64)
    assert (small.engine_args["max_num_batched_tokens"],
            small.engine_args["max_num_seqs"]) == (2048, 64)
    # Without flags, the curated recipe's (recipes/llama-3.1-8b-instruct/mi300x.yaml).
    assert default.recipe_source == "curated"
    assert (default.engine_args["max_num_batched_tokens"],
            default.engine_args["max_num_seqs"]) == (8192, 256)
    # Smaller steps: less activation and logits memory, so more KV cache.
    assert (small.memory.overhead_bytes_per_device
            < default.memory.overhead_bytes_per_device)
    assert small.memory.kv_capacity_tokens > default.memory.kv_capacity_tokens


def test_block_size_flag_rounds_the_kv_capacity_to_whole_blocks():
    plan = plan_for("llama-3.1-8b-instruct", "MI300X:1", block_size=64)
    assert plan.engine_args["block_size"] == 64
    assert plan.memory.block_size == 64
    assert plan.memory.kv_capacity_tokens % 64 == 0


def test_memory_utilization_flag_reaches_the_estimate():
    plan = plan_for("llama-3.1-8b-instruct", "MI300X:1", gpu_memory_utilization=0.5)
    assert plan.engine_args["gpu_memory_utilization"] == 0.5
    assert plan.memory.usable_bytes == int(192 * 1024**3 * 0.5)


def test_cpu_batch_defaults_are_vllms_own():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    tokens, seqs = EngineArgs.get_batch_defaults(world_size=1)
    ours = vllm_batch_defaults(0, on_gpu=False)
    server = UsageContext.OPENAI_API_SERVER
    assert (ours.max_num_batched_tokens, ours.max_num_seqs) == (tokens[server], seqs[server])


# --- a real engine reports what the plan announced ----------------------------------------------


def metric_samples(text: str, name: str) -> list:
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


@pytest.mark.serving
def test_the_engine_runs_the_configuration_the_plan_describes(bounded):
    """The bounded server's flags (tests/conftest.py) in the plan and in the engine alike. No
    --block-size: the plan's default block (the CPU platform's) must be the engine's."""
    text = httpx.get(bounded.url + "/metrics", timeout=10).text
    (plan,) = metric_samples(text, "aim_plan_info")
    (engine,) = metric_samples(text, "aim_engine_config_info")
    expected = {"max_num_seqs": "8", "max_num_batched_tokens": "512", "max_model_len": "128"}
    for name, value in expected.items():
        assert plan.labels[name] == value, name
        assert engine.labels[name] == value, name
    for name in ("tp", "pp", "dp", "dtype", "kv_cache_dtype"):
        engine_name = {"tp": "tensor_parallel_size", "pp": "pipeline_parallel_size",
                       "dp": "data_parallel_size"}.get(name, name)
        assert plan.labels[name] == engine.labels[engine_name], name
    capacity = {s.labels["source"]: s.value
                for s in metric_samples(text, "aim_kv_cache_capacity_tokens")}
    assert plan.labels["block_size"] == engine.labels["block_size"]
    assert capacity["plan"] == capacity["engine"]


# --- model facts: one list of layer-count names ---------------------------------------------------


def test_sparse_moe_step_reads_the_layer_count_under_any_of_its_names(tmp_path):
    import json

    from aim_runtime.checkpoint.facts import load_model_facts

    config = {"architectures": ["SomeMoeForCausalLM"], "model_type": "some_moe",
              "n_layers": 8, "hidden_size": 256, "num_attention_heads": 4,
              "vocab_size": 1000, "intermediate_size": 512, "num_experts": 4,
              "experts_per_token": 2, "decoder_sparse_step": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    facts = load_model_facts(tmp_path)
    assert facts.num_layers == 8
    assert facts.moe is not None
    assert facts.moe.dense_layers == 4  # every second layer is dense
    assert facts.moe.experts_per_token == 2
