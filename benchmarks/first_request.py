"""A bf16 model's first request the moment it is ready, over many starts: the case in which
vLLM's CPU worker died with SIGILL on AMX hosts, until the runtime's vLLM plugin asked Linux for
AMX tile data in every vLLM process (hardware/amx.py; docs/cpu-dev-stack.md, "One model, every
CPU").

    python -m benchmarks.first_request [--starts 20] [--out DIR]

Each start serves the tiny model in bf16 (AIM_PRECISION=bf16; its recipe says fp32) with the
warm-up off, polls readiness every 0.2 s (tests/servers.py) and, once it answers 200, sends at
once a completion of a one-token prompt: a first engine step of at most 4 tokens, which no oneDNN
call precedes, so on an AMX host the first AMX instruction is the attention kernel's. Reported:
starts served, starts that failed (no answer, or the server died), the AMX outcome each vLLM
process logged, and the CPU.
Results go to `results/first_request.json` and `.md`. Only an AMX host can show the guard at
work; elsewhere the run shows the path is sound and that the plugin ran in every process.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from benchmarks.run import machine, workspace
from tests.servers import REPO, aim_server

REQUEST = {"model": "tiny", "prompt": [1], "max_tokens": 4, "temperature": 0}
AMX_OUTCOME = re.compile(r"AMX permission \(pid \d+\): (no AMX|granted|already permitted|refused)")


def one_start(work: Path, model: Path, index: int) -> dict[str, Any]:
    run = work / f"start-{index}"
    run.mkdir()
    server = aim_server(run, model, "--warmup", "off", env={"AIM_PRECISION": "bf16"}).start()
    try:
        server.wait_ready()
        answer = httpx.post(server.url + "/openai/v1/completions", json=REQUEST, timeout=60)
        served = answer.status_code == 200
    except (RuntimeError, httpx.HTTPError):
        served = False
    finally:
        exit_code = server.stop()
    log = server.log_path.read_text(errors="replace")
    return {"served": served, "exit_code": exit_code, "amx": sorted(AMX_OUTCOME.findall(log))}


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "starts": len(results),
            "served": sum(r["served"] for r in results),
            "failed": sum(not r["served"] for r in results),
            "amx_outcomes": dict(Counter(o for r in results for o in r["amx"])),
            "runs": results}


def render_markdown(summary: dict[str, Any]) -> str:
    host = summary["machine"]
    return "\n".join([
        "# First request on a bf16 model, the moment it is ready",
        "",
        f"{summary['date']}, {host['cpu']} ({host['cores']} cores), vLLM {host.get('vllm')}.",
        "",
        "| starts | served | failed | AMX outcomes logged (every vLLM process, every start) |",
        "|---|---|---|---|",
        f"| {summary['starts']} | {summary['served']} | {summary['failed']} | "
        + ", ".join(f"{k}: {v}" for k, v in summary["amx_outcomes"].items()) + " |",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    with workspace("aim-first-request-", Path("default")) as (work, model):
        results = []
        for index in range(arguments.starts):
            results.append(one_start(work, model, index))
            print(f"start {index + 1}/{arguments.starts}: {results[-1]}", flush=True)
    summary = report(results)
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "first_request.json").write_text(json.dumps(summary, indent=2) + "\n")
    (arguments.out / "first_request.md").write_text(render_markdown(summary))
    print(render_markdown(summary))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
