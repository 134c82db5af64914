"""The benchmark harness keeps working: a smoke run (one pair, one concurrency, few prompts) of
the real command against both real servers writes its JSON, table and plot. No timing is asserted
here; performance is judged from full runs (README, "Performance")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import REPO, server_environment

pytestmark = pytest.mark.serving


def run_smoke(module: str, tmp_path: Path, *extra: str) -> Path:
    """`python -m benchmarks.<module> --smoke` as a user runs it; the directory of its results."""
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out",
                             str(out), *extra], cwd=REPO, capture_output=True, text=True,
                            timeout=1200, env=server_environment(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


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


def test_smoke_warm_start_benchmark_writes_its_figures(tmp_path):
    out = run_smoke("warm_start", tmp_path)
    results = json.loads((out / "warm_start.json").read_text())
    for extent in ("off", "full"):
        (run,) = results["first_request"][extent]["runs"]
        assert run["first_ms"] > 0 and run["steady_ms"] > 0
    (pair,) = results["compile_cache"]["pairs"]
    assert (pair["cold"]["cache"], pair["warm"]["cache"]) == ("miss", "hit")
    assert {"engine", "warmup"} <= set(pair["warm"]["phases"])
    assert "| warm-up | first TTFT ms |" in (out / "warm_start.md").read_text()


@pytest.mark.parametrize(("extra", "stem"), [((), "api_servers"),
                                             (("--data-parallel",), "api_servers_dp")])
def test_smoke_api_servers_benchmark_writes_its_figures(tmp_path, extra, stem):
    out = run_smoke("api_servers", tmp_path, *extra)
    results = json.loads((out / f"{stem}.json").read_text())
    assert results["settings"]["data_parallel"] == bool(extra)
    for entry in results["summary"]:
        count = entry["count"]
        for label in ("bare", "ours"):
            (share,) = entry[label]["cpu_share_per_process"]
            assert len(share) == count and entry[label]["frontend_cpu_ms_per_token"]["median"] > 0
        (requests,) = entry["ours"]["requests_per_process"]
        # vLLM's serving benchmark sends one test prompt before the load
        assert len(requests) == count and sum(requests) == results["settings"]["prompts"] + 1
        assert entry["ratio"]["frontend_cpu_ms_per_token"]["median"] > 0
    assert "| API servers | server | CPU ms/token |" in (out / f"{stem}.md").read_text()


def test_smoke_front_end_profile_writes_both_profiles(tmp_path):
    out = run_smoke("front_end_profile", tmp_path)
    results = json.loads((out / "front_end_profile.json").read_text())
    for label in ("bare", "ours"):
        run = results["runs"][label]
        assert run["requests"] == results["settings"]["prompts"] and run["tokens"] > 0
        assert run["calls_per_token"] > 0 and run["profiled_ms_per_token"] > 0
        assert 0 < run["engine_outputs_per_token"] <= 1
        assert any("uvicorn" in row["function"] for row in run["top"])  # the HTTP server's send
    markdown = (out / "front_end_profile.md").read_text()
    assert "| server | Python calls per token |" in markdown
    assert len(results["pairs"]) == 1 and "\n| 1 | " in markdown
