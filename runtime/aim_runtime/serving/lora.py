"""LoRA adapters: a directory of adapters loaded at start and watched, and a guard in front of
vLLM's adapter API.

`AIM_LORA_DIR` names a directory with one adapter per subdirectory (PEFT format); each is served
under its subdirectory's name on the OpenAI routes and on v2 (`/v2/models/<adapter>/...`), and
listed by `/v1/models`. The directory is the source of truth: every `AIM_LORA_WATCH_SECONDS` it
is read again, and an adapter that appeared (or was unloaded by a client) is loaded, one whose
files changed is loaded again, one removed is unloaded. Subdirectories whose names start with a
dot are skipped, so a copy in progress can be made there and renamed into place. vLLM's own API
(`POST .../v1/load_lora_adapter`, `.../v1/unload_lora_adapter`, behind the API key like every
inference route) loads adapters too, but only from inside that directory; SageMaker's adapter
routes that vLLM adds with it (`/adapters`) are refused, as they would read from anywhere. Every
adapter is checked against the base model before the engine sees it (checkpoint/lora.py):
missing files, a rank over `--max-lora-rank`, or another base model's shapes get a 400 naming
the problem, and the server keeps serving. File-system work runs off the event loop (adapter
directories may be on network storage).
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
from aim_runtime.planner.setting import VLLM_MAX_LORA_RANK
from aim_runtime.serving import metrics
from aim_runtime.serving.gate import read_body, replay_body
from aim_runtime.serving.protocol_errors import send_error

log = logging.getLogger(__name__)

LOAD_PATH_SUFFIX = "/v1/load_lora_adapter"
SAGEMAKER_ADAPTERS = "/adapters"  # vLLM's SageMaker-style routes: /adapters, /adapters/{name}
# Inference routes whose body names the model (and so the adapter) a request is for.
COUNTED_SUFFIXES = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")
MAX_LOAD_BODY_BYTES = 64 * 1024

Load = Callable[[str, Path], Awaitable[str | None]]
Unload = Callable[[str], Awaitable[str | None]]


class AdapterRefused(ValueError):
    """A load the server refuses: the message says why (a 400 for the client)."""


@dataclass
class Adapters:
    """The adapter directory of one server, and what was loaded from it (name -> the files'
    last modification, to see an adapter rewritten in place)."""

    directory: Path
    facts: ModelFacts
    watch_seconds: float = 10.0
    max_rank: int = VLLM_MAX_LORA_RANK  # the engine's, set once it is loaded
    from_directory: dict[str, float] = field(default_factory=dict)
    refused: dict[str, float] = field(default_factory=dict)  # name -> modification time refused

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

    def present(self) -> dict[str, tuple[Path, float]]:
        """Adapter subdirectories now in the directory, by name, with their files' newest
        modification time. OSError if the directory cannot be read (a storage hiccup must not
        look like an empty directory, which would unload every adapter)."""
        found = {}
        for path in sorted(self.directory.iterdir()):
            try:
                if path.is_dir() and not path.name.startswith("."):
                    found[path.name] = (path, max((f.stat().st_mtime for f in path.iterdir()
                                                   if f.is_file()), default=0.0))
            except OSError:  # changing under us: next time
                continue
        return found

    async def sync(self, load: Load, unload: Unload, loaded: Callable[[], set[str]]) -> None:
        """Make the engine's adapters follow the directory (only adapters it gave)."""
        present = await asyncio.to_thread(self.present)
        serving = loaded()
        for name, (path, modified) in present.items():
            known = self.from_directory.get(name)
            if (known == modified and name in serving) or self.refused.get(name) == modified:
                continue
            try:  # the load API's rule: resolved, then inside the directory (no symlink out)
                path = await asyncio.to_thread(self.resolve, str(path))
                await asyncio.to_thread(self.check, path)
            except AdapterRefused as exc:
                log.warning("adapter %s not loaded: %s", name, exc)
                metrics.LORA_LOAD_ERRORS.labels(source="directory").inc()
                self.refused[name] = modified  # said once, until its files change
                continue
            self.refused.pop(name, None)
            if name in serving:  # rewritten in place: the new files replace the old
                await unload(name)
            error = await load(name, path)
            if error is None:
                self.from_directory[name] = modified
                log.info("LoRA adapter %s loaded from %s", name, path)
            else:
                log.warning("adapter %s not loaded: %s", name, error)
                metrics.LORA_LOAD_ERRORS.labels(source="directory").inc()
        for name in sorted(set(self.from_directory) - set(present)):
            error = await unload(name)
            del self.from_directory[name]
            log.info("LoRA adapter %s unloaded (its directory is gone)%s", name,
                     f": {error}" if error else "")

    async def watch(self, load: Load, unload: Unload, loaded: Callable[[], set[str]]) -> None:
        while True:
            await asyncio.sleep(self.watch_seconds)
            try:
                await self.sync(load, unload, loaded)
            except Exception as exc:  # a transient file-system error: try again next time
                log.warning("adapter directory %s: %s: %s", self.directory,
                            type(exc).__name__, exc)


class AdapterGuard:
    """ASGI, in front of vLLM's application: refuses adapter loads the server cannot honour,
    and counts requests per adapter (aim_lora_requests_total)."""

    def __init__(self, app: Any, adapters: Adapters | None,
                 names: Callable[[], set[str]]) -> None:
        self.app = app
        self.adapters = adapters
        self.names = names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        method = scope.get("method")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if method in ("POST", "DELETE") and (path.endswith(SAGEMAKER_ADAPTERS)
                                             or f"{SAGEMAKER_ADAPTERS}/" in path):
            await _bad_request(send, "adapters are loaded with POST .../v1/load_lora_adapter "
                                     "from the adapter directory (AIM_LORA_DIR) only")
            return
        if method != "POST" or not (path.endswith(LOAD_PATH_SUFFIX)
                                    or path.endswith(COUNTED_SUFFIXES)):
            await self.app(scope, receive, send)
            return
        limit = MAX_LOAD_BODY_BYTES if path.endswith(LOAD_PATH_SUFFIX) else 1 << 40
        read = await read_body(receive, limit)
        if read is None:
            await send_error(send, True, HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value,
                             "RequestTooLarge", f"an adapter load request is at most {limit} bytes")
            return
        body = read
        document = _json_object(body)
        if path.endswith(LOAD_PATH_SUFFIX):
            try:
                resolved = await self._resolved(document)
            except AdapterRefused as exc:
                await _bad_request(send, str(exc))
                return
            if resolved is not None:  # vLLM reads the adapter where it was checked
                body = json.dumps({**document, "lora_path": str(resolved)}).encode()
                scope = {**scope, "headers": [
                    (k, v) for k, v in scope["headers"] if k != b"content-length"
                ] + [(b"content-length", str(len(body)).encode())]}
        elif isinstance(document.get("model"), str) and document["model"] in self.names():
            metrics.LORA_REQUESTS.labels(adapter=document["model"]).inc()
        await self.app(scope, replay_body(body, receive), send)

    async def _resolved(self, document: dict[str, Any]) -> Path | None:
        """The checked adapter path of a load request (None: vLLM says what is missing);
        AdapterRefused when the server will not load it."""
        if self.adapters is None:
            raise AdapterRefused("dynamic LoRA loading needs an adapter directory (AIM_LORA_DIR)")
        lora_path = document.get("lora_path")
        if not isinstance(lora_path, str) or not lora_path:
            return None
        adapters = self.adapters
        try:
            resolved = await asyncio.to_thread(adapters.resolve, lora_path)
            await asyncio.to_thread(adapters.check, resolved)
        except AdapterRefused:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            # A path the file system refuses (a NUL byte, a symlink loop) or an adapter whose
            # files do not say what they hold: the request's fault, answered 400.
            raise AdapterRefused(f"{lora_path}: {type(exc).__name__}: {exc}") from exc
        return resolved


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; {} for anything else (vLLM answers malformed bodies)."""
    try:
        document = json.loads(body) if body else {}
    except (ValueError, RecursionError):  # vLLM answers what is malformed
        return {}
    return document if isinstance(document, dict) else {}


async def _bad_request(send: Any, message: str) -> None:
    metrics.LORA_LOAD_ERRORS.labels(source="api").inc()
    await send_error(send, True, HTTPStatus.BAD_REQUEST.value, "BadRequestError", message)
