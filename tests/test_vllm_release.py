"""Every vLLM release of the supported window, read from its wheel (tests/vllm_release.py): each
name the adapter uses resolves, each keyword it passes is taken, each parser destination the
runtime reads and each engine argument and VLLM_* variable the planner emits exists. Then the
check itself, on small synthetic releases: it finds what is missing."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

import vllm_release
from aim_runtime.serving.vllm_adapter import SUPPORTED_VLLM


def window() -> list[str]:
    (major, low), (_, high) = SUPPORTED_VLLM
    return [f"vllm>={major}.{minor},<{major}.{minor + 1}" for minor in range(low, high)]


@pytest.mark.slow  # downloads each release's wheel (about 240 MB) once into the user's cache
@pytest.mark.parametrize("requirement", window())
def test_every_release_of_the_window_has_what_the_runtime_uses(requirement):
    release = vllm_release.Release(vllm_release.download(requirement))
    assert vllm_release.problems(release) == []


@pytest.mark.slow
def test_the_check_names_the_serve_parser_that_0_34_moved():
    """Against the adapter as it was before 0.34 (no vllm.entrypoints.common.cli_args), the
    check for 0.34.0 names make_arg_parser."""
    release = vllm_release.Release(vllm_release.download("vllm==0.34.0"))
    source = vllm_release.read_adapter()
    table = re.search(r"^MAKE_ARG_PARSER = \(.*?\)\)\n", source, re.M | re.S)
    assert table is not None and "vllm.entrypoints.common.cli_args" in table.group()
    before = source.replace(table.group(), 'MAKE_ARG_PARSER = (("vllm.entrypoints.launchers'
                            '.cli_args", "make_arg_parser"),)\n')
    (problem,) = vllm_release.problems(release, before)
    assert "make_arg_parser" in problem


ADAPTER = '''
TABLE = (("vllm.new", "entry"), ("vllm.old", "entry"))

def uses():
    from vllm.engine import Engine, start
    from vllm.engine import utils as engine_utils
    import vllm.envs

    Engine.create(size=1)
    start(workers=2, quiet=True)
    vllm.envs.environment_variables
    choose = getattr(engine_utils, "newer", None)
    return choose() if choose is not None else engine_utils.older()
'''


def synthetic_release(tmp_path: Path, files: dict[str, str]) -> vllm_release.Release:
    tmp_path.mkdir(parents=True, exist_ok=True)
    wheel = tmp_path / "vllm-9.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return vllm_release.Release(wheel)


COMPLETE = {
    "vllm/__init__.py": "",
    "vllm/old.py": "def entry(): ...\n",
    "vllm/envs.py": "environment_variables = {'VLLM_X': None}\n",
    "vllm/engine/__init__.py": (
        "class Base:\n    def create(self, size): ...\n"
        "class Engine(Base):\n    pass\n"
        "def start(workers, **options): ...\n"),
    "vllm/engine/utils.py": "def older(): ...\n",
}


def unmet(release: vllm_release.Release) -> list[str]:
    return [" or ".join(map(str, chain)) for chain in vllm_release.adapter_needs(ADAPTER)
            if not any(need.met_by(release) for need in chain)]


def test_a_release_with_one_alternative_of_each_chain_meets_every_need(tmp_path):
    assert unmet(synthetic_release(tmp_path, COMPLETE)) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"vllm/old.py": ""}, "vllm.new.entry or vllm.old.entry"),
    ({"vllm/engine/utils.py": ""},
     "vllm.engine.utils.newer or vllm.engine.utils.older"),
    ({"vllm/engine/__init__.py": COMPLETE["vllm/engine/__init__.py"].replace("size", "n")},
     "vllm.engine.Engine.create(..., size=...)"),
    ({"vllm/engine/__init__.py": COMPLETE["vllm/engine/__init__.py"].replace(
        "class Engine", "class Motor")}, "vllm.engine.Engine"),
    ({"vllm/envs.py": "other = {}\n"}, "vllm.envs.environment_variables"),
])
def test_what_a_release_lacks_is_named(tmp_path, change, expected):
    assert expected in unmet(synthetic_release(tmp_path, {**COMPLETE, **change}))


def test_keywords_reach_a_function_that_takes_any(tmp_path):
    """start(workers, **options): quiet= is taken; an Engine with **kwargs takes anything."""
    release = synthetic_release(tmp_path, {**COMPLETE, "vllm/engine/__init__.py": (
        "class Engine:\n    def create(self, **anything): ...\ndef start(workers): ...\n")})
    assert unmet(release) == ["vllm.engine.start(..., quiet=...)"]


def test_parser_destinations_and_environment_registry_are_read_from_the_source(tmp_path):
    release = synthetic_release(tmp_path, {
        "vllm/envs.py": "environment_variables: dict = {'VLLM_A': 1, 'VLLM_B': 2}\n",
        "vllm/engine/arg_utils.py": "class EngineArgs:\n    block_size: int = 16\n",
        "vllm/entrypoints/cli_args.py": (
            "def make(parser):\n    parser.add_argument('--api-server-count', type=int)\n"
            "    parser.add_argument('model_tag')\n"
            "    parser.add_argument('--x', dest='renamed')\n")})
    assert release.environment_variables == {"VLLM_A", "VLLM_B"}
    assert {"block_size", "api_server_count", "model_tag", "renamed"} <= release.parser_dests


def test_a_standard_library_base_does_not_excuse_a_missing_member(tmp_path):
    """class Engine(ABC) without create(): ABC brings no members, so the need is unmet (a base
    from another library, like pydantic's BaseModel, would leave it unknown, and pass)."""
    engine = "from abc import ABC\nclass Engine(ABC):\n    {}\ndef start(workers, **o): ...\n"
    need = vllm_release.Need("vllm.engine", "Engine", "create")
    without = synthetic_release(tmp_path / "a", {**COMPLETE, "vllm/engine/__init__.py":
                                                 engine.format("pass")})
    with_it = synthetic_release(tmp_path / "b", {**COMPLETE, "vllm/engine/__init__.py":
                                                 engine.format("def create(self, size): ...")})
    assert not need.met_by(without) and need.met_by(with_it)
