"""The checks `aim-runtime validate` runs, in order, each against the server's HTTP interface.

A check returns what it saw (pass), or raises Failed, Warned or Skipped. A transport error
(the server stopped answering) fails the check it happened in and skips the rest, as does a
failure of a check the others stand on (reach, ready, api-key, models).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from aim_runtime import openai_requests as bodies

OPENAI = "/openai/v1"
PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
LOAD_TOKENS = 16


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str | None = None
    model: str | None = None  # None: the first base model the server lists
    expect_recipe: str | None = None
    load: int = 0  # concurrent requests of the load smoke (0: none)
    timeout: float = 120.0
    verify: bool = True  # TLS certificates


@dataclass(frozen=True)
class Outcome:
    name: str
    result: str  # pass, warn, fail or skip
    detail: str
    seconds: float = 0.0


class Failed(Exception):
    pass


class Warned(Exception):
    pass


class Skipped(Exception):
    pass


@dataclass
class Session:
    """What the checks learn as they go, and the HTTP client they share."""

    target: Target
    client: httpx.Client
    model: str = ""
    adapters: list[str] = field(default_factory=list)
    plan: dict[str, str] = field(default_factory=dict)
    generated_before: float = 0.0
    listing: httpx.Response | None = None  # /models with the key, as api-key got it

    def headers(self) -> dict[str, str]:
        key = self.target.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def models_listing(self) -> httpx.Response:
        """/models with the key: fetched once, by the api-key check, and read by the others."""
        if self.listing is None:
            self.listing = self.client.get(OPENAI + "/models", headers=self.headers())
        return self.listing

    def post(self, request: tuple[str, dict[str, Any]], **changes: Any) -> httpx.Response:
        path, body = request
        return self.client.post(OPENAI + path, json={**body, **changes},
                                headers=self.headers())

    def answer(self, request: tuple[str, dict[str, Any]], **changes: Any) -> dict[str, Any]:
        """The JSON of a 200; Failed with what came instead."""
        response = self.post(request, **changes)
        if response.status_code != 200:
            raise Failed(f"{request[0]} answered {response.status_code}: "
                         f"{response.text[:300]}")
        return dict(response.json())

    def metrics(self) -> str:
        return self.client.get("/metrics").text


def reach(s: Session) -> str:
    response = s.client.get("/v2/health/live")
    if response.status_code != 200:
        raise Failed(f"liveness {response.status_code}: {response.text[:200]} (the engine is "
                     "dead; the pod restarts)")
    return "live"


def ready(s: Session) -> str:
    response = s.client.get("/v2/health/ready")
    if response.status_code != 200:
        raise Failed(f"not ready ({response.status_code}): {response.text[:300]}")
    return "ready"


def api_key(s: Session) -> str:
    keyed = s.models_listing()
    if keyed.status_code == 401:
        raise Failed("the server refuses the key given (401)" if s.target.api_key else
                     "the server requires an API key: give --api-key or AIM_API_KEY")
    if not s.target.api_key:
        return "no key required"
    keyless = s.client.get(OPENAI + "/models")
    if keyless.status_code != 401:
        raise Warned(f"a request without the key answered {keyless.status_code}: the server "
                     "does not enforce API keys")
    return "the key is accepted, and required"


def models(s: Session) -> str:
    response = s.models_listing()
    cards = response.json().get("data") if response.status_code == 200 else None
    if not cards:
        raise Failed(f"/models answered {response.status_code}: {response.text[:200]}")
    bases = [c["id"] for c in cards if not c.get("parent")]
    s.adapters = [c["id"] for c in cards if c.get("parent")]
    s.model = s.target.model or (bases[0] if bases else "")
    if s.model not in bases + s.adapters:
        raise Failed(f"{s.model!r} is not served; the server serves {bases + s.adapters}")
    return f"serving {', '.join(bases)}" + (f"; adapters {', '.join(s.adapters)}"
                                            if s.adapters else "")


def plan(s: Session) -> str:
    """The served plan's labels (aim_plan_info) and the tokens generated so far."""
    text = s.metrics()
    line = next((ln for ln in text.splitlines() if ln.startswith("aim_plan_info{")), None)
    if line is None:
        raise Failed("/metrics has no aim_plan_info: not an AIM Runtime server?")
    s.plan = dict(LABEL.findall(line.split("}", 1)[0]))
    s.generated_before = _sum(text, "vllm:generation_tokens_total")
    return (f"recipe {s.plan.get('recipe')} on {s.plan.get('devices')}x "
            f"{s.plan.get('product')}, tool parser "
            f"{s.plan.get('tool_parser')}, reasoning parser {s.plan.get('reasoning_parser')}")


def recipe(s: Session) -> str:
    served = s.models_listing().headers.get(bodies.RECIPE_HEADER)
    if served is None:
        raise Failed(f"no {bodies.RECIPE_HEADER} header on the answer")
    expected = s.target.expect_recipe
    if expected and served != expected:
        raise Failed(f"serving recipe {served}, expected {expected}")
    return served + (" (as expected)" if expected else "")


def completion(s: Session) -> str:
    answer = s.answer(bodies.completion(s.model, 4))
    choice = answer["choices"][0]
    _expect(answer.get("object") == "text_completion", f"object {answer.get('object')!r}")
    _expect(isinstance(choice.get("text"), str), "choices[0].text is not a string")
    _expect(choice.get("finish_reason") in ("length", "stop"),
            f"finish_reason {choice.get('finish_reason')!r}")
    tokens = answer.get("usage", {}).get("completion_tokens")
    _expect(isinstance(tokens, int) and tokens >= 1, f"usage {answer.get('usage')}")
    return f"{tokens} tokens, finish {choice['finish_reason']}"


def stream(s: Session) -> str:
    path, body = bodies.streamed_completion(s.model, 4)
    events: list[str] = []
    with s.client.stream("POST", OPENAI + path, json=body, headers=s.headers()) as response:
        _expect(response.status_code == 200, f"answered {response.status_code}")
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    _expect(events[-1:] == ["[DONE]"], "the stream does not end with [DONE]")
    chunks = [json.loads(event) for event in events[:-1]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    _expect(bool(usage) and usage[-1].get("completion_tokens", 0) >= 1,
            "no usage chunk (stream_options.include_usage)")
    return f"{len(chunks)} events, then [DONE]; usage {usage[-1]['completion_tokens']} tokens"


def several_choices(s: Session) -> str:
    answer = s.answer(bodies.completion(s.model, 2), n=2, temperature=1.0)
    indices = sorted(c.get("index") for c in answer["choices"])
    _expect(indices == [0, 1], f"choices {indices} for n=2")
    return "n=2: two choices"


def logprobs(s: Session) -> str:
    answer = s.answer(bodies.completion(s.model, 2), logprobs=2)
    found = answer["choices"][0].get("logprobs") or {}
    _expect(bool(found.get("tokens")) and bool((found.get("top_logprobs") or [None])[0]),
            f"logprobs {str(found)[:200]}")
    return f"{len(found['tokens'])} tokens with their top 2"


def chat(s: Session) -> str:
    message = s.answer(bodies.chat(s.model, 4))["choices"][0]["message"]
    _expect(message.get("role") == "assistant", f"role {message.get('role')!r}")
    _expect(isinstance(message.get("content"), str), "no content")
    return "an assistant message"


def errors(s: Session) -> str:
    cases = [(bodies.completion(s.model, -1), 400), (bodies.completion("no-such-model"), 404)]
    for request, status in cases:
        response = s.post(request)
        error = _json(response).get("error")
        _expect(response.status_code == status, f"{request[1]['model']}, max_tokens "
                f"{request[1]['max_tokens']}: answered {response.status_code}, not {status}")
        _expect(isinstance(error, dict) and isinstance(error.get("message"), str),
                f"a {status} without OpenAI's error object: {response.text[:200]}")
    return "400 and 404 in OpenAI's error shape"


def tool_call(s: Session) -> str:
    if s.plan.get("tool_parser", "none") == "none":
        raise Skipped("the plan declares no tool parser")
    choice = s.answer(bodies.named_tool_call(s.model))["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    if not calls and choice.get("finish_reason") == "length":
        raise Warned(f"the model did not finish the call of {bodies.TOOL_NAME} within its "
                     "tokens (the model's behaviour)")
    _expect(bool(calls) and calls[0]["function"]["name"] == bodies.TOOL_NAME,
            f"no call of {bodies.TOOL_NAME}: {str(choice['message'])[:200]}")
    return _parsed(calls[0]["function"]["arguments"], choice, "arguments")


def structured_choice(s: Session) -> str:
    choice = s.answer(bodies.choice(s.model))["choices"][0]
    content = choice["message"].get("content")
    if content in bodies.CHOICES:
        return f"{content!r}, one of {bodies.CHOICES}"
    if choice.get("finish_reason") == "length":
        raise Warned(f"the model did not finish: {content!r}")
    raise Failed(f"{content!r} is not one of {bodies.CHOICES}")


def json_schema(s: Session) -> str:
    choice = s.answer(bodies.json_schema(s.model))["choices"][0]
    return _parsed(choice["message"].get("content"), choice, "content")


def reasoning(s: Session) -> str:
    if s.plan.get("reasoning_parser", "none") == "none":
        raise Skipped("the plan declares no reasoning parser")
    message = s.answer(bodies.chat(s.model, 64, "What is 2 + 2?"))["choices"][0]["message"]
    if not (message.get("reasoning_content") or message.get("reasoning")):
        raise Warned("no reasoning in the answer (the model's behaviour)")
    return "reasoning separated from the answer"


def adapters(s: Session) -> str:
    if not s.adapters:
        raise Skipped("no adapters served")
    for adapter in s.adapters:
        s.answer(bodies.completion(adapter, 2))
    return f"{len(s.adapters)} adapters answer"


def metrics_advance(s: Session) -> str:
    generated = _sum(s.metrics(), "vllm:generation_tokens_total")
    _expect(generated > s.generated_before,
            f"vllm:generation_tokens_total stayed at {generated:g}")
    return f"{generated - s.generated_before:g} tokens generated during the checks"


def load(s: Session) -> str:
    count = s.target.load
    if not count:
        raise Skipped("no --load")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        statuses = list(pool.map(lambda _: s.post(bodies.completion(
            s.model, LOAD_TOKENS)).status_code, range(count)))
    failed = [status for status in statuses if status != 200]
    _expect(not failed, f"{len(failed)} of {count} failed: {sorted(set(failed))}")
    return f"{count} concurrent requests of {LOAD_TOKENS} tokens in " \
           f"{time.monotonic() - started:.1f} s"


CHECKS: tuple[tuple[str, Callable[[Session], str]], ...] = (
    ("reach", reach), ("ready", ready), ("api-key", api_key), ("models", models),
    ("plan", plan), ("recipe", recipe), ("completion", completion), ("stream", stream),
    ("n", several_choices), ("logprobs", logprobs), ("chat", chat), ("errors", errors),
    ("tool-call", tool_call), ("choice", structured_choice), ("json-schema", json_schema),
    ("reasoning", reasoning), ("adapters", adapters), ("metrics", metrics_advance),
    ("load", load),
)
FOUNDATIONS = {"reach", "ready", "api-key", "models"}  # the others stand on these


def run(target: Target, on_outcome: Callable[[Outcome], None] = lambda _: None
        ) -> list[Outcome]:
    """Every check in order; `on_outcome` sees each as it ends."""
    outcomes: list[Outcome] = []
    stopped: str | None = None
    with httpx.Client(base_url=target.url.rstrip("/"), timeout=target.timeout,
                      verify=target.verify) as client:
        session = Session(target, client)
        for name, check in CHECKS:
            outcome = Outcome(name, SKIP, stopped) if stopped else _run_one(name, check, session)
            if outcome.result == FAIL and not stopped and (
                    name in FOUNDATIONS or outcome.detail.startswith("connection")):
                stopped = f"after {name} failed"
            outcomes.append(outcome)
            on_outcome(outcome)
    return outcomes


def _run_one(name: str, check: Callable[[Session], str], session: Session) -> Outcome:
    started = time.monotonic()
    try:
        result, detail = PASS, check(session)
    except Warned as warned:
        result, detail = WARN, str(warned)
    except Skipped as skipped:
        result, detail = SKIP, str(skipped)
    except Failed as failed:
        result, detail = FAIL, str(failed)
    except httpx.TransportError as error:
        result, detail = FAIL, f"connection: {type(error).__name__}: {error}"
    except (KeyError, IndexError, TypeError, ValueError) as error:  # a shape not OpenAI's
        result, detail = FAIL, f"unexpected answer: {type(error).__name__}: {error}"
    return Outcome(name, result, detail, round(time.monotonic() - started, 3))


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise Failed(problem)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _parsed(text: Any, choice: dict[str, Any], what: str) -> str:
    """`text` as JSON matching openai_requests.JSON_SCHEMA: pass, warn (the model ran out of
    tokens) or fail."""
    try:
        value = json.loads(text or "")
    except ValueError:
        if choice.get("finish_reason") == "length":
            raise Warned(f"the model did not finish the {what}: {str(text)[:100]!r}") from None
        raise Failed(f"{what} not JSON: {str(text)[:200]!r}") from None
    _expect(isinstance(value, dict) and isinstance(value.get("ok"), bool),
            f"{what} not of the schema: {value!r}")
    return f"{what}: {json.dumps(value)}"


def _sum(text: str, name: str) -> float:
    """The sum of a series' samples in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
