"""The gate in front of every inference route: API keys, a bound on body size, and admission.

- Auth (optional): `Authorization: Bearer <key>` against the keys in `AIM_API_KEY` (comma-separated,
  so keys can be rotated; fed from a Secret) or vLLM's `--api-key`, compared in constant time.
  Health, readiness and metrics stay open for probes and Prometheus.
- Body size: larger than `max_request_bytes` -> 413 before anything parses it.
- Text: a string holding a lone UTF-16 surrogate (`"\\ud800"`, valid JSON, no valid text) -> 400
  naming the field; past the gate vLLM failed to encode it and answered 500.
- Admission: at most `max_num_seqs + max_queued` inference requests in flight; beyond that the
  answer is 503 with `Retry-After` at once, instead of an unbounded queue that times every client
  out (the OpenAI SDK retries 503 with `Retry-After` by itself).

Pure ASGI, so streamed responses stream and client disconnects reach the handler. Errors come in
the protocol's shape (serving/protocol_errors.py): OpenAI's on vLLM's paths, KServe's elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aim_runtime import settings
from aim_runtime.serving import metrics
from aim_runtime.serving.paths import OPEN_PATHS, openai_shaped
from aim_runtime.serving.protocol_errors import bearer_matches, send_error

RETRY_AFTER_SECONDS = 1
# A JSON escape of a high surrogate without a low one after it, or of a low one without a high
# one before it; most bodies have none (an escaped emoji is a pair), and only those are parsed.
HIGH, LOW = rb"\\u[dD][89abAB][0-9a-fA-F]{2}", rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
SURROGATE_ESCAPE = re.compile(HIGH + rb"(?!" + LOW + rb")|(?<!" + HIGH + rb")" + LOW)
FIELD_NAME_SHOWN = 80  # characters of a client's field path in the error
WS_POLICY_VIOLATION = 1008  # RFC 6455's close code for a refused policy


@dataclass
class GateSettings:
    api_keys: tuple[str, ...] = ()
    max_request_bytes: int = settings.MAX_REQUEST_BYTES.default
    max_queued: int | None = None  # None: as many as the engine runs at once (max_num_seqs)


@dataclass
class GateState:
    """Inference requests in flight, and where the engine's capacity comes from (the model).

    With several API server processes the count is the pod's: `shared_in_flight`, a
    multiprocessing RawArray("q") with one slot per process (serving/api_server_group.py). Each
    process writes only its own slot and reads the sum, so no lock is shared: a process killed
    while holding one would have hung every other process's next request, liveness included."""

    engine_capacity: Callable[[], int | None] = field(default=lambda: None)
    shared_in_flight: Any = None
    server_index: int = 0  # which of the pod's API server processes this is

    def __post_init__(self) -> None:
        self._slots = self.shared_in_flight if self.shared_in_flight is not None else [0]

    @property
    def in_flight(self) -> int:
        return int(sum(self._slots))

    def admit(self, limit: int | None) -> int | None:
        """Count one more request in flight unless `limit` already are: the new count, or
        None (refused). Counted first and taken back when over: two processes admitting the
        last place at once may both refuse (each a 503 with Retry-After), never both admit."""
        self._slots[self.server_index] += 1
        count = self.in_flight
        if limit is not None and count > limit:
            self._slots[self.server_index] -= 1
            return None
        return count

    def release(self) -> int:
        """One request fewer in flight: the new count."""
        self._slots[self.server_index] -= 1
        return self.in_flight


class RequestGate:
    def __init__(self, app: Any, settings: GateSettings, state: GateState,
                 root_routes: bool = False) -> None:
        self.app = app
        self.settings = settings
        self.state = state
        self.root_routes = root_routes  # vLLM's routes at the root too (not KServe's paths)
        self.keys = [key.encode() for key in settings.api_keys if key]
        self.admitted = metrics.API_SERVER_REQUESTS.labels(server=str(state.server_index))
        self.known_limit: int | None = None  # fixed once the engine knows its capacity

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and self.keys and not self._authorized(scope):
            # vLLM's realtime routes: the handshake is refused (HTTP 403), as `vllm serve
            # --api-key` refuses it.
            metrics.REJECTED.labels(reason="unauthorized").inc()
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        if scope["type"] != "http" or OPEN_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        openai = openai_shaped(scope["path"], self.root_routes)
        if self.keys and not self._authorized(scope):
            metrics.REJECTED.labels(reason="unauthorized").inc()
            await send_error(send, openai, 401, "AuthenticationError",
                          "missing or invalid API key (Authorization: Bearer <key>)",
                          [(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, self.settings.max_request_bytes)
        if body is None:
            metrics.REJECTED.labels(reason="too_large").inc()
            await send_error(send, openai, 413, "RequestTooLarge",
                          f"request body larger than {self.settings.max_request_bytes} bytes")
            return
        field_name = lone_surrogate_field(body)
        if field_name is not None:
            metrics.REJECTED.labels(reason="invalid_text").inc()
            shown = field_name[:FIELD_NAME_SHOWN]
            await send_error(send, openai, 400, "BadRequestError",
                          f"{shown}: a lone UTF-16 surrogate is not text (a JSON \\ud800 to "
                          "\\udfff escape without its pair)")
            return
        limit = self._limit()
        admitted = self.state.admit(limit)
        if admitted is None:
            metrics.REJECTED.labels(reason="overload").inc()
            await send_error(send, openai, 503, "ServiceUnavailableError",
                          f"server busy: {self.state.in_flight} requests in flight (limit "
                          f"{limit}); retry shortly",
                          [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        metrics.IN_FLIGHT.set(admitted)
        self.admitted.inc()
        try:
            await self.app(scope, replay_body(body, receive), send)
        finally:
            metrics.IN_FLIGHT.set(self.state.release())

    def _authorized(self, scope: dict) -> bool:
        return bearer_matches(dict(scope["headers"]).get(b"authorization", b""), self.keys)

    def _limit(self) -> int | None:
        """Admissions before 503: the engine's capacity plus the queue bound. Worked out (and
        exported) once, when the engine first knows its capacity; each request then reads it."""
        if self.known_limit is not None:
            return self.known_limit
        capacity = self.state.engine_capacity()
        if capacity is None:
            return None
        queued = self.settings.max_queued if self.settings.max_queued is not None else capacity
        self.known_limit = capacity + queued
        metrics.ADMISSION_LIMIT.set(self.known_limit)
        return self.known_limit


def lone_surrogate_field(body: bytes) -> str | None:
    """The JSON path of the first string in `body` holding a lone surrogate, else None (also for
    bodies that are not JSON: the application answers those)."""
    if not SURROGATE_ESCAPE.search(body):
        return None
    try:
        return _surrogate_in(json.loads(body), "body")
    except (ValueError, RecursionError):
        return None


def _surrogate_in(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _surrogate_in(key, where) if isinstance(key, str) else None
        found = found or _surrogate_in(item, f"{where}.{key}" if isinstance(key, str)
                                       else f"{where}[{key}]")
        if found:
            return found
    return None


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # client went away; the app sees an empty body and the disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Any) -> Any:
    """An ASGI receive that gives `body` once, then the connection's own messages."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: disconnect detection

    return replay
