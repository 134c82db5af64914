"""`aim-runtime validate` as an operator runs it, against real servers: it passes on healthy ones
(plain; API keys, gRPC and adapters) and fails, naming the check, with a wrong key, a wrong
expected recipe or no server. Against a server still loading: tests/test_runtime_contract.py;
an engine that dies (and a pod that stops) while it runs: tests/test_api_servers.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from servers import REPO
from testkit import API_KEY, run_cli


def validate(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("validate", "--url", url, *args, timeout=timeout)


def outcomes(result: subprocess.CompletedProcess) -> dict[str, str]:
    """Check name -> result, from the lines `validate` prints."""
    found = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASS", "WARN", "FAIL", "SKIP"):
            found[words[1]] = words[0]
    return found


def test_usage_errors_exit_two():
    assert run_cli("validate").returncode == 2  # --url is required
    assert validate("http://127.0.0.1:9", "--load", "-1").returncode == 2


def test_an_unreachable_server_fails_reach_and_skips_the_rest():
    result = validate("http://127.0.0.1:9", "--timeout", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = outcomes(result)
    assert checks["reach"] == "FAIL" and set(list(checks.values())[1:]) == {"SKIP"}
    assert "FAILED" in result.stdout.splitlines()[-1]


@pytest.mark.serving
def test_a_healthy_server_passes_with_a_line_per_check_and_a_json_report(server):
    result = validate(server.url, "--load", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = outcomes(result)
    assert {name for name, outcome in checks.items() if outcome == "PASS"} >= {
        "reach", "ready", "api-key", "models", "plan", "recipe", "completion", "stream", "n",
        "logprobs", "chat", "errors", "metrics", "load"}
    assert checks["adapters"] == "SKIP"
    # the tiny model's recipe declares a tool parser: a call that does not finish only warns
    assert checks["tool-call"] in ("PASS", "WARN") and "tool parser hermes" in result.stdout
    assert checks["choice"] in ("PASS", "WARN") and checks["json-schema"] in ("PASS", "WARN")
    report = json.loads(validate(server.url, "--json").stdout)
    assert report["passed"] is True and report["url"] == server.url
    assert [c["name"] for c in report["checks"]][:4] == ["reach", "ready", "api-key", "models"]
    assert all(set(c) == {"name", "result", "detail", "seconds"} for c in report["checks"])


@pytest.mark.serving
def test_the_expected_recipe_is_the_canary_check(server):
    served = json.loads(validate(server.url, "--json").stdout)["checks"]
    recipe = next(c["detail"] for c in served if c["name"] == "recipe").split()[0]
    assert validate(server.url, "--expect-recipe", recipe).returncode == 0
    wrong = validate(server.url, "--expect-recipe", "llama-3.1-8b-mi300x-bf16-tp1-latency")
    assert wrong.returncode == 1 and outcomes(wrong)["recipe"] == "FAIL"
    assert f"serving recipe {recipe}, expected llama-3.1-8b-mi300x-bf16-tp1-latency" in \
        wrong.stdout


@pytest.mark.serving
def test_keys_and_adapters_are_checked_where_the_server_has_them(guarded):
    result = validate(guarded.url, "--api-key", API_KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = outcomes(result)
    assert checks["api-key"] == "PASS" and "required" in result.stdout
    assert checks["adapters"] == "PASS"
    for key in ("wrong-key", None):
        refused = validate(guarded.url, *(["--api-key", key] if key else []))
        assert refused.returncode == 1 and outcomes(refused)["api-key"] == "FAIL"
        assert set(list(outcomes(refused).values())[3:]) == {"SKIP"}
    assert "give --api-key or AIM_API_KEY" in refused.stdout
    from_environment = run_cli("validate", "--url", guarded.url,
                               env={"AIM_API_KEY": f"{API_KEY},other"})
    assert from_environment.returncode == 0, from_environment.stdout


def test_the_job_runs_validate_as_the_cli_parses_it_and_the_network_policy_admits_it():
    import yaml

    import kserve_rules as rules
    from aim_runtime.cli.commands import build_parser

    job = yaml.safe_load((REPO / "manifests" / "validate-job.yaml").read_text())
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python3", "-m", "aim_runtime"]
    args = build_parser().parse_args(container["args"])
    assert args.url.startswith("http://") and args.load == 8
    assert container["image"] == "aim-runtime-rocm:0.1.0"
    assert rules.restricted_problems(pod["spec"], pod["spec"]["containers"]) == []
    policy = yaml.safe_load((REPO / "manifests" / "networkpolicy.yaml").read_text())
    assert any(rules.selects(peer["podSelector"], pod["metadata"]["labels"])
               for rule in policy["spec"]["ingress"] for peer in rule["from"]
               if "namespaceSelector" not in peer)
