"""The recipe schema, the curated library, and errors that name file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import RecipeError
from aim_runtime.hardware import detect
from aim_runtime.planner.candidates import model_match_score
from aim_runtime.planner.catalog import load_catalog, load_recipe_file
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import make_plan
from aim_runtime.serving.vllm_adapter import check_recipe_args
from testkit import MODELS, RECIPES, write

FAMILIES = {"mi300x": "MI300X", "mi325x": "MI325X", "mi355x": "MI355X", "mi250": "MI250"}
# Models that cannot run on one MI250/MI250X node (too large, or FP8/MXFP4 weights gfx90a lacks).
NOT_ON_MI250 = {"llama-3.1-405b-instruct", "deepseek-v3", "deepseek-r1", "qwen3-235b-a22b",
                "llama-4-maverick-17b-128e-instruct", "gpt-oss-20b", "gpt-oss-120b"}


def test_curated_library_covers_models_and_gpu_families(catalog):
    curated_models = sorted(p.name for p in RECIPES.iterdir()
                            if p.is_dir() and any(p.glob("mi*.yaml")))
    fixture_models = {p.name for p in MODELS.iterdir()}
    assert set(curated_models) <= fixture_models  # every curated model has a real config here
    for model in curated_models:
        for family, product in FAMILIES.items():
            path = RECIPES / model / f"{family}.yaml"
            if family == "mi250" and model in NOT_ON_MI250:
                assert not path.exists()
                continue
            recipes = load_recipe_file(path)
            assert recipes and all(product in r.gpu_products for r in recipes)
    cpu = catalog.get("cpu-general")
    assert cpu is not None and cpu.gpu_products == ("CPU",)


def test_every_curated_recipe_fits_what_it_is_for(catalog):
    """Each recipe, pinned on its own GPU with exactly its tp x pp devices, plans and fits, on
    its model's fixture (recipes/<model>/ and tests/fixtures/models/<model>/ share the name)
    named by the recipe's first Hugging Face id."""
    checked = 0
    for recipe in catalog.recipes:
        if recipe.gpu_products == ("CPU",):
            continue
        facts = load_model_facts(MODELS / Path(recipe.file).parent.name,
                                 hf_id=(recipe.model.hf_ids or (None,))[0])
        assert model_match_score(recipe.model, facts) is not None, recipe.id
        devices = recipe.tensor_parallel_size * recipe.pipeline_parallel_size
        inventory = detect(simulate=f"{recipe.gpu_products[0]}:{devices}", environ={})
        overrides = collect_overrides({"recipe_id": recipe.id,
                                       "objective": recipe.objective or "latency"})
        plan = make_plan(inventory, facts, catalog, overrides)
        assert (plan.recipe_id, plan.recipe_source) == (recipe.id, "curated")
        assert plan.memory.full_length_sequences >= 1
        checked += 1
    assert checked >= 60


def test_curated_engine_args_parse_with_vllms_own_parser(catalog):
    problems = check_recipe_args(catalog.recipes)
    assert problems == []


def test_vllm_check_reports_unknown_and_invalid_args(tmp_path):
    recipes = load_recipe_file(write(tmp_path / "r.yaml", """
        model: {architectures: [LlamaForCausalLM]}
        gpu_products: [MI300X]
        recipes:
          - id: bad-args
            precision: bf16
            engine_args: {max-num-seqs: many, frobnicate: true}
    """))
    problems = check_recipe_args(recipes)
    assert any("engine_args.frobnicate: vLLM has no such argument" in p for p in problems)
    assert any("--max-num-seqs: invalid int value: 'many'" in p for p in problems)
    assert all(str(tmp_path / "r.yaml") in p for p in problems)


GOOD = """
    model: {architectures: [LlamaForCausalLM]}
    gpu_products: [MI300X]
    recipes:
      - id: good
        precision: bf16
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("precision: bf16", "precision: bf17"),
         "recipes[0].precision: Input should be"),
        (GOOD.replace("[MI300X]", "[MI999]"), "gpu_products: Value error, unknown GPU product"),
        (GOOD.replace("id: good", "id: Bad_ID"), "recipes[0].id: String should match pattern"),
        (GOOD + "        colour: blue\n", "recipes[0].colour: Extra inputs are not permitted"),
        (GOOD + "        tensor_parallel_size: 0\n",
         "recipes[0].tensor_parallel_size: Input should be greater than or equal to 1"),
        (GOOD + "        env: {VLLM_ROCM_USE_AITER: 1}\n",
         "recipes[0].env.VLLM_ROCM_USE_AITER: Input should be a valid string"),
        (GOOD + "        engine_args: {tensor-parallel-size: 2}\n",
         "recipes[0].engine_args.tensor-parallel-size: set the recipe field "
         "'tensor_parallel_size' instead"),
        (GOOD + "        env: {HIP_VISIBLE_DEVICES: '0'}\n",
         "recipes[0].env.HIP_VISIBLE_DEVICES: device visibility is set by the device plugin"),
        (GOOD.replace("model: {architectures: [LlamaForCausalLM]}",
                      "model: {shape: {layers: 32}}"), "model.shape: Value error, unknown shape"),
        (GOOD + "        kv_cache_memory_bytes: 1048576\n",
         "recipes[0].kv_cache_memory_bytes: value 1048576 is for CPU recipes"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_broken_recipe_errors_name_file_field_and_value(tmp_path, text, expected):
    path = write(tmp_path / "broken.yaml", text)
    with pytest.raises(RecipeError) as error:
        load_recipe_file(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_values_are_shown_in_errors(tmp_path):
    path = write(tmp_path / "v.yaml", GOOD.replace("precision: bf16", "precision: bf17"))
    with pytest.raises(RecipeError, match=r"\(value: 'bf17'\)"):
        load_recipe_file(path)


def test_catalog_reports_every_broken_file_and_duplicate_ids(tmp_path):
    write(tmp_path / "a.yaml", GOOD)
    write(tmp_path / "b.yaml", GOOD)
    write(tmp_path / "c.yaml", GOOD.replace("bf16", "nope"))
    with pytest.raises(RecipeError) as error:
        load_catalog([tmp_path])
    text = str(error.value)
    assert f"{tmp_path / 'b.yaml'}: recipe id 'good' is already defined in {tmp_path / 'a.yaml'}" \
        in text
    assert str(tmp_path / "c.yaml") in text
    with pytest.raises(RecipeError, match="does not exist"):
        load_catalog([tmp_path / "missing"])


def test_file_level_settings_are_inherited_and_overridden(tmp_path):
    path = write(tmp_path / "f.yaml", """
        model: {architectures: [LlamaForCausalLM]}
        gpu_products: [MI300X, MI325X]
        env: {A: "1", B: "1"}
        engine_args: {max-num-seqs: 128, --enable-prefix-caching: true}
        recipes:
          - id: one
            precision: bf16
            env: {B: "2"}
            engine_args: {max_num_seqs: 256}
    """)
    (recipe,) = load_recipe_file(path)
    assert recipe.env == {"A": "1", "B": "2"}
    assert recipe.engine_args == {"max_num_seqs": 256, "enable_prefix_caching": True}
    assert recipe.gpu_products == ("MI300X", "MI325X")
    assert recipe.file == str(path)


def test_model_match_uses_ids_then_shape_then_architecture():
    facts = load_model_facts(MODELS / "llama-3.1-8b-instruct", hf_id="meta-llama/Llama-3.1-8B")
    renamed = load_model_facts(MODELS / "llama-3.1-8b-instruct", hf_id="acme/llama-8b-finetune")
    from aim_runtime.planner.catalog import ModelMatch

    by_id = ModelMatch(hf_ids=("meta-llama/llama-3.1-8b",), architectures=("LlamaForCausalLM",))
    by_shape = ModelMatch(architectures=("LlamaForCausalLM",),
                          shape={"num_layers": 32, "hidden_size": 4096})
    wrong_shape = ModelMatch(architectures=("LlamaForCausalLM",), shape={"num_layers": 80})
    assert model_match_score(by_id, facts) == 3
    assert model_match_score(by_id, renamed) == 1
    assert model_match_score(by_shape, renamed) == 2
    assert model_match_score(wrong_shape, renamed) is None
    assert model_match_score(ModelMatch(architectures=("MistralForCausalLM",)), facts) is None
    assert model_match_score(ModelMatch(), facts) == 0


def test_the_embedded_models_serve_in_float32_on_every_cpu(catalog, tiny_model):
    """float32, which keeps vLLM's CPU attention off its AMX path and the answers off each ISA's
    bf16 rounding (docs/cpu-dev-stack.md, "One model, every CPU"): the recipes, and the tiny
    checkpoint as built (the default model's conversion: tests/test_default_model.py)."""
    import json

    for recipe_id in ("aim-tiny-random-cpu", "smollm2-135m-instruct-cpu"):
        recipe = catalog.get(recipe_id)
        assert recipe is not None and recipe.precision == "fp32", recipe_id
    tiny_config = json.loads((tiny_model / "config.json").read_text())
    assert tiny_config.get("dtype", tiny_config.get("torch_dtype")) == "float32"
    assert load_model_facts(tiny_model).dtype == "float32"


def test_the_default_models_tool_calls_follow_the_schema_without_strict(catalog):
    recipe = catalog.get("smollm2-135m-instruct-cpu")
    assert recipe is not None and recipe.engine_args["tool_strict_level"] == "parameter"
