"""Secure defaults: remote code off unless recipe and operator both allow it, identifiers that
cannot escape their directories, safe YAML, no shell, constant-time key checks, locked-down
manifests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import OverrideError, RecipeError
from aim_runtime.hardware import detect
from aim_runtime.planner.catalog import Catalog, load_catalog, load_recipe_file
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import make_plan

REPO = Path(__file__).parent.parent
PACKAGE = REPO / "runtime" / "aim_runtime"
MODEL = REPO / "tests" / "fixtures" / "models" / "deepseek-v3"  # ships custom code (auto_map)


def catalog_allowing_remote_code(tmp_path: Path) -> Catalog:
    (tmp_path / "r.yaml").write_text(
        "model: {architectures: [DeepseekV3ForCausalLM]}\ngpu_products: [MI300X]\n"
        "recipes:\n  - {id: trusting, precision: fp8, tensor_parallel_size: 8,"
        " trust_remote_code: true}\n")
    return load_catalog([tmp_path])


@pytest.mark.parametrize(("recipe_allows", "operator_allows", "expected"), [
    (False, False, False), (False, True, False), (True, False, False), (True, True, True)])
def test_remote_code_runs_only_when_recipe_and_operator_allow_it(
        tmp_path, recipe_allows, operator_allows, expected):
    catalog = catalog_allowing_remote_code(tmp_path) if recipe_allows else \
        Catalog(recipes=(), directories=())
    env = {"AIM_TRUST_REMOTE_CODE": "true"} if operator_allows else {}
    plan = make_plan(detect(simulate="MI300X:8", environ={}), load_model_facts(MODEL), catalog,
                     collect_overrides({}, env))
    assert plan.engine_args["trust_remote_code"] is expected


@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "a/b", ".hidden", ""])
def test_recipe_ids_from_outside_cannot_name_paths(value):
    if not value:
        assert collect_overrides({}, {"AIM_RECIPE_ID": value}).recipe_id is None
        return
    with pytest.raises(OverrideError, match="expected a recipe id"):
        collect_overrides({}, {"AIM_RECIPE_ID": value})


def test_recipe_ids_in_files_are_plain_names(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "model: {}\ngpu_products: [CPU]\nrecipes:\n  - {id: ../escape, precision: bf16}\n")
    with pytest.raises(RecipeError, match=r"recipes\[0\]\.id: String should match pattern"):
        load_recipe_file(tmp_path / "r.yaml")


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe_file(tmp_path / "evil.yaml")


def calls_in_package() -> list[tuple[Path, str, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                found.append((path, ast.unparse(node.func), node))
    return found


def test_no_unsafe_yaml_no_shell_no_eval_in_the_runtime():
    """Only the multi-node module runs a program, and only the `ray` CLI, without a shell."""
    ray_calls = 0
    for path, name, call in calls_in_package():
        if name == "yaml.load":  # only with a safe loader
            assert ast.unparse(call.keywords[0].value) == "SAFE_LOADER", path
            continue
        assert name not in ("yaml.unsafe_load", "eval", "exec", "os.system", "os.popen",
                            "subprocess.call", "subprocess.check_output"), (path, name)
        assert not any(k.arg == "shell" for k in call.keywords), (path, name)
        if name in ("subprocess.run", "subprocess.Popen"):
            assert path.name == "cluster.py", (path, name)
            assert ast.unparse(call.args[0]).startswith("ray_command("), ast.unparse(call)
            ray_calls += 1
    assert ray_calls >= 3
    imports = {(path.name, alias.name) for path in PACKAGE.rglob("*.py")
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Import | ast.ImportFrom)
               for alias in node.names}
    assert {path for path, name in imports if name == "subprocess"} == {"cluster.py"}
    assert not any(name == "pickle" for _, name in imports)


def test_api_keys_are_compared_in_constant_time():
    names = {name for path, name, _ in calls_in_package() if path.name == "gate.py"}
    assert "hmac.compare_digest" in names


def test_network_policy_admits_only_gateways_and_prometheus():
    policy = yaml.safe_load((REPO / "manifests" / "networkpolicy.yaml").read_text())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in sources}
    assert namespaces == {"istio-system", "envoy-gateway-system", "knative-serving",
                          "monitoring"}
    runtime = yaml.safe_load((REPO / "serving_runtimes" / "aim-runtime.yaml").read_text())
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        runtime["spec"]["labels"].items()


def test_multinode_policy_opens_all_ports_only_between_the_pods_of_one_service():
    policy = yaml.safe_load((REPO / "manifests" / "multinode" / "networkpolicy.yaml").read_text())
    isvc = yaml.safe_load(
        (REPO / "manifests" / "multinode" / "inferenceservice-405b-2x8.yaml").read_text())
    own = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert policy["spec"]["podSelector"]["matchLabels"] == own
    for rule in policy["spec"]["ingress"]:
        peers = rule["from"]
        if "ports" not in rule:  # every port: only from the same InferenceService's pods
            assert peers == [{"podSelector": {"matchLabels": own}}]
        else:
            assert [p["port"] for p in rule["ports"]] == [8080]
            assert all("namespaceSelector" in peer for peer in peers)


def test_every_pod_in_the_manifests_runs_as_non_root():
    for path in (REPO / "manifests").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") not in ("InferenceService", "Job"):
                continue
            spec = document["spec"]
            pods = [spec["template"]["spec"]] if document["kind"] == "Job" else \
                [spec["predictor"]] + [c["predictor"] for c in spec.get("canary", [])]
            if "workerSpec" in spec.get("predictor", {}):
                pods.append(spec["predictor"]["workerSpec"])
            for pod in pods:
                assert pod["securityContext"]["runAsNonRoot"] is True, path
