"""`vllm serve`'s request-header limits, held by our listener whichever HTTP parser uvicorn runs.

vLLM bounds a request's head with `--h11-max-incomplete-event-size` (bytes) and
`--h11-max-header-count`, which its own launcher hands to uvicorn's h11 parser. uvicorn's
default parser here is httptools, which has no limit of its own, so the limits are checked on the
parsed request, first thing in the listener's application: past either, 431 (Request Header
Fields Too Large) in the protocol's error shape, and the request goes no further.
"""

from __future__ import annotations

from typing import Any

from aim_runtime.serving import metrics
from aim_runtime.serving.paths import openai_shaped
from aim_runtime.serving.protocol_errors import send_error


def head_bytes(scope: dict) -> int:
    """The request head's size as h11 counts it: the request line, then each header line
    (name, ": ", value, CRLF)."""
    line = len(scope["method"]) + len(scope.get("raw_path") or scope["path"].encode()) + \
        len(scope.get("query_string") or b"") + len(" HTTP/1.1\r\n") + 2
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class HeaderLimits:
    """ASGI: 431 for an HTTP request with more than `max_count` headers or a head of more than
    `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int, max_count: int, root_routes: bool) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.root_routes = root_routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = head_bytes(scope)
            if len(headers) > self.max_count or size > self.max_bytes:
                metrics.REJECTED.labels(reason="headers_too_large").inc()
                await send_error(send, openai_shaped(scope["path"], self.root_routes), 431,
                             "RequestHeaderFieldsTooLarge",
                             f"request head: {len(headers)} header fields, {size} bytes; the "
                             f"limits are {self.max_count} fields (--h11-max-header-count) and "
                             f"{self.max_bytes} bytes (--h11-max-incomplete-event-size)")
                return
        await self.app(scope, receive, send)
