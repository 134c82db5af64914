"""OpenAI request bodies that the warm-up (serving/warmup.py) and `aim-runtime validate`
(validate/) both send: the same paths exercised before readiness and checked afterwards. Paths
are under the OpenAI prefix (`/openai/v1`)."""

from __future__ import annotations

from typing import Any

Body = dict[str, Any]
RECIPE_HEADER = "x-aim-recipe"  # on every answer: the recipe the server runs
CHOICES = ["yes", "no"]
TOOL_NAME = "report"
TOOL = {"type": "function", "function": {
    "name": TOOL_NAME, "description": "Report whether the question was understood.",
    "strict": True, "parameters": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                   "required": ["ok"], "additionalProperties": False}}}
JSON_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
               "additionalProperties": False}


def completion(model: str, max_tokens: int = 2, **extra: Any) -> tuple[str, Body]:
    return "/completions", {"model": model, "prompt": "Hello", "max_tokens": max_tokens,
                            "temperature": 0, **extra}


def streamed_completion(model: str, max_tokens: int = 2) -> tuple[str, Body]:
    return completion(model, max_tokens, stream=True, stream_options={"include_usage": True})


def chat(model: str, max_tokens: int = 2, content: str = "Hello", **extra: Any
         ) -> tuple[str, Body]:
    return "/chat/completions", {"model": model, "max_tokens": max_tokens, "temperature": 0,
                                 "messages": [{"role": "user", "content": content}], **extra}


def choice(model: str) -> tuple[str, Body]:
    """A structured output from a fixed set (vLLM's `structured_outputs.choice`)."""
    return chat(model, 4, "Answer yes or no.", structured_outputs={"choice": CHOICES})


def json_schema(model: str, max_tokens: int = 64) -> tuple[str, Body]:
    """A structured output by JSON schema (OpenAI's `response_format`)."""
    return chat(model, max_tokens, "Reply in JSON.", response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": JSON_SCHEMA,
                                               "strict": True}})


def named_tool_call(model: str, max_tokens: int = 64) -> tuple[str, Body]:
    """A call of the tool named in `tool_choice` (vLLM constrains its arguments to the
    schema, whichever the model)."""
    return chat(model, max_tokens, "Did you understand?", tools=[TOOL],
                tool_choice={"type": "function", "function": {"name": TOOL_NAME}})
