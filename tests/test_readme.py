"""The README's promises: two set-up commands, the CI entry runs the test one, and the first one
(serve the embedded default) answers the documented curl with streamed tokens."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from servers import REPO, ServerProcess, free_port, server_environment

README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|console)?\n(.*?)```", text, flags=re.S)


def test_first_lines_give_exactly_two_setup_commands():
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    assert README.index("```sh") < 30  # at the very top
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]


def test_ci_runs_the_readme_test_command_and_make_targets_exist():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve: install\n\t\$\(BIN\)/aim-runtime serve \$\(ARGS\)$", makefile,
                     flags=re.M)
    assert re.search(r"^test: lint\n\t\$\(BIN\)/python -m pytest", makefile, flags=re.M)


def readme_curl() -> list[str]:
    block = README.split("<!-- readme-curl -->\n```sh\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.serving
def test_serving_the_embedded_default_streams_to_the_documented_curl(tmp_path):
    port = free_port()
    # What `make serve` runs, with a free port and loopback only.
    command = [sys.executable, "-m", "aim_runtime", "serve", "--http_port", str(port),
               "--host", "127.0.0.1", "--enable_grpc", "false"]
    server = ServerProcess(command, port, tmp_path / "serve.log", server_environment(tmp_path))
    server.start()
    try:
        server.wait_ready()
        curl = [part.replace("localhost:8080", f"127.0.0.1:{port}") for part in readme_curl()]
        assert curl[0] == "curl"
        result = subprocess.run(curl, capture_output=True, text=True, timeout=60)
        events = [line for line in result.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) >= 3 and events[-1] == "data: [DONE]", result.stdout
        log = server.log_path.read_text()
        assert "serving the embedded default model" in log
        assert "gibberish by construction" in log
        assert (tmp_path / "aim-tiny-random" / "model.safetensors").is_file()
    finally:
        assert server.stop() == 0


def console_examples() -> list[tuple[str, str]]:
    """(command, expected output) of every `$ aim-runtime ...` line in console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.*?)```", README, flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((command, output.strip()))
    return examples


@pytest.mark.parametrize(("command", "expected"), console_examples())
def test_console_examples_print_what_the_readme_shows(command, expected):
    args = shlex.split(command)
    assert args[0] == "aim-runtime"
    result = subprocess.run([sys.executable, "-m", "aim_runtime", *args[1:]], cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            env=server_environment(REPO))
    assert (result.stdout + result.stderr).strip() == expected
