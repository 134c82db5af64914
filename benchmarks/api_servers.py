"""The front end's CPU with one and two API server processes: ours against bare `vllm serve`.

    python -m benchmarks.api_servers [--pairs 3] [--concurrency 16] [--prompts 256]
                                     [--api-servers 1 2] [--data-parallel] [--smoke]

For each count N (1 and 2), bare `vllm serve --api-server-count N` and `aim-runtime serve
--api-server-count N` serve the same model with the same engine args (the plan's). In each pair
both are started and stay up together, and each workload runs four times, A B B A (bare first in
even pairs, ours first in odd ones): this machine's pace drifts by a third between two server
starts a minute apart, for both servers alike, so a pair that ran one server after the other
measured the drift as much as the servers; interleaved, a drift over the pair weighs on both. A
server's figures in a pair are its two runs together. The API server processes get a core of
their own (one for all of them), the engine and the load generator the others
(`front_ends_pinned`). By default the data-parallel size stays 1: vLLM's CPU build runs one
engine core per rank, and on a small machine two engine cores measure their own contention; N API
servers over one engine core is the arrangement vLLM also allows. `--data-parallel` runs the
arrangement the count follows by default instead, `--data-parallel-size N` on both servers (N
engine cores, N API servers), and writes `results/api_servers_dp.{json,md}`.

Each server is loaded with vLLM's serving benchmark (streaming, random prompts, fixed seed). For
every front-end process (the main process when N is 1, else each `VLLM::APIServer_<i>`), its user
+ system CPU time over the load is read from the kernel; the supervisor's own CPU is not part of
the front end. Reported:
- front-end CPU per streamed token, all processes together and per process (its share);
- requests each process served (ours: aim_api_server_requests_total{server}; bare vLLM has no
  per-process count, so its CPU share stands in);
- the throughput ceiling the front end sets: N / (CPU seconds per token), each process on a core.
Workloads on each warmed server: the long one (the flags above: 256 prompts of 64 in / 128 out
tokens at concurrency 16); with one API server also a short one (48 requests of 64 out tokens at
concurrency 8), where a request's fixed path (gate, admission, headers, counters, access log) is
spread over fewer tokens, and a single one (512 requests one at a time, one token out each: that
path alone, with no batch to share the engine's output processing). Ratios are ours over bare,
with min-median-max over the pairs. Results go to `results/api_servers.{json,md}`
(`api_servers_1.*` with `--api-servers 1`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from benchmarks.run import _bench, _spread, machine, plan_engine_args, workspace
from tests.servers import REPO, ServerProcess, aim_server, bare_vllm_server

MODEL_NAME = "bench"
COUNTS = (1, 2)
BARE_FRONTEND_ARGS = ("--disable-uvicorn-access-log",)
FRONTEND_TITLE = "APIServer"  # vLLM's process title for its API servers, and ours
ORDER = "ABBA"  # within a pair, both servers up (`measure_pair`)


@dataclass(frozen=True)
class Workload:
    """One load: streamed random prompts of `input_len` tokens, `output_len` out each."""

    name: str
    concurrency: int
    prompts: int
    input_len: int
    output_len: int


SHORT = Workload("short", concurrency=8, prompts=48, input_len=64, output_len=64)
SHORT_SMOKE = Workload("short", concurrency=4, prompts=8, input_len=64, output_len=16)
# One request at a time, one token each: the per-request path alone, nothing to share it with.
# 512 of them take about 1.5 s of front-end CPU, so the kernel's 10 ms ticks are under 1% of it.
SINGLE = Workload("single", concurrency=1, prompts=512, input_len=64, output_len=1)
SINGLE_SMOKE = Workload("single", concurrency=1, prompts=4, input_len=64, output_len=1)


@dataclass(frozen=True)
class Settings:
    model: Path
    pairs: int
    concurrency: int
    prompts: int
    input_len: int
    output_len: int
    out: Path
    data_parallel: bool = False  # N engine ranks (and so N API servers), not N over one rank
    short: Workload | None = SHORT
    single: Workload | None = SINGLE
    counts: tuple[int, ...] = COUNTS

    @property
    def stem(self) -> str:
        """api_servers, _dp with --data-parallel, _<counts> with counts other than 1 and 2."""
        counts = "" if self.counts == COUNTS else "_" + "_".join(map(str, self.counts))
        return f"api_servers{'_dp' if self.data_parallel else ''}{counts}"

    def workloads(self, count: int) -> list[Workload]:
        """The long load for every count; the short and single ones with one API server."""
        long = Workload("long", self.concurrency, self.prompts, self.input_len, self.output_len)
        extra = [self.short, self.single] if count == 1 else []
        return [long, *(workload for workload in extra if workload is not None)]


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    with workspace("aim-bench-api-", settings.model) as (work, model):
        engine_argv, env, _ = plan_engine_args(model, [])
        runs = [row for pair in range(settings.pairs) for count in settings.counts
                for row in measure_pair(count, pair, settings, model, engine_argv, env, work)]
        results = {
            "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"model": str(model), "pairs": settings.pairs, "order": ORDER,
                         "concurrency": settings.concurrency, "prompts": settings.prompts,
                         "input_len": settings.input_len, "output_len": settings.output_len,
                         "engine_args": engine_argv, "cores": _cores_setting(),
                         "data_parallel": settings.data_parallel,
                         "short": vars(settings.short) if settings.short else None,
                         "single": vars(settings.single) if settings.single else None},
            "runs": runs, "summary": summarize(runs)}
        (settings.out / f"{settings.stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (settings.out / f"{settings.stem}.md").write_text(render_markdown(results))
    print((settings.out / f"{settings.stem}.md").read_text())
    return 0


def parse(argv: list[str] | None, prog: str = "python -m benchmarks.api_servers",
          description: str | None = __doc__) -> Settings:
    """The load's settings from the command line (also benchmarks/front_end_profile.py's)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("default"),
                        help="model directory (default: the embedded tiny model)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--data-parallel", action="store_true",
                        help="N engine ranks with N API servers, not N API servers over one")
    parser.add_argument("--api-servers", type=int, nargs="+", default=list(COUNTS),
                        help="API server counts to measure (default: 1 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="one pair, few prompts: keeps the harness working")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.concurrency, args.prompts, args.output_len = 1, 4, 8, 32
    return Settings(args.model, args.pairs, args.concurrency, args.prompts,
                    args.input_len, args.output_len, args.out, args.data_parallel,
                    short=SHORT_SMOKE if args.smoke else SHORT,
                    single=SINGLE_SMOKE if args.smoke else SINGLE, counts=tuple(args.api_servers))


def measure_pair(count: int, pair: int, settings: Settings, model: Path,
                 engine_argv: list[str], env: dict[str, str],
                 work: Path) -> list[dict[str, Any]]:
    """Bare vLLM and ours with `count` API servers, both started and up at once: each workload
    runs four times in the order A B B A (bare first in even pairs, ours first in odd ones), so
    that the machine's drift over the pair weighs on both servers alike. A row per workload:
    each server's figures over its two runs together (`over_legs`)."""
    first, second = ("bare", "ours") if pair % 2 == 0 else ("ours", "bare")
    order = (first, second, second, first)
    rows = []
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(warmed_server(label, count, settings, model,
                                                            engine_argv, env, work))
                   for label in (first, second)}
        for workload in settings.workloads(count):
            legs: dict[str, list[dict[str, Any]]] = {first: [], second: []}
            for label in order:
                legs[label].append(measure_leg(label, count, servers[label], workload, model))
            rows.append({"count": count, "pair": pair, "workload": workload.name,
                         "order": list(order),
                         **{label: over_legs(runs) for label, runs in legs.items()}})
    return rows


def over_legs(legs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's runs in a pair as one: CPU and tokens summed, throughput over the runs'
    time together; each run's own figures kept under `legs`."""
    tokens = sum(leg["total_output_tokens"] for leg in legs)
    if not tokens:
        raise RuntimeError(f"no tokens streamed in {len(legs)} runs: {legs}")
    seconds = sum(leg["total_output_tokens"] / leg["output_throughput"] for leg in legs
                  if leg["total_output_tokens"])
    per_process = [round(sum(cpu), 3) for cpu in
                   zip(*(leg["frontend_cpu_s_per_process"] for leg in legs), strict=True)]
    served = [leg.get("requests_per_process") for leg in legs]
    return {"frontend_cpu_ms_per_token": round(1000 * sum(per_process) / tokens, 4),
            "output_throughput": round(tokens / seconds, 3),
            "total_output_tokens": tokens, "frontend_cpu_s_per_process": per_process,
            "requests_per_process": None if None in served else
            [sum(counts) for counts in zip(*served, strict=True)],
            "failed": sum(leg["failed"] for leg in legs), "legs": legs}


def server_for(label: str, count: int, model: Path, engine_argv: list[str],
               env: dict[str, str], work: Path,
               data_parallel: bool = False) -> tuple[ServerProcess, str]:
    """Bare `vllm serve` or ours (`label`) with `count` API servers (over `count` engine ranks
    with `data_parallel`), not started yet, and the completions endpoint it serves."""
    flag = ("--api-server-count", str(count))
    if data_parallel:  # both servers start one API server per rank by default
        flag = ("--data-parallel-size", str(count))
        engine_argv = _without_option(engine_argv, "--data-parallel-size")
    if label == "bare":
        return bare_vllm_server(work, model, [*engine_argv, *BARE_FRONTEND_ARGS, *flag], env,
                                name=MODEL_NAME, launcher="benchmarks.vllm_serve"), \
            "/v1/completions"
    return aim_server(work, model, *flag, name=MODEL_NAME), "/openai/v1/completions"


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` and its value."""
    if option not in argv:
        return argv
    at = argv.index(option)
    return argv[:at] + argv[at + 2:]


@contextlib.contextmanager
def warmed_server(label: str, count: int, settings: Settings, model: Path,
                  engine_argv: list[str], env: dict[str, str], work: Path,
                  prepare: Callable[[ServerProcess], None] | None = None,
                  ) -> Iterator[tuple[ServerProcess, str, list[psutil.Process]]]:
    """`server_for`'s server started (after `prepare` has seen it), ready, its front ends
    pinned (`front_ends_pinned`) and warmed by a small load; yields it, its endpoint and its
    front-end processes, and stops it when the block ends."""
    process, endpoint = server_for(label, count, model, engine_argv, env, work,
                                   settings.data_parallel)
    if prepare is not None:
        prepare(process)
    process.start()
    try:
        process.wait_ready()
        frontends = frontend_processes(process, count)
        with front_ends_pinned(process, frontends):
            _bench(process, endpoint, model, 2, 4, settings, f"warmup-{label}{count}",
                   frontends)
            yield process, endpoint, frontends
    finally:
        process.stop()


def measure_leg(label: str, count: int,
                server: tuple[ServerProcess, str, list[psutil.Process]],
                workload: Workload, model: Path) -> dict[str, Any]:
    """One run of `workload` on a warmed server (`warmed_server`'s triple): its figures, with
    the requests each of ours' API servers admitted."""
    process, endpoint, frontends = server
    before = requests_per_process(process, count) if label == "ours" else None
    figures = _bench(process, endpoint, model, workload.concurrency,
                     workload.prompts, workload, f"{label}{count}-{workload.name}", frontends)
    if before is not None:
        after = requests_per_process(process, count)
        figures["requests_per_process"] = [a - b for a, b in zip(after, before, strict=True)]
    return figures


# The cores this benchmark may use, as it started: while one server is up and pinned, this process
# runs on the split's other side, and a second server is pinned from the same split.
CORES = frozenset(os.sched_getaffinity(0))


def _cores_setting() -> dict[str, list[int]] | None:
    split = core_split(set(CORES))
    return None if split is None else {"front_end": sorted(split[0]), "others": sorted(split[1])}


def core_split(allowed: set[int]) -> tuple[set[int], set[int]] | None:
    """(the front end's cores, everything else's) out of the cores this process may use: the
    highest for the API servers (all of them share it), the rest for the engine and the load
    generator; None below two cores."""
    if len(allowed) < 2:
        return None
    front = max(allowed)
    return {front}, allowed - {front}


@contextlib.contextmanager
def front_ends_pinned(server: ServerProcess, frontends: list[psutil.Process]) -> Iterator[None]:
    """The API server processes on a core of their own, the engine cores and this load generator
    on the others (`core_split`), until the block ends (then this process gets its cores back):
    with all three competing for two cores, the CPU time a front end spends per token grew with
    the contention around it and swung run to run more than the servers differ. Every thread is
    pinned, each has its own affinity."""
    allowed = os.sched_getaffinity(0)
    split = core_split(set(CORES))
    if split is None:
        yield
        return
    front, rest = split
    main_process = psutil.Process(server.process.pid)
    front_pids = {p.pid for p in frontends}
    for process in [main_process, *main_process.children(recursive=True)]:
        _set_affinity(process, front if process.pid in front_pids else rest)
    _set_affinity(psutil.Process(), rest)
    try:
        yield
    finally:
        _set_affinity(psutil.Process(), allowed)


def _set_affinity(process: psutil.Process, cores: set[int]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):  # a process that has just ended
        for thread in process.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(thread.id, cores)


def frontend_processes(server: ServerProcess, count: int) -> list[psutil.Process]:
    """The processes that serve HTTP: the main one alone, or each API server."""
    main_process = psutil.Process(server.process.pid)
    if count == 1:
        return [main_process]
    titled = [p for p in main_process.children(recursive=True)
              if FRONTEND_TITLE in " ".join(p.cmdline())]
    if len(titled) != count:
        raise RuntimeError(f"expected {count} API server processes, found {len(titled)}")
    return sorted(titled, key=lambda p: " ".join(p.cmdline()))


def requests_per_process(server: ServerProcess, count: int) -> list[float]:
    import httpx

    text = httpx.get(server.url + "/metrics", timeout=10).text
    served = [0.0] * count
    for line in text.splitlines():
        if line.startswith("aim_api_server_requests_total{"):
            index = int(line.split('server="', 1)[1].split('"', 1)[0])
            served[index] = float(line.rsplit(" ", 1)[1])
    return served


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    groups = dict.fromkeys((r.get("workload", "long"), r["count"]) for r in runs)
    for workload, count in groups:
        rows = [r for r in runs if (r.get("workload", "long"), r["count"]) == (workload, count)]
        entry: dict[str, Any] = {"workload": workload, "count": count, "pairs": len(rows)}
        for label in ("bare", "ours"):
            cpu = [r[label]["frontend_cpu_ms_per_token"] for r in rows]
            entry[label] = {
                "output_throughput": _spread([r[label]["output_throughput"] for r in rows]),
                "frontend_cpu_ms_per_token": _spread(cpu),
                "ceiling_tokens_per_s": _spread([count * 1000 / c for c in cpu]),
                "cpu_share_per_process": [_share(r[label]) for r in rows],
                "requests_per_process": [r[label].get("requests_per_process") for r in rows],
            }
        entry["ratio"] = {key: _spread([r["ours"][key] / r["bare"][key] for r in rows])
                          for key in ("frontend_cpu_ms_per_token", "output_throughput")}
        summary.append(entry)
    return summary


def _share(figures: dict[str, Any]) -> list[float]:
    per_process = figures["frontend_cpu_s_per_process"]
    total = sum(per_process) or 1.0
    return [round(c / total, 3) for c in per_process]


def render_markdown(results: dict[str, Any]) -> str:
    machine_, settings = results["machine"], results["settings"]
    lines = [
        "# API server processes: front-end CPU per streamed token",
        "",
        f"{results['date']} · {machine_['cpu']}, {machine_['cores']} cores, {machine_['gpu']} · "
        f"vllm {machine_['vllm']}, kserve {machine_['kserve']} · {settings['pairs']} pair(s), "
        f"concurrency {settings['concurrency']}, {settings['prompts']} prompts of "
        f"{settings['input_len']} in / {settings['output_len']} out tokens, streamed (the long "
        f"workload){_short_text(settings.get('short'))}{_single_text(settings.get('single'))}.",
        "",
        f"Cores: {_cores_text(settings.get('cores'))}.",
        "",
        ("Arrangement: N engine ranks (`--data-parallel-size N`), hence N API servers, on both "
         "servers." if settings.get("data_parallel") else
         "Arrangement: N API servers (`--api-server-count N`) over one engine rank."),
        "",
        *_order_text(settings.get("order")),
        "Front-end CPU: user + system time of the API server processes over the load, per "
        "output token (median of the pairs). Ceiling: API servers / CPU per token, each on its "
        "own core. Share: each process's part of the front-end CPU (first pair). Requests: what "
        "each of ours admitted (aim_api_server_requests_total; first pair).",
        "",
        "| workload | API servers | server | CPU ms/token | ceiling tok/s | tok/s measured "
        "| CPU share | requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["summary"]:
        for label in ("bare", "ours"):
            side = entry[label]
            requests = side["requests_per_process"][0]
            lines.append(
                f"| {entry.get('workload', 'long')} | {entry['count']} "
                f"| {'vllm serve' if label == 'bare' else 'aim-runtime'} "
                f"| {side['frontend_cpu_ms_per_token']['median']:.3f} "
                f"| {side['ceiling_tokens_per_s']['median']:.0f} "
                f"| {side['output_throughput']['median']:.0f} "
                f"| {' / '.join(f'{s:.2f}' for s in side['cpu_share_per_process'][0])} "
                f"| {' / '.join(f'{r:g}' for r in requests) if requests else 'n/a'} |")
    lines += ["", "| workload | API servers | CPU per token, ours/bare (min-median-max) "
              "| throughput, ours/bare |", "|---|---|---|---|"]
    for entry in results["summary"]:
        cpu, tput = entry["ratio"]["frontend_cpu_ms_per_token"], entry["ratio"][
            "output_throughput"]
        lines.append(f"| {entry.get('workload', 'long')} | {entry['count']} "
                     f"| {cpu['min']:.2f}-{cpu['median']:.2f}-{cpu['max']:.2f} "
                     f"| {tput['min']:.2f}-{tput['median']:.2f}-{tput['max']:.2f} |")
    return "\n".join(lines) + "\n"


def _order_text(order: str | None) -> list[str]:
    if order != ORDER:
        return []
    return ["Pairs: both servers up together, each workload run four times in the order A B B "
            "A (bare first in even pairs, ours first in odd ones); a server's figures in a pair "
            "are its two runs together.", ""]


def _single_text(single: dict[str, Any] | None) -> str:
    if not single:
        return ""
    return (f"; and the single workload, {single['prompts']} requests one at a time of "
            f"{single['input_len']} in / {single['output_len']} out token (the per-request path "
            "alone)")


def _short_text(short: dict[str, Any] | None) -> str:
    if not short:
        return ""
    return (f"; with one API server also the short workload, {short['prompts']} prompts of "
            f"{short['input_len']} in / {short['output_len']} out tokens at concurrency "
            f"{short['concurrency']}")


def _cores_text(cores: dict[str, list[int]] | None) -> str:
    if cores is None:
        return "not pinned (one core)"
    return (f"API servers pinned to {cores['front_end']}, engine cores and the load generator "
            f"to {cores['others']}")


if __name__ == "__main__":
    raise SystemExit(main())
