"""Shared by the tests: where things are in the repository, an environment free of the settings the
runtime reads, the `aim-runtime` command in a subprocess, and a file writer.

(`servers.py` keeps its own REPO: the benchmarks import it as `tests.servers`, outside pytest.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "runtime" / "aim_runtime"
RECIPES = REPO / "recipes"
MODELS = REPO / "tests" / "fixtures" / "models"  # real public config.json files, no weights
# The shared guarded server's keys (tests/conftest.py): the new one and the one being rotated out.
API_KEY = "test-key-0123456789"
AUTH = {"authorization": f"Bearer {API_KEY}"}  # the header a client with the key sends
OLD_API_KEY = "old-key"

def is_runtime_setting(name: str) -> bool:
    """An AIM_* variable, or one of the deployment's the runtime reads (settings.DEPLOYMENT:
    KServe's, a LeaderWorkerSet's, Ray's, vLLM's, the device visibility)."""
    from aim_runtime import settings

    return name.startswith("AIM_") or name in settings.DEPLOYMENT


def clean_environ(extra: Mapping[str, str] | None = None,
                  base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without any setting the runtime reads, the
    package importable, then `extra`."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not is_runtime_setting(k)}
    env["PYTHONPATH"] = str(REPO / "runtime")
    env.update(extra or {})
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path = REPO,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m aim_runtime ARGS` as a user runs it, with only the settings given in `env`."""
    return subprocess.run([sys.executable, "-m", "aim_runtime", *args], capture_output=True,
                          text=True, env=clean_environ(env), timeout=timeout, cwd=cwd)


def write(path: Path, text: str) -> Path:
    """Write dedented `text` to `path` (parents created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def engine_less_model(name: str = "tiny") -> Any:
    """The model object over a lifecycle whose engine is never started: readiness stays false
    until a test gives the lifecycle a stand-in engine."""
    from aim_runtime.serving.lifecycle import EngineLifecycle, EngineSpec
    from aim_runtime.serving.model import AimModel

    return AimModel(name, EngineLifecycle(EngineSpec(argv=(), env={}), name))
