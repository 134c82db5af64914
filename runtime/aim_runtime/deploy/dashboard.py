"""The Grafana dashboard, defined once as rows of panels and their PromQL, and written as the
dashboard's JSON, as a ConfigMap for Grafana's dashboard sidecar (label `grafana_dashboard`), and
as an SVG picture of its layout for the docs. `python -m aim_runtime.deploy.monitoring` writes
them with the alert rules.

Every panel selects the namespaces and InferenceServices of the dashboard's variables (the
ServiceMonitor's target labels); the GPU and autoscaling rows read other exporters' series
(AMD's device-metrics-exporter, kube-state-metrics), named in monitoring.OUTSIDE_SERIES.
tests/test_monitoring.py checks that every series a panel reads is exported or named there, and
runs every query against a real Prometheus scraping a test server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

UID = "aim-runtime"
TITLE = "AIM Runtime"
SERVICE_LABEL = "serving_kserve_io_inferenceservice"  # the ServiceMonitor's target label
RATE = "$__rate_interval"
COLUMNS, PANEL_WIDTH, PANEL_HEIGHT = 2, 12, 8  # Grafana's grid is 24 units wide
FIVE_XX = 'status_class="5xx"'


def sel(*matchers: str) -> str:
    """The dashboard's selection (namespace and service variables), and `matchers`."""
    return "{" + ", ".join(['namespace=~"$namespace"', f'{SERVICE_LABEL}=~"$service"',
                            *matchers]) + "}"


def quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    """p50 and p99 of a histogram over the selection."""
    return tuple((f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{sel()}"
                  f"[{RATE}])))", f"p{int(q * 100)}") for q in (0.5, 0.99))


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    # A healthy CPU test server answers it with data (the live test requires it then).
    always_answers: bool = True


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


ROWS = (
    Row("Traffic and errors", (
        Panel("Requests by protocol", ((f"sum by (protocol) (rate(aim_requests_total{sel()}"
                                        f"[{RATE}]))", "{{protocol}}"),), "reqps",
              "Every request but probes and scrapes, answered or refused (gRPC included)."),
        Panel("Server errors by protocol",
              ((f"sum by (protocol) (rate(aim_requests_total{sel(FIVE_XX)}[{RATE}])) / "
                f"sum by (protocol) (rate(aim_requests_total{sel()}[{RATE}]))", "{{protocol}}"),),
              "percentunit", "Share of requests answered 5xx (the error-budget alert's ratio)."),
        Panel("Refused by the gate", ((f"sum by (reason) (rate(aim_requests_rejected_total"
                                       f"{sel()}[{RATE}]))", "{{reason}}"),), "reqps",
              "Unauthorized, too large, invalid text, overload (503 with Retry-After)."),
        Panel("In flight", ((f"sum by (pod) (aim_requests_in_flight{sel()})", "{{pod}}"),
                            (f"max(aim_admission_limit{sel()})", "admission limit")), "short",
              "Inference requests admitted and not finished, against the admission limit."),
    )),
    Row("Latency", (
        Panel("Time to first token", quantiles("vllm:time_to_first_token_seconds"), "s"),
        Panel("Inter-token latency", quantiles("vllm:inter_token_latency_seconds"), "s"),
        Panel("End-to-end request latency", quantiles("vllm:e2e_request_latency_seconds"), "s"),
        Panel("Queue time", quantiles("vllm:request_queue_time_seconds"), "s"),
    )),
    Row("Saturation", (
        Panel("Running and waiting", ((f"sum(vllm:num_requests_running{sel()})", "running"),
                                      (f"sum(vllm:num_requests_waiting{sel()})", "waiting")),
              "short", "vLLM's scheduler: requests in the batch, and queued for it."),
        Panel("KV cache usage", ((f"max by (pod) (vllm:kv_cache_usage_perc{sel()})",
                                  "{{pod}}"),), "percentunit"),
        Panel("Preemptions", ((f"sum by (pod) (rate(vllm:num_preemptions_total{sel()}"
                               f"[{RATE}]))", "{{pod}}"),), "short",
              "Requests evicted from the KV cache and recomputed: the cache is short."),
        Panel("Tokens per second", ((f"sum(rate(vllm:generation_tokens_total{sel()}[{RATE}]))",
                                     "generated"),
                                    (f"sum(rate(vllm:prompt_tokens_total{sel()}[{RATE}]))",
                                     "prompt")), "short"),
    )),
    Row("The plan", (
        Panel("Recipe per pod", ((f"count by (pod, recipe, product, devices, dtype) "
                                  f"(aim_plan_info{sel()})", "{{pod}} {{recipe}}"),), kind="table",
              description="Pods on different recipes after a rollout: AimRuntimeMixedRecipes."),
        Panel("KV cache capacity: plan and engine",
              ((f"max by (source) (aim_kv_cache_capacity_tokens{sel()})", "{{source}}"),),
              "short", "Tokens the plan counted on, and what vLLM allocated."),
        Panel("Serving state", ((f"sum by (state) (aim_state{sel()})", "{{state}}"),), "short",
              "Pods per state: loading, warming, starting, ready, draining, stalled, dead."),
        Panel("Decode efficiency", ((f"avg by (pod) (aim_decode_efficiency{sel()})",
                                     "{{pod}}"),), "percentunit",
              "Decode throughput against the GPUs' bandwidth roofline (GPU plans only).",
              always_answers=False),
    )),
    Row("Start-up", (
        Panel("Start-up phases", ((f"max by (phase) (aim_startup_phase_seconds{sel()})",
                                   "{{phase}}"),), "s", kind="bargauge"),
        Panel("Warm-up requests", ((f"sum by (outcome) (aim_warmup_requests{sel()})",
                                    "{{outcome}}"),), "short"),
    )),
    Row("LoRA adapters", (
        Panel("Requests by adapter", ((f"sum by (adapter) (rate(aim_lora_requests_total{sel()}"
                                       f"[{RATE}]))", "{{adapter}}"),), "reqps"),
        Panel("Adapters loaded and load errors",
              ((f"sum(aim_lora_adapters_loaded{sel()})", "loaded"),
               (f"sum by (source) (increase(aim_lora_load_errors_total{sel()}[{RATE}]))",
                "errors {{source}}")), "short"),
    )),
    Row("GPUs (AMD device-metrics-exporter)", (
        Panel("GPU activity", (("avg by (hostname, gpu_id) (gpu_gfx_activity)",
                                "{{hostname}} {{gpu_id}}"),), "percent", always_answers=False),
        Panel("GPU memory used", (("sum by (hostname, gpu_id) (gpu_used_vram) / sum by "
                                   "(hostname, gpu_id) (gpu_total_vram)",
                                   "{{hostname}} {{gpu_id}}"),), "percentunit",
              always_answers=False),
        Panel("GPU power", (("sum by (hostname, gpu_id) (gpu_power_usage)",
                             "{{hostname}} {{gpu_id}}"),), "watt", always_answers=False),
        Panel("GPU health and ECC errors", (("min by (hostname, gpu_id) (gpu_health)",
                                             "health {{hostname}} {{gpu_id}}"),
                                            ("sum by (hostname, gpu_id) (gpu_ecc_uncorrect_total)",
                                             "uncorrectable ECC {{hostname}} {{gpu_id}}")),
              "short", always_answers=False),
    )),
    Row("Autoscaling", (
        Panel("Replicas", (('sum by (horizontalpodautoscaler) '
                            '(kube_horizontalpodautoscaler_status_current_replicas'
                            '{namespace=~"$namespace"})', "{{horizontalpodautoscaler}}"),
                           ('sum by (horizontalpodautoscaler) '
                            '(kube_horizontalpodautoscaler_spec_max_replicas'
                            '{namespace=~"$namespace"})', "max {{horizontalpodautoscaler}}")),
              "short", always_answers=False),
        Panel("Waiting requests (KEDA's query)",
              ((f"sum by (namespace, {SERVICE_LABEL}) (vllm:num_requests_waiting{sel()})",
                "{{" + SERVICE_LABEL + "}}"),), "short"),
    )),
)


def panels() -> list[Panel]:
    return [panel for row in ROWS for panel in row.panels]


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model: a variable each for the data source, the namespaces and the
    services, then the rows, two panels to a line."""
    laid_out: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        laid_out.append({"type": "row", "title": row.title, "collapsed": False, "panels": [],
                         "id": len(laid_out) + 1, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        for index, panel in enumerate(row.panels):
            x = (index % COLUMNS) * PANEL_WIDTH
            laid_out.append(_panel(panel, len(laid_out) + 1, x, y))
            if index % COLUMNS == COLUMNS - 1 or index == len(row.panels) - 1:
                y += PANEL_HEIGHT
    return {"uid": UID, "title": TITLE, "tags": ["aim-runtime", "vllm", "kserve", "amd"],
            "schemaVersion": 39, "editable": True, "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"}, "annotations": {"list": []},
            "templating": {"list": _variables()}, "panels": laid_out}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {"id": panel_id, "type": panel.kind, "title": panel.title,
            "description": panel.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(panel.queries)]}


def _variables() -> list[dict[str, Any]]:
    source = {"type": "prometheus", "uid": "${datasource}"}

    def label_values(name: str, query: str) -> dict[str, Any]:
        return {"name": name, "type": "query", "datasource": source, "query": query,
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"text": "All", "value": "$__all"}}

    return [{"name": "datasource", "type": "datasource", "query": "prometheus"},
            label_values("namespace", "label_values(aim_plan_info, namespace)"),
            label_values("service", 'label_values(aim_plan_info{namespace=~"$namespace"}, '
                                    f"{SERVICE_LABEL})")]


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def config_map() -> dict[str, Any]:
    """The dashboard for Grafana's sidecar, which loads every ConfigMap labelled
    `grafana_dashboard` (kube-prometheus-stack's and Grafana's charts' default)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "aim-runtime-dashboard",
                         "labels": {"grafana_dashboard": "1",
                                    "app.kubernetes.io/part-of": "aim-runtime"}},
            "data": {"aim-runtime.json": dashboard_json()}}


def layout_svg() -> str:
    """A picture of the dashboard's layout: each row's title over its panels' boxes."""
    scale_x, scale_y = 40, 12  # pixels per grid unit
    parts = []
    bottom = 0
    for item in dashboard()["panels"]:
        grid = item["gridPos"]
        left, top = grid["x"] * scale_x, grid["y"] * scale_y
        width, height = grid["w"] * scale_x, grid["h"] * scale_y
        bottom = max(bottom, top + height)
        title = escape(item["title"])
        if item["type"] == "row":
            parts.append(f'<text x="{left + 4}" y="{top + 10}" class="row">{title}</text>')
            continue
        parts.append(f'<rect x="{left + 2}" y="{top + 2}" width="{width - 4}" '
                     f'height="{height - 4}" rx="4"/>')
        parts.append(f'<text x="{left + 10}" y="{top + 20}">{title}</text>')
        parts.append(f'<text x="{left + 10}" y="{top + 38}" class="unit">{item["type"]}, '
                     f'{escape(item["fieldConfig"]["defaults"]["unit"])}</text>')
    style = ("<style>rect{fill:#f4f5f5;stroke:#c7d0d9}text{font:13px sans-serif;fill:#202226}"
             ".row{font-weight:bold}.unit{font-size:11px;fill:#6e7077}</style>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{24 * scale_x}" '
            f'height="{bottom}" viewBox="0 0 {24 * scale_x} {bottom}">\n{style}\n'
            + "\n".join(parts) + "\n</svg>\n")
