"""The one place the runtime writes its own process environment: what vLLM, Ray and ROCm read
from it (the plan's variables, the compile caches, vLLM's switches, Ray's address). Each change
is logged by name and value, so the log says what the engine ran with; the engine's processes
inherit it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger("aim_runtime")


def export(env: Mapping[str, str], purpose: str) -> None:
    """Set `env` in this process's environment for `purpose`, logging what changes."""
    changed = {name: value for name, value in env.items() if os.environ.get(name) != value}
    if changed:
        log.info("environment for %s: %s", purpose,
                 " ".join(f"{name}={value}" for name, value in sorted(changed.items())))
    os.environ.update(changed)
