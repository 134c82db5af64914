"""Warm start, measured: the first request after ready against the steady state, and time to
ready with a cold against a warm kernel/compile cache.

    python -m benchmarks.warm_start [--model DIR] [--runs 3] [--steady 10] [--smoke]

First request: our server is started with `--warmup off` and with `--warmup full` (alternating
which goes first, one server at a time); once `/v2/health/ready` turns 200 one streamed
completion is sent and its time to first token (TTFT, to the first content chunk, as a client
sees it) is taken, then `--steady` more like it give the steady median. Each request has its own
prompt (no prefix-cache hits) and follows the same idle pause. Reported per extent: first /
steady-median (target at most 1.5 with warm-up on).

Compile cache: with compilation enabled (`--no-enforce-eager`: on the CPU engine vLLM then
compiles the model with torch.compile and Inductor, the step that on GPUs also builds AITER and
Triton kernels), each run starts our server twice on a fresh `AIM_COMPILE_CACHE_DIR`: cold (the
cache misses and is filled) and warm (the same cache hits). Reported: time to ready warm / cold
with the start-up phases of each (`aim_startup_phase_seconds`) and the cache verdict from the
log. Results go to `results/warm_start.json` and `results/warm_start.md`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from benchmarks.run import _phases, _spread, machine, workspace
from tests.servers import REPO, ServerProcess, aim_server

MODEL_NAME = "bench"
FIRST_REQUEST_TARGET = 1.5  # first-request TTFT / steady median, warm-up on
REQUEST = {"model": MODEL_NAME, "max_tokens": 16, "temperature": 0, "stream": True}
# Each request's prompt differs from the first token on, so no request is served from another's
# prefix cache (the first request would otherwise be the only one paying for its prefill).
PROMPT = "Request {index}: the capital of France is"
# Every request, the first included, follows the same idle pause: an engine that has been idle
# answers a little later than one already busy, whether or not it was warmed up; the pause keeps
# that out of the first/steady ratio, which is about lazy initialisation.
IDLE_SECONDS = 1.0
COMPILE_ARGS = ("--no-enforce-eager",)


@dataclass(frozen=True)
class Settings:
    model: Path
    runs: int
    steady: int
    out: Path
    compile_cache: bool


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    with workspace("aim-warm-", settings.model) as (work, model):
        results: dict[str, Any] = {
            "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"model": str(model), "runs": settings.runs, "steady": settings.steady,
                         "request": REQUEST, "prompt": PROMPT, "idle_seconds": IDLE_SECONDS,
                         "compile_args": list(COMPILE_ARGS)},
            "first_request": first_request(settings, model, work),
        }
        if settings.compile_cache:
            results["compile_cache"] = compile_cache(settings, model, work)
        (settings.out / "warm_start.json").write_text(json.dumps(results, indent=2) + "\n")
        (settings.out / "warm_start.md").write_text(render_markdown(results))
    print((settings.out / "warm_start.md").read_text())
    return 0


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.warm_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("default"),
                        help="model directory (default: the embedded tiny model)")
    parser.add_argument("--runs", type=int, default=3, help="runs per extent and per cache state")
    parser.add_argument("--steady", type=int, default=10, help="requests after the first")
    parser.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                        help="skip the cold/warm compile-cache runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true",
                        help="one run, three steady requests: keeps the harness working")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.steady = 1, 3
    return Settings(args.model, args.runs, args.steady, args.out, args.compile_cache)


# --- the first request after ready ---------------------------------------------------------------


def first_request(settings: Settings, model: Path, work: Path) -> dict[str, Any]:
    """Per warm-up extent: each run's first TTFT, steady median and their ratio, and the
    spread of the ratios."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "full": []}
    for run in range(settings.runs):
        for extent in (("off", "full") if run % 2 == 0 else ("full", "off")):
            runs[extent].append(_first_and_steady(extent, settings.steady, model, work))
    return {extent: {"runs": rows, "ratio": _spread([r["ratio"] for r in rows]),
                     "first_ms": _spread([r["first_ms"] for r in rows]),
                     "steady_ms": _spread([r["steady_ms"] for r in rows])}
            for extent, rows in runs.items()}


def _first_and_steady(extent: str, steady: int, model: Path, work: Path) -> dict[str, float]:
    server = aim_server(work, model, "--warmup", extent, name=MODEL_NAME).start()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.get("/v2/health/ready").raise_for_status()  # the connection, as a pool has it
            first = ttft_ms(client, 0)
            rest = [ttft_ms(client, index) for index in range(1, steady + 1)]
    finally:
        server.stop()
    median = statistics.median(rest)
    row = {"first_ms": round(first, 2), "steady_ms": round(median, 2),
           "ratio": round(first / median, 2), "warmup_s": _phase_from_log(server, "warmup")}
    print(f"warmup={extent:<4} first {row['first_ms']} ms, steady median {row['steady_ms']} ms, "
          f"ratio {row['ratio']}", flush=True)
    return row


def ttft_ms(client: httpx.Client, index: int) -> float:
    """Milliseconds from sending a streamed completion to its first chunk carrying text."""
    body = {**REQUEST, "prompt": PROMPT.format(index=index)}
    time.sleep(IDLE_SECONDS)
    started = time.perf_counter()
    elapsed = None
    with client.stream("POST", "/openai/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():  # read to the end before the next request
            if (elapsed is None and line.startswith("data: {")
                    and json.loads(line[6:])["choices"][0].get("text")):
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError("the stream carried no text")
    return 1000 * elapsed


def _phase_from_log(server: ServerProcess, name: str) -> float | None:
    found = re.findall(rf"phase {name}: ([0-9.]+) s", server.log_path.read_text())
    return float(found[-1]) if found else None


# --- time to ready, cold against warm compile cache ----------------------------------------------


def compile_cache(settings: Settings, model: Path, work: Path) -> dict[str, Any]:
    """Per run, a fresh cache: a cold start fills it, a warm start reuses it."""
    pairs = []
    for run in range(settings.runs):
        env = {"AIM_COMPILE_CACHE_DIR": str(work / f"compile-cache-{run}")}
        cold, warm = (_time_to_ready(model, work, env) for _ in range(2))
        pair = {"cold": cold, "warm": warm, "ratio": round(warm["ready_s"] / cold["ready_s"], 3)}
        print(f"compile cache: cold {cold['ready_s']} s ({cold['cache']}), warm "
              f"{warm['ready_s']} s ({warm['cache']}), ratio {pair['ratio']}", flush=True)
        pairs.append(pair)
    return {"pairs": pairs, "ratio": _spread([p["ratio"] for p in pairs])}


def _time_to_ready(model: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    server = aim_server(work, model, *COMPILE_ARGS, name=MODEL_NAME, env=env).start()
    try:
        server.wait_ready()
        phases = _phases(server.url)
    finally:
        server.stop()
    verdicts = re.findall(r"compile cache (hit|miss):", server.log_path.read_text())
    return {"ready_s": round(server.ready_seconds or 0.0, 2), "phases": phases,
            "cache": verdicts[-1] if verdicts else "none",
            # vLLM's own engine initialisation (profile, compile, KV cache, its warm-up)
            "compiled_s": phases.get("engine_init")}


# --- the report ----------------------------------------------------------------------------------


def render_markdown(results: dict[str, Any]) -> str:
    machine_ = results["machine"]
    first = results["first_request"]
    lines = [
        "# Warm start",
        "",
        f"{results['date']} · {machine_['cpu']}, {machine_['cores']} cores, {machine_['gpu']} · "
        f"vllm {machine_['vllm']}, kserve {machine_['kserve']} · model "
        f"`{Path(results['settings']['model']).name}`, {results['settings']['runs']} run(s)",
        "",
        "## First request after ready",
        "",
        f"One streamed completion ({REQUEST['max_tokens']} tokens) as soon as readiness turns "
        f"200, then {results['settings']['steady']} more, each with its own prompt (no prefix "
        f"cache hits) and after the same {IDLE_SECONDS:g} s idle pause; TTFT to the first text "
        "chunk, on a connection opened by a readiness probe.",
        "",
        "| warm-up | first TTFT ms | steady TTFT ms | first / steady (min-**median**-max) |",
        "|---|---|---|---|",
    ]
    for extent, entry in first.items():
        ratio = entry["ratio"]
        lines.append(f"| {extent} | {entry['first_ms']['median']} | {entry['steady_ms']['median']}"
                     f" | {ratio['min']}-**{ratio['median']}**-{ratio['max']} |")
    on = first["full"]["ratio"]["median"]
    met = "yes" if on <= FIRST_REQUEST_TARGET else "**no**"
    lines += ["", f"Target: first / steady <= {FIRST_REQUEST_TARGET} with warm-up on: {met} "
              f"({on})."]
    cache = results.get("compile_cache")
    if cache:
        lines += [
            "", "## Time to ready, cold against warm compile cache", "",
            f"Compilation enabled (`{' '.join(results['settings']['compile_args'])}`); each run "
            "on a fresh `AIM_COMPILE_CACHE_DIR`.", "",
            "| run | cold s (cache) | warm s (cache) | warm / cold | vLLM engine init cold / "
            "warm s | engine phase cold / warm s |",
            "|---|---|---|---|---|---|",
        ]
        for index, pair in enumerate(cache["pairs"], 1):
            cold, warm = pair["cold"], pair["warm"]
            lines.append(
                f"| {index} | {cold['ready_s']} ({cold['cache']}) | {warm['ready_s']} "
                f"({warm['cache']}) | {pair['ratio']} | {cold['compiled_s']} / "
                f"{warm['compiled_s']} | {cold['phases'].get('engine')} / "
                f"{warm['phases'].get('engine')} |")
        last = cache["pairs"][-1]
        lines += ["", f"Median warm / cold: {cache['ratio']['median']}. Phases of the last run, "
                  "cold: " + _phase_text(last["cold"]["phases"]) + "; warm: "
                  + _phase_text(last["warm"]["phases"]) + "."]
    return "\n".join(lines) + "\n"


def _phase_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds} s" for name, seconds in phases.items())


if __name__ == "__main__":
    raise SystemExit(main())
