"""Metrics of our own (`aim_*`), next to vLLM's `vllm:*` in the same default registry.

`aim_plan_info` carries what was selected; the start-up phases say where start-up time went; the
fallback gauges say which compromises the planner made; the two KV capacities (planned, and what
vLLM actually allocated) show how far the planner's memory estimate is from the engine's.

The roofline gauges carry the plan's ceilings (planner/roofline.py); `DecodeEfficiency` computes,
at each scrape, the decode rate vLLM achieved since the previous scrape (from its own
`vllm:generation_tokens_total`) and that rate over the ceiling at the engine's current load
(`vllm:num_requests_running` sequences holding `vllm:kv_cache_usage_perc` of the KV cache).

With several API server processes (serving/api_server_group.py) the series live in Prometheus
multiprocess mode: each gauge says how the processes' values combine (the same plan in every
process: the most recent; start-up phases: the slowest; engine alive: the lowest), counters add
up, and a scrape (`scrape_registry`) merges every process's files with what multiprocess mode
cannot carry, read from the process answering: the info metrics and the computed collectors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    exposition,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from aim_runtime import settings
from aim_runtime.planner.plan import Plan
from aim_runtime.planner.roofline import Roofline
from aim_runtime.serving.paths import PROTOCOLS

# No `<name>_created` sample beside each counter and histogram, vLLM's included: with several API
# server processes, multiprocess mode writes none, so one process now exports the same series as
# several; and Prometheus stored each as a series of its own that no rule, panel or KEDA trigger
# reads (docs/metrics.md).
disable_created_metrics()
SAME_EVERYWHERE = "mostrecent"  # multiprocess mode: a value every process sets alike
PLAN = Info("aim_plan", "The recipe the planner chose, and on what")
ENGINE_CONFIG = Info("aim_engine_config",
                     "What the vLLM engine runs with, read back from its own configuration")
PROCESS_START = Gauge("aim_process_start_time_seconds",
                      "When the serving process started, Unix time (multiprocess mode drops "
                      "process_start_time_seconds)", multiprocess_mode="min")
PROCESS_START.set_to_current_time()
PLAN_MAX_MODEL_LEN = Gauge("aim_plan_max_model_len", "The plan's context length, tokens",
                           multiprocess_mode=SAME_EVERYWHERE)
PLAN_MAX_NUM_SEQS = Gauge("aim_plan_max_num_seqs", "Sequences the plan runs at once per replica",
                          multiprocess_mode=SAME_EVERYWHERE)
ADMISSION_LIMIT = Gauge("aim_admission_limit",
                        "Inference requests admitted at once before 503 (engine capacity plus "
                        "the queue bound)", multiprocess_mode=SAME_EVERYWHERE)
WARMUP_REQUESTS = Gauge("aim_warmup_requests", "Warm-up requests before readiness, by outcome",
                        ["outcome"], multiprocess_mode="sum")
LORA_LOAD_ERRORS = Counter("aim_lora_load_errors", "LoRA adapters refused or failed to load",
                           ["source"])  # the adapter directory, or vLLM's load API
for _source in ("directory", "api"):
    LORA_LOAD_ERRORS.labels(source=_source)
BUILD = Info("aim_build", "The versions serving: the runtime, vLLM, KServe, torch, ROCm (HIP)")
STARTUP_PHASE_SECONDS = Gauge("aim_startup_phase_seconds",
                              "Seconds each start-up phase took", ["phase"],
                              multiprocess_mode="max")
CANDIDATES_REFUSED = Gauge("aim_plan_candidates_refused",
                           "Plan candidates refused before the chosen one",
                           multiprocess_mode=SAME_EVERYWHERE)
FALLBACK = Gauge("aim_plan_fallback", "1 when the plan took this fallback", ["kind"],
                 multiprocess_mode=SAME_EVERYWHERE)
KV_CAPACITY_TOKENS = Gauge("aim_kv_cache_capacity_tokens",
                           "KV cache capacity per replica in tokens", ["source"],
                           multiprocess_mode=SAME_EVERYWHERE)
ENGINE_ALIVE = Gauge("aim_engine_alive", "1 while the vLLM engine is loaded and healthy",
                     multiprocess_mode="min")
# The pod's count (the gate counts in shared memory when there are several API servers).
IN_FLIGHT = Gauge("aim_requests_in_flight", "Inference requests admitted and not finished",
                  multiprocess_mode=SAME_EVERYWHERE)
REJECTED = Counter("aim_requests_rejected", "Requests refused by the gate", ["reason"])
# Every reason the gate and the header limits refuse for, exported at 0 from the start, so that a
# rate() or an alert on a reason works before its first refusal.
REJECT_REASONS = ("unauthorized", "too_large", "invalid_text", "overload", "headers_too_large")
for _reason in REJECT_REASONS:
    REJECTED.labels(reason=_reason)
API_SERVER_REQUESTS = Counter(
    "aim_api_server_requests",
    "Inference requests each API server process admitted (server: its index; one process: 0)",
    ["server"])
# Every request but probes and scrapes, answered or refused, by protocol and status class:
# vLLM's own HTTP counters see only its OpenAI application, and the gate's refusals never reach
# it. gRPC calls count as protocol `grpc`, their status mapped to the class HTTP would give.
REQUESTS = Counter("aim_requests", "Requests answered, by protocol and status class",
                   ["protocol", "status_class"])
STATUS_CLASSES = ("2xx", "4xx", "5xx")
# Every child made once, here (so each is exported at 0 from the start); a request looks its
# counter up instead of building the label key again under the metric's lock.
_REQUEST_COUNTERS = {(protocol, status): REQUESTS.labels(protocol=protocol, status_class=status)
                     for protocol in (*PROTOCOLS, "grpc") for status in STATUS_CLASSES}


def count_request(protocol: str, status_class: str) -> None:
    _REQUEST_COUNTERS[(protocol, status_class)].inc()


def status_class(status: int) -> str:
    """The class an HTTP status counts in: 1xx and 3xx with 2xx (answered), 4xx, else 5xx."""
    return "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "2xx"


LORA_REQUESTS = Counter("aim_lora_requests", "Inference requests per LoRA adapter", ["adapter"])
ROOFLINE_DECODE = Gauge(
    "aim_roofline_decode_tokens_per_second",
    "Decode ceiling of the plan (HBM bandwidth over the bytes each step reads), all replicas: "
    "point=single (one sequence, short context), per_sequence and aggregate (the planned "
    "full-length sequences)", ["point"], multiprocess_mode=SAME_EVERYWHERE)
ROOFLINE_PREFILL = Gauge(
    "aim_roofline_prefill_tokens_per_second",
    "Prefill ceiling of the plan (FLOPs over the peak of its compute precision), all replicas",
    multiprocess_mode=SAME_EVERYWHERE)
ROOFLINE_HBM = Gauge("aim_roofline_hbm_bytes_per_second", "Peak HBM bandwidth of one GPU",
                     multiprocess_mode=SAME_EVERYWHERE)
ROOFLINE_PEAK = Gauge("aim_roofline_peak_flops",
                      "Peak dense FLOP/s of one GPU in the plan's compute precision", ["precision"],
                      multiprocess_mode=SAME_EVERYWHERE)

FALLBACK_KINDS = ("precision", "kv_cache_dtype", "context", "devices")


def record_build(versions: dict[str, str]) -> None:
    BUILD.info(versions)


def record_plan(plan: Plan, checkpoint_precision: str | None) -> None:
    PLAN.info({
        "recipe": plan.recipe_id,
        "source": plan.recipe_source,
        "product": plan.product,
        "devices": str(plan.devices_used),
        "tp": str(plan.tensor_parallel_size),
        "pp": str(plan.pipeline_parallel_size),
        "dp": str(plan.data_parallel_size),
        "dtype": plan.dtype,
        "quantization": plan.quantization or "none",
        "kv_cache_dtype": plan.kv_cache_dtype,
        "max_model_len": str(plan.max_model_len),
        "max_num_seqs": str(plan.engine_args["max_num_seqs"]),
        "max_num_batched_tokens": str(plan.engine_args["max_num_batched_tokens"]),
        "block_size": str(plan.memory.block_size),
        "tool_parser": str(plan.engine_args.get("tool_call_parser") or "none"),
        "reasoning_parser": str(plan.engine_args.get("reasoning_parser") or "none"),
    })
    PLAN_MAX_MODEL_LEN.set(plan.max_model_len)
    PLAN_MAX_NUM_SEQS.set(int(plan.engine_args["max_num_seqs"]))
    CANDIDATES_REFUSED.set(sum(1 for r in plan.reasons if r.outcome == "refused"))
    taken = {
        "precision": checkpoint_precision not in (None, plan.precision)
        and not (checkpoint_precision == "fp32" and plan.precision == "bf16"),
        "kv_cache_dtype": plan.kv_cache_dtype.startswith("fp8"),
        "context": plan.max_model_len < plan.model.max_position_embeddings,
        "devices": plan.devices_used < plan.devices_available,
    }
    for kind in FALLBACK_KINDS:
        FALLBACK.labels(kind=kind).set(1 if taken[kind] else 0)
    KV_CAPACITY_TOKENS.labels(source="plan").set(plan.memory.kv_capacity_tokens)
    if plan.roofline is not None:
        record_roofline(plan.roofline)
        track_efficiency(plan.roofline, plan.memory.kv_capacity_tokens)


def record_roofline(roofline: Roofline) -> None:
    replicas = roofline.replicas
    ROOFLINE_DECODE.labels(point="single").set(roofline.decode_single_tokens_per_s)
    ROOFLINE_DECODE.labels(point="per_sequence").set(roofline.decode_per_sequence_tokens_per_s)
    ROOFLINE_DECODE.labels(point="aggregate").set(
        roofline.decode_aggregate_tokens_per_s * replicas)
    ROOFLINE_PREFILL.set(roofline.prefill_tokens_per_s * replicas)
    ROOFLINE_HBM.set(roofline.hbm_bytes_per_s)
    ROOFLINE_PEAK.labels(precision=roofline.compute_precision).set(roofline.peak_flops)


class DecodeEfficiency(Collector):
    """`aim_decode_tokens_per_second` (what vLLM generated per second since the previous scrape),
    `aim_decode_ceiling_tokens_per_second` (the roofline at the engine's load now) and
    `aim_decode_efficiency` (the first over the second), computed when scraped.

    The load is vLLM's own gauges: running sequences (summed over engines, spread over the
    data-parallel replicas) holding `kv_cache_usage_perc` of `kv_capacity_tokens` each replica
    has. Nothing is exported before two scrapes, nor efficiency while nothing runs."""

    GENERATED = "vllm:generation_tokens"
    RUNNING = "vllm:num_requests_running"
    KV_USAGE = "vllm:kv_cache_usage_perc"
    MIN_INTERVAL_S = 1.0  # closer scrapes reuse the previous rate
    SERIES = {
        "aim_decode_tokens_per_second":
            "Tokens vLLM generated per second between the last two scrapes",
        "aim_decode_ceiling_tokens_per_second":
            "Decode roofline at the engine's current load (all replicas)",
        "aim_decode_efficiency": "Achieved decode tokens/s over the roofline at that load",
    }

    def __init__(self, roofline: Roofline, kv_capacity_tokens: int,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.roofline = roofline
        self.kv_capacity_tokens = kv_capacity_tokens
        self.registry = registry
        self.clock = clock
        self._local = threading.local()
        self._last: tuple[float, float] | None = None  # (time, tokens generated)
        self._rate: float | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not take a first reading (names are computed per scrape)

    def collect(self) -> Iterable[Metric]:
        if getattr(self._local, "busy", False):
            return []  # reading vLLM's metrics collects the registry, this collector included
        self._local.busy = True
        try:
            values = self._read_vllm()
        finally:
            self._local.busy = False
        return self._families(values)

    def _read_vllm(self) -> dict[str, list[float]]:
        wanted = {self.GENERATED: f"{self.GENERATED}_total", self.RUNNING: self.RUNNING,
                  self.KV_USAGE: self.KV_USAGE}
        values: dict[str, list[float]] = {name: [] for name in wanted}
        for family in (self.registry or series_registry()).collect():
            sample_name = wanted.get(family.name)
            if sample_name is None:
                continue
            values[family.name] += [s.value for s in family.samples if s.name == sample_name]
        return values

    def _families(self, values: dict[str, list[float]]) -> list[Metric]:
        if not values[self.GENERATED]:
            return []
        now, generated = self.clock(), sum(values[self.GENERATED])
        if self._last is not None and now - self._last[0] >= self.MIN_INTERVAL_S:
            self._rate = max(0.0, generated - self._last[1]) / (now - self._last[0])
            self._last = (now, generated)
        elif self._last is None:
            self._last = (now, generated)
        if self._rate is None:
            return []
        rate, ceiling = self._rate, self.ceiling(sum(values[self.RUNNING]),
                                                 values[self.KV_USAGE])
        shown = {"aim_decode_tokens_per_second": rate}
        if ceiling:
            shown |= {"aim_decode_ceiling_tokens_per_second": ceiling,
                      "aim_decode_efficiency": rate / ceiling}
        return [GaugeMetricFamily(name, self.SERIES[name], value=value)
                for name, value in shown.items()]

    def ceiling(self, running: float, kv_usage: list[float]) -> float | None:
        """The decode roofline of all replicas with `running` sequences in the KV use given."""
        replicas = self.roofline.replicas
        per_replica = running / replicas
        if per_replica < 1:
            return None
        usage = sum(kv_usage) / len(kv_usage) if kv_usage else 0.0
        context = int(usage * self.kv_capacity_tokens / per_replica)
        return replicas * self.roofline.decode_tokens_per_s(round(per_replica), context)


_TRACKERS: list[DecodeEfficiency] = []

# Readiness as a series: ready, or the reason the probe answers 503.
STATES = ("loading", "warming", "starting", "ready", "draining", "stalled", "dead")


class ServingState(Collector):
    """At each scrape, from the server: aim_state{state} (1 for the state now, 0 for every
    other) and aim_lora_adapters_loaded."""

    SERIES = {
        "aim_state": "1 for the serving state now (ready, or why readiness is 503), 0 for the "
                     "others",
        "aim_lora_adapters_loaded": "LoRA adapters served now",
    }

    def __init__(self, state: Callable[[], str], adapters: Callable[[], int]) -> None:
        self.state = state
        self.adapters = adapters

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("aim_state", self.SERIES["aim_state"], labels=["state"])
        now = self.state()
        for state in STATES:
            family.add_metric([state], 1.0 if state == now else 0.0)
        yield family
        yield GaugeMetricFamily("aim_lora_adapters_loaded",
                                self.SERIES["aim_lora_adapters_loaded"], value=self.adapters())


_STATE: list[ServingState] = []


def track_state(state: Callable[[], str], adapters: Callable[[], int]) -> None:
    """Export what the server answers at each scrape (a new server's replaces the last)."""
    for old in _STATE:
        REGISTRY.unregister(old)
    _STATE[:] = [ServingState(state, adapters)]
    REGISTRY.register(_STATE[0])


def track_efficiency(roofline: Roofline, kv_capacity_tokens: int,
                     registry: CollectorRegistry | None = None,
                     clock: Callable[[], float] = time.monotonic) -> DecodeEfficiency:
    """Register the efficiency collector (in REGISTRY unless `registry` is given, which it then
    also reads vLLM's series from); a new plan's replaces the previous one."""
    home = registry or REGISTRY
    for old in [t for t in _TRACKERS if (t.registry or REGISTRY) is home]:
        home.unregister(old)
        _TRACKERS.remove(old)
    tracker = DecodeEfficiency(roofline, kv_capacity_tokens, registry, clock)
    home.register(tracker)
    _TRACKERS.append(tracker)
    return tracker


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR: set when the pod runs several API server processes."""
    directory = settings.PROMETHEUS_MULTIPROC_DIR.read()
    return str(directory) if directory else None


def series_registry() -> CollectorRegistry:
    """Where the counters, gauges and histograms of every process are read: this process's
    registry, or in multiprocess mode every process's files merged."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class ProcessLocal(Collector):
    """What multiprocess mode cannot carry, from the process answering the scrape: the info
    metrics (the same in every process) and the collectors computed at scrape time."""

    def collect(self) -> Iterable[Metric]:
        for info in (PLAN, ENGINE_CONFIG, BUILD):
            yield from info.collect()
        trackers: list[Collector] = [*_TRACKERS, *_STATE]
        for tracker in trackers:
            yield from tracker.collect()


def scrape_registry() -> CollectorRegistry:
    """What /metrics exposes: REGISTRY in one process; in multiprocess mode every process's
    series merged, with this process's `ProcessLocal` part."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = series_registry()
    registry.register(ProcessLocal())
    return registry


def encoder_for(accept: str | None) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """The exposition format the scraper asks for, as prometheus_client chooses it, except that
    OpenMetrics with `underscores` escaping (what Prometheus 2 asks for) keeps the colons of
    sample names: prometheus_client (prometheus/client_python#1177) wrote `vllm_x` samples under
    `# TYPE vllm:x`, so Prometheus stored `vllm_...` series and every `vllm:...` query (the
    dashboard, the alerts, KEDA's) came back empty. Every name here is valid under the legacy
    rules, which allow colons, so written unescaped it is what `underscores` escaping gives."""
    encoder, content_type = exposition.choose_encoder(accept or "")
    keywords = getattr(encoder, "keywords", {})
    if keywords.get("escaping") == openmetrics.UNDERSCORES:
        encoder = partial(openmetrics.generate_latest, escaping=openmetrics.ALLOWUTF8,
                          version=keywords.get("version", "1.0.0"))
    return encoder, content_type


PROGRESS_SERIES = ("vllm:num_requests_running", "vllm:generation_tokens_total")


def engine_progress() -> tuple[float, float]:
    """(requests running, tokens generated so far), summed from vLLM's own series: what the
    stall watch compares between two looks. In one process only those two series are collected,
    not the whole registry (several hundred samples, every few seconds while serving)."""
    registry = series_registry()
    source = registry.restricted_registry(PROGRESS_SERIES) if registry is REGISTRY else registry
    running = generated = 0.0
    for family in source.collect():
        for sample in family.samples:
            if sample.name == PROGRESS_SERIES[0]:
                running += sample.value
            elif sample.name == PROGRESS_SERIES[1]:
                generated += sample.value
    return running, generated


def record_phase(phase: str, seconds: float) -> None:
    STARTUP_PHASE_SECONDS.labels(phase=phase).set(round(seconds, 4))


def phases_recorded() -> dict[str, float]:
    """The start-up phases this process has timed so far, by name."""
    return {sample.labels["phase"]: sample.value
            for family in STARTUP_PHASE_SECONDS.collect() for sample in family.samples}
