"""The README's promises: two set-up commands, the CI entry runs the test one, and the first one
(serve the embedded default) answers the documented curl with streamed tokens."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from aim_runtime.checkpoint import default_model
from servers import REPO

README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|console)?\n(.*?)```", text, flags=re.S)


def test_first_lines_give_exactly_two_setup_commands():
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    assert README.index("```sh") < 30  # at the very top
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]


def make_would_run(directory: Path, *arguments: str) -> list[list[str]]:
    """The commands `make ARGUMENTS` would run in `directory` with the repository's Makefile
    (`make -n`), from an environment without make variables (a surrounding `make test ARGS=..`
    passes its ARGS down through MAKEFLAGS)."""
    result = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), *arguments],
                            cwd=directory, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def checkout(tmp_path: Path, installed: bool) -> Path:
    """A directory for `make -n`: the lock and pyproject.toml, and the venv's install stamp if
    `installed` (newer than both, as after `make install`)."""
    (tmp_path / "locks").mkdir()
    for source in (tmp_path / "locks" / "cpu.txt", tmp_path / "pyproject.toml"):
        source.write_text("")
        os.utime(source, (1_000_000_000, 1_000_000_000))
    if installed:
        (tmp_path / ".venv").mkdir()
        (tmp_path / ".venv" / ".installed-stamp").touch()
    return tmp_path


# pytest on both cores, the tests grouped by the server they share (tests/conftest.py)
PYTEST = [".venv/bin/python", "-m", "pytest", "-n", "2", "--dist", "loadgroup",
          "--no-loadscope-reorder"]


def test_make_test_runs_the_linters_then_pytest_with_the_given_args(tmp_path):
    commands = make_would_run(checkout(tmp_path, installed=True), "test", "ARGS=-x -k 'a b'")
    *lint, test = commands
    assert test == [*PYTEST, "-x", "-k", "a b"]
    assert lint, "no lint step before the tests"
    ruff = [c for c in lint if c[:2] == [".venv/bin/ruff", "check"]]
    assert ruff and {"runtime", "tests"} <= set(ruff[0][2:])
    tools = [next(word for word in c if not word.startswith("PYTHONPATH=")) for c in lint]
    assert {".venv/bin/ruff", ".venv/bin/lint-imports", ".venv/bin/mypy"} <= set(tools)
    assert not any("pip" in word for c in lint for word in c)  # installed: no install step
    assert make_would_run(tmp_path, "test")[-1] == PYTEST
    serial = make_would_run(tmp_path, "test", "WORKERS=0")[-1]
    assert serial[:5] == [".venv/bin/python", "-m", "pytest", "-n", "0"]


def test_make_test_on_a_fresh_clone_installs_exactly_the_locks_first(tmp_path):
    commands = make_would_run(checkout(tmp_path, installed=False), "test")
    pip = [".venv/bin/python", "-m", "pip", "install", "--quiet", "--no-deps"]
    assert commands[:6] == [
        ["rm", "-rf", ".venv"],
        ["python3", "-m", "venv", ".venv"],
        [*pip, "--requirement", "locks/cpu.txt"],  # nothing resolved on the day
        [*pip, "--no-build-isolation", "--editable", "."],
        [".venv/bin/python", "locks/lock.py", "--check"],
        ["touch", ".venv/.installed-stamp"]]
    first_lint = next(i for i, c in enumerate(commands) if c[:1] == [".venv/bin/ruff"])
    first_test = commands.index(PYTEST)
    assert 5 < first_lint < first_test


def test_make_serve_serves_with_the_given_args(tmp_path):
    checkout(tmp_path, installed=True)
    assert make_would_run(tmp_path, "serve") == [[".venv/bin/aim-runtime", "serve"]]
    assert make_would_run(tmp_path, "serve", "ARGS=--http_port 9000 --model_id 'a b'") == [
        [".venv/bin/aim-runtime", "serve", "--http_port", "9000", "--model_id", "a b"]]


def test_ci_entry_point_runs_make_test_from_the_repository_root(tmp_path):
    """.ci/run, run from elsewhere with a stand-in `make` on PATH: it changes to the checkout's
    root, runs `make test`, and fails when that fails."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", clone / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake_make = bin_dir / "make"
    fake_make.write_text(f'#!/bin/sh\necho "$(pwd -P) $*" >> {calls}\nexit "${{MAKE_EXIT:-0}}"\n')
    fake_make.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ok = subprocess.run(["bash", str(clone / ".ci" / "run")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert calls.read_text().splitlines() == [f"{clone.resolve()} test"]
    failing = subprocess.run(["bash", str(clone / ".ci" / "run")], cwd=tmp_path,
                             env={**env, "MAKE_EXIT": "3"}, capture_output=True, timeout=60)
    assert failing.returncode == 3


def readme_curl() -> list[str]:
    block = README.split("<!-- readme-curl -->\n```sh\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.serving
def test_serving_the_embedded_default_answers_the_documented_curl(smol):
    """What `make serve` runs (the session's `smol` server: the embedded default, a free port,
    loopback only), asked with the README's curl."""
    curl = [part.replace("localhost:8080", f"127.0.0.1:{smol.port}") for part in readme_curl()]
    assert curl[0] == "curl"
    result = subprocess.run(curl, capture_output=True, text=True, timeout=60)
    events = [line[6:] for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert len(events) >= 3 and events[-1] == "[DONE]", result.stdout
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text.startswith(default_model.CHECK_ANSWER)  # as the README says
    assert "serving the embedded default model, HuggingFaceTB/SmolLM2-135M-Instruct" in \
        smol.log_path.read_text()
