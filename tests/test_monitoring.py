"""The alert rules (deploy/monitoring.py, written to monitoring/): the checked-in files are what
the generator writes; `promtool check rules` with every lint fatal; `promtool test rules` with a
case that fires and one that stays silent for every alert; each runbook link lands on a section
of docs/runbooks.md; the PrometheusRule and the ServiceMonitor pass the vendored Prometheus
Operator CRDs; every series a rule reads is exported by the runtime (a live scrape) or named as
another exporter's."""

from __future__ import annotations

import contextlib
import re
import time

import httpx
import pytest
import yaml

import kube_schema
import promtool
from aim_runtime.deploy import dashboard, monitoring
from test_reliability import metric, wait_until
from testkit import AUTH, REPO

MONITORING = REPO / "monitoring"
RUNBOOKS = REPO / "docs" / "runbooks.md"


@pytest.mark.parametrize("name", list(monitoring.FILES))
def test_the_checked_in_files_are_what_the_generator_writes(name):
    assert (MONITORING / name).read_text() == monitoring.render(name), \
        "regenerate: python -m aim_runtime.deploy.monitoring"


def test_the_layout_picture_is_the_dashboards():
    import xml.etree.ElementTree as ElementTree

    picture = (REPO / monitoring.LAYOUT_PICTURE).read_text()
    assert picture == dashboard.layout_svg(), "regenerate: python -m aim_runtime.deploy.monitoring"
    texts = {t.text for t in ElementTree.fromstring(picture).iter(
        "{http://www.w3.org/2000/svg}text")}
    assert {panel.title for panel in dashboard.panels()} <= texts
    assert "dashboard-layout.svg" in (REPO / "docs" / "runbooks.md").read_text()


def test_the_dashboard_is_laid_out_on_grafanas_grid_and_selects_by_its_variables():
    model = dashboard.dashboard()
    items = model["panels"]
    assert len({item["id"] for item in items}) == len(items)
    cells = set()
    for item in items:
        grid = item["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, item["title"]
        cells |= covered
    variables = [v["name"] for v in model["templating"]["list"]]
    assert variables == ["datasource", "namespace", "service"]
    for panel in dashboard.panels():
        for expr, _ in panel.queries:
            outside = any(name in expr for name in monitoring.OUTSIDE_SERIES)
            assert outside or '$service"' in expr, (panel.title, expr)
    rows = [item["title"] for item in items if item["type"] == "row"]
    assert rows == [row.title for row in dashboard.ROWS] and len(rows) == 8


def test_the_dashboard_config_map_is_a_valid_kubernetes_object():
    import json

    import kubernetes_validate
    from kubernetes_validate import utils as k8s_schemas

    document = yaml.safe_load((MONITORING / "grafana-dashboard-configmap.yaml").read_text())
    kubernetes_validate.validate(document, k8s_schemas.latest_version(), strict=True)
    assert document["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(document["data"]["aim-runtime.json"]) == dashboard.dashboard()


def test_promtool_checks_the_rules_with_every_lint_fatal(tmp_path):
    plain = promtool.run("check", "rules", "--lint=all", "--lint-fatal",
                         str(MONITORING / "aim-runtime.rules.yaml"))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump(spec))
    operator = promtool.run("check", "rules", "--lint=all", "--lint-fatal",
                            str(tmp_path / "operator.yaml"))
    assert operator.returncode == 0, operator.stdout + operator.stderr


def unit_tests(alerts: tuple[monitoring.Alert, ...]) -> dict:
    """promtool's unit tests: per alert, its firing series make ALERTS{alertstate="firing"}
    exist once its `for:` has passed, and its silent series do not."""
    tests = []
    for alert in alerts:
        for case, series, expected in (("firing", alert.firing, [{"value": 1}]),
                                       ("silent", alert.silent, [])):
            tests.append({
                "name": f"{alert.name} {case}", "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [{
                    "expr": f'count(ALERTS{{alertname="{alert.name}", alertstate="firing"}})',
                    "eval_time": f"{_minutes(series)}m", "exp_samples": expected}]})
    return {"rule_files": ["aim-runtime.rules.yaml"], "evaluation_interval": "1m",
            "tests": tests}


def _minutes(series: dict[str, str]) -> int:
    """The last minute the series have a value for (promtool's `a+bxN` and `axN` notation)."""
    counts = []
    for values in series.values():
        total = 0
        for word in values.split():
            match = re.fullmatch(r"[-+0-9.e]+(?:[-+][0-9.e]+)?x(\d+)", word)
            total += int(match.group(1)) + 1 if match else 1
        counts.append(total - 1)
    return min(counts)


def test_every_alert_fires_on_its_case_and_stays_silent_on_the_other(tmp_path):
    assert all(alert.firing and alert.silent for alert in monitoring.ALERTS)
    (tmp_path / "aim-runtime.rules.yaml").write_text(monitoring.render("aim-runtime.rules.yaml"))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(unit_tests(monitoring.ALERTS)))
    result = promtool.run("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_silent_case_that_fires_fails_the_unit_test(tmp_path):
    """The check can fail: the firing series given as the silent case."""
    alert = monitoring.ALERTS[0]
    swapped = monitoring.Alert(alert.name, alert.expr, alert.for_, alert.severity,
                               alert.summary, alert.description, alert.firing, alert.firing)
    (tmp_path / "aim-runtime.rules.yaml").write_text(monitoring.render("aim-runtime.rules.yaml"))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(unit_tests((swapped,))))
    assert promtool.run("test", "rules", "tests.yaml", cwd=tmp_path).returncode != 0


def test_each_runbook_shows_its_alerts_query_as_generated():
    text = RUNBOOKS.read_text()
    for alert in monitoring.ALERTS:
        section = text.split(f"## {alert.name}\n", 1)[1].split("\n## ", 1)[0]
        shown = re.search(r"```promql\n(.*?)\n```", section, flags=re.S)
        assert shown and shown.group(1).strip() == alert.expr, alert.name
        assert f"`{alert.severity}`" in section, alert.name


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    sections = set(re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.M))
    for group in yaml.safe_load((MONITORING / "aim-runtime.rules.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
            assert page == "docs/runbooks.md" and anchor == rule["alert"].lower()
            assert rule["alert"] in sections


@pytest.mark.parametrize("path", ["monitoring/prometheusrule.yaml",
                                  "manifests/servicemonitor.yaml"])
def test_the_operator_objects_pass_the_vendored_crds(path):
    document = yaml.safe_load((REPO / path).read_text())
    assert kube_schema.validate(document) == []


def panel_queries() -> list[str]:
    return [expr for panel in dashboard.panels() for expr, _ in panel.queries]


def queried_series() -> set[str]:
    """The series every rule and panel reads: names that are not functions, with label
    matchers and grouping clauses taken out, histogram suffixes folded."""
    names = set()
    for query in [alert.expr for alert in monitoring.ALERTS] + panel_queries():
        expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", query)
        expr = re.sub(r"\b(?:by|ignoring|on|without)\s*\([^)]*\)", "", expr)
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?![a-zA-Z0-9_:]|\s*\()", expr):
            names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def missing_series(url: str) -> list[str]:
    """The series a rule or panel reads that the server at `url` does not export, other
    exporters' and GPU plans' aside."""
    text = httpx.get(url + "/metrics", timeout=10).text
    exported = {re.sub(r"_(bucket|count|sum|created)$", "", line.split("{")[0].split(" ")[0])
                for line in text.splitlines() if line and not line.startswith("#")}
    exported |= set(re.findall(r"^# TYPE (\S+)", text, flags=re.M))
    outside = monitoring.OUTSIDE_SERIES | monitoring.GPU_ONLY_SERIES
    return sorted(name for name in queried_series() - outside if name not in exported)


@pytest.mark.serving
def test_every_series_the_rules_read_is_exported_or_named_as_another_exporters(server):
    """One process here; two API servers and two engine ranks: tests/test_api_servers.py."""
    missing = missing_series(server.url)
    assert not missing, missing
    assert "aim_state" in queried_series() and "vllm:num_preemptions_total" in queried_series()


@pytest.mark.serving
def test_requests_are_counted_by_protocol_and_status_class(guarded):
    """Answered and refused alike, HTTP and gRPC; probes are not counted."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    def counts() -> dict[tuple[str, str], float]:
        return {(protocol, status): metric(guarded.url, "aim_requests_total", protocol=protocol,
                                           status_class=status)
                for protocol in ("openai", "anthropic", "v2", "grpc")
                for status in ("2xx", "4xx", "5xx")}

    before = counts()
    auth = AUTH
    completion = {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
    url = guarded.url
    assert httpx.post(url + "/openai/v1/completions", json=completion, headers=auth,
                      timeout=60).status_code == 200
    assert httpx.post(url + "/openai/v1/completions", json=completion,
                      timeout=60).status_code == 401
    assert httpx.post(url + "/v1/messages", json={"model": "tiny", "max_tokens": 2},
                      headers=auth, timeout=60).status_code in range(400, 500)
    assert httpx.post(url + "/v2/models/tiny/infer", json={"inputs": "not a list"},
                      headers=auth, timeout=60).status_code in range(400, 500)
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200
    request = pb.ModelInferRequest(model_name="tiny", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="text_input", datatype="BYTES", shape=[1],
                                              contents=pb.InferTensorContents(
                                                  bytes_contents=[b"Hello"]))],
        parameters={"max_tokens": pb.InferParameter(int64_param=2)})
    with grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, metadata=list(AUTH.items()), timeout=60)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request, timeout=60)
        stub.ServerReady(pb.ServerReadyRequest(), timeout=10)  # a probe: not counted
    after = counts()
    changed = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    assert changed == {("openai", "2xx"): 1, ("openai", "4xx"): 1, ("anthropic", "4xx"): 1,
                       ("v2", "4xx"): 1, ("grpc", "2xx"): 1, ("grpc", "4xx"): 1}


# --- a real Prometheus ---------------------------------------------------------------------------

LIVE_LABELS = {"runtime": "aim-runtime", "namespace": "ml", "pod": "tiny-0",
               dashboard.SERVICE_LABEL: "tiny"}
GRAFANA_VARIABLES = {"$namespace": ".*", "$service": ".*", "$__rate_interval": "1m"}


def live_rule_file(tmp_path) -> str:
    """The generated rules with every `for:` at 0, so that the positive control fires within
    seconds and anything that would go pending on the healthy server fires instead."""
    rules = monitoring.rule_file()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    return "rules.yaml"


@pytest.mark.serving
def test_a_real_prometheus_evaluates_every_rule_and_answers_every_panel(guarded, tmp_path):
    """Prometheus scrapes the test server with an adapter (labelled as the ServiceMonitor labels a
    pod) and a
    target that is gone, with the rules loaded: every rule evaluates with health ok; only the
    gone target's AimRuntimeTargetDown is active, nothing on the healthy server; every panel's
    query answers, with data where a healthy server has it (latency included: requests are
    served while Prometheus scrapes, to the model and its adapter). Then the test breaks
    something on the healthy server (an adapter load it refuses) and the alert for it fires on
    the server's own series."""
    from servers import free_port

    server, auth = guarded, AUTH

    gone = {**LIVE_LABELS, "pod": "gone-0"}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [live_rule_file(tmp_path)],
              "scrape_configs": [{"job_name": "aim-runtime", "static_configs": [
                  {"targets": [server.url.removeprefix("http://")], "labels": LIVE_LABELS},
                  {"targets": [f"127.0.0.1:{free_port()}"], "labels": gone}]}]}
    with promtool.Prometheus(tmp_path, config, free_port()) as prometheus:
        wait_until(lambda: _firing(prometheus) >= {("AimRuntimeTargetDown", "gone-0")}, 60)
        for model in ("tiny", "alpha", "tiny"):  # scraped: rates and quantiles have data
            assert httpx.post(server.url + "/openai/v1/completions", headers=auth, json={
                "model": model, "prompt": "Hello", "max_tokens": 2}, timeout=60).status_code == 200
        wait_until(lambda: all(rule["health"] == "ok" and rule.get("lastEvaluation", "0001")
                               [:4] != "0001" for rule in _rules(prometheus)), 30)
        time.sleep(3)  # a few more scrapes and evaluations
        assert {rule["name"] for rule in _rules(prometheus)} == \
            {alert.name for alert in monitoring.ALERTS}
        assert all(rule["health"] == "ok" for rule in _rules(prometheus)), _rules(prometheus)
        assert _firing(prometheus, states=("pending", "firing")) == \
            {("AimRuntimeTargetDown", "gone-0")}
        with contextlib.suppress(TimeoutError):  # the assertion names what stays empty
            wait_until(lambda: _empty_panels(prometheus) == [], 30)
        assert _empty_panels(prometheus) == []

        missing = str(tmp_path / "missing")
        refused = httpx.post(server.url + "/openai/v1/load_lora_adapter", headers=auth,
                             timeout=30, json={"lora_name": "broken", "lora_path": missing})
        assert refused.status_code == 400
        wait_until(lambda: ("AimRuntimeAdapterLoadFailures", LIVE_LABELS["pod"])
                   in _firing(prometheus), 30)


def _empty_panels(prometheus) -> list[str]:
    """The panel queries a healthy server should answer with data and does not."""
    empty = []
    for panel in dashboard.panels():
        for expr, _ in panel.queries:
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            result = prometheus.api("query", query=expr)["result"]
            if panel.always_answers and not result:
                empty.append(f"{panel.title}: {expr}")
    return empty


def _rules(prometheus) -> list[dict]:
    return [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]


def _firing(prometheus, states=("firing",)) -> set[tuple[str, str]]:
    return {(alert["labels"]["alertname"], alert["labels"].get("pod", ""))
            for alert in prometheus.api("alerts")["alerts"] if alert["state"] in states}


# What Prometheus 2 sends (its default scrape protocols), and Prometheus 3 with UTF-8 names.
PROMETHEUS_ACCEPT = {
    "prometheus-2": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "prometheus-3": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,"
                    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,*/*;q=0.1",
    "text": "text/plain;version=0.0.4"}


def scraped(url: str, scraper: str) -> str:
    """`/metrics` as the scraper asks for it."""
    return httpx.get(url + "/metrics", timeout=10,
                     headers={"Accept": PROMETHEUS_ACCEPT[scraper]}).text


def sample_names(text: str) -> set[str]:
    """The name of every sample in an exposition."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.mark.serving
@pytest.mark.parametrize("scraper", list(PROMETHEUS_ACCEPT))
def test_every_sample_is_named_as_its_family_in_every_format(server, scraper):
    """prometheus_client wrote OpenMetrics samples of `vllm:x` as `vllm_x` (under a `# TYPE
    vllm:x`): Prometheus 2 stored them so, and the `vllm:` queries found nothing."""
    text = scraped(server.url, scraper)
    families = set(re.findall(r"^# TYPE (\S+)", text, flags=re.M))
    samples = sample_names(text)
    orphans = {name for name in samples if not any(
        name == family or name.startswith(family + "_") for family in families)}
    assert not orphans, sorted(orphans)[:10]
    assert "vllm:num_requests_running" in samples and "vllm:generation_tokens_total" in samples


@pytest.mark.serving
@pytest.mark.parametrize("scraper", list(PROMETHEUS_ACCEPT))
def test_a_request_is_counted_once_and_no_series_is_a_creation_time(server, scraper):
    """`aim_requests_total` is the one request counter: vLLM's HTTP instrumentation (`http_*`)
    is not on its application. No counter or histogram has a `_created` sample: one process
    exports what several do (multiprocess mode writes none)."""
    before = metric(server.url, "aim_requests_total", protocol="openai", status_class="2xx")
    assert httpx.post(server.url + "/openai/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": "Hello", "max_tokens": 2, "stream": True}).status_code == 200
    samples = sample_names(scraped(server.url, scraper))
    assert not {name for name in samples if name.startswith("http_") or
                name.endswith("_created")}, sorted(samples)
    assert {"aim_requests_total", "vllm:request_success_total"} <= samples
    assert metric(server.url, "aim_requests_total", protocol="openai",
                  status_class="2xx") == before + 1


TARGET_LABELS = {"namespace", "pod", "runtime", dashboard.SERVICE_LABEL}  # the ServiceMonitor's


@pytest.mark.serving
def test_every_label_a_panel_groups_by_is_on_its_series(server):
    """`count by (pod, recipe, gpu)` over series without `gpu` still answers (one blank
    group): only the exposition says whether a label exists."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" in line:
            name = re.sub(r"_(bucket|count|sum|total|created|info)$", "", line.split("{")[0])
            labels.setdefault(name, set()).update(re.findall(r'(\w+)="', line.split("}")[0]))
    for panel in dashboard.panels():
        for expr, _ in panel.queries:
            grouped = {label.strip() for clause in re.findall(r"by \(([^)]*)\)", expr)
                       for label in clause.split(",")} - TARGET_LABELS - {"le"}
            selected = re.findall(r"([a-z_:]+)\{", expr)  # other exporters' series have none
            series = re.sub(r"_(bucket|count|sum|total|info)$", "", selected[0] if selected else "")
            if series in labels:
                assert grouped <= labels[series], (panel.title, grouped - labels[series])
