"""The benchmark harnesses keep working. One real smoke run (one pair, one concurrency, few
prompts) of `make bench`'s command against both real servers writes its JSON, table and plot;
every harness's report is rendered in-process from its recorded results and must equal the
committed report. No timing is asserted here; performance is judged from full runs
(docs/performance.md)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import REPO, server_environment

RESULTS = REPO / "benchmarks" / "results"
# (harness module, results stem) for every report the benchmarks write
REPORTS = [("report", "results"), ("warm_start", "warm_start"), ("api_servers", "api_servers"),
           ("api_servers", "api_servers_dp"), ("api_servers", "api_servers_1"),
           ("front_end_profile", "front_end_profile"),
           ("first_request", "first_request"), ("precision", "precision")]


def run_smoke(module: str, tmp_path: Path) -> Path:
    """`python -m benchmarks.<module> --smoke` as a user runs it; the directory of its results."""
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out",
                             str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=1200, env=server_environment(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_smoke_benchmark_writes_results_table_and_plot(tmp_path):
    out = run_smoke("run", tmp_path)
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["serving"]["summary"]
    assert entry["concurrency"] == 4 and entry["pairs"] == 1
    for key in ("output_throughput", "request_throughput", "p50_ttft_ms", "p99_ttft_ms",
                "p50_itl_ms", "p99_itl_ms", "frontend_cpu_ms_per_token"):
        assert entry[key]["ratio"]["median"] > 0, key
    run = results["serving"]["runs"][0]
    assert run["bare"]["failed"] == 0 and run["ours"]["failed"] == 0
    assert run["bare"]["completed"] == run["ours"]["completed"] == run["prompts"]
    assert set(results["startup"]["pairs"][0]["phases"]) >= {"detect", "plan", "engine"}
    assert results["planner"]["recipes"] == 50
    table = (out / "results.md").read_text()
    assert "| concurrency | output tok/s |" in table and "| target | met | measured |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("module", "stem"), REPORTS, ids=[stem for _, stem in REPORTS])
def test_each_report_renders_from_its_recorded_results(module, stem):
    harness = importlib.import_module(f"benchmarks.{module}")
    results = json.loads((RESULTS / f"{stem}.json").read_text())
    assert harness.render_markdown(results) == (RESULTS / f"{stem}.md").read_text()


def test_a_servers_runs_in_a_pair_count_as_one():
    """CPU and tokens add up; throughput is the tokens over the runs' time together, not the
    mean of their rates (a stalled run weighs by its length)."""
    from benchmarks.api_servers import over_legs

    legs = [{"total_output_tokens": 1000, "output_throughput": 100.0, "failed": 0,
             "frontend_cpu_s_per_process": [0.3], "requests_per_process": [9]},
            {"total_output_tokens": 1000, "output_throughput": 25.0, "failed": 1,
             "frontend_cpu_s_per_process": [0.5], "requests_per_process": [8]}]
    combined = over_legs(legs)
    assert combined["frontend_cpu_ms_per_token"] == 0.4
    assert combined["output_throughput"] == 40.0
    assert combined["frontend_cpu_s_per_process"] == [0.8]
    assert combined["requests_per_process"] == [17] and combined["failed"] == 1
    assert over_legs([{**leg, "requests_per_process": None} for leg in legs])[
        "requests_per_process"] is None


def test_the_plot_renders_from_the_recorded_results(tmp_path):
    from benchmarks import report

    report.plot(json.loads((RESULTS / "results.json").read_text()), tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
