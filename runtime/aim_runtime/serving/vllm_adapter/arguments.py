"""`vllm serve`'s own argument parser: the plan's engine args and the user's vLLM flags parsed
by vLLM into the Namespace its engine and application take; recipes and settings checked
against it."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import Recipe, engine_args_to_argv
from aim_runtime.planner.plan import Plan
from aim_runtime.planner.rocm import EXTERNAL_ENV
from aim_runtime.serving.vllm_adapter.versions import MAKE_ARG_PARSER, entry

log = logging.getLogger(__name__)

# --- arguments -----------------------------------------------------------------------------------


def vllm_serve_parser() -> Any:
    """vLLM's own `vllm serve` parser (raises instead of exiting on errors)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    make_arg_parser = entry(MAKE_ARG_PARSER)
    return make_arg_parser(FlexibleArgumentParser(prog="aim-runtime serve", add_help=False,
                                                  exit_on_error=False))


def parse_vllm_args(argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """Parse flags meant for vLLM; return the namespace and the destinations set explicitly."""
    parser = vllm_serve_parser()
    namespace = parse_or_raise(parser, argv)
    if namespace.model_tag is not None:
        raise AimError(f"unexpected argument {namespace.model_tag!r}",
                       "give the model with --model_dir (or --model_id); see --help")
    explicit = _explicit_destinations(parser, argv)
    return namespace, explicit


def parse_or_raise(parser: Any, argv: list[str]) -> argparse.Namespace:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit as exc:
        lines = stderr.getvalue().strip().splitlines()
        message = lines[-1].split(" error: ", 1)[-1] if lines else "see --help"
        raise AimError(
            "invalid arguments: " + message,
            "arguments must be KServe's, AIM Runtime's or `vllm serve` flags "
            "(aim-runtime serve --help lists them)",
        ) from exc
    except argparse.ArgumentError as exc:
        raise AimError(f"invalid arguments: {exc}",
                       "aim-runtime serve --help lists the accepted flags") from exc


def _explicit_destinations(parser: Any, argv: list[str]) -> set[str]:
    by_flag = {flag: action.dest for action in parser._actions
               for flag in action.option_strings}
    explicit = set()
    for token in argv:
        flag = settings.flag_of_token(token)
        if flag in by_flag:
            explicit.add(by_flag[flag])
        elif flag.startswith("--no-") and "--" + flag[5:] in by_flag:
            explicit.add(by_flag["--" + flag[5:]])
    return explicit


def engine_argv(plan: Plan, model_path: str, served_names: list[str],
                user_argv: list[str]) -> list[str]:
    """`vllm serve` flags: the model, the plan's engine args, then the user's (which win)."""
    argv = ["--model", model_path, "--served-model-name", *served_names]
    return argv + engine_args_to_argv(plan.engine_args) + list(user_argv)


def check_recipe_args(recipes: Iterable[Recipe]) -> list[str] | None:
    """Parse every recipe's engine args with the installed vLLM's own `vllm serve` parser.

    Returns one problem per line, `FILE: RECIPE: engine_args.NAME: what vLLM said` (the shape of
    the schema's own errors), or None when vLLM is not importable here.
    """
    try:
        parser = vllm_serve_parser()
    except Exception:  # vLLM absent or broken: the caller reports "not checked"
        return None
    problems = []
    for recipe in recipes:
        where = f"{recipe.file}: {recipe.id}"
        problems += [f"{where}: {p}" for p in check_settings(recipe.env, recipe.engine_args,
                                                             parser)]
    return problems


def check_settings(env: Mapping[str, str], engine_args: Mapping[str, Any],
                   parser: Any = None) -> list[str]:
    """Problems with environment variables and engine args against the installed vLLM: a
    `VLLM_*` name its environment registry (`vllm.envs`) lacks, a non-`VLLM_` name the ROCm rule
    table does not list as another library's (`EXTERNAL_ENV`), an engine arg its `vllm serve`
    parser rejects, and names the parser takes as free text but vLLM resolves later (attention
    backend, tool and reasoning parsers)."""
    import vllm.envs

    parser = parser or vllm_serve_parser()
    problems = []
    for name in env:
        if name.startswith("VLLM_") and name not in vllm.envs.environment_variables:
            problems.append(f"env.{name}: not in the installed vLLM's environment registry "
                            "(vllm.envs)")
        elif not name.startswith("VLLM_") and name not in EXTERNAL_ENV and \
                not name.startswith(("NCCL_", "RCCL_", "HIP_", "HSA_", "TORCH_", "PYTORCH_")):
            problems.append(f"env.{name}: neither vLLM's nor a ROCm/PyTorch library's variable")
    known = {action.dest for action in parser._actions}
    for name, value in engine_args.items():
        if name not in known:
            problems.append(f"engine_args.{name}: vLLM has no such argument")
            continue
        message = _parse_error(parser, engine_args_to_argv({name: value})) or \
            _resolve_error(name, value)
        if message:
            problems.append(f"engine_args.{name}: vLLM rejects the value {value!r}: {message}")
    return problems


def _resolve_error(name: str, value: Any) -> str | None:
    """Values vLLM's parser accepts as any string and resolves only when the engine starts."""
    if name == "attention_backend":
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        return None if str(value) in AttentionBackendEnum.__members__ else \
            "no such attention backend"
    if name == "tool_call_parser":
        from vllm.tool_parsers import ToolParserManager

        names = {*ToolParserManager.lazy_parsers, *ToolParserManager.tool_parsers}
        return None if value in names else "no such tool call parser"
    if name == "reasoning_parser":
        from vllm.reasoning import ReasoningParserManager

        names = {*ReasoningParserManager.lazy_parsers, *ReasoningParserManager.reasoning_parsers}
        return None if value in names else "no such reasoning parser"
    return None


def _parse_error(parser: Any, argv: list[str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv)
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        return lines[-1].split(" error: ", 1)[-1] if lines else "invalid"
    except Exception as exc:  # argparse.ArgumentError and vLLM's own validation errors
        return str(exc)
    return None
