"""The Helm charts, checked with real Helm (tests/helm.py): the aim-runtime chart installs the
same serving runtimes as `kubectl apply -k serving_runtimes/`, from copies of those files that
must stay identical; every values file in its `ci/` lints strictly and renders objects that pass
the vendored KServe CRDs and KServe's admission rules; values.schema.json refuses what it must,
naming the field; the install enforces kubeVersion; the packaged chart renders as the folder."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import helm
import kserve_rules as rules
import kube_schema
from testkit import REPO

RUNTIME_CHART = REPO / "charts" / "aim-runtime"
CI_VALUES = sorted((RUNTIME_CHART / "ci").glob("*.yaml"))
HELM_LABELS = {"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "helm.sh/chart"}
STOCK_RUNTIMES = [yaml.safe_load(p.read_text()) for p in
                  sorted((kube_schema.FIXTURES / "runtimes").glob("*.yaml"))]


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def kustomized(directory: str) -> list[dict]:
    built = subprocess.run(["kubectl", "kustomize", str(REPO / directory)], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(built) if d]


def without_helm_labels(document: dict) -> dict:
    labels = {k: v for k, v in document["metadata"].get("labels", {}).items()
              if k not in HELM_LABELS}
    metadata = {**document["metadata"], "labels": labels}
    return {**document, "metadata": {k: v for k, v in metadata.items() if v != {}}}


def by_name(documents: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents}


# --- the copies ------------------------------------------------------------------------------


@pytest.mark.parametrize(("copies", "originals"), [("files/runtimes", "serving_runtimes"),
                                                   ("files/llm", "serving_runtimes/llm")])
def test_the_charts_files_are_copies_of_the_kustomize_files(copies, originals):
    copied = {p.name: p.read_text() for p in (RUNTIME_CHART / copies).glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (REPO / originals).glob("*.yaml")
               if p.name != "kustomization.yaml"}
    assert copied == shipped, "copy serving_runtimes/ into charts/aim-runtime/files/ again"


def test_the_charts_version_is_the_runtimes():
    chart = yaml.safe_load((RUNTIME_CHART / "Chart.yaml").read_text())
    project = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in project
    kustomization = yaml.safe_load((REPO / "serving_runtimes/kustomization.yaml").read_text())
    assert kustomization["images"][0]["newTag"] == chart["appVersion"]


# --- lint and render -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *[p.stem for p in
                                                                        CI_VALUES]])
def test_the_runtime_chart_lints_strictly(values):
    assert helm.lint(RUNTIME_CHART, values_of(values) if values else None) == []


def test_the_defaults_install_what_kubectl_apply_k_installs():
    rendered = by_name(helm.objects(helm.render(RUNTIME_CHART)))
    expected = by_name(kustomized("serving_runtimes"))
    assert rendered.keys() == expected.keys() == {"aim-runtime", "aim-runtime-multinode"}
    for name, document in rendered.items():
        assert without_helm_labels(document) == expected[name], name
        assert set(document["metadata"]["labels"]) >= HELM_LABELS
    assert "--model_name={{.Name}}" in rendered["aim-runtime"]["spec"]["containers"][0]["args"]


def test_the_llm_presets_install_what_kubectl_apply_k_installs():
    values = {"llmPresets": {"enabled": True}}
    rendered = {name: d for name, d in by_name(helm.objects(helm.render(RUNTIME_CHART, values)))
                .items() if d["kind"] == "LLMInferenceServiceConfig"}
    expected = by_name(kustomized("serving_runtimes/llm"))
    assert rendered.keys() == expected.keys() and len(rendered) == 3
    for name, document in rendered.items():
        assert without_helm_labels(document) == expected[name], name


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_ci_values_file_renders_objects_kserve_admits(values):
    documents = helm.objects(helm.render(RUNTIME_CHART, values_of(values)))
    assert documents
    runtimes = [d for d in documents if d["kind"] == "ClusterServingRuntime"]
    for document in documents:
        assert kube_schema.validate(document) == [], document["metadata"]["name"]
    for runtime in runtimes:
        assert rules.priority_conflicts(runtime, [*STOCK_RUNTIMES, *runtimes]) == []
        if runtime["spec"].get("workerSpec"):
            assert rules.multinode_runtime_problems(runtime) == []


def test_values_patch_image_priorities_and_environment():
    values = values_of(RUNTIME_CHART / "ci" / "everything.yaml")
    documents = helm.objects(helm.render(RUNTIME_CHART, values))
    images = {c["image"] for d in documents for c in containers_of(d)}
    assert images == {"registry.example.com/ml/aim-runtime-rocm:0.1.0"}
    single = by_name(documents)["aim-runtime"]
    formats = {f["name"]: f["priority"] for f in single["spec"]["supportedModelFormats"]}
    assert formats == {"aim": 1, "huggingface": 4}
    for container in containers_of(single) + containers_of(by_name(documents)[
            "aim-runtime-multinode"]):
        assert container["env"][-1] == {"name": "AIM_LOG_LEVEL", "value": "DEBUG"}
    presets = [d for d in documents if d["kind"] == "LLMInferenceServiceConfig"]
    assert {d["metadata"]["namespace"] for d in presets} == {"kserve"}
    only = by_name(helm.objects(helm.render(RUNTIME_CHART, values_of(
        RUNTIME_CHART / "ci" / "multinode-only.yaml"))))
    assert only.keys() == {"aim-runtime-multinode"}


def containers_of(document: dict) -> list[dict]:
    """Every container of a runtime or a preset, wherever the kind keeps them."""
    found: list[dict] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers" and isinstance(value, list):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document["spec"])
    return found


def test_notes_say_what_was_installed():
    notes = helm.render(RUNTIME_CHART)["aim-runtime/templates/NOTES.txt"]
    assert "ClusterServingRuntime aim-runtime" in notes and "aim-runtime-rocm:0.1.0" in notes


# --- what the chart refuses ------------------------------------------------------------------


@pytest.mark.parametrize(("values", "named"), [
    ({"imgae": {"repository": "x"}}, "additional properties 'imgae' not allowed"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"runtimes": {"aim-runtim": {"enabled": True}}}, "'aim-runtim' not allowed"),
    ({"runtimes": {"aim-runtime": {"enabled": "yes"}}}, "/runtimes/aim-runtime/enabled"),
    ({"runtimes": {"aim-runtime": {"priorities": {"aim": 0}}}},
     "/runtimes/aim-runtime/priorities/aim"),
    ({"runtimes": {"aim-runtime": {"priorities": {"onnx": 2}}}}, "'onnx' not allowed"),
    ({"extraEnv": [{"name": "A"}]}, "/extraEnv/0"),
    ({"extraEnv": [{"name": "A", "valueFrom": {}}]}, "'valueFrom' not allowed"),
    ({"llmPresets": {"namespace": "Not_A_Namespace"}}, "/llmPresets/namespace"),
], ids=["misspelt-key", "latest", "no-repository", "unknown-runtime", "not-a-boolean",
        "priority-0", "unknown-format", "env-without-value", "env-from-secret", "bad-namespace"])
def test_the_schema_refuses_bad_values_naming_the_field(values, named):
    error = helm.schema_error(RUNTIME_CHART, values)
    assert error is not None and named in error, error
    with pytest.raises(helm.HelmError, match="schema"):
        helm.render(RUNTIME_CHART, values)


def test_global_values_of_an_umbrella_chart_are_allowed():
    assert helm.schema_error(RUNTIME_CHART, {"global": {"imageRegistry": "x"}}) is None


def test_latest_is_refused_by_the_template_too(tmp_path):
    """Where the schema is skipped (`--skip-schema-validation`), the template's own `fail`."""
    copy = tmp_path / "aim-runtime"
    shutil.copytree(RUNTIME_CHART, copy)
    (copy / "values.schema.json").unlink()
    with pytest.raises(helm.HelmError, match="latest is refused"):
        helm.render(copy, {"image": {"tag": "latest"}})


# --- install and package ---------------------------------------------------------------------


def test_a_dry_run_install_enforces_kube_version(tmp_path):
    manifest = helm.dry_run_install(RUNTIME_CHART)
    assert "kind: ClusterServingRuntime" in manifest
    copy = tmp_path / "aim-runtime"
    shutil.copytree(RUNTIME_CHART, copy)
    chart = (copy / "Chart.yaml").read_text()
    (copy / "Chart.yaml").write_text(chart.replace('kubeVersion: ">=1.29.0-0"',
                                                   'kubeVersion: ">=99.0.0-0"'))
    with pytest.raises(helm.HelmError, match="kubeVersion"):
        helm.dry_run_install(copy)


def test_the_packaged_chart_renders_as_the_folder(tmp_path):
    archive = helm.package(RUNTIME_CHART, tmp_path)
    assert archive.name == "aim-runtime-0.1.0.tgz"
    values = values_of(RUNTIME_CHART / "ci" / "everything.yaml")
    assert helm.objects(helm.render(archive, values)) == \
        helm.objects(helm.render(RUNTIME_CHART, values))


def test_the_chart_readme_tables_the_schema():
    from aim_runtime.deploy.chart_docs import values_table, with_table

    readme = (RUNTIME_CHART / "README.md").read_text()
    assert with_table(readme, values_table(RUNTIME_CHART)) == readme, \
        "regenerate: python -m aim_runtime.deploy.chart_docs charts/aim-runtime"
    for flag in ("image.repository", "llmPresets.namespace", "extraEnv"):
        assert f"`{flag}`" in readme


def documented_installs() -> list[tuple[str, dict]]:
    """Every `helm install|upgrade ... charts/aim-runtime` in the docs, its --set values."""
    found = []
    for doc in [REPO / "README.md", *REPO.glob("charts/*/README.md"), *REPO.glob("docs/*.md")]:
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            words = line.split()
            if words[:2] not in (["helm", "install"], ["helm", "upgrade"]) or \
                    "charts/aim-runtime" not in words:
                continue
            values: dict = {}
            for word, value in itertools.pairwise(words):
                if word == "--set":
                    key, _, setting = value.partition("=")
                    node = values
                    *parents, leaf = key.split(".")
                    for parent in parents:
                        node = node.setdefault(parent, {})
                    node[leaf] = {"true": True, "false": False}.get(setting, setting)
            found.append((f"{doc.name}: {line.strip()}", values))
    return found


def test_every_documented_install_lints_and_renders():
    installs = documented_installs()
    assert len(installs) >= 2
    for where, values in installs:
        assert helm.lint(RUNTIME_CHART, values) == [], where
        assert helm.objects(helm.render(RUNTIME_CHART, values)), where
