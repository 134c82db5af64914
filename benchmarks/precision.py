"""The embedded default model's token rate in float32 (as served) against bf16, side by side.

    python -m benchmarks.precision [--pairs 3] [--tokens 128] [--out DIR]

The default model (SmolLM2-135M-Instruct, converted once into the user's cache) is served by
`aim-runtime serve` with AIM_PRECISION=fp32 and with AIM_PRECISION=bf16, one server at a time,
alternating which goes first. Each server answers one warm request, then `--tokens`-token
completions with the end of text ignored: one alone (decode rate of a single stream), then four at
once (batched throughput). Reported: tokens per second for each precision and the ratio
fp32/bf16, min-median-max over the pairs. Results go to `results/precision.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from benchmarks.run import _spread, machine
from tests.servers import REPO, ServerProcess, free_port, server_environment

PRECISIONS = ("fp32", "bf16")
BATCH = 4


def serve(work: Path, cache: Path, precision: str) -> ServerProcess:
    import sys

    port = free_port()
    command = [sys.executable, "-m", "aim_runtime", "serve", "--http_port", str(port),
               "--host", "127.0.0.1", "--enable_grpc", "false", "--warmup", "off"]
    env = server_environment(work, {"AIM_CACHE_DIR": str(cache), "AIM_PRECISION": precision})
    return ServerProcess(command, port, work / f"serve-{precision}.log", env).start()


def rate(url: str, tokens: int, concurrent: int) -> float:
    body = {"model": "model", "prompt": "Write a story about a lighthouse keeper.",
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True}

    def one(_: int) -> int:
        answer = httpx.post(url + "/openai/v1/completions", json=body, timeout=300)
        answer.raise_for_status()
        return int(answer.json()["usage"]["completion_tokens"])

    started = time.monotonic()
    with ThreadPoolExecutor(concurrent) as pool:
        generated = sum(pool.map(one, range(concurrent)))
    return generated / (time.monotonic() - started)


def measure(work: Path, cache: Path, precision: str, tokens: int) -> dict[str, float]:
    server = serve(work, cache, precision)
    try:
        server.wait_ready()
        rate(server.url, 8, 1)  # warm
        return {"single": rate(server.url, tokens, 1), "batched": rate(server.url, tokens, BATCH)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    from aim_runtime.checkpoint.default_model import default_cache_dir, ensure_default_model

    cache = ensure_default_model(default_cache_dir()).parent
    work = Path(REPO / "benchmarks" / "results" / "tmp")
    work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for pair in range(arguments.pairs):
        order = PRECISIONS if pair % 2 == 0 else PRECISIONS[::-1]
        runs.append({p: measure(work, cache, p, arguments.tokens) for p in order})
        print(f"pair {pair + 1}: {runs[-1]}", flush=True)
    summary = summarize(runs, arguments.tokens)
    (arguments.out / "precision.json").write_text(json.dumps(summary, indent=2) + "\n")
    (arguments.out / "precision.md").write_text(render_markdown(summary))
    print(render_markdown(summary))
    return 0


def summarize(runs: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "machine": machine(), "tokens": tokens, "runs": runs}
    for load in ("single", "batched"):
        figures[load] = {p: round(statistics.median(r[p][load] for r in runs), 1)
                         for p in PRECISIONS}
        figures[load]["fp32/bf16"] = _spread([r["fp32"][load] / r["bf16"][load] for r in runs])
    return figures


def render_markdown(summary: dict[str, Any]) -> str:
    host = summary["machine"]
    rows = [f"| {load} | {summary[load]['fp32']} | {summary[load]['bf16']} | "
            f"{summary[load]['fp32/bf16']['median']} ({summary[load]['fp32/bf16']['min']} to "
            f"{summary[load]['fp32/bf16']['max']}) |" for load in ("single", "batched")]
    return "\n".join([
        "# SmolLM2-135M-Instruct: float32 against bf16",
        "",
        f"{summary['date']}, {host['cpu']} ({host['cores']} cores), vLLM {host.get('vllm')}; "
        f"{len(summary['runs'])} alternating pairs, {summary['tokens']}-token completions.",
        "",
        "| load | fp32 tokens/s | bf16 tokens/s | fp32/bf16 (min to max) |",
        "|---|---|---|---|", *rows, ""])


if __name__ == "__main__":
    raise SystemExit(main())
