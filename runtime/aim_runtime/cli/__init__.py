"""The `aim-runtime` command: detect, plan, recipes, render, download, serve, worker.

Every command prints an `AimError` as one `error:` line and a `hint:`, and exits with its code
(2 invalid input, 3 the model does not fit); `serve` and `worker` import KServe, vLLM and Ray only
when they run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aim_runtime import settings
from aim_runtime.errors import AimError, NoFitError
from aim_runtime.planner.explain import format_reasons


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m aim_runtime`."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list else ""
    long_running = command in ("serve", "worker")
    explain = False
    try:
        settings.configure_logging("INFO" if long_running else "WARNING",
                                   timestamps=long_running)
        if long_running:
            settings.check_all()
        if command == "serve":
            from aim_runtime.cli import serve  # imports KServe; vLLM once the model is read

            return serve.main(args_list[1:])
        if command == "worker":
            from aim_runtime.cli import worker

            return worker.main(args_list[1:])
        from aim_runtime.cli.commands import build_parser

        args = build_parser().parse_args(args_list)
        explain = getattr(args, "explain", False)
        code: int = args.handler(args)
        return code
    except AimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, NoFitError) and explain and exc.reasons:
            print("candidates, in the order tried:\n" + format_reasons(exc.reasons),
                  file=sys.stderr)
        return exc.exit_code
