"""The part of Go's text/template that KServe's LLMInferenceServiceConfig presets use, and the
functions KServe adds, to render presets as the controller does before a pod runs them.

Source: KServe `pkg/controller/v1alpha2/llmisvc` (`ReplaceVariables`: text/template with
`missingkey=error`, `.` the LLMInferenceService, `.GlobalConfig`; functions `ChildName`,
`shutdownTimeout`, `kvTransferConfig`). Supported: `{{ .Field.Path }}`, `{{ if COND }}` with
`{{ else }}`/`{{ end }}`, `and`/`or`, `nil`, numbers, backquoted strings, `{{-`/`-}}` trimming.
Anything else raises, so a preset cannot use what this harness does not understand.

`shutdownTimeout POD PRESTOP`: the pod's grace period (default 60) less the preStop sleep less
min(5, grace), at least 0 (kserve/kserve#5496).
"""

from __future__ import annotations

import re
from typing import Any

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
DEFAULT_GRACE_SECONDS = 60
# Go field names whose YAML key is not the name with a lower-case initial (the context's own
# keys, such as GlobalConfig's, are looked up as written first).
GO_FIELDS = {"ObjectMeta": "metadata"}


class TemplateError(ValueError):
    pass


def render(text: str, context: dict[str, Any]) -> str:
    nodes, rest = _parse(_tokens(text), stop=())
    if rest:
        raise TemplateError(f"unexpected {{{{ {rest[0][1]} }}}}")
    return _execute(nodes, context)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in ACTION.finditer(text):
        literal = text[position:match.start()]
        literal = literal.lstrip() if trim_next else literal
        tokens.append(("text", literal.rstrip() if match.group(1) else literal))
        tokens.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        position = match.end()
    literal = text[position:]
    tokens.append(("text", literal.lstrip() if trim_next else literal))
    return tokens


# A parsed template: text, ("expr", expression) or ("if", condition, then, otherwise).
Node = Any


def _parse(tokens: list[tuple[str, str]], stop: tuple[str, ...]
           ) -> tuple[list[Node], list[tuple[str, str]]]:
    nodes: list[Node] = []
    while tokens:
        kind, value = tokens[0]
        if kind == "text":
            nodes.append(value)
            tokens = tokens[1:]
        elif value in stop:
            return nodes, tokens
        elif value.startswith("if "):
            then, tokens = _parse(tokens[1:], stop=("else", "end"))
            otherwise: list[Node] = []
            if tokens and tokens[0][1] == "else":
                otherwise, tokens = _parse(tokens[1:], stop=("end",))
            if not tokens or tokens[0][1] != "end":
                raise TemplateError(f"{{{{ {value} }}}} without {{{{ end }}}}")
            nodes.append(("if", value[3:], then, otherwise))
            tokens = tokens[1:]
        else:
            nodes.append(("expr", value))
            tokens = tokens[1:]
    return nodes, tokens


def _execute(nodes: list[Node], context: dict[str, Any]) -> str:
    output = ""
    for node in nodes:
        if isinstance(node, str):
            output += node
        elif node[0] == "if":  # only the branch taken is executed, as in Go
            branch = node[2] if _truthy(_evaluate(node[1], context)) else node[3]
            output += _execute(branch, context)
        else:
            result = _evaluate(node[1], context)
            if result is None:
                raise TemplateError(f"{{{{ {node[1]} }}}} is nil")
            output += str(result)
    return output


def _evaluate(expression: str, context: dict[str, Any]) -> Any:
    words = re.findall(r"`[^`]*`|\S+", expression)
    head = words[0]
    if head in ("and", "or"):  # left to right, stopping once the result is known (Go >= 1.18)
        result = None
        for word in words[1:]:
            result = _value(word, context)
            if _truthy(result) == (head == "or"):
                return result
        return result
    args = [_value(w, context) for w in words[1:]]
    if head == "shutdownTimeout":
        pod, pre_stop = args
        grace = (pod or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return max(0, grace - pre_stop - min(5, grace))
    if head == "ChildName":
        return "".join(str(a) for a in args)
    if args:
        raise TemplateError(f"unknown function {head!r}")
    return _value(head, context)


def _value(word: str, context: dict[str, Any]) -> Any:
    if word == "nil":
        return None
    if word.startswith("`"):
        return word.strip("`")
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if word.startswith("."):
        value: Any = context
        for field in word[1:].split("."):
            if value is None:
                raise TemplateError(f"{word}: nil pointer evaluating {field}")
            key = field if field in value else GO_FIELDS.get(field, field[:1].lower() + field[1:])
            value = value.get(key)
        return value
    raise TemplateError(f"unsupported word {word!r}")


def _truthy(value: Any) -> bool:
    return bool(value) if not isinstance(value, dict) else True
