"""The ROCm rule table (planner/rocm.py): what every derived plan gets per GPU family and model
kind, written out here independently of the table; curated recipes under the same rules; every
name a rule or recipe sets checked against the installed vLLM; the block budget (docs/planning.md's
copy of the table is checked with the other generated pages, tests/test_docs.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import NoFitError, RecipeError
from aim_runtime.hardware import detect
from aim_runtime.hardware.inventory import HostInfo, Inventory
from aim_runtime.planner import rocm
from aim_runtime.planner.catalog import Catalog, load_catalog, load_recipe_file
from aim_runtime.planner.explain import explain_plan
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import Plan, make_plan
from testkit import MODELS, write

EMPTY = Catalog(recipes=(), directories=())
FAMILIES = {"MI250": "gfx90a", "MI300X": "gfx942", "MI325X": "gfx942", "MI355X": "gfx950"}
MODEL_NAMES = sorted(p.name for p in MODELS.iterdir())
CASES = [(m, g, n, o) for m in MODEL_NAMES for g in FAMILIES for n in (1, 8)
         for o in ("latency", "throughput")]


def _fits(case: tuple[str, str, int, str]) -> bool:
    """Whether the planner finds a derived plan (those that do not fit are
    tests/test_planning.py's business); decided at collection, so no case is skipped."""
    model, product, devices, objective = case
    return plan_or_none(load_model_facts(MODELS / model), f"{product}:{devices}",
                        objective=objective) is not None


@pytest.fixture(scope="module")
def models():
    return {name: load_model_facts(MODELS / name) for name in MODEL_NAMES}


def plan_or_none(facts, simulate, catalog=EMPTY, **cli) -> Plan | None:
    try:
        return make_plan(detect(simulate=simulate, environ={}), facts, catalog,
                         collect_overrides(cli, {}))
    except NoFitError:
        return None


MATRIX = [case for case in CASES if _fits(case)]


@pytest.fixture(scope="module")
def derived_plans(models):
    """Every fixture model x GPU family x 1 and 8 GPUs x objective that fits, derived."""
    return {case: plan_or_none(models[case[0]], f"{case[1]}:{case[2]}", objective=case[3])
            for case in MATRIX}


# --- the rules, stated again: what each family and model kind must get -------------------------


def expected_attention(facts, isa: str) -> str | None:
    if isa == "gfx90a" or facts.mla is not None:
        return None  # no AITER on MI200; MLA: vLLM picks ROCM_AITER_MLA itself
    if facts.multimodal_prefix:
        return None  # vLLM 0.32: no AITER backend has it; vLLM picks one that does
    if facts.attention_sinks or facts.hybrid:
        return "ROCM_AITER_UNIFIED_ATTN"
    return "ROCM_AITER_FA" if facts.head_dim in (64, 128, 256) else "ROCM_AITER_UNIFIED_ATTN"


def expected_block_size(facts, isa: str) -> int | None:
    if facts.mla is not None and isa != "gfx90a":
        return 1  # AMD's guide for AITER MLA
    if expected_attention(facts, isa) == "ROCM_AITER_UNIFIED_ATTN":
        return 64  # vLLM's own block size for that backend, stated
    return None


def expected_moe_backend(facts, isa: str, precision: str) -> str | None:
    if facts.moe is None or isa == "gfx90a":
        return None
    if precision == "mxfp4":
        return "aiter" if isa == "gfx950" else None  # AITER's MXFP4 MoE is gfx950-only
    return "aiter" if precision in ("bf16", "fp16", "fp8") else None


@pytest.mark.parametrize(("model", "product", "devices", "objective"), MATRIX,
                         ids=["-".join(map(str, case)) for case in MATRIX])
def test_derived_plans_get_the_rules_of_their_family(models, derived_plans, model, product,
                                                     devices, objective):
    plan = derived_plans[(model, product, devices, objective)]
    assert plan is not None
    facts, isa = models[model], FAMILIES[product]
    env, args = plan.env, plan.engine_args
    per_replica = plan.tensor_parallel_size * plan.pipeline_parallel_size
    applied = {rule.id for rule in plan.rocm_rules}
    if isa == "gfx90a":
        assert env.get("VLLM_ROCM_USE_AITER") == "0"
        assert "TORCH_BLAS_PREFER_HIPBLASLT" not in env and "NCCL_MIN_NCHANNELS" not in env
    else:
        assert env["VLLM_ROCM_USE_AITER"] == "1" and env["TORCH_BLAS_PREFER_HIPBLASLT"] == "1"
        assert ("NCCL_MIN_NCHANNELS" in env) == (isa == "gfx942" and per_replica > 1)
        if "NCCL_MIN_NCHANNELS" in env:
            assert env["NCCL_MIN_NCHANNELS"] == "112"
    assert args.get("attention_backend") == expected_attention(facts, isa)
    assert args.get("moe_backend") == expected_moe_backend(facts, isa, plan.precision)
    if facts.attention_sinks and not facts.multimodal_prefix and isa != "gfx90a":  # gpt-oss
        assert env["VLLM_ROCM_USE_AITER_MHA"] == "0"
        assert env["VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION"] == "1"
    block_size = expected_block_size(facts, isa)
    if block_size is not None:
        assert args["block_size"] == block_size == plan.memory.block_size
    else:  # the estimate's size, stated: vLLM 0.34's own default moved to 64
        assert args["block_size"] == plan.memory.block_size == 16
    quick_reduce = isa != "gfx90a" and objective == "throughput" and \
        plan.tensor_parallel_size in (4, 8)
    assert (env.get("VLLM_ROCM_QUICK_REDUCE_QUANTIZATION") == "INT8") == quick_reduce
    fp8_note = isa == "gfx942" and plan.precision == "fp8"
    assert ("fp8-fnuz" in applied) == fp8_note
    assert ("fp8-ocp" in applied) == (isa == "gfx950" and plan.precision == "fp8")
    kv_fp8 = plan.kv_cache_dtype.startswith("fp8")
    assert ("fp8-fnuz-kv" in applied) == (isa == "gfx942" and kv_fp8)
    assert ("fp8-ocp-kv" in applied) == (isa == "gfx950" and kv_fp8)
    # max_num_seqs within the blocks the estimate leaves (one per running sequence)
    assert args["max_num_seqs"] <= plan.memory.kv_capacity_tokens // plan.memory.block_size
    # every applied rule is in the table, says what it set, and that is what the plan has
    for rule in plan.rocm_rules:
        assert rule.id in rocm.RULE_IDS and rule.source and rule.why
        for name, value in rule.sets.items():
            if name in rule.overridden:
                continue
            if name.startswith("--"):
                assert str(args[name[2:].replace("-", "_")]) == value, (rule.id, name)
            else:
                assert env[name] == value, (rule.id, name)
    text = explain_plan(plan)
    assert "ROCm rules applied" in text and all(rule.id in text for rule in plan.rocm_rules)


def test_the_matrix_covers_every_model_kind_on_every_family(models, derived_plans):
    """The fixtures span dense GQA, MLA, MoE, sliding window, hybrid Mamba, attention sinks,
    Gemma 3's image prefix and MXFP4, and each gets a plan on each family it can run on."""
    kinds = {kind for facts in models.values() for kind in rocm.model_kinds(facts)}
    assert kinds == set(rocm.MODEL_KINDS)
    for product in FAMILIES:
        planned = {rocm.model_kinds(models[m]) for (m, g, _, _), plan in derived_plans.items()
                   if g == product and plan is not None}
        covered = {kind for kinds_of_model in planned for kind in kinds_of_model}
        assert covered >= {"moe", "sliding_window", "hybrid", "multimodal_prefix"}, product
        if product != "MI250":  # FP8-only MLA checkpoints and MXFP4 do not run on gfx90a
            assert covered >= {"mla", "attention_sinks"}, product
    precisions = {plan.precision for plan in derived_plans.values() if plan is not None}
    assert precisions >= {"bf16", "fp8", "mxfp4"}


def test_cpu_plans_get_no_rocm_rules(catalog, models):
    from aim_runtime.hardware import detect as detect_

    inventory = detect_(simulate=None, environ={}, sys_root=Path("/nonexistent"),
                        amdsmi_module=None)
    plan = make_plan(inventory, models["mistral-7b-instruct-v0.3"], catalog)
    assert plan.rocm_rules == [] and plan.roofline is None
    assert not any(name.startswith(("VLLM_ROCM", "NCCL_", "TORCH_BLAS")) for name in plan.env)


# --- curated recipes: the same rules, unless they say otherwise -----------------------------------


def test_curated_recipes_use_the_same_rules(catalog, models):
    facts = load_model_facts(MODELS / "llama-3.3-70b-instruct",
                             hf_id="meta-llama/Llama-3.3-70B-Instruct")
    plan = make_plan(detect(simulate="MI300X:8", environ={}), facts, catalog)
    assert plan.recipe_id == "llama-3.3-70b-mi300x-bf16-tp8-latency"
    assert plan.engine_args["attention_backend"] == "ROCM_AITER_FA"
    assert plan.engine_args["max_num_seqs"] == 256  # the recipe's, within the budget
    assert plan.env["NCCL_MIN_NCHANNELS"] == "112"
    oss = make_plan(detect(simulate="MI355X:1", environ={}), models["gpt-oss-120b"], catalog)
    assert oss.recipe_id == "gpt-oss-120b-mi355x-mxfp4-tp1-latency"
    assert oss.engine_args["attention_backend"] == "ROCM_AITER_UNIFIED_ATTN"
    assert oss.engine_args["block_size"] == 64 == oss.memory.block_size
    assert oss.engine_args["moe_backend"] == "aiter"
    gemma = make_plan(detect(simulate="MI300X:1", environ={}), models["gemma-3-27b-it"],
                      catalog)
    assert gemma.recipe_id and gemma.recipe_id.startswith("gemma-3-27b-mi300x")
    assert "attention_backend" not in gemma.engine_args  # vLLM picks one with image prefix
    assert "attention-multimodal-prefix" in {r.id for r in gemma.rocm_rules}
    assert oss.engine_args["tool_call_parser"] == "openai"


RECIPE = """
    model: {architectures: [LlamaForCausalLM]}
    gpu_products: [MI300X]
    engine_args: {max_num_seqs: 64}
    recipes:
      - id: mine
        precision: bf16
        tensor_parallel_size: 8
"""


def test_a_recipe_wins_over_rules_and_may_skip_them(tmp_path, models):
    facts = models["llama-3.1-70b-instruct"]
    inventory = detect(simulate="MI300X:8", environ={})

    def plan_with(extra: str) -> Plan:
        write(tmp_path / "r" / "mine.yaml", RECIPE + extra)
        return make_plan(inventory, facts, load_catalog([tmp_path / "r"]))

    plain = plan_with("")
    assert plain.recipe_id == "mine" and plain.engine_args["attention_backend"] == "ROCM_AITER_FA"
    own = plan_with("        engine_args: {attention_backend: TRITON_ATTN}\n"
                    "        env: {NCCL_MIN_NCHANNELS: '64'}\n")
    assert own.engine_args["attention_backend"] == "TRITON_ATTN"
    assert own.env["NCCL_MIN_NCHANNELS"] == "64"
    rule = next(r for r in own.rocm_rules if r.id == "attention-aiter-fa")
    assert rule.overridden == {"--attention-backend": "TRITON_ATTN"}
    skipped = plan_with("        skip_rules: [attention-aiter-fa, rccl-channels]\n")
    assert "attention_backend" not in skipped.engine_args
    assert "NCCL_MIN_NCHANNELS" not in skipped.env
    assert {"attention-aiter-fa", "rccl-channels"}.isdisjoint(r.id for r in skipped.rocm_rules)
    no_aiter = plan_with("        env: {VLLM_ROCM_USE_AITER: '0'}\n")
    assert "attention_backend" not in no_aiter.engine_args  # AITER rules drop with AITER off
    assert no_aiter.env["VLLM_ROCM_USE_AITER"] == "0"


def test_unknown_rule_ids_are_recipe_errors(tmp_path):
    path = write(tmp_path / "r.yaml", RECIPE + "        skip_rules: [no-such-rule]\n")
    with pytest.raises(RecipeError, match=r"recipes\[0\]\.skip_rules: no ROCm rule "
                                          r"'no-such-rule'"):
        load_recipe_file(path)


# --- names against the installed vLLM -----------------------------------------------------------


def test_every_env_name_is_in_vllms_registry_or_another_librarys(catalog, derived_plans):
    import vllm.envs

    registry = set(vllm.envs.environment_variables)
    names = {name for rule in rocm.RULES for name in rule.env}
    names |= {name for recipe in catalog.recipes for name in recipe.env}
    names |= {name for plan in derived_plans.values() if plan for name in plan.env}
    names.discard("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY")  # multi-node only, checked below
    assert "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY" in registry
    for name in sorted(names):
        if name.startswith("VLLM_"):
            assert name in registry, f"{name} is not in the installed vLLM's vllm.envs"
        else:
            assert name in rocm.EXTERNAL_ENV, f"{name}: whose variable is it?"


def test_every_rule_and_plan_setting_parses_with_vllm(catalog, derived_plans):
    from aim_runtime.serving.vllm_adapter import check_settings, vllm_serve_parser

    parser = vllm_serve_parser()
    rule_args = {(k, repr(v)): v for rule in rocm.RULES for k, v in rule.engine_args.items()}
    plan_args = {(k, repr(v)): v for plan in derived_plans.values() if plan
                 for k, v in plan.engine_args.items()}
    names = {name for name, _ in {**rule_args, **plan_args}}
    assert {"attention_backend", "moe_backend", "block_size", "max_num_seqs"} <= names
    for (name, _), value in {**rule_args, **plan_args}.items():
        assert check_settings({}, {name: value}, parser) == [], (name, value)
    env = {name: "1" for rule in rocm.RULES for name in rule.env}
    assert check_settings(env, {}, parser) == []


def test_variables_older_guides_name_are_not_in_this_vllm_and_no_rule_sets_them():
    """vLLM 0.32-0.34 choose the attention backend with --attention-backend; AMD's guide still
    names two variables these releases no longer read, and --attention-config has no field in
    their place. If a vLLM upgrade brings them back, revisit."""
    from dataclasses import fields

    import vllm.envs
    from vllm.config.attention import AttentionConfig

    gone = {"VLLM_ATTENTION_BACKEND", "VLLM_V1_USE_PREFILL_DECODE_ATTENTION",
            "VLLM_ROCM_CUSTOM_PAGED_ATTN"}
    assert gone.isdisjoint(vllm.envs.environment_variables)
    assert gone.isdisjoint(name for rule in rocm.RULES for name in rule.env)
    assert "use_prefill_decode_attention" not in {f.name for f in fields(AttentionConfig)}


def test_attention_rules_agree_with_the_installed_vllms_backends():
    """What the attention rows assume of each backend, asked of the installed vLLM's classes:
    head sizes, block sizes, attention sinks, and multimodal prefix attention (which vLLM 0.32
    took from ROCM_ATTN and ROCM_AITER_UNIFIED_ATTN: a row that selected one of them for
    Gemma 3 would stop vLLM at start-up)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    def backend(name: str):
        return AttentionBackendEnum[name].get_class()

    fa, unified = backend("ROCM_AITER_FA"), backend("ROCM_AITER_UNIFIED_ATTN")
    assert tuple(fa.get_supported_head_sizes()) == rocm.AITER_FA_HEAD_DIMS
    assert all(fa.supports_block_size(b) for b in (16, 32, 48, 64, 1024))
    assert not fa.supports_block_size(rocm.AITER_FA_BLOCK_MULTIPLE // 2)
    assert unified.supports_head_size(rocm.AITER_UNIFIED_MIN_HEAD_DIM)
    assert not unified.supports_head_size(rocm.AITER_UNIFIED_MIN_HEAD_DIM - 1)
    assert unified.get_preferred_block_size(16) == rocm.AITER_UNIFIED_BLOCK_SIZE
    for rule in rocm.RULES:
        name = rule.engine_args.get("attention_backend")
        if name is None:
            continue
        cls = backend(name)
        if "attention_sinks" in rule.kinds:
            assert cls.supports_sink(), rule.id
        assert "multimodal_prefix" in rule.not_kinds or cls.supports_mm_prefix(), rule.id
        if "block_size" in rule.engine_args:
            assert rule.engine_args["block_size"] == cls.get_preferred_block_size(16), rule.id
    multimodal = [name for name in ("ROCM_ATTN", "ROCM_AITER_FA", "ROCM_AITER_UNIFIED_ATTN",
                                    "TRITON_ATTN") if backend(name).supports_mm_prefix()]
    assert multimodal, "no ROCm attention backend left with multimodal prefix attention"


def test_aiter_fa_takes_any_block_size_vllm_splits_into_its_kernels():
    given = rocm.RuleInput(isa="gfx942", kinds=frozenset(), precision="bf16", quantization=None,
                           kv_cache_dtype="auto", tensor_parallel_size=1, devices_per_replica=1,
                           objective="latency", head_dim=128,
                           recipe_env={"VLLM_ROCM_USE_AITER": "1"})

    def backend_with(block_size: int | None) -> str | None:
        return rocm.derive(replace(given, block_size=block_size)).engine_args.get(
            "attention_backend")

    assert [backend_with(b) for b in (None, 16, 32, 64, 128)] == ["ROCM_AITER_FA"] * 5
    assert backend_with(8) is None and backend_with(24) is None
    small = rocm.derive(replace(given, head_dim=16)).engine_args  # no ROCm AITER backend for it
    assert "attention_backend" not in small


def test_the_vllm_check_catches_names_vllm_lacks():
    from aim_runtime.serving.vllm_adapter import check_settings

    problems = check_settings({"VLLM_ROCM_USE_AITER_NOPE": "1", "SOMETHING": "1"},
                              {"attention_backend": "NOPE", "moe_backend": "nope"})
    assert any("VLLM_ROCM_USE_AITER_NOPE: not in the installed vLLM" in p for p in problems)
    assert any("env.SOMETHING" in p for p in problems)
    assert any("attention_backend" in p and "no such attention backend" in p for p in problems)
    assert any("moe_backend" in p for p in problems)


# --- the block budget ---------------------------------------------------------------------------


def test_hybrid_max_num_seqs_stays_within_the_mamba_block_budget(models):
    """Qwen3-Next (36 Gated DeltaNet + 12 attention layers) on one MI300X with little memory:
    vLLM's 1024 default would exceed the state blocks, so the plan lowers max_num_seqs, and the
    figure matches vLLM 0.32-0.34's layout worked out by hand."""
    facts = models["qwen3-next-80b-a3b-instruct"]
    plan = make_plan(detect(simulate="MI300X:1", environ={}), facts, EMPTY,
                     collect_overrides({"gpu_memory_utilization": 0.45}, {}))
    assert (plan.precision, plan.kv_cache_dtype) == ("fp8", "fp8")
    cap = plan.engine_args["max_num_seqs"]
    assert cap < 1024 and "block-budget" in {r.id for r in plan.rocm_rules}
    # state of one GDN layer: conv (2 x 16 x 128 + 32 x 128) x (4 - 1) + SSM 32 x 128 x 128
    state = ((2 * 16 * 128 + 32 * 128) * 3 + 32 * 128 * 128) * 2  # bf16 = 1,097,728 bytes
    attention_token = 2 * 2 * 256 * 1  # K and V, 2 KV heads x 256, FP8: per layer per token
    # ROCM_AITER_UNIFIED_ATTN starts from 64-token blocks, and vLLM grows the attention block
    # in steps of that until its page holds a layer's state (`_align_hybrid_block_size`)
    assert plan.engine_args["attention_backend"] == "ROCM_AITER_UNIFIED_ATTN"
    assert plan.engine_args["block_size"] == 64
    page = math.ceil(state / (64 * attention_token)) * 64 * attention_token
    assert page == 17 * 64 * 1024 == 1_114_112  # 1088 tokens per attention block
    group = 12  # layers per KV-cache group: the fewer kind, as 36 >= 1.5 x 12
    # the cap was judged on the estimate with vLLM's 1024 sequences of sampler logits
    logits = (1024 - cap) * 151936 * 4
    assert cap == (plan.memory.kv_budget_bytes_per_device - logits) // (page * group)
    assert any(f"lowered to {cap}" in note for note in plan.notes)


def test_a_pinned_max_num_seqs_beyond_the_budget_is_kept_with_a_warning(models):
    facts = models["qwen3-next-80b-a3b-instruct"]
    plan = make_plan(detect(simulate="MI300X:1", environ={}), facts, EMPTY,
                     collect_overrides({"gpu_memory_utilization": 0.45, "max_num_seqs": 1024},
                                       {}))
    assert plan.engine_args["max_num_seqs"] == 1024
    assert any("--max-num-seqs 1024 exceeds" in note for note in plan.notes)


def test_block_budget_rule_in_isolation():
    budget = rocm.BlockBudget(kv_blocks=5000, state_blocks=600)
    given = rocm.RuleInput(isa="gfx942", kinds=frozenset({"hybrid"}), precision="bf16",
                           quantization=None, kv_cache_dtype="auto", tensor_parallel_size=1,
                           devices_per_replica=1, objective="latency", head_dim=128,
                           max_num_seqs=1024, budget=budget,
                           recipe_engine_args={"max_num_seqs": 900})
    derived = rocm.derive(given)
    assert derived.engine_args["max_num_seqs"] == 600  # bounds the recipe's value too
    skipped = rocm.derive(replace(given, skip=frozenset({"block-budget"})))
    assert skipped.engine_args["max_num_seqs"] == 900


# --- host settings worth a warning ---------------------------------------------------------------


def test_numa_balancing_on_a_real_host_is_a_warning(models):
    simulated = detect(simulate="MI300X:1", environ={})
    host = HostInfo(cpu_cores=64, ram_bytes=2 * 1024**4, numa_balancing=True)
    real = Inventory(source="sysfs", devices=simulated.devices, host=host)
    plan = make_plan(real, models["llama-3.1-8b-instruct"], EMPTY)
    assert "host-numa-balancing" in {r.id for r in plan.rocm_rules}
    assert any("numa_balancing is on" in note for note in plan.notes)
    quiet = make_plan(Inventory(source="sysfs", devices=simulated.devices,
                                host=host.model_copy(update={"numa_balancing": False})),
                      models["llama-3.1-8b-instruct"], EMPTY)
    assert "host-numa-balancing" not in {r.id for r in quiet.rocm_rules}
    # a simulated inventory describes GPUs elsewhere: this machine's kernel says nothing
    sim = make_plan(simulated.model_copy(update={"host": host}), models["llama-3.1-8b-instruct"],
                    EMPTY)
    assert "host-numa-balancing" not in {r.id for r in sim.rocm_rules}


def test_host_reads_numa_balancing(tmp_path):
    from aim_runtime.hardware.host import read_host

    write(tmp_path / "proc" / "sys" / "kernel" / "numa_balancing", "1\n")
    assert read_host(tmp_path / "sys", tmp_path / "proc").numa_balancing is True
    write(tmp_path / "proc" / "sys" / "kernel" / "numa_balancing", "0\n")
    assert read_host(tmp_path / "sys", tmp_path / "proc").numa_balancing is False
    assert read_host(tmp_path / "sys", tmp_path / "nope").numa_balancing is None
