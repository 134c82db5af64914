"""LoRA adapters: a directory of adapters loaded at start and watched, and a guard in front of
vLLM's load API.

`AIM_LORA_DIR` names a directory with one adapter per subdirectory (PEFT format); each is served
under its subdirectory's name on the OpenAI routes and on v2 (`/v2/models/<adapter>/...`), and
listed by `/v1/models`. Every `AIM_LORA_WATCH_SECONDS` the directory is read again: a new
subdirectory is loaded, a removed one unloaded. vLLM's own API (`POST .../v1/load_lora_adapter`,
`.../v1/unload_lora_adapter`, behind the API key like every inference route) loads adapters too,
but only from inside that directory. Every adapter is checked against the base model before the
engine sees it (checkpoint/lora.py): missing files, a rank over `--max-lora-rank`, or another
base model's shapes get a 400 naming the problem, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.checkpoint.lora import adapter_problem
from aim_runtime.serving import metrics

log = logging.getLogger(__name__)

LOAD_PATH_SUFFIX = "/v1/load_lora_adapter"
# Inference routes whose body names the model (and so the adapter) a request is for.
COUNTED_SUFFIXES = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")


class AdapterRefused(ValueError):
    """A load the server refuses: the message says why (a 400 for the client)."""


@dataclass
class Adapters:
    """The adapter directory of one server, and what was loaded from it."""

    directory: Path
    facts: ModelFacts
    watch_seconds: float = 10.0
    max_rank: int = 16  # the engine's max_lora_rank, set once it is loaded
    from_directory: set[str] = field(default_factory=set)

    def resolve(self, lora_path: str) -> Path:
        """An adapter path from a load request, inside the directory (relative paths are
        relative to it); AdapterRefused otherwise."""
        root = self.directory.resolve()
        candidate = Path(lora_path)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not resolved.is_relative_to(root):
            raise AdapterRefused(f"lora_path {lora_path} is outside the adapter directory "
                                 f"{self.directory} (AIM_LORA_DIR)")
        return resolved

    def check(self, path: Path) -> None:
        """AdapterRefused if this adapter cannot serve on the base model."""
        problem = adapter_problem(path, self.facts, self.max_rank)
        if problem is not None:
            raise AdapterRefused(f"LoRA adapter refused: {problem}")

    def present(self) -> dict[str, Path]:
        """Adapter subdirectories now in the directory, by name."""
        if not self.directory.is_dir():
            return {}
        return {p.name: p for p in sorted(self.directory.iterdir())
                if p.is_dir() and not p.name.startswith(".")}

    async def sync(self, load: Callable[[str, Path], Awaitable[str | None]],
                   unload: Callable[[str], Awaitable[str | None]]) -> None:
        """Load what appeared, unload what disappeared (only adapters this directory gave)."""
        present = self.present()
        for name, path in present.items():
            if name in self.from_directory:
                continue
            try:
                self.check(path)
            except AdapterRefused as exc:
                log.warning("adapter %s not loaded: %s", name, exc)
                continue
            error = await load(name, path)
            if error is None:
                self.from_directory.add(name)
                log.info("LoRA adapter %s loaded from %s", name, path)
            else:
                log.warning("adapter %s not loaded: %s", name, error)
        for name in sorted(self.from_directory - set(present)):
            error = await unload(name)
            self.from_directory.discard(name)
            log.info("LoRA adapter %s unloaded (its directory is gone)%s", name,
                     f": {error}" if error else "")

    async def watch(self, load: Callable[[str, Path], Awaitable[str | None]],
                    unload: Callable[[str], Awaitable[str | None]]) -> None:
        while True:
            await asyncio.sleep(self.watch_seconds)
            try:
                await self.sync(load, unload)
            except Exception as exc:  # a transient file-system error: try again next time
                log.warning("adapter directory %s: %s: %s", self.directory,
                            type(exc).__name__, exc)


class AdapterGuard:
    """ASGI, in front of vLLM's application: refuses load requests the server cannot honour,
    and counts requests per adapter (aim_lora_requests_total)."""

    def __init__(self, app: Any, adapters: Adapters | None,
                 names: Callable[[], set[str]]) -> None:
        self.app = app
        self.adapters = adapters
        self.names = names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not (
                path.endswith(LOAD_PATH_SUFFIX) or path.endswith(COUNTED_SUFFIXES)):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {}  # vLLM answers malformed JSON itself
        if path.endswith(LOAD_PATH_SUFFIX) and isinstance(document, dict):
            try:
                resolved = self._resolved(document)
            except AdapterRefused as exc:
                await _bad_request(send, str(exc))
                return
            if resolved is not None:  # vLLM reads the adapter where it was checked
                body = json.dumps({**document, "lora_path": str(resolved)}).encode()
                scope = {**scope, "headers": [
                    (k, v) for k, v in scope["headers"] if k != b"content-length"
                ] + [(b"content-length", str(len(body)).encode())]}
        elif isinstance(document, dict) and document.get("model") in self.names():
            metrics.LORA_REQUESTS.labels(adapter=str(document["model"])).inc()
        await self.app(scope, _replay(body, receive), send)

    def _resolved(self, document: dict[str, Any]) -> Path | None:
        """The checked adapter path of a load request (None: vLLM says what is missing);
        AdapterRefused when the server will not load it."""
        if self.adapters is None:
            raise AdapterRefused("dynamic LoRA loading needs an adapter directory (AIM_LORA_DIR)")
        lora_path = document.get("lora_path")
        if not isinstance(lora_path, str) or not lora_path:
            return None
        resolved = self.adapters.resolve(lora_path)
        self.adapters.check(resolved)
        return resolved


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The body once, then the connection's own messages (a client that leaves is seen)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            message: dict[str, Any] = await receive()
            return message
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _bad_request(send: Any, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "BadRequestError",
                                 "param": None, "code": HTTPStatus.BAD_REQUEST.value}}).encode()
    await send({"type": "http.response.start", "status": HTTPStatus.BAD_REQUEST.value,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
