"""`aim-runtime validate`: its arguments, and a line per check (or a JSON report)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.validate import Outcome, Target, run
from aim_runtime.validate.checks import FAIL, PASS, SKIP, WARN


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "validate", help="check that a deployed server works: reach, readiness, key, recipe, "
                         "the OpenAI contract, what the plan declares (exit 1 on a failure)")
    parser.add_argument("--url", required=True,
                        help="the server, e.g. http://llama-predictor.ml.svc.cluster.local")
    parser.add_argument("--api-key", default=None,
                        help="a key the server accepts (default: the first of AIM_API_KEY)")
    parser.add_argument("--model", help="the served name to check (default: the first listed)")
    parser.add_argument("--expect-recipe", metavar="ID",
                        help="fail unless the server runs this recipe (a canary's check)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="also send N concurrent requests, all of which must succeed")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's TLS certificate")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead")
    parser.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    if args.load < 0:
        raise AimError(f"--load {args.load}: expected a number of requests")
    key = args.api_key if args.api_key is not None else _first_key()
    target = Target(url=args.url, api_key=key, model=args.model,
                    expect_recipe=args.expect_recipe, load=args.load, timeout=args.timeout,
                    verify=not args.insecure)
    outcomes = run(target, on_outcome=(lambda _: None) if args.json else _print_line)
    failed = any(o.result == FAIL for o in outcomes)
    if args.json:
        print(json.dumps({"url": args.url, "passed": not failed,
                          "checks": [asdict(o) for o in outcomes]}, indent=2))
    else:
        counts = {r: sum(o.result == r for o in outcomes) for r in (PASS, WARN, FAIL, SKIP)}
        print(f"{'FAILED' if failed else 'PASSED'}: " +
              ", ".join(f"{n} {r}" for r, n in counts.items()))
    return 1 if failed else 0


def _print_line(outcome: Outcome) -> None:
    print(f"{outcome.result.upper():4}  {outcome.name:11} {outcome.detail}", flush=True)


def _first_key() -> str | None:
    keys = settings.API_KEY.read()
    return keys[0] if keys else None
