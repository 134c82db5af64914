"""Where the front end's time goes: ours and bare `vllm serve`, one API server each, profiled
under the same load.

    python -m benchmarks.front_end_profile [--pairs 3] [--concurrency 16] [--prompts 256]
                                           [--smoke]

Each server runs under cProfile (benchmarks/profiled.py), switched on after start-up and warm-up
and off when the load ends, so the profile holds the serving alone: the main thread, where both
run their event loop, the HTTP server, vLLM's OpenAI handlers and its output processing. The API
server has a core of its own (benchmarks/api_servers.py `warmed_server`), so a function's time
in the profile is close to the CPU it used.

The servers take turns, pair after pair (bare first in even pairs, ours first in odd ones): on
a shared machine one run's times can be a third off the next one's, for both servers alike.
Reported per streamed token, over all pairs: Python function calls (they move little with the
machine's load, unlike times; vLLM merges the deltas of a lagging front end, so not at all is too
strong), profiled time, the engine's output batches, and the CPU time the kernel counted for the
process (the pairs' median); each pair's figures; the functions that take the most time in each;
and the calls ours makes that bare vLLM does not (or makes more often). Results go to
`results/front_end_profile.{json,md}`.
"""

from __future__ import annotations

import json
import os
import pstats
import signal
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import api_servers
from benchmarks.api_servers import Settings
from benchmarks.run import _bench, machine, plan_engine_args, workspace
from tests.servers import ServerProcess

LABELS = ("bare", "ours")
TOP = 12
DUMP_TIMEOUT_SECONDS = 30.0
ENGINE_OUTPUTS_FUNCTION = ("vllm/v1/engine/output_processor.py:", "(process_outputs)")


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    with workspace("aim-profile-", settings.model) as (work, model):
        engine_argv, env, _ = plan_engine_args(model, [])
        pairs: dict[str, list[dict[str, Any]]] = {label: [] for label in LABELS}
        for pair in range(settings.pairs):
            for label in LABELS if pair % 2 == 0 else LABELS[::-1]:
                pairs[label].append(profile_one(label, pair, settings, model, engine_argv,
                                                env, work))
        runs = {label: combined(profiles) for label, profiles in pairs.items()}
        results = {
            "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"model": str(model), "pairs": settings.pairs,
                         "concurrency": settings.concurrency,
                         "prompts": settings.prompts, "input_len": settings.input_len,
                         "output_len": settings.output_len, "engine_args": engine_argv},
            "runs": {label: run["figures"] for label, run in runs.items()},
            "pairs": [{label: pairs[label][pair]["figures"] for label in LABELS}
                      for pair in range(settings.pairs)],
            "extra_in_ours": extra_calls(runs["ours"]["stats"], runs["bare"]["stats"],
                                         runs["ours"]["figures"]["tokens"]),
        }
    (settings.out / "front_end_profile.json").write_text(json.dumps(results, indent=2) + "\n")
    (settings.out / "front_end_profile.md").write_text(render_markdown(results))
    print((settings.out / "front_end_profile.md").read_text())
    return 0


def parse(argv: list[str] | None) -> Settings:
    return api_servers.parse(argv, prog="python -m benchmarks.front_end_profile",
                             description=__doc__)


def profile_one(label: str, pair: int, settings: Settings, model: Path, engine_argv: list[str],
                env: dict[str, str], work: Path) -> dict[str, Any]:
    """One server under load with the profiler on for the load only: its figures (per token)
    and its statistics by function."""
    dump = work / f"{label}-{pair}.pstats"

    def under_profiler(process: ServerProcess) -> None:  # python -m benchmarks.profiled ...
        module_at = process.command.index("-m") + 1
        process.command[module_at - 1:module_at + 1] = [
            "-m", "benchmarks.profiled", str(dump), process.command[module_at]]

    with api_servers.warmed_server(label, 1, settings, model, engine_argv, env, work,
                                   prepare=under_profiler) as (process, endpoint, frontends):
        os.kill(process.process.pid, signal.SIGUSR2)
        figures = _bench(process, endpoint, model, settings.concurrency, settings.prompts,
                         settings, label, frontends)
        os.kill(process.process.pid, signal.SIGUSR2)
        stats = _wait_for_dump(dump, process)
    return {"stats": stats, "figures": per_token(stats, figures["total_output_tokens"],
                                                 figures["completed"],
                                                 figures["frontend_cpu_ms_per_token"])}


def per_token(stats: pstats.Stats, tokens: int, requests: int,
              cpu_ms_per_token: float) -> dict[str, Any]:
    """A profile's figures per streamed token."""
    by_function = _by_function(stats)
    return {"tokens": tokens, "requests": requests, "cpu_ms_per_token": cpu_ms_per_token,
            "calls_per_token": round(stats.total_calls / tokens, 1),
            "engine_outputs_per_token": round(engine_outputs(by_function) / tokens, 4),
            "profiled_ms_per_token": round(1000 * stats.total_tt / tokens, 4),
            "top": top_functions(by_function, tokens)}


def combined(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's pairs as one: the statistics summed (function tables, extra calls), the
    figures per token over all of them, the CPU per token the pairs' median."""
    stats = profiles[0]["stats"]
    for profile in profiles[1:]:
        stats.add(profile["stats"])
    figures = [profile["figures"] for profile in profiles]
    return {"stats": stats, "figures": per_token(
        stats, sum(f["tokens"] for f in figures), sum(f["requests"] for f in figures),
        statistics.median(f["cpu_ms_per_token"] for f in figures))}


def _wait_for_dump(dump: Path, process: ServerProcess) -> pstats.Stats:
    deadline = time.monotonic() + DUMP_TIMEOUT_SECONDS
    while not dump.exists():  # benchmarks/profiled.py renames it into place once written
        if time.monotonic() > deadline:
            raise RuntimeError(f"no profile written to {dump}:\n" + process.log_tail())
        time.sleep(0.2)
    return pstats.Stats(str(dump))


def _name(key: tuple[str, int, str]) -> str:
    """A function as `package/module.py:line(name)`, without the install location."""
    path, line, function = key
    for marker in ("site-packages/", "/runtime/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({function})" if path != "~" else function


def _by_function(stats: pstats.Stats) -> dict[str, tuple[int, float]]:
    """Calls and own time (seconds) per function, built-ins named without their address."""
    merged: dict[str, tuple[int, float]] = {}
    for key, (_, calls, own, _, _) in stats.stats.items():
        name = _name(key)
        if " at 0x" in name:
            name = name.split(" at 0x", 1)[0] + ">"
        previous = merged.get(name, (0, 0.0))
        merged[name] = (previous[0] + calls, previous[1] + own)
    return merged


def engine_outputs(by_function: dict[str, tuple[int, float]]) -> int:
    """How many batches of outputs the engine sent (vLLM's OutputProcessor.process_outputs
    calls): fewer, fuller batches cost the front end less per token, whoever serves them."""
    return sum(calls for name, (calls, _) in by_function.items()
               if name.startswith(ENGINE_OUTPUTS_FUNCTION[0])
               and name.endswith(ENGINE_OUTPUTS_FUNCTION[1]))


def top_functions(by_function: dict[str, tuple[int, float]],
                  tokens: int) -> list[dict[str, Any]]:
    """The functions with the most own time, per token."""
    rows = sorted(by_function.items(), key=lambda item: -item[1][1])[:TOP]
    return [{"function": name, "calls_per_token": round(calls / tokens, 3),
             "own_us_per_token": round(1e6 * own / tokens, 3)} for name, (calls, own) in rows]


def extra_calls(ours: pstats.Stats, bare: pstats.Stats, tokens: int) -> list[dict[str, Any]]:
    """The functions ours calls more often than bare vLLM under the same load (per token),
    with the own time of those extra calls."""
    ours_by, bare_by = _by_function(ours), _by_function(bare)
    rows = []
    for name, (calls, own) in ours_by.items():
        extra = calls - bare_by.get(name, (0, 0.0))[0]
        if extra > 0:
            rows.append({"function": name, "extra_calls_per_token": round(extra / tokens, 3),
                         "own_us_per_token": round(1e6 * own * extra / calls / tokens, 3)})
    return sorted(rows, key=lambda row: -row["own_us_per_token"])[:TOP]


def render_markdown(results: dict[str, Any]) -> str:
    machine_, settings, runs = results["machine"], results["settings"], results["runs"]
    lines = [
        "# Where the front end's time goes: ours and bare `vllm serve`, one API server",
        "",
        f"{results['date']} · {machine_['cpu']}, {machine_['cores']} cores, {machine_['gpu']} · "
        f"vllm {machine_['vllm']}, kserve {machine_['kserve']} · {settings['pairs']} pair(s), "
        "concurrency "
        f"{settings['concurrency']}, {settings['prompts']} prompts of {settings['input_len']} in "
        f"/ {settings['output_len']} out tokens, streamed; cProfile on the main thread during "
        "the load only, the API server on a core of its own.",
        "",
        "| server | Python calls per token | profiled µs per token | process CPU µs per token "
        "| engine output batches per token |",
        "|---|---|---|---|---|",
    ]
    for label in LABELS:
        run = runs[label]
        lines.append(f"| {'vllm serve' if label == 'bare' else 'aim-runtime'} "
                     f"| {run['calls_per_token']} | {1000 * run['profiled_ms_per_token']:.1f} "
                     f"| {1000 * run['cpu_ms_per_token']:.1f} "
                     f"| {run.get('engine_outputs_per_token', 'n/a')} |")
    lines += ["", "Each batch of engine outputs costs the front end a fixed amount (decoding the "
              "message, output processing, stats), so a run whose engine steps carried fewer "
              "tokens costs more per token on either server.", "",
              "Each pair, ours over bare:", "",
              "| pair | process CPU per token | Python calls per token | engine output batches "
              "per token |", "|---|---|---|---|"]
    for index, pair in enumerate(results["pairs"]):
        ours, bare = pair["ours"], pair["bare"]
        lines.append(" | ".join([
            f"| {index + 1}",
            *(f"{ours[key]:.4g} / {bare[key]:.4g} ({ours[key] / bare[key]:.3f})"
              for key in ("cpu_ms_per_token", "calls_per_token", "engine_outputs_per_token")),
        ]) + " |")
    lines += ["", "What ours calls more often than bare vLLM, by the time of the extra calls:", "",
              "| function | extra calls per token | µs per token |", "|---|---|---|"]
    lines += [f"| `{row['function']}` | {row['extra_calls_per_token']} "
              f"| {row['own_us_per_token']} |" for row in results["extra_in_ours"]]
    for label in LABELS:
        lines += ["", f"Most own time, {'vllm serve' if label == 'bare' else 'aim-runtime'}:", "",
                  "| function | calls per token | µs per token |", "|---|---|---|"]
        lines += [f"| `{row['function']}` | {row['calls_per_token']} "
                  f"| {row['own_us_per_token']} |" for row in runs[label]["top"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
