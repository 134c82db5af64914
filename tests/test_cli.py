"""The `aim-runtime` command as users run it: `python -m aim_runtime ...` in a subprocess."""

from __future__ import annotations

import json
import os

from aim_runtime.hardware import Inventory
from aim_runtime.planner.plan import Plan
from testkit import MODELS, REPO, run_cli, write

from kfd_trees import MI300X, cards, write_tree


def test_plan_json_is_the_plan_object():
    result = run_cli("plan", "--model", str(MODELS / "llama-3.1-8b-instruct"),
                     "--simulate", "MI300X:8", "--objective", "throughput", "--json")
    assert result.returncode == 0, result.stderr
    plan = Plan.model_validate_json(result.stdout)
    assert plan.recipe_id == "llama-3.1-8b-mi300x-fp8-kvfp8-tp1-throughput"
    assert plan.data_parallel_size == 8


def test_plan_summary_and_explain():
    summary = run_cli("plan", "--model", str(MODELS / "qwen3-32b"), "--simulate", "MI355X:2")
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.startswith("recipe qwen3-32b-mi355x-bf16-tp2-latency (curated")
    explained = run_cli("plan", "--model", str(MODELS / "qwen3-32b"), "--simulate", "MI355X:2",
                        "--explain")
    assert "candidates, in the order tried:" in explained.stdout
    assert "--reasoning-parser qwen3" in explained.stdout


def test_no_fit_exits_3_with_what_would_fit_and_the_candidates():
    result = run_cli("plan", "--model", str(MODELS / "llama-3.1-405b-instruct"),
                     "--simulate", "MI300X:2", "--explain")
    assert result.returncode == 3
    assert result.stderr.startswith("error: LlamaForCausalLM")
    assert "hint: what would fit: 8x MI300X at bf16; 4x MI300X at fp8" in result.stderr
    assert "refused derived: tp=2 pp=1 dp=1, bf16 weights" in result.stderr


def test_override_errors_exit_2_and_name_the_setting():
    result = run_cli("plan", "--model", str(MODELS / "llama-3.1-8b-instruct"),
                     "--simulate", "MI300X:4", env={"AIM_TENSOR_PARALLEL_SIZE": "8"})
    assert result.returncode == 2
    assert "AIM_TENSOR_PARALLEL_SIZE=8: needs 8 devices but this pod has 4" in result.stderr
    missing = run_cli("plan", "--model", "/no/such/model")
    assert missing.returncode == 2 and "no config.json at /no/such/model" in missing.stderr


def test_detect_reads_the_given_sysfs_tree(tmp_path):
    sys_root, dev_root = write_tree(tmp_path, cards(MI300X, 8), visible=[0, 1, 2, 3])
    # The amdsmi library comes before sysfs; shadow it so that a ROCm host's real GPUs cannot
    # answer instead of the tree (importing it fails, as it does outside ROCm images).
    shadow = write(tmp_path / "shadow" / "amdsmi.py", "raise ImportError('no amdsmi here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO / "runtime")])}
    result = run_cli("detect", "--json", "--sys-root", str(sys_root), "--dev-root", str(dev_root),
                     env=env)
    assert result.returncode == 0, result.stderr
    inventory = Inventory.model_validate_json(result.stdout)
    assert (inventory.source, inventory.product, inventory.device_count) == ("sysfs", "MI300X", 4)
    text = run_cli("detect", "--sys-root", str(sys_root), "--dev-root", str(dev_root),
                   env=env).stdout
    assert "gpu 3: MI300X gfx942 id 0x74a1" in text


def test_detect_with_env_override_and_simulate():
    result = run_cli("detect", "--json", env={"AIM_GPU_PRODUCT": "MI325X", "AIM_GPU_COUNT": "8"})
    inventory = Inventory.model_validate_json(result.stdout)
    assert (inventory.source, inventory.product, inventory.device_count) == ("override",
                                                                            "MI325X", 8)
    bad = run_cli("detect", "--simulate", "MI300X:0")
    assert bad.returncode == 2 and "not a positive integer" in bad.stderr


def test_recipes_list_show_validate(tmp_path):
    listing = run_cli("recipes", "list")
    assert listing.returncode == 0
    assert "llama-3.1-70b-mi300x-bf16-tp8-latency" in listing.stdout
    assert listing.stdout.splitlines()[0].split() == ["ID", "GPU", "PRECISION", "KV", "TPxPP",
                                                      "OBJECTIVE", "MODEL"]
    shown = json.loads(run_cli("recipes", "show", "cpu-general").stdout)
    assert shown["gpu_products"] == ["CPU"]
    assert run_cli("recipes", "show", "nope").returncode == 2
    (tmp_path / "bad.yaml").write_text("model: {}\ngpu_products: [MI300X]\nrecipes: []\n")
    invalid = run_cli("recipes", "validate", str(tmp_path))
    assert invalid.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}: recipes:" in invalid.stderr


def test_recipes_dir_from_environment(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "model: {architectures: [LlamaForCausalLM]}\ngpu_products: [MI300X]\n"
        "recipes:\n  - {id: my-llama, precision: bf16}\n")
    result = run_cli("recipes", "list", "--json", env={"AIM_RECIPES_DIR": str(tmp_path)})
    assert [r["id"] for r in json.loads(result.stdout)] == ["my-llama"]


def test_version():
    assert run_cli("--version").stdout.startswith("aim-runtime ")


def test_the_model_directory_flag_has_one_name_everywhere_and_model_stays_an_alias():
    """`--model-dir` (as `serve` spells it; `--model_dir` too), `--model` kept for plan/render."""
    model = str(MODELS / "qwen3-32b")
    plans = [run_cli("plan", flag, model, "--simulate", "MI355X:2", "--json")
             for flag in ("--model-dir", "--model_dir", "--model")]
    assert [p.returncode for p in plans] == [0, 0, 0]
    assert plans[0].stdout == plans[1].stdout == plans[2].stdout
    rendered = [run_cli("render", flag, model, "--gpu", "MI355X", "--name", "q",
                        "--storage-uri", "pvc://models/qwen3-32b")
                for flag in ("--model-dir", "--model")]
    assert rendered[0].returncode == 0 and rendered[0].stdout == rendered[1].stdout
