"""`aim-runtime serve`'s command line.

Arguments come in three families, parsed in this order: KServe's model-server flags (its own
parser is the parent of ours: `--http_port`, `--model_name`, `--workers`...), AIM Runtime's
(`--model-dir`, `--host`, planner overrides), and whatever is left goes to vLLM's own `vllm serve`
parser (at start-up, serving/startup.py). A flag none of the three knows is an error. vLLM flags
win over the plan; the ones the planner understands (parallel sizes, context, KV dtype, memory
utilisation, trust_remote_code) are given to the planner too, so the plan and its memory check
agree with what will run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from aim_runtime import pipeline, settings
from aim_runtime.errors import AimError
from aim_runtime.serving.inputs import ServeCommand
from aim_runtime.serving.startup import kserve_parser, report_start_up_failure, serve_main

# vLLM flags the runtime owns under another name.
RESERVED_VLLM_FLAGS = {"--port": "--http_port", "--host": "--host", "--model": "--model-dir"}

# Parallelism a caller may pin (an LLMInferenceService's spec.parallelism) while the user's own
# arguments also set it: given twice with two values is a conflict, not "the last one wins".
PINNABLE_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size",
                  "--data-parallel-size-local")
PINNABLE_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
                    "-dp": "--data-parallel-size", "-dpl": "--data-parallel-size-local"}


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim-runtime serve", parents=[kserve_parser()], allow_abbrev=False,
        description="Serve a model with vLLM behind KServe (OpenAI under /openai/v1, KServe v2). "
                    "Every `vllm serve` flag is accepted too and wins over the plan.",
    )
    model = parser.add_argument_group(settings.MODEL_GROUP)
    model.add_argument("--model-dir", "--model_dir", dest="model_dir",
                       help="local model directory (KServe fills /mnt/models); default: the "
                            "embedded default model (AIM_DEFAULT_MODEL), made on first use")
    settings.MODEL_ID.add_argument(parser, "--model_id", from_env=False)
    options: tuple[settings.Variable[Any], ...] = (
        settings.HOST, settings.OPENAI_ROOT_ROUTES, settings.WARMUP,
        settings.GRACEFUL_SHUTDOWN_SECONDS, settings.MAX_QUEUED_REQUESTS,
        settings.MAX_REQUEST_BYTES, settings.ROLE)
    for variable in options:
        variable.add_argument(parser)
    settings.section(parser, settings.OPERATIONS_GROUP).add_argument(
        "--exit-after-warmup", action="store_true",
        help="stop once warmed up (exit 0): fills AIM_COMPILE_CACHE_DIR's caches for this "
             "model and GPU, as a Job before an InferenceService scales")
    settings.NODES.add_argument(parser, from_env=False)  # KServe's variable comes first
    pipeline.add_detection_args(parser, simulate=False)
    pipeline.add_planner_args(parser, vllm_names=False)
    return parser


def main(argv: Sequence[str]) -> int:
    """`aim-runtime serve ARGV`: a command-line error is a start-up failure too (the termination
    message names it, as Kubernetes shows it)."""
    try:
        command = parse_command(argv)
    except AimError as exc:
        report_start_up_failure(exc)
        raise
    return serve_main(command)


def parse_command(argv: Sequence[str]) -> ServeCommand:
    """The command line, checked: our flags and KServe's parsed, the rest left for vLLM's
    parser, and which of our options the user set (on the line or through AIM_*)."""
    tokens = normalize_argv(argv)
    args, rest = serve_parser().parse_known_args(tokens)
    _reject_reserved(rest)
    if args.workers != 1:
        raise AimError(f"--workers {args.workers}: one process serves one vLLM engine",
                       "scale with replicas (or data parallelism) instead")
    return ServeCommand(args=args, vllm_argv=tuple(rest), explicit=_explicit_ours(tokens))


def normalize_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The command line with VLLM_ADDITIONAL_ARGS appended, empty arguments dropped (KServe's
    preset templates render a conditional flag that is off to an empty string), and a pinnable
    flag given twice with different values refused."""
    extra = settings.VLLM_ADDITIONAL_ARGS.read(environ)
    tokens = [token for token in [*argv, *extra] if token.strip()]
    seen: dict[str, str] = {}
    for index, token in enumerate(tokens):
        flag = settings.flag_of_token(token)
        flag = PINNABLE_ALIASES.get(flag, flag)
        value = token.partition("=")[2]
        if flag not in PINNABLE_FLAGS:
            continue
        if not value and index + 1 < len(tokens):
            value = tokens[index + 1]
        if flag in seen and seen[flag] != value:
            raise AimError(f"{flag} is given twice: {seen[flag]}, then {value}",
                           "an LLMInferenceService's spec.parallelism and the container's "
                           "arguments must agree; keep one of them")
        seen[flag] = value
    return tokens


def _explicit_ours(argv: list[str]) -> frozenset[str]:
    """Our options the user set (on the command line or through their AIM_* variable)."""
    given = {settings.flag_of_token(token) for token in argv}
    grace = settings.GRACEFUL_SHUTDOWN_SECONDS
    if grace.flag in given or grace.is_set():
        return frozenset({"graceful_shutdown_seconds"})
    return frozenset()


def _reject_reserved(rest: list[str]) -> None:
    for token in rest:
        flag = settings.flag_of_token(token)
        if flag in RESERVED_VLLM_FLAGS:
            raise AimError(f"{token}: use {RESERVED_VLLM_FLAGS[flag]} with aim-runtime serve")
