"""The Helm charts, checked with real Helm (tests/helm.py): the aim-runtime chart installs the
same serving runtimes as `kubectl apply -k serving_runtimes/`, from copies of those files that
must stay identical; every values file in its `ci/` lints strictly and renders objects that pass
the vendored KServe CRDs and KServe's admission rules; values.schema.json refuses what it must,
naming the field; the install enforces kubeVersion; the packaged chart renders as the folder."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas

import helm
import kserve_rules as rules
import kube_schema
import test_kserve_admission as admission
import test_kubernetes as kubernetes_tests
import test_llm_inference_service as llm_tests
import test_render as render_tests
from aim_runtime.deploy.render import RenderRequest, render
from testkit import MODELS, REPO, clean_environ, run_cli

RUNTIME_CHART = REPO / "charts" / "aim-runtime"
MODEL_CHART = REPO / "charts" / "aim-model"
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
                                                   ("files/llm", "serving_runtimes/llm"),
                                                   ("files/monitoring", "monitoring")])
def test_the_charts_files_are_copies_of_the_kustomize_files(copies, originals):
    copied = {p.name: p.read_text() for p in (RUNTIME_CHART / copies).glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (REPO / originals).glob("*.yaml")
               if p.name not in ("kustomization.yaml", "aim-runtime.rules.yaml")}
    assert copied == shipped, "copy serving_runtimes/ into charts/aim-runtime/files/ again"


def test_the_charts_version_is_the_runtimes():
    chart = yaml.safe_load((RUNTIME_CHART / "Chart.yaml").read_text())
    project = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in project
    model_chart = yaml.safe_load((REPO / "charts" / "aim-model" / "Chart.yaml").read_text())
    assert (model_chart["version"], model_chart["appVersion"]) == (chart["version"],
                                                                  chart["appVersion"])
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
        if kube_schema.is_custom(document):
            assert kube_schema.validate(document) == [], document["metadata"]["name"]
        else:
            kubernetes_validate.validate(document, k8s_schemas.latest_version(), strict=True)
    for runtime in runtimes:
        assert rules.priority_conflicts(runtime, [*STOCK_RUNTIMES, *runtimes]) == []
        if runtime["spec"].get("workerSpec"):
            assert rules.multinode_runtime_problems(runtime) == []


def test_values_patch_image_priorities_and_environment():
    values = values_of(RUNTIME_CHART / "ci" / "everything.yaml")
    documents = helm.objects(helm.render(RUNTIME_CHART, values))
    images = {c["image"] for d in documents for c in containers_of(d)}
    assert images == {"registry.example.com/ml/aim-runtime-rocm:0.1.0"}
    runtimes = by_name([d for d in documents if d["kind"] == "ClusterServingRuntime"])
    single = runtimes["aim-runtime"]
    formats = {f["name"]: f["priority"] for f in single["spec"]["supportedModelFormats"]}
    assert formats == {"aim": 1, "huggingface": 4}
    for container in containers_of(single) + containers_of(runtimes["aim-runtime-multinode"]):
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

    walk(document.get("spec", {}))
    return found


def test_the_alert_rules_install_as_generated():
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}
    documents = helm.objects(helm.render(RUNTIME_CHART, values, namespace="monitoring"))
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    assert kube_schema.validate(rule) == []
    shipped = values_of(REPO / "monitoring" / "prometheusrule.yaml")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    del rule["metadata"]["labels"]["release"]
    shipped["metadata"]["namespace"] = "monitoring"
    assert without_helm_labels(rule) == shipped  # Prometheus's {{ $labels }} kept literal
    assert not [d for d in helm.objects(helm.render(RUNTIME_CHART)) if d["kind"] ==
                "PrometheusRule"]


def test_the_dashboard_installs_as_generated_where_grafana_looks():
    values = {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}
    documents = helm.objects(helm.render(RUNTIME_CHART, values))
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    shipped = values_of(REPO / "monitoring" / "grafana-dashboard-configmap.yaml")
    shipped["metadata"]["namespace"] = "grafana"
    assert without_helm_labels(config_map) == shipped
    assert not [d for d in helm.objects(helm.render(RUNTIME_CHART)) if d["kind"] == "ConfigMap"]


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


@pytest.mark.parametrize(("chart", "values", "kind"), [
    ("aim-runtime", None, "kind: ClusterServingRuntime"),
    ("aim-model", "ci/lora.yaml", "kind: InferenceService")])
def test_a_dry_run_install_enforces_kube_version(tmp_path, chart, values, kind):
    folder = REPO / "charts" / chart
    given = values_of(folder / values) if values else None
    manifest = helm.dry_run_install(folder, given)
    assert kind in manifest
    copy = tmp_path / chart
    shutil.copytree(folder, copy)
    text = (copy / "Chart.yaml").read_text()
    (copy / "Chart.yaml").write_text(text.replace('kubeVersion: ">=1.29.0-0"',
                                                  'kubeVersion: ">=99.0.0-0"'))
    with pytest.raises(helm.HelmError, match="kubeVersion"):
        helm.dry_run_install(copy, given)


@pytest.mark.parametrize(("chart", "values"), [("aim-runtime", "ci/everything.yaml"),
                                               ("aim-model", "ci/multinode-compile-cache.yaml")])
def test_the_packaged_chart_renders_as_the_folder(tmp_path, chart, values):
    folder = REPO / "charts" / chart
    archive = helm.package(folder, tmp_path)
    assert archive.name == f"{chart}-0.1.0.tgz"
    given = values_of(folder / values)
    assert helm.objects(helm.render(archive, given)) == helm.objects(helm.render(folder, given))


@pytest.mark.parametrize(("chart", "keys"), [
    ("aim-runtime", ("image.repository", "llmPresets.namespace", "extraEnv")),
    ("aim-model", ("storageUri", "plan.env", "canaryTrafficPercent"))])
def test_the_chart_readme_tables_the_schema(chart, keys):
    from aim_runtime.deploy.chart_docs import values_table, with_table

    readme = (REPO / "charts" / chart / "README.md").read_text()
    assert with_table(readme, values_table(REPO / "charts" / chart)) == readme, \
        f"regenerate: python -m aim_runtime.deploy.chart_docs charts/{chart}"
    for key in keys:
        assert f"`{key}`" in readme


INLINE_HELM_COMMAND = r"`(helm (?:install|upgrade) [^`]*)`"  # a command in a sentence


def documented_installs(chart: str) -> list[tuple[str, dict, list[str]]]:
    """Every `helm install|upgrade ... charts/<chart>` in the docs: where, its --set values and
    its -f files."""
    found = []
    for doc in [REPO / "README.md", *REPO.glob("charts/*/README.md"), *REPO.glob("docs/*.md")]:
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            commands = [line.split("#")[0], *re.findall(INLINE_HELM_COMMAND, line)]
            for command in commands:
                words = command.split()
                if words[:2] in (["helm", "install"], ["helm", "upgrade"]) and \
                        f"charts/{chart}" in words:
                    found.append((f"{doc.name}: {command.strip()}", *_values_and_files(words)))
    return found


def _values_and_files(words: list[str]) -> tuple[dict, list[str]]:
    """A helm command's --set values (nested) and its -f files."""
    values: dict = {}
    for word, value in itertools.pairwise(words):
        if word == "--set":
            key, _, setting = value.partition("=")
            node = values
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = {"true": True, "false": False, "null": None}.get(setting, setting)
    return values, [value for word, value in itertools.pairwise(words) if word == "-f"]


def test_every_documented_install_lints_and_renders():
    installs = documented_installs("aim-runtime")
    assert len(installs) >= 2
    for where, values, _ in installs:
        assert helm.lint(RUNTIME_CHART, values) == [], where
        assert helm.objects(helm.render(RUNTIME_CHART, values)), where


def documented_helm_values() -> dict[str, dict]:
    """Every `aim-runtime render ... --output helm-values > FILE` in the docs, run here (the
    model directory is the test fixture of the same name): FILE -> the values it wrote."""
    written = {}
    for doc in [REPO / "README.md", *REPO.glob("charts/*/README.md"), *REPO.glob("docs/*.md")]:
        text = doc.read_text().replace("\\\n", " ")
        for command, file in re.findall(r"aim-runtime render ([^\n>]*--output helm-values) > "
                                        r"(\S+)", text):
            words = command.split()
            at = words.index("--model-dir") + 1
            words[at] = str(MODELS / Path(words[at]).name.lower())
            result = run_cli("render", *words)
            assert result.returncode == 0, f"{doc.name}: {command}: {result.stderr}"
            written[file] = yaml.safe_load(result.stdout)
    return written


def test_every_documented_model_install_renders_from_the_documented_values():
    """Each `helm install|upgrade ... charts/aim-model -f FILE --set ...` in the docs, with the
    values the documented `render ... > FILE` writes: lints and renders."""
    installs = documented_installs("aim-model")
    written = documented_helm_values()
    assert len(installs) >= 3 and len(written) >= 2
    for where, values, files in installs:
        assert files and set(files) <= set(written), where
        given: dict = {}
        for file in files:
            given.update(written[file])
        for key, value in values.items():
            given[key] = {**given.get(key, {}), **value} if isinstance(value, dict) else value
        given = {k: v for k, v in given.items() if v is not None}  # --set key=null drops it
        assert helm.lint(MODEL_CHART, given) == [], where
        assert_admitted(helm.objects(helm.render(MODEL_CHART, given)), where)


# --- the aim-model chart: `render`'s objects from `render --output helm-values` --------------

MODEL_CI_VALUES = sorted((MODEL_CHART / "ci").glob("*.yaml"))
# The render options each ci/ values file was written with (a test keeps them current).
MODEL_CI_REQUESTS = {
    "gated-hf-model": dict(gpu="MI355X", service_account="hf-models", **admission.LLAMA_8B),
    "knative-canary": dict(gpu="MI300X", mode="knative", canary_of="chat", traffic=10,
                           objective="throughput", **admission.LLAMA_8B),
    "multinode-compile-cache": dict(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X",
                                    nodes=2, storage_uri="pvc://models/405b",
                                    compile_cache_pvc="aim-compile-cache"),
    "lora": dict(gpu="MI300X", storage_uri="pvc://models/llama", lora_pvc="models/adapters",
                 max_loras=4, **admission.LLAMA_8B),
    "llm": dict(gpu="MI300X", storage_uri="s3://m/8b", service_account="hf-models",
                model=MODELS / "llama-3.1-8b-instruct"),
    "everything": dict(gpu="MI300X", service_account="hf-models",
                       storage_uri="pvc://aim-models/meta-llama/Llama-3.1-8B-Instruct",
                       **admission.LLAMA_8B),
}
# The chart's own switches, beyond the plan: everything.yaml turns each on.
SWITCHES = ("serviceAccount", "modelCache", "networkPolicy", "serviceMonitor", "autoscaling",
            "image")


def every_render_case(tmp: Path) -> dict[str, RenderRequest]:
    """Every InferenceService render case the tests have that a release can own (a Standard-mode
    canary extends a service another release owns)."""
    cases = {f"admission:{name}": request for name, request in
             admission.render_requests(tmp / "stable.yaml").items()
             if name != "canary-standard"}
    cases["admission:stable"] = admission.STABLE_REQUEST
    for model, gpu, count, _ in render_tests.CASES:
        cases[f"render:{model}-{gpu}"] = RenderRequest(model=MODELS / model, gpu=gpu,
                                                       count=count, storage_uri="s3://m/x")
    for model, gpu, count, nodes in render_tests.NODE_CASES:
        cases[f"render:{model}-{gpu}x{nodes}"] = RenderRequest(
            model=MODELS / model, gpu=gpu, count=count, nodes=nodes,
            storage_uri="pvc://aim-models/x")
    for file, options, fixture in kubernetes_tests.RENDERED:
        cases[f"manifests/{file}"] = RenderRequest(model=MODELS / fixture, gpu="MI300X",
                                                   **options)
    return cases


def chart_service(values: dict, namespace: str = "default") -> dict:
    """The InferenceService the aim-model chart renders from `values`, without Helm's labels."""
    documents = helm.objects(helm.render(MODEL_CHART, values, name="release",
                                         namespace=namespace))
    (service,) = [d for d in documents if d["kind"] == "InferenceService"]
    return without_helm_labels(service)


def test_the_model_chart_renders_what_render_renders_for_every_case(tmp_path, catalog):
    from aim_runtime.deploy.helm_values import helm_values

    cases = every_render_case(tmp_path)
    assert len(cases) >= 25
    for name, request in cases.items():
        expected, plan = render(request, catalog)
        namespace = request.namespace or "default"  # the chart names the release's
        expected["metadata"] = {**expected["metadata"], "namespace": namespace}
        assert chart_service(helm_values(request, plan), namespace) == expected, name


@pytest.mark.parametrize(("options", "prefill"), llm_tests.LLM_RENDERS)
def test_the_model_chart_renders_what_render_renders_as_an_llm_inference_service(
        options, prefill, catalog):
    from aim_runtime.deploy.helm_values import helm_values
    from aim_runtime.deploy.llm import render_llm

    request = RenderRequest(**options)
    expected, plan = render_llm(request, catalog, prefill_replicas=prefill)
    expected["metadata"]["namespace"] = "default"
    values = helm_values(request, plan, "LLMInferenceService", prefill)
    documents = helm.objects(helm.render(MODEL_CHART, values, name="release"))
    assert [d["kind"] for d in documents] == ["LLMInferenceService"]  # no InferenceService test
    assert without_helm_labels(documents[0]) == expected
    assert kube_schema.validate(documents[0]) == []


@pytest.mark.parametrize("stem", MODEL_CI_REQUESTS)
def test_the_model_charts_ci_values_are_what_render_writes(stem, catalog):
    from aim_runtime.deploy.helm_values import helm_values

    request = RenderRequest(**MODEL_CI_REQUESTS[stem])
    if stem == "llm":
        written = helm_values(request, render(request, catalog)[1], "LLMInferenceService", 2)
    else:
        written = helm_values(request, render(request, catalog)[1])
    in_file = {k: v for k, v in values_of(MODEL_CHART / "ci" / f"{stem}.yaml").items()
               if k not in SWITCHES}
    assert in_file == written, \
        f"write charts/aim-model/ci/{stem}.yaml again with render --output helm-values"


def test_render_writes_helm_values_that_the_chart_takes(tmp_path):
    result = run_cli("render", "--model-dir", str(MODELS / "llama-3.1-8b-instruct"),
                     "--model-id", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "MI300X",
                     "--output", "helm-values")
    assert result.returncode == 0, result.stderr
    values = yaml.safe_load(result.stdout)
    assert helm.schema_error(MODEL_CHART, values) is None
    manifest = run_cli("render", "--model-dir", str(MODELS / "llama-3.1-8b-instruct"),
                       "--model-id", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "MI300X")
    expected = yaml.safe_load(manifest.stdout)
    expected["metadata"]["namespace"] = "default"
    assert chart_service(values) == expected
    for refused, said in [(["--canary-of", "chat", "--traffic", "10", "--stable",
                            str(tmp_path / "x.yaml")], "Standard-mode canary")]:
        result = run_cli("render", "--model-dir", str(MODELS / "llama-3.1-8b-instruct"),
                         "--model-id", "m/x", "--gpu", "MI300X", "--output", "helm-values",
                         *refused)
        assert result.returncode != 0 and said in result.stderr, result.stderr


@pytest.mark.parametrize("values", [None, *MODEL_CI_VALUES],
                         ids=["defaults", *[p.stem for p in MODEL_CI_VALUES]])
def test_the_model_chart_lints_strictly(values):
    assert helm.lint(MODEL_CHART, values_of(values) if values else None) == []


@pytest.mark.parametrize("values", MODEL_CI_VALUES, ids=[p.stem for p in MODEL_CI_VALUES])
def test_every_model_ci_values_file_renders_objects_kubernetes_and_kserve_admit(values):
    documents = helm.objects(helm.render(MODEL_CHART, values_of(values)))
    assert {"InferenceService", "Pod"} <= {d["kind"] for d in documents} or \
        [d["kind"] for d in documents] == ["LLMInferenceService"]
    assert_admitted(documents, values.stem)


def assert_admitted(documents: list[dict], where: str) -> None:
    """The checks the kustomize manifests pass: the vendored CRDs or the Kubernetes schemas,
    KServe's multi-node, canary and Knative rules for a service, Pod Security's restricted
    profile for every pod the chart runs (the helm test's and the download Job's)."""
    for document in documents:
        if kube_schema.is_custom(document):
            assert kube_schema.validate(document) == [], where
        else:
            kubernetes_validate.validate(document, k8s_schemas.latest_version(), strict=True)
    for service in [d for d in documents if d["kind"] == "InferenceService"]:
        assert rules.multinode_service_problems(service) == [], where
        assert rules.canary_problems(service) == [], where
        assert rules.knative_problems(service, admission.RUNTIMES["aim-runtime"])[0] == [], where
    for pod in [d["spec"] for d in documents if d["kind"] == "Pod"] + \
            [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Job"]:
        assert rules.restricted_problems(pod, pod["containers"]) == [], where


@pytest.mark.parametrize(("values", "named"), [
    ({"nmae": "x"}, "additional properties 'nmae' not allowed"),
    ({"mode": "serverless"}, "/mode"),
    ({"name": "Chat_1"}, "/name"),
    ({"storageUri": "models/llama"}, "/storageUri"),
    ({"canaryTrafficPercent": 120}, "/canaryTrafficPercent"),
    ({"plan": {"product": "MI100"}}, "/plan/product"),
    ({"plan": {"deviceIds": ["0x74a1"]}}, "/plan/deviceIds/0"),
    ({"plan": {"env": [{"name": "HF_TOKEN", "value": "x"}]}}, "/plan/env/0/name"),
    ({"plan": {"env": [{"name": "AIM_PRECISION", "value": "fp4"}]}}, "/plan/env/0/value"),
    ({"plan": {"env": [{"name": "AIM_OBJECTIVE", "value": "cheap"}]}}, "/plan/env/0/value"),
    ({"plan": {"resources": {"requests": {"cpu": 4}}}}, "/plan/resources/requests/cpu"),
    ({"lora": {"maxLoras": -1}}, "/lora/maxLoras"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
], ids=["misspelt-key", "mode", "name", "storage-uri", "traffic", "product", "device-id",
        "env-not-a-pin", "precision", "objective", "cpu-not-a-quantity", "max-loras", "latest"])
def test_the_model_schema_refuses_bad_values_naming_the_field(values, named):
    error = helm.schema_error(MODEL_CHART, values)
    assert error is not None and named in error, error


@pytest.mark.parametrize(("stem", "change", "said"), [
    (None, {}, "plan: empty; write this model's values with `aim-runtime render"),
    ("lora", {"storageUri": ""}, "storageUri: empty"),
    ("multinode-compile-cache", {"mode": "knative"}, "only in Standard mode"),
    ("multinode-compile-cache", {"storageUri": "s3://m/x"}, "pvc:// (ReadWriteMany) or oci://"),
    ("multinode-compile-cache", {"lora": {"claimName": "adapters"}}, "only the head mounts"),
    ("lora", {"canaryTrafficPercent": 10}, "canaryTrafficPercent: Knative mode only"),
    ("lora", {"serviceAccount": {"create": True}}, "serviceAccount.create: true needs"),
    ("gated-hf-model", {"modelCache": {"enabled": True}}, "give pvc://CLAIM/PATH"),
    ("multinode-compile-cache", {"modelCache": {"enabled": True}}, "AIM_MODEL_ID"),
    ("knative-canary", {"autoscaling": {"keda": {"enabled": True}}}, "KEDA autoscaling is for"),
    ("llm", {"mode": "knative"}, "mode: knative: not available with kind LLMInferenceService"),
    ("llm", {"lora": {"claimName": "adapters"}}, "lora.claimName (use spec.model.lora)"),
    ("llm", {"serviceMonitor": {"enabled": True}}, "serviceMonitor.enabled: not available"),
    ("lora", {"prefillReplicas": 2}, "prefillReplicas: kind LLMInferenceService only"),
    ("llm", {"apiKeySecret": {"name": "keys", "key": "keys"}}, "apiKeySecret.name (set"),
    ("multinode-compile-cache", {"autoscaling": {"keda": {"enabled": True}}},
     "KEDA autoscaling is for"),
])
def test_the_model_chart_fails_on_what_kserve_would_refuse(stem, change, said):
    values = values_of(MODEL_CHART / "ci" / f"{stem}.yaml") if stem else {}
    with pytest.raises(helm.HelmError, match=re.escape(said)):
        helm.render(MODEL_CHART, {**values, **change})


def test_the_model_schema_knows_every_product_precision_and_objective():
    from aim_runtime.hardware.products import PRODUCTS
    from aim_runtime.settings import KV_CACHE_DTYPES, OBJECTIVES, PRECISIONS

    schema = json.loads((MODEL_CHART / "values.schema.json").read_text())
    plan = schema["properties"]["plan"]["properties"]
    assert plan["product"]["enum"] == ["", *PRODUCTS]
    pinned = {rule["if"]["properties"]["name"]["const"]: rule["then"]["properties"]["value"][
        "enum"] for rule in plan["env"]["items"]["allOf"]}
    assert pinned == {"AIM_PRECISION": list(PRECISIONS), "AIM_OBJECTIVE": list(OBJECTIVES),
                      "AIM_KV_CACHE_DTYPE": list(KV_CACHE_DTYPES)}


def test_the_model_notes_say_what_was_installed_and_how_to_check_it():
    values = values_of(MODEL_CHART / "ci" / "knative-canary.yaml")
    notes = helm.render(MODEL_CHART, values, name="chat-v2")["aim-model/templates/NOTES.txt"]
    assert "InferenceService chat (knative mode)" in notes and "10% of the traffic" in notes
    assert "helm test chat-v2" in notes and "1x MI300X" in notes


def hook_of(values: dict) -> dict:
    documents = helm.objects(helm.render(MODEL_CHART, values))
    (pod,) = [d for d in documents if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return pod


@pytest.mark.serving
def test_the_helm_test_hook_validates_the_service_and_its_recipe(server):
    """The hook runs `aim-runtime validate` at the service, expecting the planned recipe; its
    own command runs here against a real server, with this server's address, name and recipe."""
    values = values_of(MODEL_CHART / "ci" / "lora.yaml")
    (container,) = hook_of(values)["spec"]["containers"]
    assert container["image"] == "aim-runtime-rocm:0.1.0"
    command = container["command"] + container["args"]
    assert command == ["python3", "-m", "aim_runtime", "validate",
                       "--url=http://llama-3-1-8b-instruct-predictor.default.svc.cluster.local",
                       "--model=llama-3-1-8b-instruct",
                       f"--expect-recipe={values['plan']['recipe']}"]
    served = json.loads(run_cli("validate", "--url", server.url, "--json").stdout)
    recipe = next(c["detail"] for c in served["checks"] if c["name"] == "recipe").split()[0]
    here = {"--url": server.url, "--model": "tiny", "--expect-recipe": recipe}
    local = [sys.executable] + [word.split("=")[0] + "=" + here[word.split("=")[0]]
                                if word.split("=")[0] in here else word for word in command[1:]]
    answered = subprocess.run(local, capture_output=True, text=True, timeout=300, cwd=REPO,
                              env=clean_environ())
    assert answered.returncode == 0, answered.stdout + answered.stderr
    planned = subprocess.run([*local[:-1], command[-1]], capture_output=True, text=True,
                             timeout=300, cwd=REPO, env=clean_environ())
    assert planned.returncode == 1 and "FAIL  recipe" in planned.stdout  # another recipe here
    canary = hook_of(values_of(MODEL_CHART / "ci" / "knative-canary.yaml"))
    assert not [a for a in canary["spec"]["containers"][0]["args"] if "expect-recipe" in a]


def test_api_keys_come_from_a_secret_for_the_server_and_the_hook():
    values = {**values_of(MODEL_CHART / "ci" / "lora.yaml"),
              "apiKeySecret": {"name": "aim-api-keys", "key": "keys"}}
    expected = {"name": "AIM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "aim-api-keys",
                                                                      "key": "keys"}}}
    assert expected in chart_service(values)["spec"]["predictor"]["model"]["env"]
    assert expected in hook_of(values)["spec"]["containers"][0]["env"]
    keyless = values_of(MODEL_CHART / "ci" / "lora.yaml")
    assert all(e["name"] != "AIM_API_KEY" for e in hook_of(keyless)["spec"]["containers"][0][
        "env"])


def test_the_network_policy_admits_the_hook_and_the_gateways_only():
    values = {**values_of(MODEL_CHART / "ci" / "everything.yaml")}
    documents = helm.objects(helm.render(MODEL_CHART, values, name="llama"))
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    hook = hook_of(values)
    admitted = [rule for rule in policy["spec"]["ingress"] for peer in rule["from"]
                if "namespaceSelector" not in peer and
                rules.selects(peer["podSelector"], hook["metadata"]["labels"])]
    assert len(admitted) == 1 and {p["port"] for p in admitted[0]["ports"]} == {8080, 8012}


def test_keda_autoscaling_is_the_shipped_manifests(catalog):
    """manifests/autoscaling-keda.yaml, from render's values with autoscaling.keda on."""
    from aim_runtime.deploy.helm_values import helm_values

    request = RenderRequest(gpu="MI300X", name="llama-3-1-8b-autoscaled",
                            service_account="hf-models", **admission.LLAMA_8B)
    values = {**helm_values(request, render(request, catalog)[1]),
              "autoscaling": {"keda": {"enabled": True}}}
    shipped = values_of(REPO / "manifests" / "autoscaling-keda.yaml")
    shipped["metadata"]["namespace"] = "default"
    assert chart_service(values) == shipped


def test_every_switch_adds_its_objects_for_this_service_only():
    values = values_of(MODEL_CHART / "ci" / "everything.yaml")
    documents = helm.objects(helm.render(MODEL_CHART, values, name="llama", namespace="models"))
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"InferenceService", "Pod", "ServiceAccount", "PersistentVolumeClaim",
                          "Job", "NetworkPolicy", "ServiceMonitor"}
    service = "llama-3-1-8b-instruct"
    assert all(d["metadata"]["namespace"] == "models" for d in documents)
    account = kinds["ServiceAccount"]
    assert account["metadata"]["name"] == kinds["InferenceService"]["spec"]["predictor"][
        "serviceAccountName"] and account["secrets"] == [{"name": "hf-token"}]
    claim = kinds["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "aim-models"  # the claim storageUri names
    assert claim["metadata"]["annotations"] == {"helm.sh/hook": "pre-install",
                                                "helm.sh/hook-weight": "-10",
                                                "helm.sh/resource-policy": "keep"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    job = kinds["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["download", "--model-id=meta-llama/Llama-3.1-8B-Instruct",
                                 "--dest=/models/meta-llama/Llama-3.1-8B-Instruct",
                                 "--gpu=MI300X:1"]
    assert container["image"] == "registry.example.com/ml/aim-runtime-rocm:0.1.0"
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "aim-models"}
    selected = {"serving.kserve.io/inferenceservice": service}
    assert kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == selected
    monitor = kinds["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"] == selected
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    query = kinds["InferenceService"]["spec"]["predictor"]["autoScaling"]["metrics"][0][
        "external"]["metric"]["query"]
    assert query == f'sum(vllm:num_requests_waiting{{namespace="models", model_name="{service}"}})'


def test_the_download_job_plans_for_every_node():
    values = {**values_of(MODEL_CHART / "ci" / "multinode-compile-cache.yaml"),
              "modelCache": {"enabled": True, "accessMode": "ReadWriteMany"}}
    values["plan"] = {**values["plan"], "env": [*values["plan"]["env"], {
        "name": "AIM_MODEL_ID", "value": "meta-llama/Llama-3.1-405B-Instruct"}]}
    (job,) = [d for d in helm.objects(helm.render(MODEL_CHART, values)) if d["kind"] == "Job"]
    assert "--gpu=MI300X:8x2" in job["spec"]["template"]["spec"]["containers"][0]["args"]


# --- a grid of renders: product x GPU count x nodes x mode x feature ---------------------------

GRID_PRODUCTS = ("MI300X", "MI325X", "MI355X", "MI250", "MI210")
GRID_SHAPES = ((None, 1), (8, 1), (None, 2))  # (GPUs per pod, nodes)
GRID_FEATURES = ("plain", "gated", "compile-cache", "lora", "keda")


def grid_request(product: str, count: int | None, nodes: int, mode: str,
                 feature: str) -> RenderRequest:
    options: dict = {"storage_uri": "pvc://models/llama-70b"}
    if feature == "gated":
        options = {"model_id": "meta-llama/Llama-3.1-70B-Instruct", "service_account": "hf"}
    elif feature == "compile-cache":
        options["compile_cache_pvc"] = "aim-compile-cache"
    elif feature == "lora":
        options.update(lora_pvc="models/adapters", max_loras=2, max_lora_rank=64)
    return RenderRequest(model=MODELS / "llama-3.1-70b-instruct", gpu=product, count=count,
                         nodes=nodes, mode=mode, **options)


@pytest.mark.parametrize("product", GRID_PRODUCTS)
def test_a_grid_of_renders_passes_kserves_checks_and_render_agrees(product, catalog):
    """For one product, every shape, mode and feature: what render refuses, the chart would
    too (its fail messages above); what it renders, the chart renders alike, and the object
    passes the vendored CRD and KServe's multi-node, Knative and canary rules."""
    from aim_runtime.deploy.helm_values import helm_values
    from aim_runtime.errors import AimError

    served = 0
    for (count, nodes), mode, feature in itertools.product(GRID_SHAPES, ("standard", "knative"),
                                                           GRID_FEATURES):
        case = f"{product} {count}x{nodes} {mode} {feature}"
        request = grid_request(product, count, nodes, mode, feature)
        try:
            expected, plan = render(request, catalog)
        except AimError:  # KServe's rules (multi-node needs Standard, no adapters), or no fit
            assert nodes > 1 or count is None or feature == "lora", case
            continue
        values = helm_values(request, plan)
        if feature == "keda":
            values["autoscaling"] = {"keda": {"enabled": True}}
        try:
            service = chart_service(values)
        except helm.HelmError as refused:
            assert feature == "keda" and (mode == "knative" or nodes > 1), (case, refused)
            continue
        if feature != "keda":
            expected["metadata"]["namespace"] = "default"
            assert service == expected, case
        assert_admitted([service], case)
        served += 1
    assert served >= 12, f"only {served} cases of {product} rendered"


def test_a_multi_node_service_s_pods_reach_each_other_under_its_network_policy():
    values = {**values_of(MODEL_CHART / "ci" / "multinode-compile-cache.yaml"),
              "networkPolicy": {"enabled": True}}
    (policy,) = [d for d in helm.objects(helm.render(MODEL_CHART, values))
                 if d["kind"] == "NetworkPolicy"]
    own = {"serving.kserve.io/inferenceservice": values["name"]}
    assert {"from": [{"podSelector": {"matchLabels": own}}]} in policy["spec"]["ingress"]
    single = {**values_of(MODEL_CHART / "ci" / "lora.yaml"), "networkPolicy": {"enabled": True}}
    (policy,) = [d for d in helm.objects(helm.render(MODEL_CHART, single))
                 if d["kind"] == "NetworkPolicy"]
    assert all("ports" in rule for rule in policy["spec"]["ingress"])


def test_the_notes_of_an_llm_inference_service_name_its_kind_and_no_helm_test():
    notes = helm.render(MODEL_CHART, values_of(MODEL_CHART / "ci" / "llm.yaml"))[
        "aim-model/templates/NOTES.txt"]
    assert "LLMInferenceService llama-3-1-8b-instruct" in notes
    assert "kubectl get llminferenceservice" in notes and "helm test" not in notes
