"""Every AIM_* variable goes through the one registry: a bad value is an `error:` naming the
variable, with a hint, and exit code 2, never a traceback. And the package has no import cycle."""

from __future__ import annotations

import re

import grimp
import pytest

from aim_runtime import settings
from aim_runtime.errors import SettingError
from testkit import REPO, run_cli

# Variables whose value is free text: any string is a valid value.
FREE_TEXT = {"AIM_MODEL_ID", "AIM_RECIPES_DIR", "AIM_CACHE_DIR", "AIM_GPU_PRODUCT", "AIM_HOST",
             "AIM_COMPILE_CACHE_DIR", "AIM_TERMINATION_LOG", "AIM_LORA_DIR",
             "AIM_API_KEY"}


def test_every_variable_is_named_aim_and_documented():
    for name, variable in settings.REGISTRY.items():
        assert name == variable.name
        assert re.fullmatch(r"AIM_[A-Z0-9_]+", name), name
        assert variable.doc and variable.kind, name


@pytest.mark.parametrize("name", sorted(set(settings.REGISTRY) - FREE_TEXT))
def test_a_bad_value_names_the_variable_and_says_what_was_expected(name):
    variable = settings.REGISTRY[name]
    with pytest.raises(SettingError) as caught:
        variable.read({name: "bad/value"})
    assert str(caught.value).startswith(f"{name}=bad/value: expected ")
    assert caught.value.hint.startswith(f"{name}: ")


@pytest.mark.parametrize("name", sorted(settings.REGISTRY))
def test_unset_and_blank_mean_the_default(name):
    variable = settings.REGISTRY[name]
    assert variable.read({}) == variable.default
    assert variable.read({name: "  "}) == variable.default


def test_secrets_are_not_echoed():
    with pytest.raises(SettingError) as caught:
        settings.Variable("AIM_TEST_SECRET", settings.positive_int, None, "a secret", "n",
                          secret=True).read({"AIM_TEST_SECRET": "hunter2"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "env"), [
    (["serve"], {"AIM_MAX_REQUEST_BYTES": "32MiB"}),
    (["serve"], {"AIM_GRACEFUL_SHUTDOWN_SECONDS": "soon"}),
    (["serve"], {"AIM_ROLE": "leader"}),
    (["serve"], {"AIM_MAX_N": "0"}),
    (["worker", "--head-address", "127.0.0.1:1"], {"AIM_RAY_JOIN_TIMEOUT": "10m"}),
    (["plan", "--model", "tests/fixtures/models/llama-3.1-8b-instruct", "--simulate",
      "MI300X:1"], {"AIM_TENSOR_PARALLEL_SIZE": "two"}),
    (["detect"], {"AIM_LOG_LEVEL": "loud"}),
    (["detect"], {"AIM_GPU_COUNT": "-1"}),
])
def test_commands_refuse_bad_variables_with_an_error_line_not_a_traceback(command, env):
    result = run_cli(*command, env=env)
    (name, value), = env.items()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {name}={value}: expected " in result.stderr
    assert f"hint: {name}: " in result.stderr


def test_the_package_has_no_import_cycle():
    graph = grimp.build_graph("aim_runtime")
    cycles = [(module, imported) for module in sorted(graph.modules)
              for imported in graph.find_modules_directly_imported_by(module)
              if graph.find_shortest_chain(importer=imported, imported=module)]
    assert cycles == []


def test_no_module_imports_kserves_openai_layer():
    """It imports vLLM internals that move with every vLLM release (the runtime serves vLLM's
    own OpenAI application instead); a static check, next to the start-up test without it."""
    import ast

    offenders = []
    for path in sorted((REPO / "runtime" / "aim_runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("kserve.protocol.rest.openai") for n in names):
                offenders.append(str(path))
    assert offenders == []


# --- each option declared once ------------------------------------------------------------------


def test_a_registry_default_reaches_the_help_the_planner_and_the_docs(monkeypatch):
    """The registry entry is the one place an option's default is written: change it there and
    every command's help, the planner's fallback and the generated table follow."""
    from dataclasses import replace

    from aim_runtime.checkpoint.facts import load_model_facts
    from aim_runtime.cli.commands import build_parser
    from aim_runtime.hardware import detect
    from aim_runtime.planner.overrides import collect_overrides
    from aim_runtime.planner.setting import PlanSetting
    from testkit import MODELS

    for name, value in (("MIN_CONCURRENCY", 6), ("MAX_REQUEST_BYTES", 2 * settings.MIB)):
        changed = replace(getattr(settings, name), default=value)
        monkeypatch.setattr(settings, name, changed)
        monkeypatch.setitem(settings.REGISTRY, changed.name, changed)

    plan_help = " ".join(build_parser()._subparsers._group_actions[0].choices["plan"]
                         .format_help().split())
    assert "(default: 6; AIM_MIN_CONCURRENCY)" in plan_help
    from aim_runtime.cli.serve import serve_parser

    serve_help = " ".join(serve_parser().format_help().split())
    assert "(default: 6; AIM_MIN_CONCURRENCY)" in serve_help
    assert "(default: 2 MiB; AIM_MAX_REQUEST_BYTES)" in serve_help
    assert serve_parser().parse_args([]).max_request_bytes == 2 * settings.MIB

    setting = PlanSetting.create(detect(simulate="MI300X:1", environ={}),
                                 load_model_facts(MODELS / "llama-3.1-8b-instruct"),
                                 collect_overrides({}, {}))
    assert setting.min_concurrency == 6

    table = settings.markdown_table()
    assert "| `AIM_MIN_CONCURRENCY` | `--min-concurrency` | positive integer | `6` |" in table
    assert "| `AIM_MAX_REQUEST_BYTES` | `--max-request-bytes` | bytes | `2 MiB` |" in table


def test_a_flag_checks_its_value_with_the_variable_s_parser(capsys):
    from aim_runtime.cli.serve import serve_parser

    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--max-request-bytes", "0"])
    assert "argument --max-request-bytes: expected a positive integer" in capsys.readouterr().err
