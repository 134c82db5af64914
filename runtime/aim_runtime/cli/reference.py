"""The docs site's reference pages, generated from the code: the variables (settings.py's two
registries), the command line (every command's parser), the metrics (serving/metrics.py) and the
ROCm rules (planner/rocm.py).

    python -m aim_runtime.cli.reference           rewrite the generated blocks in docs/
    python -m aim_runtime.cli.reference --check   exit 1 if a page differs from the code

Each page keeps its prose; a generated block sits between `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers. `make docs` rewrites them before building the site, and
tests/test_docs.py fails when a committed page differs from what the code generates.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aim_runtime import settings
from aim_runtime.planner import rocm

HELP_COLUMNS = "100"  # argparse wraps help at the terminal's width: one width for the page


def blocks() -> dict[str, tuple[str, Callable[[], str]]]:
    """Marker name -> (page under docs/, what generates its block)."""
    return {
        "aim-variables": ("environment.md", settings.markdown_table),
        "deployment-variables": ("environment.md", settings.deployment_table),
        "cli-help": ("cli.md", cli_help),
        "metrics": ("metrics.md", metrics_table),
        "rocm-rules": ("planning.md", rocm.markdown_table),
    }


def metrics_table() -> str:
    """The runtime's own series, from their definitions: every metric serving/metrics.py
    defines, and the series its collectors make at each scrape."""
    from prometheus_client.metrics import MetricWrapperBase

    from aim_runtime.serving import metrics

    exposed_suffix = {"counter": "_total", "info": "_info"}
    rows = []
    for metric in [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]:
        (family,) = metric.describe()
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        rows.append((family.name + exposed_suffix.get(family.type, ""), family.type, labels,
                     family.documentation))
    collected = {**metrics.ServingState.SERIES, **metrics.DecodeEfficiency.SERIES}
    rows += [(name, "gauge", "`state`" if name == "aim_state" else "", doc)
             for name, doc in collected.items()]
    lines = ["| series | type | labels | what it says |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {kind} | {labels} | {doc} |" for name, kind, labels, doc in
              sorted(rows)]
    return "\n".join(lines)


def cli_help() -> str:
    """Every command's `--help`, as a user sees it."""
    sections = []
    for command, parser in _parsers():
        with _help_width():
            text = parser.format_help().rstrip()
        sections.append(f"## `aim-runtime {command}`\n\n```text\n{text}\n```")
    return "\n\n".join(sections)


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    from aim_runtime.cli import serve, worker
    from aim_runtime.cli.commands import build_parser

    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        if name == "serve":
            yield name, serve.serve_parser()
        elif name == "worker":
            yield name, worker.worker_parser()
        else:
            yield name, parser
            actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            for action in actions:  # `recipes list`, `recipes show`...
                for sub_name, sub in action.choices.items():
                    yield f"{name} {sub_name}", sub


@contextmanager
def _help_width() -> Iterator[None]:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def refreshed(text: str, name: str, block: str) -> str:
    """`text` with the block between NAME's markers replaced by `block`."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:start/end --> markers")
    return pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text, count=1)


def stale_pages(docs: Path) -> list[str]:
    """Pages whose generated blocks differ from the code, rewriting none."""
    return sorted({page for name, (page, generate) in blocks().items()
                   if refreshed((docs / page).read_text(), name, generate())
                   != (docs / page).read_text()})


def write(docs: Path) -> None:
    for name, (page, generate) in blocks().items():
        path = docs / page
        path.write_text(refreshed(path.read_text(), name, generate()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aim_runtime.cli.reference")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages(args.docs)
        for page in stale:
            print(f"{args.docs / page}: differs from the code; run "
                  "`python -m aim_runtime.cli.reference`", file=sys.stderr)
        return 1 if stale else 0
    write(args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
