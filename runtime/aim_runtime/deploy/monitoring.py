"""The alert rules, defined once and written as a Prometheus rule file and as a PrometheusRule
(the Prometheus Operator's object), each with a severity, a `for:`, a summary, a description and
a runbook in docs/runbooks.md; and the Grafana dashboard of deploy/dashboard.py (its JSON, its
ConfigMap, and the picture of its layout in the docs). Each alert also carries the series that
make it fire and a case where it stays silent: tests/test_monitoring.py runs them through
`promtool test rules`.

    python -m aim_runtime.deploy.monitoring      # rewrite monitoring/ and the layout picture

The PromQL is read alike by Prometheus 2.x and 3.x (no 3.x-only functions or syntax). Series
named here that the runtime does not export itself are listed in OUTSIDE_SERIES.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aim_runtime.deploy import dashboard

# Where the runbooks are: the docs page in this repository; `--runbook-base URL` makes the links
# absolute for your Alertmanager (where you publish the docs).
RUNBOOKS = "docs/runbooks.md"
GROUP = "aim-runtime"
# What the ServiceMonitor (manifests/servicemonitor.yaml) adds to every target it scrapes.
TARGET = 'runtime="aim-runtime"'
POD = 'namespace="ml", pod="llama-0", runtime="aim-runtime"'
SERVICE = dashboard.SERVICE_LABEL  # the InferenceService, as the ServiceMonitor labels it
# Series the rules read that other exporters publish (kube-state-metrics, Prometheus itself).
OUTSIDE_SERIES = {"up", "kube_pod_container_status_restarts_total",
                  "kube_horizontalpodautoscaler_status_current_replicas",
                  "kube_horizontalpodautoscaler_spec_max_replicas",
                  # AMD's device-metrics-exporter (GPU operator), per GPU of a node
                  "gpu_health", "gpu_ecc_uncorrect_total", "gpu_gfx_activity",
                  "gpu_used_vram", "gpu_total_vram", "gpu_power_usage"}
# Series only a GPU plan exports (a roofline needs a GPU).
GPU_ONLY_SERIES = {"aim_decode_efficiency"}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str  # critical: page; warning: look today; info: look when convenient
    summary: str
    description: str
    # promtool input series (series -> values) that make it fire, and that keep it silent
    firing: dict[str, str] = field(default_factory=dict)
    silent: dict[str, str] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return self.name.lower()

    def rule(self, runbooks: str = RUNBOOKS) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": f"{runbooks}#{self.anchor}"}}


def _state(state: str) -> str:
    return f'aim_state{{{POD}, state="{state}"}}'


def _error_ratio(window: str) -> str:
    """Requests answered 5xx over all requests, per service, in `window`."""
    by = f"sum by (namespace, {SERVICE})"
    return (f'{by} (rate(aim_requests_total{{status_class="5xx"}}[{window}])) / '
            f"{by} (rate(aim_requests_total[{window}]))")


def _requests(status_class: str) -> str:
    return (f'aim_requests_total{{{POD}, {SERVICE}="llama", protocol="openai", '
            f'status_class="{status_class}"}}')


GPU = 'hostname="node-1", gpu_id="3", serial_number="PCB0042"'


ALERTS = (
    Alert("AimRuntimeTargetDown", f"up{{{TARGET}}} == 0", "5m", "critical",
          "Prometheus cannot scrape an AIM Runtime pod",
          "{{ $labels.namespace }}/{{ $labels.pod }} has not answered /metrics for 5 minutes.",
          firing={f"up{{{POD}}}": "0x10"}, silent={f"up{{{POD}}}": "1x10"}),
    Alert("AimRuntimeNotReady", 'aim_state{state=~"draining|stalled|dead"} == 1', "5m",
          "warning", "An AIM Runtime pod is out of service",
          "{{ $labels.namespace }}/{{ $labels.pod }} has been {{ $labels.state }} for 5 "
          "minutes.", firing={_state("dead"): "1x10"}, silent={_state("dead"): "0x10"}),
    Alert("AimRuntimeStartupTooSlow", 'aim_state{state=~"loading|warming|starting"} == 1',
          "30m", "warning", "An AIM Runtime pod has been starting for 30 minutes",
          "{{ $labels.namespace }}/{{ $labels.pod }} is still {{ $labels.state }}.",
          firing={_state("loading"): "1x40"}, silent={_state("loading"): "1x10 0x30"}),
    Alert("AimRuntimeEngineStalled", 'aim_state{state="stalled"} == 1', "1m", "critical",
          "The vLLM engine stopped producing tokens",
          "{{ $labels.namespace }}/{{ $labels.pod }}: requests are running and no token came "
          "for AIM_STALL_SECONDS; the pod restarts.",
          firing={_state("stalled"): "1x5"}, silent={_state("stalled"): "0x5"}),
    Alert("AimRuntimeRestarting",
          'increase(kube_pod_container_status_restarts_total{container="kserve-container"}'
          "[30m]) >= 2", "0m", "warning", "An AIM Runtime container keeps restarting",
          "{{ $labels.namespace }}/{{ $labels.pod }} restarted {{ $value }} times in 30 "
          "minutes: read its termination message.",
          firing={'kube_pod_container_status_restarts_total{namespace="ml", pod="llama-0", '
                  'container="kserve-container"}': "0 0 1 1 2 2 3 3 3 3"},
          silent={'kube_pod_container_status_restarts_total{namespace="ml", pod="llama-0", '
                  'container="kserve-container"}': "0x10"}),
    Alert("AimRuntimeErrorBudgetBurn",
          f"({_error_ratio('5m')} > 0.05) and ({_error_ratio('1h')} > 0.05)", "5m", "critical",
          "An InferenceService answers over 5% of its requests with server errors",
          "{{ $labels.namespace }}/{{ $labels." + SERVICE + " }} answered {{ $value | "
          "humanizePercentage }} of its requests 5xx in the last hour, and over 5% in the last "
          "5 minutes: a 99% availability objective burns at 5 times its budget.",
          firing={_requests("5xx"): "0+10x70", _requests("2xx"): "0+10x70"},
          silent={_requests("5xx"): "0x70", _requests("2xx"): "0+10x70"}),
    Alert("AimRuntimeSheddingLoad",
          'sum by (namespace, pod) (rate(aim_requests_rejected_total{reason="overload"}[5m]))'
          " > 0", "10m", "warning", "AIM Runtime is refusing requests for overload",
          "{{ $labels.namespace }}/{{ $labels.pod }} answers 503 with Retry-After: more "
          "replicas, or a larger max_num_seqs, are needed.",
          firing={f'aim_requests_rejected_total{{{POD}, reason="overload"}}': "0+10x20"},
          silent={f'aim_requests_rejected_total{{{POD}, reason="overload"}}': "0x20"}),
    Alert("AimRuntimePreempting",
          "sum by (namespace, pod) (rate(vllm:num_preemptions_total[5m])) > 0", "15m",
          "warning", "vLLM is preempting requests: the KV cache is too small for the load",
          "{{ $labels.namespace }}/{{ $labels.pod }} preempts {{ $value }} requests per "
          "second.", firing={f"vllm:num_preemptions_total{{{POD}}}": "0+5x25"},
          silent={f"vllm:num_preemptions_total{{{POD}}}": "3x25"}),
    Alert("AimRuntimeTimeToFirstTokenSlow",
          "(1 - sum by (namespace) (rate(vllm:time_to_first_token_seconds_bucket"
          '{le="2.5"}[10m])) / sum by (namespace) (rate('
          "vllm:time_to_first_token_seconds_count[10m]))) > 0.1", "15m", "warning",
          "Over 10% of first tokens take longer than 2.5 s",
          "In {{ $labels.namespace }}, {{ $value | humanizePercentage }} of requests waited "
          "over 2.5 s for their first token.",
          firing={f'vllm:time_to_first_token_seconds_bucket{{{POD}, le="2.5"}}': "0+5x30",
                  f"vllm:time_to_first_token_seconds_count{{{POD}}}": "0+10x30"},
          silent={f'vllm:time_to_first_token_seconds_bucket{{{POD}, le="2.5"}}': "0+10x30",
                  f"vllm:time_to_first_token_seconds_count{{{POD}}}": "0+10x30"}),
    Alert("AimRuntimeKVCacheBelowPlan",
          'aim_kv_cache_capacity_tokens{source="engine"} < ignoring(source) 0.9 * '
          'aim_kv_cache_capacity_tokens{source="plan"}', "30m", "warning",
          "vLLM allocated less KV cache than the plan counted on",
          "{{ $labels.namespace }}/{{ $labels.pod }}: the engine's KV capacity is under 90% "
          "of the plan's; the planner's memory estimate is off for this model or GPU.",
          firing={f'aim_kv_cache_capacity_tokens{{{POD}, source="engine"}}': "50000x40",
                  f'aim_kv_cache_capacity_tokens{{{POD}, source="plan"}}': "100000x40"},
          silent={f'aim_kv_cache_capacity_tokens{{{POD}, source="engine"}}': "98000x40",
                  f'aim_kv_cache_capacity_tokens{{{POD}, source="plan"}}': "100000x40"}),
    Alert("AimRuntimeDecodeEfficiencyLow", "aim_decode_efficiency < 0.3", "30m", "info",
          "Decode runs under 30% of the roofline",
          "{{ $labels.namespace }}/{{ $labels.pod }} generates at {{ $value | "
          "humanizePercentage }} of what the GPUs' bandwidth allows at this load.",
          firing={f"aim_decode_efficiency{{{POD}}}": "0.1x40"},
          silent={f"aim_decode_efficiency{{{POD}}}": "0.6x40"}),
    Alert("AimRuntimeMixedRecipes",
          f"count by (namespace, {SERVICE}) (count by (namespace, {SERVICE}, recipe) "
          "(aim_plan_info)) > 1", "30m", "info",
          "An InferenceService's pods run different recipes",
          "{{ $labels.namespace }}/{{ $labels." + SERVICE + " }} has pods on {{ $value }} "
          "recipes for 30 minutes: a rollout that did not finish, or a canary left behind.",
          firing={f'aim_plan_info{{namespace="ml", pod="a", {SERVICE}="llama", recipe="r1"}}':
                  "1x40",
                  f'aim_plan_info{{namespace="ml", pod="b", {SERVICE}="llama", recipe="r2"}}':
                  "1x40"},
          silent={f'aim_plan_info{{namespace="ml", pod="a", {SERVICE}="llama", recipe="r1"}}':
                  "1x40",
                  f'aim_plan_info{{namespace="ml", pod="b", {SERVICE}="llama", recipe="r1"}}':
                  "1x40"}),
    Alert("AimRuntimeAutoscalerAtMax",
          "kube_horizontalpodautoscaler_status_current_replicas >= "
          "kube_horizontalpodautoscaler_spec_max_replicas", "30m", "warning",
          "An InferenceService's autoscaler is at its maximum",
          "{{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} has run at its "
          "replica maximum for 30 minutes.",
          firing={'kube_horizontalpodautoscaler_status_current_replicas{namespace="ml", '
                  'horizontalpodautoscaler="keda-hpa-llama"}': "4x40",
                  'kube_horizontalpodautoscaler_spec_max_replicas{namespace="ml", '
                  'horizontalpodautoscaler="keda-hpa-llama"}': "4x40"},
          silent={'kube_horizontalpodautoscaler_status_current_replicas{namespace="ml", '
                  'horizontalpodautoscaler="keda-hpa-llama"}': "2x40",
                  'kube_horizontalpodautoscaler_spec_max_replicas{namespace="ml", '
                  'horizontalpodautoscaler="keda-hpa-llama"}': "4x40"}),
    Alert("AimRuntimeGpuUnhealthy", "gpu_health == 0", "5m", "critical",
          "AMD's exporter reports a GPU unhealthy",
          "GPU {{ $labels.gpu_id }} of {{ $labels.hostname }} is unhealthy; the device plugin "
          "stops scheduling on it, and the pods using it should be moved.",
          firing={f"gpu_health{{{GPU}}}": "0x10"}, silent={f"gpu_health{{{GPU}}}": "1x10"}),
    Alert("AimRuntimeGpuEccErrors", "increase(gpu_ecc_uncorrect_total[15m]) > 0", "0m",
          "critical", "A GPU reports uncorrectable ECC errors",
          "GPU {{ $labels.gpu_id }} of {{ $labels.hostname }} had {{ $value }} uncorrectable "
          "ECC errors in 15 minutes: its results can no longer be trusted.",
          firing={f"gpu_ecc_uncorrect_total{{{GPU}}}": "0 0 0 1 1 1"},
          silent={f"gpu_ecc_uncorrect_total{{{GPU}}}": "0x5"}),
    Alert("AimRuntimeAdapterLoadFailures", "increase(aim_lora_load_errors_total[15m]) > 0",
          "0m", "warning", "LoRA adapters fail to load",
          "{{ $labels.namespace }}/{{ $labels.pod }}: {{ $value }} adapter loads failed "
          "({{ $labels.source }}) in 15 minutes; the log names each adapter and why.",
          firing={f'aim_lora_load_errors_total{{{POD}, source="directory"}}': "0 0 1 1 1 1"},
          silent={f'aim_lora_load_errors_total{{{POD}, source="directory"}}': "0x5"}),
)


def rule_file(runbooks: str = RUNBOOKS) -> dict[str, Any]:
    """The plain Prometheus rule file (`rule_files:` in prometheus.yml)."""
    return {"groups": [{"name": GROUP, "rules": [alert.rule(runbooks) for alert in ALERTS]}]}


def prometheus_rule(runbooks: str = RUNBOOKS) -> dict[str, Any]:
    """The same rules as the Prometheus Operator's PrometheusRule."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": GROUP, "labels": {"app.kubernetes.io/part-of": GROUP}},
            "spec": rule_file(runbooks)}


HEADER = ("# Generated by `python -m aim_runtime.deploy.monitoring`: edit deploy/monitoring.py "
          "or deploy/dashboard.py.\n")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the dashboard's JSON in its ConfigMap) as literal blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _yaml(document: dict[str, Any]) -> str:
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


# What the generator writes, by file name: the text from the runbooks' base URL.
FILES: dict[str, Callable[[str], str]] = {
    "aim-runtime.rules.yaml": lambda runbooks: _yaml(rule_file(runbooks)),
    "prometheusrule.yaml": lambda runbooks: _yaml(prometheus_rule(runbooks)),
    "aim-runtime.dashboard.json": lambda _: dashboard.dashboard_json(),
    "grafana-dashboard-configmap.yaml": lambda _: _yaml(dashboard.config_map()),
}
LAYOUT_PICTURE = Path("docs") / "dashboard-layout.svg"


def render(name: str, runbooks: str = RUNBOOKS) -> str:
    return FILES[name](runbooks)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m aim_runtime.deploy.monitoring",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=Path("monitoring"))
    parser.add_argument("--layout-picture", type=Path, default=LAYOUT_PICTURE,
                        help="where the dashboard's layout picture goes (the docs)")
    parser.add_argument("--runbook-base", default=RUNBOOKS,
                        help="where docs/runbooks.md is published (default: the repository path)")
    args = parser.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (args.directory / name).write_text(render(name, args.runbook_base))
    if args.layout_picture:
        args.layout_picture.write_text(dashboard.layout_svg())


if __name__ == "__main__":
    main(sys.argv[1:])
