"""Markdown table and PNG plot of a benchmark run (benchmarks/run.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """One performance target: the figure it reads, the bound, and how it is written."""

    text: str
    bound: float
    higher_is_better: bool

    def met(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.bound if self.higher_is_better else value <= self.bound


TARGETS = {
    "throughput": Target("output throughput ours/bare >= {bound} at every concurrency", 0.98, True),
    "ttft": Target("TTFT p50 overhead <= {bound:g} ms at concurrency 1", 5.0, False),
    "startup": Target("start-up ours/bare <= {bound:.2f}", 1.10, False),
    "planner": Target("planner <= {bound:g} ms with 500 recipes", 50.0, False),
}


def targets(results: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Each target: (met, the measured figure), judged on medians over the pairs."""
    summary = results["serving"]["summary"]
    worst = min(e["output_throughput"]["ratio"]["median"] for e in summary)
    first = next((e for e in summary if e["concurrency"] == 1), None)
    ttft = first["p50_ttft_ms"]["diff_ms"]["median"] if first else None
    startup = results["startup"]["ratio"]["median"]
    planner = results["planner"]["plan_ms"]["median"]
    return {
        "throughput": (TARGETS["throughput"].met(worst), f"lowest median ratio {worst:.3f}"),
        "ttft": (TARGETS["ttft"].met(ttft), "not measured (no concurrency 1)"
                 if ttft is None else f"{ttft:+.2f} ms"),
        "startup": (TARGETS["startup"].met(startup), f"{startup:.3f}"),
        "planner": (TARGETS["planner"].met(planner),
                    f"{planner:.1f} ms ({results['planner']['recipes']} recipes)"),
    }


def target_text(name: str) -> str:
    target = TARGETS[name]
    return target.text.format(bound=target.bound)


def _cell(entry: dict[str, Any], key: str, digits: int = 2) -> str:
    if key not in entry:
        return "n/a"
    ratio = entry[key]["ratio"]
    return (f"{entry[key]['bare']['median']:.{digits}f} / {entry[key]['ours']['median']:.{digits}f}"
            f" ({ratio['min']:.3f}-**{ratio['median']:.3f}**-{ratio['max']:.3f})")


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        "# AIM Runtime vs bare vLLM",
        "",
        f"{results['date']} · {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {machine['gpu']} · vllm {machine['vllm']}, "
        f"kserve {machine['kserve']}, Python {machine['python']}",
        "",
        f"Model `{Path(settings['model']).name}`, random prompts of {settings['input_len']} "
        f"tokens, {settings['output_len']} output tokens (ignore EOS), streaming completions, "
        f"{settings['pairs']} paired runs per concurrency. Engine args (both servers): "
        f"`{' '.join(settings['engine_args'])}`. Bare server front-end args: "
        f"`{' '.join(settings.get('bare_frontend_args', []))}` (neither writes an access log).",
        "",
        "Cells: bare / ours medians (ours/bare ratio min-**median**-max over the pairs).",
        "",
        "| concurrency | output tok/s | requests/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | front-end CPU ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["serving"]["summary"]:
        lines.append(
            f"| {entry['concurrency']} | {_cell(entry, 'output_throughput', 1)} "
            f"| {_cell(entry, 'request_throughput')} | {_cell(entry, 'p50_ttft_ms')} "
            f"| {_cell(entry, 'p99_ttft_ms')} | {_cell(entry, 'p50_itl_ms')} "
            f"| {_cell(entry, 'p99_itl_ms')} | {_cell(entry, 'frontend_cpu_ms_per_token', 3)} |")
    startup = results["startup"]
    phases = startup["pairs"][-1]["phases"]
    lines += [
        "",
        "Start-up, process start to ready (s): " + ", ".join(
            f"{p['bare_s']} / {p['ours_s']}" for p in startup["pairs"])
        + f" (bare / ours per pair; ratio median {startup['ratio']['median']}). "
        "Our phases in the last run: " + ", ".join(f"{k} {v} s" for k, v in phases.items()) + ".",
        "",
        f"Planner with {results['planner']['recipes']} recipes: plan "
        f"{results['planner']['plan_ms']['median']} ms median "
        f"(min {results['planner']['plan_ms']['min']}, max {results['planner']['plan_ms']['max']}"
        f"), loading the catalog {results['planner']['catalog_load_ms']['median']} ms.",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    for name, (met, figure) in targets(results).items():
        lines.append(f"| {target_text(name)} | {'yes' if met else '**no**'} | {figure} |")
    lines += ["", *efficiency_lines(results)]
    return "\n".join(lines) + "\n"


def efficiencies(results: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per concurrency: the plan's decode roofline (all replicas) with each sequence holding the
    prompt plus half the output, and each server's output tokens/s over it (medians). None
    without a roofline (no GPU)."""
    from aim_runtime.planner.roofline import Roofline

    data = results.get("roofline")
    if not data:
        return None
    roofline = Roofline.model_validate(data)
    settings = results["settings"]
    context = settings["input_len"] + settings["output_len"] // 2
    rows = []
    for entry in results["serving"]["summary"]:
        concurrency = entry["concurrency"]
        per_replica = max(1, round(concurrency / roofline.replicas))
        ceiling = roofline.replicas * roofline.decode_tokens_per_s(per_replica, context)
        row: dict[str, Any] = {"concurrency": concurrency, "ceiling": ceiling}
        for label in ("bare", "ours"):
            achieved = entry.get("output_throughput", {}).get(label, {}).get("median")
            row[label] = achieved / ceiling if achieved is not None else None
        rows.append(row)
    return rows


def efficiency_lines(results: dict[str, Any]) -> list[str]:
    rows = efficiencies(results)
    if rows is None:
        return ["Efficiency against the hardware roofline: not applicable (no GPU: the roofline "
                "is of GPU HBM bandwidth and matrix throughput)."]
    roofline = results["roofline"]
    lines = [
        f"Efficiency: output tok/s over the plan's decode roofline ({roofline['product']}, "
        f"{roofline['hbm_bytes_per_s'] / 1e12:.1f} TB/s per GPU; each sequence holding "
        f"{results['settings']['input_len']} + {results['settings']['output_len'] // 2} "
        "tokens of context).",
        "",
        "| concurrency | decode ceiling tok/s | bare | ours |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row[label]:.1%}" if row[label] is not None else "n/a"
                 for label in ("bare", "ours")]
        lines.append(f"| {row['concurrency']} | {row['ceiling']:,.0f} | {cells[0]} | {cells[1]} |")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["serving"]["summary"]
    concurrency = [e["concurrency"] for e in summary]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, title in ((axes[0], "output_throughput", "output tokens/s"),
                             (axes[1], "p50_ttft_ms", "TTFT p50 (ms)")):
        for label, style in (("bare", "o--"), ("ours", "s-")):
            median = [e[key][label]["median"] for e in summary]
            low = [e[key][label]["median"] - e[key][label]["min"] for e in summary]
            high = [e[key][label]["max"] - e[key][label]["median"] for e in summary]
            name = "bare vLLM" if label == "bare" else "AIM Runtime"
            axis.errorbar(concurrency, median, yerr=[low, high], fmt=style, capsize=3,
                          label=name)
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.set_xlabel("concurrency")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"AIM Runtime vs bare vLLM · {results['machine']['cpu']} · "
                    f"{results['date'][:10]} (median, min-max over pairs)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
