"""Warm-up before ready: real requests through the served path, so the first user request after
readiness is as fast as the next.

After the engine loads, vLLM still initialises lazily on first use: the tokenizer and detokenizer
threads, the chat template, the sampler, structured-output grammars, the tool parser, and on GPUs
the kernels AITER and Triton compile on first call and the graphs captured per batch size. Each is
paid once, by whoever asks first. The runtime asks first: through its own HTTP listener (the gate,
KServe's routing, vLLM's application, exactly as a client), before readiness turns 200.

Extents (`--warmup`, `AIM_WARMUP`): `off`; `basic` (one completion, one streamed completion, one
chat); `full` (default: basic, plus a prefill of the planned batched-token size, decode at the
planned concurrency, and the tool-call and structured-output paths when the recipe enables them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from aim_runtime import openai_requests as bodies

log = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 50
IN_PROCESS_URL = "http://in-process"
CONCURRENCY_CAP = 16  # decode batch sizes beyond this are warmed by the graph capture itself


@dataclass(frozen=True)
class WarmupTarget:
    """Where and how far to warm, from start-up (the rest comes from the loaded engine)."""

    extent: str
    url: str
    api_key: str | None = None


@dataclass(frozen=True)
class WarmupPlan:
    """What to warm, from the plan and the server's settings."""

    extent: str
    url: str  # the server's own HTTP listener
    model: str
    api_key: str | None
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    tools: bool  # the recipe enables a tool parser
    structured_outputs: bool = True
    warmers: int = 1  # API server processes warming up at once; they share the decode batch


def requests_for(plan: WarmupPlan) -> list[tuple[str, dict[str, Any]]]:
    """(path under /openai/v1, body) of every warm-up request, in order: the bodies `aim-runtime
    validate` sends too (openai_requests.py)."""
    requests = [bodies.completion(plan.model), bodies.streamed_completion(plan.model),
                bodies.chat(plan.model)]
    if plan.extent != "full":
        return requests
    prefill = max(1, min(plan.max_num_batched_tokens, plan.max_model_len) - 8)
    requests.append(bodies.completion(plan.model, 1, prompt=[0] * prefill))
    if plan.structured_outputs:
        requests.append(bodies.choice(plan.model))
    if plan.tools:
        requests.append(bodies.named_tool_call(plan.model))
    return requests


async def warm_up(plan: WarmupPlan, app: Any = None) -> int:
    """Send the warm-up requests (and a decode batch at the planned concurrency); returns how
    many were sent. A failing warm-up request is logged, not fatal: readiness then still follows
    the engine's health, and the user's first request pays what was not warmed.

    With `app` (the server's ASGI application), the requests go to it in process instead of
    through the listener: one of several API server processes warms its own front end, where
    the shared listener could hand a request to a peer."""
    if plan.extent == "off":
        return 0
    headers = {"authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
    url = IN_PROCESS_URL if app is not None else plan.url
    base = url + "/openai/v1"
    transport = httpx.ASGITransport(app=app) if app is not None else None
    # The listener is our own, on the loopback; with TLS its certificate names the service, not
    # the loopback address, so it is not verified here.
    async with httpx.AsyncClient(timeout=600, headers=headers, verify=False,
                                 transport=transport) as client:
        await _wait_for_listener(client, url)
        sent = 0
        for path, body in requests_for(plan):
            await _send(client, base + path, body)
            sent += 1
        if plan.extent == "full":
            batch = max(1, min(plan.max_num_seqs, CONCURRENCY_CAP) // plan.warmers)
            body = {"model": plan.model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
            await asyncio.gather(*(_send(client, base + "/completions", body)
                                   for _ in range(batch)))
            sent += batch
    return sent


async def _wait_for_listener(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(CONNECT_ATTEMPTS):
        try:
            await client.get(url + "/v2/health/live")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.2)


async def _send(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    started = time.monotonic()
    if body.get("stream"):
        async with client.stream("POST", url, json=body) as response:
            async for _ in response.aiter_lines():
                pass
    else:
        response = await client.post(url, json=body)
    if response.status_code != 200:
        log.warning("warm-up request to %s answered %d", url, response.status_code)
    log.debug("warm-up %s: %.3f s", url, time.monotonic() - started)
