"""The planner: a matrix over real model configs x GPUs x device counts, checked against the memory
math as docs/planning.md states it (written out again here, independently of
memory.py), plus fallbacks, pinned overrides and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import NoFitError, OverrideError
from aim_runtime.hardware import detect
from aim_runtime.planner.catalog import Catalog
from aim_runtime.planner.explain import explain_plan
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import Plan, make_plan
from testkit import MODELS

GIB = 1024**3
VRAM_GIB = {"MI210": 64, "MI250": 64, "MI300X": 192, "MI325X": 256, "MI355X": 288}
FP8_PRODUCTS = {"MI300X", "MI325X", "MI355X"}
# vLLM's MXFP4 kernels: MX cores on gfx950, weight-only Triton kernels on gfx942 and gfx90a.
MXFP4_PRODUCTS = {"MI210", "MI250", "MI300X", "MI325X", "MI355X"}
EMPTY = Catalog(recipes=(), directories=())


@pytest.fixture(scope="module")
def models():
    return {p.name: load_model_facts(p) for p in sorted(MODELS.iterdir())}


# --- the memory math, stated independently --------------------------------------------------


def oracle_weights_per_device(facts, precision, tp, pp):
    p = facts.parameters
    # MXFP4: 4-bit values plus one 8-bit scale per block of 32.
    bytes_per_linear = {"bf16": 2, "fp16": 2, "fp8": 1, "mxfp4": 4.25 / 8}[precision]
    embed, head = p.embedding * 2, p.lm_head * 2
    decoder = p.linear * bytes_per_linear + p.other * 2
    if pp == 1:
        return (embed + head + decoder) / tp
    return (decoder * math.ceil(facts.num_layers / pp) / facts.num_layers
            + max(embed, head or embed)) / tp


def oracle_kv_per_token(facts, kv_bytes, tp, pp):
    layers = math.ceil(facts.num_layers / pp)
    if facts.mla:
        return layers * (facts.mla.kv_lora_rank + facts.mla.qk_rope_head_dim) * kv_bytes
    return 2 * layers * max(1, facts.num_kv_heads // tp) * facts.head_dim * kv_bytes


def oracle_overhead(facts, tp, pp, vram, engine_args=None):
    """Runtime + one step of activations + sampler logits, with vLLM 0.28's batch defaults."""
    tokens, seqs = (16384, 1024) if vram >= 160 * GIB else (8192, 1024) if vram >= 70 * GIB \
        else (2048, 256)
    tokens = (engine_args or {}).get("max_num_batched_tokens", tokens)
    seqs = (engine_args or {}).get("max_num_seqs", seqs)
    mlp = (facts.moe.experts_per_token * facts.moe.expert_intermediate_size if facts.moe
           else facts.intermediate_size)
    activations = tokens * (4 * facts.hidden_size + 2 * mlp // tp) * 2
    logits = seqs * math.ceil(facts.vocab_size / tp) * 4
    return 2 * GIB + (GIB // 2 if tp * pp > 1 else 0) + activations + logits


def oracle_capacity(facts, vram, precision, kv_dtype, tp, pp, utilization=0.92,
                    engine_args=None):
    usable = int(vram * utilization)
    free = usable - oracle_weights_per_device(facts, precision, tp, pp) \
        - oracle_overhead(facts, tp, pp, vram, engine_args)
    kv_bytes = 1 if kv_dtype.startswith("fp8") else 2
    return max(free, 0) // oracle_kv_per_token(facts, kv_bytes, tp, pp)


def tp_valid(facts, tp):
    if facts.num_attention_heads % tp:
        return False
    kv = facts.num_kv_heads
    return bool(facts.mla) or kv % tp == 0 or tp % kv == 0


MATRIX = [(m, g, n, o) for m in sorted(p.name for p in MODELS.iterdir())
          for g in VRAM_GIB for n in (1, 2, 4, 8) for o in ("latency", "throughput")]


@pytest.mark.parametrize(("model", "product", "devices", "objective"), MATRIX,
                         ids=["-".join(map(str, case)) for case in MATRIX])
def test_matrix_against_the_memory_math(catalog, models, model, product, devices, objective):
    facts = models[model]
    inventory = detect(simulate=f"{product}:{devices}", environ={})
    vram = VRAM_GIB[product] * GIB
    overrides = collect_overrides({"objective": objective})
    try:
        plan = make_plan(inventory, facts, catalog, overrides)
    except NoFitError as error:
        check_nothing_fits(facts, product, devices, vram, error)
        return
    tp, pp, dp = plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size
    assert tp * pp * dp == devices  # all devices used by default
    assert tp_valid(facts, tp)
    assert plan.max_model_len <= facts.max_position_embeddings
    if plan.precision == "fp8" or plan.kv_cache_dtype.startswith("fp8"):
        assert product in FP8_PRODUCTS
    memory = plan.memory
    assert memory.usable_bytes == int(vram * plan.gpu_memory_utilization)
    expected_weights = oracle_weights_per_device(facts, plan.precision, tp, pp)
    assert memory.weight_bytes_per_device == pytest.approx(expected_weights, rel=0.01)
    kv_bytes = 1 if plan.kv_cache_dtype.startswith("fp8") else 2
    assert memory.kv_bytes_per_token == oracle_kv_per_token(facts, kv_bytes, tp, pp)
    assert memory.overhead_bytes_per_device == oracle_overhead(facts, tp, pp, vram,
                                                               plan.engine_args)
    capacity = oracle_capacity(facts, vram, plan.precision, plan.kv_cache_dtype, tp, pp,
                               plan.gpu_memory_utilization, plan.engine_args)
    assert memory.kv_capacity_tokens == pytest.approx(capacity, rel=0.01)
    assert capacity >= 4 * plan.max_model_len  # room for 4 full-length sequences
    if plan.recipe_source == "derived":
        check_no_preferred_layout_was_skipped(facts, vram, plan, objective)
    assert plan.reasons[-1].outcome == "taken"


def check_no_preferred_layout_was_skipped(facts, vram, plan, objective):
    """A derived plan takes the objective's favourite layout among those that fit."""
    devices = plan.devices_used
    preferred = [tp for tp in range(1, devices + 1)
                 if devices % tp == 0 and tp_valid(facts, tp)]
    chosen = plan.tensor_parallel_size
    if plan.pipeline_parallel_size > 1:
        return
    better = [tp for tp in preferred if (tp > chosen if objective == "latency" else tp < chosen)]
    for tp in better:
        capacity = oracle_capacity(facts, vram, plan.precision, plan.kv_cache_dtype, tp, 1)
        assert capacity < 4 * plan.max_model_len, f"tp={tp} would have fit"


def check_nothing_fits(facts, product, devices, vram, error):
    """Every precision, KV dtype and split the planner may use leaves too little room even for
    the shortest context it tries."""
    assert error.reasons or "cannot run" in error.message
    if "cannot run" in error.message:  # a checkpoint format the GPU has no kernel for
        assert (facts.weight_precision == "fp8" and product not in FP8_PRODUCTS) or (
            facts.weight_precision == "mxfp4" and product not in MXFP4_PRODUCTS)
        return
    context = min(4096, facts.max_position_embeddings)
    precisions = ["bf16", "fp8"] if product in FP8_PRODUCTS else ["bf16"]
    kv_dtypes = ["auto", "fp8"] if product in FP8_PRODUCTS else ["auto"]
    splits = [(tp, devices // tp) for tp in range(1, devices + 1)
              if devices % tp == 0 and tp_valid(facts, tp)]
    for precision in precisions:
        for kv in kv_dtypes:
            for tp, pp in splits:
                assert oracle_capacity(facts, vram, precision, kv, tp, pp) < 4 * context
    assert "what would fit" in error.hint or "nothing" in error.hint


# --- behaviour in named scenarios --------------------------------------------------------------


def plan_for(models, model, simulate, catalog=EMPTY, **cli):
    return make_plan(detect(simulate=simulate, environ={}), models[model], catalog,
                     collect_overrides(cli, {}))


def test_70b_on_one_mi300x_falls_back_to_fp8_and_records_why(models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:1")
    assert (plan.precision, plan.quantization, plan.max_model_len) == ("fp8", "fp8", 65536)
    refused = [r for r in plan.reasons if r.outcome == "refused"]
    assert [r.candidate.split(", ")[1] for r in refused[:3]] == ["bf16 weights"] * 3
    assert all("needs 4" in r.detail for r in refused)
    assert plan.engine_args["quantization"] == "fp8"


def test_mi250_has_no_fp8_fallback(models):
    plan = plan_for(models, "llama-3.1-8b-instruct", "MI210:1")
    assert plan.precision == "bf16" and plan.kv_cache_dtype == "auto"
    assert plan.max_model_len == 65536  # context shortened instead


def test_latency_is_wide_and_throughput_is_narrow(models):
    latency = plan_for(models, "llama-3.1-70b-instruct", "MI300X:8", objective="latency")
    throughput = plan_for(models, "llama-3.1-70b-instruct", "MI300X:8", objective="throughput")
    assert (latency.tensor_parallel_size, latency.data_parallel_size) == (8, 1)
    assert (throughput.tensor_parallel_size, throughput.data_parallel_size) == (2, 4)


def test_pipeline_parallel_when_tensor_parallel_cannot_use_all_devices(models):
    plan = plan_for(models, "llama-3.1-405b-instruct", "MI300X:6")
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 3)
    assert plan.devices_used == 6


def test_does_not_fit_lists_what_would(models):
    with pytest.raises(NoFitError) as error:
        plan_for(models, "llama-3.1-405b-instruct", "MI300X:1")
    hint = error.value.hint
    assert "8x MI300X at bf16" in hint and "4x MI300X at fp8" in hint
    assert "does not fit 1x MI300X" in error.value.message
    with pytest.raises(NoFitError, match="2 nodes of 8x MI250"):
        plan_for(models, "llama-3.1-405b-instruct", "MI250:8")
    with pytest.raises(NoFitError, match=r"MI250 \(gfx90a\) has no FP8"):
        plan_for(models, "deepseek-v3", "MI250:8")


def test_curated_recipe_wins_over_derived(catalog, models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:8", catalog)
    assert (plan.recipe_id, plan.recipe_source) == ("llama-3.1-70b-mi300x-bf16-tp8-latency",
                                                    "curated")
    assert plan.env["VLLM_ROCM_USE_AITER"] == "1"
    assert plan.env["NCCL_MIN_NCHANNELS"] == "112"
    assert plan.engine_args["max_num_seqs"] == 256


def test_curated_recipe_found_by_shape_for_a_renamed_finetune(catalog, tmp_path):
    config = json.loads((MODELS / "llama-3.1-8b-instruct" / "config.json").read_text())
    config["_name_or_path"] = "acme/support-bot-v7"
    (tmp_path / "config.json").write_text(json.dumps(config))
    facts = load_model_facts(tmp_path)
    assert facts.hf_id == "acme/support-bot-v7"
    plan = make_plan(detect(simulate="MI325X:1", environ={}), facts, catalog)
    assert plan.recipe_id == "llama-3.1-8b-mi325x-bf16-tp1-latency"
    config["num_hidden_layers"] = 30  # a different shape: no curated recipe applies
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = make_plan(detect(simulate="MI325X:1", environ={}), load_model_facts(tmp_path),
                     catalog)
    assert plan.recipe_source == "derived"


def test_curated_recipes_for_other_gpus_are_refused_with_reason(catalog, models):
    plan = plan_for(models, "qwen3-32b", "MI308X:1", catalog)
    assert plan.recipe_source == "derived"
    assert any(r.candidate.startswith("curated qwen3-32b-mi300x") and "this is MI308X" in r.detail
               for r in plan.reasons)


def test_mla_with_aiter_gets_block_size_one(catalog, models):
    plan = plan_for(models, "deepseek-v3", "MI300X:8", catalog)
    assert plan.recipe_id == "deepseek-v3-mi300x-fp8-tp8"
    assert plan.engine_args["block_size"] == 1
    assert any("custom code" in note for note in plan.notes)
    assert plan.engine_args["trust_remote_code"] is False


def test_cpu_plan_uses_the_cpu_recipe(catalog, models):
    inventory = detect(simulate=None, environ={}, sys_root=Path("/nonexistent"),
                       amdsmi_module=None)
    plan = make_plan(inventory, models["mistral-7b-instruct-v0.3"], catalog)
    assert plan.recipe_id == "cpu-general" and plan.product == "CPU"
    assert plan.engine_args["kv_cache_memory_bytes"] == plan.memory.kv_budget_bytes_per_device
    assert plan.memory.kv_capacity_tokens >= 4 * plan.max_model_len
    assert plan.engine_args["enforce_eager"] is True
    assert "gpu_memory_utilization" not in plan.engine_args


def cpu_inventory(cores: int, ram_gib: int):
    """This machine's CPU inventory with a fixed number of cores and amount of memory."""
    inventory = detect(simulate=None, environ={}, sys_root=Path("/nonexistent"),
                       amdsmi_module=None)
    host = inventory.host.model_copy(update={"cpu_cores": cores, "ram_bytes": ram_gib << 30,
                                             "memory_limit_bytes": None})
    return inventory.model_copy(update={"host": host})


def test_data_parallelism_on_cpus_is_an_engine_per_rank_with_its_share_of_memory(catalog,
                                                                                  models):
    inventory, facts = cpu_inventory(cores=4, ram_gib=128), models["mistral-7b-instruct-v0.3"]
    one = make_plan(inventory, facts, catalog)
    two = make_plan(inventory, facts, catalog, collect_overrides({"data_parallel_size": 2}, {}))
    assert (one.data_parallel_size, two.data_parallel_size) == (1, 2)
    assert (two.tensor_parallel_size, two.pipeline_parallel_size, two.recipe_id) == (
        1, 1, "cpu-general")
    assert two.memory.device_memory_bytes == one.memory.device_memory_bytes // 2 == 64 << 30
    with pytest.raises(OverrideError) as error:
        make_plan(inventory, facts, catalog, collect_overrides({"data_parallel_size": 5}, {}))
    assert str(error.value) == ("--data-parallel-size 5: 5 CPU engines would share 4 cores"
                                "\n  hint: use at most 4")
    with pytest.raises(OverrideError, match="needs 2 devices but this pod has 1"):
        make_plan(inventory, facts, catalog, collect_overrides({"tensor_parallel_size": 2}, {}))


def test_cpu_engines_that_do_not_fit_their_share_are_told_to_use_fewer(catalog, models):
    """Mistral 7B (14 GiB of bf16 weights) fits one engine on a 32 GiB host, not two."""
    inventory, facts = cpu_inventory(cores=4, ram_gib=32), models["mistral-7b-instruct-v0.3"]
    assert make_plan(inventory, facts, catalog).data_parallel_size == 1
    with pytest.raises(NoFitError) as error:
        make_plan(inventory, facts, catalog, collect_overrides({"data_parallel_size": 2}, {}))
    assert "(16 GiB usable memory for each of 2 data-parallel engines)" in str(error.value)
    assert "fewer data-parallel engines (--data-parallel-size)" in error.value.hint
    assert "tensor" not in error.value.hint and "--min-concurrency" not in error.value.hint


# --- overrides -----------------------------------------------------------------------------------


def test_pinned_settings_are_honoured(models):
    plan = plan_for(models, "llama-3.1-8b-instruct", "MI300X:8", tensor_parallel_size=2,
                    max_model_len=8192, kv_cache_dtype="fp8", gpu_memory_utilization=0.8)
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (2, 4)
    assert (plan.max_model_len, plan.kv_cache_dtype) == (8192, "fp8")
    assert plan.gpu_memory_utilization == 0.8


def test_cli_beats_environment_which_beats_recipe(catalog, models):
    inventory = detect(simulate="MI300X:8", environ={})
    env = {"AIM_TENSOR_PARALLEL_SIZE": "4", "AIM_OBJECTIVE": "throughput"}
    from_env = make_plan(inventory, models["llama-3.1-70b-instruct"], catalog,
                         collect_overrides({}, env))
    assert from_env.tensor_parallel_size == 4 and from_env.objective == "throughput"
    from_cli = make_plan(inventory, models["llama-3.1-70b-instruct"], catalog,
                         collect_overrides({"tensor_parallel_size": 8}, env))
    assert from_cli.tensor_parallel_size == 8


@pytest.mark.parametrize(
    ("simulate", "cli", "env", "message"),
    [
        ("MI300X:4", {"tensor_parallel_size": 8}, {},
         "--tensor-parallel-size 8: needs 8 devices but this pod has 4"),
        ("MI300X:8", {}, {"AIM_TENSOR_PARALLEL_SIZE": "3"},
         "AIM_TENSOR_PARALLEL_SIZE=3: 3 does not divide the 8 devices"),
        ("MI300X:6", {"tensor_parallel_size": 3}, {},
         "--tensor-parallel-size 3: tp=3 does not divide the 32 attention heads"),
        ("MI300X:1", {"max_model_len": 200000}, {},
         "--max-model-len 200000: longer than the model's 131072-token context"),
        ("MI250:1", {"precision": "fp8"}, {}, "--precision fp8: fp8 needs MI300 series or later"),
        ("MI250:1", {"kv_cache_dtype": "fp8"}, {}, "an FP8 KV cache needs FP8 support"),
        ("MI300X:1", {"recipe_id": "no-such-recipe"}, {}, "--recipe no-such-recipe: no such"),
        ("MI300X:1", {}, {"AIM_GPU_MEMORY_UTILIZATION": "1.5"},
         "AIM_GPU_MEMORY_UTILIZATION=1.5: expected a fraction"),
        ("MI300X:1", {}, {"AIM_OBJECTIVE": "cheapest"}, "expected one of latency, throughput"),
    ],
)
def test_impossible_overrides_are_errors(catalog, models, simulate, cli, env, message):
    with pytest.raises(OverrideError) as error:
        make_plan(detect(simulate=simulate, environ={}), models["llama-3.1-8b-instruct"],
                  catalog, collect_overrides(cli, env))
    assert message in str(error.value)


def test_pinned_recipe_that_does_not_fit_here_is_refused(catalog, models):
    with pytest.raises(NoFitError) as error:
        plan_for(models, "llama-3.1-70b-instruct", "MI300X:4", catalog,
                 recipe_id="llama-3.1-70b-mi300x-bf16-tp8-latency")
    assert "needs 8 devices per replica; this pod has 4" in error.value.reasons[0].detail


def test_pinned_recipe_is_used_even_against_the_objective(catalog, models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:8", catalog,
                    recipe_id="llama-3.1-70b-mi300x-fp8-kvfp8-tp1-throughput",
                    objective="throughput")
    assert (plan.recipe_id, plan.data_parallel_size) == (
        "llama-3.1-70b-mi300x-fp8-kvfp8-tp1-throughput", 8)


def test_pinned_context_needs_only_one_sequence_and_says_so(models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:1", precision="bf16",
                    max_model_len=65536)
    assert plan.precision == "bf16" and plan.max_model_len == 65536
    assert any("full-length sequences fit" in note for note in plan.notes)


def test_trust_remote_code_needs_recipe_and_operator(models):
    plan = plan_for(models, "llama-3.1-8b-instruct", "MI300X:1", trust_remote_code=True)
    assert plan.engine_args["trust_remote_code"] is False
    assert any("recipe does not allow it" in note for note in plan.notes)


# --- output --------------------------------------------------------------------------------------


def test_json_is_exactly_the_plan_and_explain_lists_every_candidate(models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:1")
    data = json.loads(plan.model_dump_json())
    for field in ("recipe_id", "recipe_source", "tensor_parallel_size", "pipeline_parallel_size",
                  "data_parallel_size", "devices_used", "dtype", "quantization", "kv_cache_dtype",
                  "max_model_len", "gpu_memory_utilization", "memory", "engine_args", "env",
                  "reasons"):
        assert field in data
    assert Plan.model_validate(data) == plan
    text = explain_plan(plan)
    assert text.count("refused") == len(plan.reasons) - 1
    assert "TAKEN" in text and "--quantization fp8" in text


def test_pinned_context_applies_to_curated_recipes(catalog, models):
    plan = plan_for(models, "llama-3.1-70b-instruct", "MI300X:8", catalog, max_model_len=8192)
    assert plan.recipe_source == "curated" and plan.max_model_len == 8192


# --- several nodes (KServe workerSpec) -----------------------------------------------------------

RAY_COPIED = ("VLLM_", "NCCL_", "UCX_", "HF_", "HUGGING_FACE_", "FLASH_ATTENTION_", "LMCACHE_")
NODE_MATRIX = [(m, g, per_node, nodes, o)
               for m in ("llama-3.1-405b-instruct", "deepseek-v3", "llama-3.1-70b-instruct",
                         "qwen3-32b", "mixtral-8x7b-instruct-v0.1")
               for g in ("MI250", "MI300X", "MI355X")
               for per_node, nodes in ((8, 2), (4, 2), (8, 4))
               for o in ("latency", "throughput")]


@pytest.mark.parametrize(("model", "product", "per_node", "nodes", "objective"), NODE_MATRIX,
                         ids=["-".join(map(str, case)) for case in NODE_MATRIX])
def test_multi_node_matrix(catalog, models, model, product, per_node, nodes, objective):
    """Tensor parallelism inside a node, pipeline stages across nodes, one replica, the memory
    math of a pipeline stage, and the environment carried to the Ray workers."""
    facts = models[model]
    inventory = detect(simulate=f"{product}:{per_node}x{nodes}", environ={})
    assert (inventory.nodes, inventory.devices_per_node) == (nodes, per_node)
    vram = VRAM_GIB[product] * GIB
    try:
        plan = make_plan(inventory, facts, catalog, collect_overrides({"objective": objective}))
    except NoFitError as error:
        check_nothing_fits_across_nodes(facts, product, per_node, nodes, vram, error)
        return
    tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
    assert (plan.nodes, plan.devices_per_node, plan.data_parallel_size) == (nodes, per_node, 1)
    assert per_node % tp == 0 and tp_valid(facts, tp)  # never across the network
    assert tp * pp == per_node * nodes == plan.devices_used
    assert plan.recipe_source == "derived"  # curated recipes are single-node
    assert plan.engine_args["distributed_executor_backend"] == "ray"
    assert plan.memory.weight_bytes_per_device == pytest.approx(
        oracle_weights_per_device(facts, plan.precision, tp, pp), rel=0.01)
    capacity = oracle_capacity(facts, vram, plan.precision, plan.kv_cache_dtype, tp, pp,
                               plan.gpu_memory_utilization, plan.engine_args)
    assert plan.memory.kv_capacity_tokens == pytest.approx(capacity, rel=0.01)
    wider = [t for t in range(tp + 1, per_node + 1) if per_node % t == 0 and tp_valid(facts, t)]
    for t in wider:  # the widest tensor parallelism that fits is taken
        assert oracle_capacity(facts, vram, plan.precision, plan.kv_cache_dtype, t,
                               per_node * nodes // t) < 4 * plan.max_model_len
    carried = set(plan.env.get("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "").split(",")) - {""}
    assert carried == {name for name in plan.env if not name.startswith(RAY_COPIED)}
    assert f"{nodes} nodes of {per_node}x {product}" in explain_plan(plan)


def check_nothing_fits_across_nodes(facts, product, per_node, nodes, vram, error):
    if "cannot run" in error.message:
        assert facts.weight_precision == "fp8" and product not in FP8_PRODUCTS
        return
    context = min(4096, facts.max_position_embeddings)
    precisions = ["bf16", "fp8"] if product in FP8_PRODUCTS else ["bf16"]
    for precision in precisions:
        for tp in (t for t in range(1, per_node + 1) if per_node % t == 0 and tp_valid(facts, t)):
            pp = per_node * nodes // tp
            if pp <= facts.num_layers:
                assert oracle_capacity(facts, vram, precision, "fp8" if precision == "fp8"
                                       else "auto", tp, pp) < 4 * context


def test_405b_outgrows_one_mi250_node_and_the_planner_says_how_many(catalog, models):
    with pytest.raises(NoFitError) as error:
        plan_for(models, "llama-3.1-405b-instruct", "MI250:8", catalog)
    assert "2 nodes of 8x MI250 (multi-node)" in error.value.hint
    plan = plan_for(models, "llama-3.1-405b-instruct", "MI250:8x2", catalog)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)


def test_a_second_mi300x_node_buys_kv_cache_for_405b_in_bf16(catalog, models):
    one = plan_for(models, "llama-3.1-405b-instruct", "MI300X:8", catalog, precision="bf16")
    two = plan_for(models, "llama-3.1-405b-instruct", "MI300X:8x2", catalog)
    assert (two.tensor_parallel_size, two.pipeline_parallel_size) == (8, 2)
    assert two.precision == "bf16" and two.max_model_len == 131072
    assert two.memory.kv_capacity_tokens > 3 * one.memory.kv_capacity_tokens
    refused = [r for r in two.reasons if r.candidate.startswith("curated llama-3.1-405b-mi300x")]
    assert refused and all("pipeline stages across nodes" in r.detail or "objective" in r.detail
                           for r in refused)


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"tensor_parallel_size": 16}, "tensor parallelism must stay inside a node of 8 GPUs"),
        ({"data_parallel_size": 2}, "data-parallel replicas across nodes are separate"),
    ],
)
def test_multi_node_overrides_that_cross_the_network_are_errors(catalog, models, cli, message):
    with pytest.raises(OverrideError, match=message):
        plan_for(models, "llama-3.1-405b-instruct", "MI300X:8x2", catalog, **cli)


def test_pinned_narrower_tensor_parallelism_adds_pipeline_stages(catalog, models):
    plan = plan_for(models, "llama-3.1-405b-instruct", "MI300X:8x2", catalog,
                    tensor_parallel_size=4)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 4)


def test_multi_node_needs_gpus(catalog, models):
    from aim_runtime.errors import PlanError

    inventory = detect(nodes=2, environ={}, sys_root=Path("/nonexistent"),
                       dev_root=Path("/nonexistent"), amdsmi_module=None)
    assert inventory.source == "cpu" and inventory.nodes == 2
    with pytest.raises(PlanError, match="multi-node serving needs GPUs"):
        make_plan(inventory, models["llama-3.1-8b-instruct"], catalog)


@pytest.mark.parametrize("spec", ["MI300X:8x0", "MI300X:x2", "MI300X:8x", "MI300X:8y2"])
def test_bad_node_counts_are_errors(spec):
    with pytest.raises(OverrideError, match="is not a positive integer"):
        detect(simulate=spec, environ={})
