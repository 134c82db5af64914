"""The roofline (planner/roofline.py) against figures worked out by hand from the published configs
and the product table, for a dense bf16 model, a dense FP8 model and an MXFP4 mixture of experts;
its place in `plan --explain`; the /metrics efficiency computed at scrape time; the benchmark's
efficiency column."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.hardware import detect
from aim_runtime.planner.catalog import Catalog
from aim_runtime.planner.explain import explain_plan
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import Plan, make_plan
from testkit import MODELS

EMPTY = Catalog(recipes=(), directories=())


def derived(model: str, simulate: str) -> Plan:
    return make_plan(detect(simulate=simulate, environ={}), load_model_facts(MODELS / model),
                     EMPTY)


def planned_point(plan: Plan, weights_read: float, kv_per_token: int,
                  bandwidth: float) -> tuple[int, float]:
    """(concurrency, aggregate tokens/s) at the planned point, by docs/planning.md's formula."""
    concurrency = min(plan.engine_args["max_num_seqs"],
                      plan.memory.kv_capacity_tokens // plan.max_model_len)
    step = weights_read + concurrency * plan.max_model_len * kv_per_token
    return concurrency, concurrency * bandwidth / step


def test_llama_3_1_8b_bf16_on_one_mi300x():
    plan = derived("llama-3.1-8b-instruct", "MI300X:1")
    r = plan.roofline
    assert plan.precision == "bf16" and r is not None
    # Llama-3.1-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads x 128, MLP 14336, vocab 128256
    layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336  # 218,103,808
    linear = 32 * layer  # 6,979,321,856
    embedding = lm_head = 128256 * 4096  # 525,336,576 each
    norms = 32 * 2 * 4096 + 4096
    weights = 2 * (linear + embedding + lm_head + norms)  # bf16: 16,060,522,496 bytes
    assert plan.memory.weight_bytes_per_device == weights == 16_060_522_496
    read = weights - 2 * embedding  # a decode step gathers a few embedding rows only
    assert r.hbm_bytes_per_s == 5.3e12 and r.peak_flops == 1307.4e12
    assert r.decode_single_tokens_per_s == pytest.approx(5.3e12 / read)  # 353.1 tokens/s
    assert r.decode_single_tokens_per_s == pytest.approx(353.1, abs=0.1)
    kv = 32 * 2 * 8 * 128 * 2  # 131,072 bytes per token
    assert r.kv_bytes_per_token == kv
    concurrency, aggregate = planned_point(plan, read, kv, 5.3e12)
    assert (r.concurrency, r.context_tokens) == (concurrency, plan.max_model_len)
    assert r.decode_aggregate_tokens_per_s == pytest.approx(aggregate)
    assert r.decode_per_sequence_tokens_per_s == pytest.approx(aggregate / concurrency)
    # prefill: 2 FLOPs per linear weight + attention 2 x 32 layers x 32 heads x 128 x prompt
    prompt = min(plan.max_model_len, plan.engine_args["max_num_batched_tokens"])  # 16,384
    flops = 2 * linear + 2 * 32 * 32 * 128 * prompt  # 13.96 + 4.29 GFLOP
    assert r.prefill_tokens_per_s == pytest.approx(1307.4e12 / flops)
    assert r.prefill_tokens_per_s == pytest.approx(71_630, rel=1e-3)


def test_llama_3_1_70b_fp8_on_one_mi300x():
    plan = derived("llama-3.1-70b-instruct", "MI300X:1")
    r = plan.roofline
    assert (plan.precision, r.compute_precision) == ("fp8", "fp8")
    layer = 8192 * (8192 + 2 * 1024) + 8192 * 8192 + 3 * 8192 * 28672  # 855,638,016
    linear = 80 * layer  # 68,451,041,280 in FP8, one byte each
    embedding = 128256 * 8192  # 1,050,673,152, 16-bit, as is the LM head
    weights = linear + 2 * 2 * embedding + 2 * (80 * 2 * 8192 + 8192)
    assert plan.memory.weight_bytes_per_device == weights
    read = weights - 2 * embedding  # 70,555,025,408 bytes
    assert r.decode_single_tokens_per_s == pytest.approx(5.3e12 / read)
    assert r.decode_single_tokens_per_s == pytest.approx(75.1, abs=0.05)
    kv = 80 * 2 * 8 * 128 * 2  # 327,680 bytes per token (16-bit KV cache)
    concurrency, aggregate = planned_point(plan, read, kv, 5.3e12)
    assert r.concurrency == concurrency
    assert r.decode_aggregate_tokens_per_s == pytest.approx(aggregate)
    prompt = min(plan.max_model_len, plan.engine_args["max_num_batched_tokens"])
    flops = 2 * linear + 2 * 80 * 64 * 128 * prompt
    assert r.prefill_tokens_per_s == pytest.approx(2614.9e12 / flops)


def test_gpt_oss_120b_mxfp4_on_one_mi355x():
    """A mixture of experts: one sequence touches 4 of 128 experts per layer; a batch touches
    1 - (124/128)^batch of them."""
    plan = derived("gpt-oss-120b", "MI355X:1")
    r = plan.roofline
    assert plan.precision == "mxfp4" and r.compute_precision == "bf16"  # W4A16 (vLLM 0.32-0.34)
    mxfp4 = 4.25 / 8  # 4-bit values + an 8-bit scale per 32
    experts = 36 * 128 * 3 * 2880 * 2880  # 114,661,785,600 parameters
    attention = 36 * (2880 * (64 * 64 + 2 * 8 * 64) + 64 * 64 * 2880)
    router = 36 * 128 * 2880
    embedding = 201088 * 2880  # and as many in the (untied) LM head, 16-bit
    weights = (experts + attention + router) * mxfp4 + 2 * 2 * embedding + 2 * (
        36 * 2 * 2880 + 2880)
    assert plan.memory.weight_bytes_per_device == pytest.approx(weights, abs=1)
    expert_bytes = experts * mxfp4  # 60,914,073,600
    dense = weights - expert_bytes - 2 * embedding  # attention, router, LM head, norms
    one = dense + expert_bytes * 4 / 128
    assert r.decode_single_tokens_per_s == pytest.approx(8.0e12 / one, rel=1e-6)
    assert r.decode_single_tokens_per_s == pytest.approx(2236.6, abs=0.5)
    batch = 64
    touched = dense + expert_bytes * (1 - (124 / 128) ** batch)
    assert r.weight_bytes_read(batch) == pytest.approx(touched, rel=1e-6)
    kv = 36 * 2 * 8 * 64 * 2  # 73,728 bytes per token
    assert r.decode_tokens_per_s(batch, 4096) == pytest.approx(
        batch * 8.0e12 / (touched + batch * 4096 * kv), rel=1e-6)
    active = experts * 4 / 128 + attention + router
    prompt = min(plan.max_model_len, plan.engine_args["max_num_batched_tokens"])
    flops = 2 * active + 2 * 36 * 64 * 64 * prompt
    assert r.prefill_tokens_per_s == pytest.approx(2516.6e12 / flops, rel=1e-6)


def test_pipeline_and_replicas():
    """Pipeline stages run one after another for one sequence; replicas multiply throughput."""
    plan = make_plan(detect(simulate="MI300X:6", environ={}),
                     load_model_facts(MODELS / "llama-3.1-405b-instruct"), EMPTY)
    r = plan.roofline
    assert (r.pipeline_stages, r.devices_per_replica) == (3, 6)
    assert r.decode_tokens_per_s(1, 0) == pytest.approx(5.3e12 / (3 * r.weight_bytes_read(1)))
    throughput = make_plan(detect(simulate="MI300X:8", environ={}),
                           load_model_facts(MODELS / "llama-3.1-8b-instruct"), EMPTY,
                           collect_overrides({"objective": "throughput"}, {}))
    assert throughput.roofline.replicas == 8


def test_explain_shows_the_roofline_and_products_without_figures_say_so():
    text = explain_plan(derived("llama-3.1-8b-instruct", "MI300X:1"))
    assert "roofline (MI300X: HBM 5.3 TB/s, 1,307.4 dense bf16 TFLOPS per device" in text
    assert "decode, one sequence, short context: <= 353.1 tokens/s" in text
    assert "prefill, 16,384-token prompts" in text
    mi308 = derived("llama-3.1-8b-instruct", "MI308X:1")
    assert mi308.roofline is None
    assert "roofline: the product table has no bandwidth/peak figures for MI308X" in \
        explain_plan(mi308)


# --- /metrics: the efficiency computed when scraped ---------------------------------------------


def test_decode_efficiency_from_vllms_counter_at_scrape_time():
    from aim_runtime.serving.metrics import track_efficiency

    roofline = derived("llama-3.1-8b-instruct", "MI300X:1").roofline
    registry = CollectorRegistry()
    generated = Counter("vllm:generation_tokens", "tokens", ["model_name", "engine"],
                        registry=registry)
    running = Gauge("vllm:num_requests_running", "running", ["model_name", "engine"],
                    registry=registry)
    usage = Gauge("vllm:kv_cache_usage_perc", "usage", ["model_name", "engine"],
                  registry=registry)
    now = [100.0]
    track_efficiency(roofline, 400_000, registry, clock=lambda: now[0])

    def scrape() -> dict[str, float]:
        return {s.name: s.value for family in registry.collect() for s in family.samples
                if s.name.startswith("aim_decode")}

    generated.labels("m", "0").inc(500)
    assert scrape() == {}  # one reading: no rate yet
    now[0] += 10
    generated.labels("m", "0").inc(2000)
    running.labels("m", "0").set(8)
    usage.labels("m", "0").set(0.25)
    values = scrape()
    assert values["aim_decode_tokens_per_second"] == pytest.approx(200.0)
    context = int(0.25 * 400_000 / 8)  # 12,500 tokens each
    ceiling = roofline.decode_tokens_per_s(8, context)
    assert values["aim_decode_ceiling_tokens_per_second"] == pytest.approx(ceiling)
    assert values["aim_decode_efficiency"] == pytest.approx(200.0 / ceiling)
    running.labels("m", "0").set(0)
    now[0] += 10
    assert set(scrape()) == {"aim_decode_tokens_per_second"}  # idle: no efficiency


def test_roofline_gauges():
    from aim_runtime.serving import metrics

    roofline = derived("llama-3.1-8b-instruct", "MI300X:1").roofline
    metrics.record_roofline(roofline)
    assert metrics.ROOFLINE_DECODE.labels(point="single")._value.get() == pytest.approx(
        roofline.decode_single_tokens_per_s)
    assert metrics.ROOFLINE_HBM._value.get() == 5.3e12
    assert metrics.ROOFLINE_PEAK.labels(precision="bf16")._value.get() == 1307.4e12


# --- the benchmark's efficiency column ---------------------------------------------------------


def summary(throughput: float) -> list[dict]:
    spread = {"min": throughput, "median": throughput, "max": throughput}
    return [{"concurrency": 4, "pairs": 1,
             "output_throughput": {"bare": spread, "ours": spread, "ratio": spread}}]


def test_benchmark_reports_efficiency_on_gpus_and_says_not_applicable_on_cpu():
    from benchmarks.report import efficiencies, efficiency_lines

    roofline = derived("llama-3.1-8b-instruct", "MI300X:1").roofline
    results = {"roofline": roofline.model_dump(), "settings": {"input_len": 128,
                                                               "output_len": 128},
               "serving": {"summary": summary(300.0)}}
    (row,) = efficiencies(results)
    ceiling = roofline.decode_tokens_per_s(4, 128 + 64)
    assert row["ceiling"] == pytest.approx(ceiling)
    assert row["ours"] == pytest.approx(300.0 / ceiling)
    assert any(line.startswith("| 4 |") and "%" in line for line in efficiency_lines(results))
    cpu = {**results, "roofline": None}
    assert efficiencies(cpu) is None
    assert "not applicable (no GPU" in efficiency_lines(cpu)[0]
    assert math.isfinite(row["bare"])
