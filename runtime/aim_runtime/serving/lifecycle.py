"""The engine's life: start (Ray cluster, engine, adapters, warm-up), watch, health, drain, stop
and death.

The owner (the server) gives its callbacks at construction: `on_ready` once warmed up (a pre-fill
Job stops then; one of several API servers tells its peers), `on_death` when the engine died or
stalled (the server stops every listener and exits non-zero). The model object (serving/model.py)
only translates protocols; it asks the lifecycle for the live engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aim_runtime.serving import metrics
from aim_runtime.serving.cluster import ClusterSpec, form_cluster, stop_ray
from aim_runtime.serving.compile_cache import CompileCache
from aim_runtime.serving.lora import AdapterGuard, Adapters
from aim_runtime.serving.vllm_adapter import (
    EngineClient,
    cache_vllm_environment,
    freeze_startup_heap,
    start_engine,
)
from aim_runtime.serving.warmup import WarmupPlan, WarmupTarget, warm_up

log = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL_SECONDS = 2.0


class ServedEngine(Protocol):
    """What serving needs from the engine (vllm_adapter's `Engine` is the one implementation;
    tests stand in for it): its OpenAI application and serving objects, its health, its
    capacity, its adapters, and the tasks that watch it."""

    app: Any  # vLLM's OpenAI application
    args: argparse.Namespace  # the `vllm serve` arguments it runs with
    dead_reason: str | None
    monitor: asyncio.Task[None] | None
    lora_watch: asyncio.Task[None] | None

    @property
    def completions(self) -> Any | None: ...
    @property
    def kv_capacity_tokens(self) -> int | None: ...
    @property
    def running_capacity(self) -> int: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def max_lora_rank(self) -> int | None: ...
    def effective_config(self) -> dict[str, str]: ...
    def adapter_names(self) -> set[str]: ...
    async def load_adapter(self, name: str, path: Path) -> str | None: ...
    async def unload_adapter(self, name: str) -> str | None: ...
    async def healthy(self) -> bool: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    """What the engine is started from, as start-up made it for this process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cluster: ClusterSpec | None = None  # multi-node head: form the Ray cluster first
    warmup: WarmupTarget | None = None
    stall_seconds: float = 600.0
    compile_cache: CompileCache | None = None
    adapters: Adapters | None = None  # AIM_LORA_DIR: loaded before readiness, then watched
    client: EngineClient | None = None  # one of several API servers: shared engine cores


def _ignore(*_: Any) -> None:
    """No callback given."""


class EngineLifecycle:
    """One engine from start to stop, and what the probes say about it."""

    def __init__(self, spec: EngineSpec, served_name: str,
                 on_death: Callable[[str], None] = _ignore,
                 on_ready: Callable[[], None] = _ignore) -> None:
        self.spec = spec
        self.served_name = served_name
        self.on_death = on_death
        self.on_ready = on_ready
        self.engine: ServedEngine | None = None
        self.warmed = spec.warmup is None or spec.warmup.extent == "off"
        self.draining = False  # SIGTERM received: still serving, no longer ready
        self._warmup_app: Any | None = None
        self._openai_app: Any | None = None

    # --- start ------------------------------------------------------------------------------

    def warm_up_through(self, app: Any) -> None:
        """Warm up in process through `app` (one of several API servers shares the pod's port,
        so a request to it could reach a peer)."""
        self._warmup_app = app

    async def start(self) -> None:
        """Cluster, engine, adapters, warm-up; then the watch runs and `on_ready` is called."""
        spec = self.spec
        if spec.cluster is not None:
            await self._form_cluster(spec.cluster)
        started = time.monotonic()
        log.info("loading the vLLM engine")
        engine: ServedEngine = await start_engine(list(spec.argv), dict(spec.env), spec.client)
        self.engine = engine
        metrics.record_phase("engine", time.monotonic() - started)
        metrics.ENGINE_CONFIG.info(engine.effective_config())
        capacity = engine.kv_capacity_tokens
        if capacity is not None:
            metrics.KV_CAPACITY_TOKENS.labels(source="engine").set(capacity)
        metrics.ENGINE_ALIVE.set(1)
        log.info("engine ready in %.1f s (KV cache: %s tokens)", time.monotonic() - started,
                 capacity)
        engine.monitor = asyncio.create_task(self._watch(engine))
        await self._load_adapters(engine)
        await self._warm_up(engine)
        frozen_at = time.monotonic()
        frozen = freeze_startup_heap()
        log.info("start-up heap frozen for the garbage collector: %d objects (%.2f s)", frozen,
                 time.monotonic() - frozen_at)
        cache_vllm_environment()
        self.warmed = True
        if spec.compile_cache is not None:
            spec.compile_cache.mark_complete()
        self.on_ready()

    async def _form_cluster(self, cluster: ClusterSpec) -> None:
        started = time.monotonic()
        log.info("multi-node head: starting Ray, waiting for %d nodes with %d GPUs each "
                 "(up to %g s)", cluster.nodes, cluster.gpus_per_node,
                 cluster.join_timeout_seconds)
        await asyncio.to_thread(form_cluster, cluster)
        metrics.record_phase("cluster", time.monotonic() - started)

    async def _load_adapters(self, engine: ServedEngine) -> None:
        """The adapter directory's adapters, before readiness; then it is watched."""
        adapters = self.spec.adapters
        if engine.max_lora_rank is not None:
            self._openai_app = AdapterGuard(engine.app, adapters, self.adapter_names)
        if adapters is None or engine.max_lora_rank is None:
            return
        adapters.max_rank = engine.max_lora_rank
        try:
            await adapters.sync(engine.load_adapter, engine.unload_adapter, engine.adapter_names)
        except OSError as exc:  # unreadable now; the watcher tries again
            log.warning("adapter directory %s: %s", adapters.directory, exc)
        engine.lora_watch = asyncio.create_task(
            adapters.watch(engine.load_adapter, engine.unload_adapter, engine.adapter_names))

    async def _warm_up(self, engine: ServedEngine) -> None:
        """Requests through our own listener before readiness (serving/warmup.py)."""
        target = self.spec.warmup
        if self.warmed or target is None:
            return
        started = time.monotonic()
        config = engine.effective_config()
        client = self.spec.client
        plan = WarmupPlan(
            extent=target.extent, url=target.url, model=self.served_name,
            api_key=target.api_key,
            max_num_batched_tokens=int(config["max_num_batched_tokens"]),
            max_num_seqs=int(config["max_num_seqs"]), max_model_len=engine.max_model_len,
            tools=bool(getattr(engine.args, "enable_auto_tool_choice", False)),
            structured_outputs=engine.completions is not None,
            warmers=client.count if client is not None else 1)
        failed = 0
        try:
            sent = (await warm_up(plan, self._warmup_app)
                    if engine.completions is not None else 0)
        except Exception as exc:  # the listener or a request failed: serve anyway
            log.warning("warm-up incomplete: %s: %s", type(exc).__name__, exc)
            sent, failed = 0, 1
        metrics.WARMUP_REQUESTS.labels(outcome="ok").set(sent)
        metrics.WARMUP_REQUESTS.labels(outcome="failed").set(failed)
        seconds = time.monotonic() - started
        metrics.record_phase("warmup", seconds)
        log.info("warm-up: %d request(s) in %.1f s (%s); ready", sent, seconds, target.extent)

    # --- watch and health --------------------------------------------------------------------

    async def _watch(self, engine: ServedEngine) -> None:
        """Poll engine health and progress; on death or a stall (requests running and no token
        produced for `stall_seconds`), liveness turns false and the owner is told."""
        stall_seconds = self.spec.stall_seconds
        last_progress, last_generated = time.monotonic(), -1.0
        while await engine.healthy():
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_SECONDS)
            running, generated = metrics.engine_progress()
            if running == 0 or generated != last_generated:
                last_progress, last_generated = time.monotonic(), generated
            elif time.monotonic() - last_progress > stall_seconds:
                engine.dead_reason = (
                    f"stalled: {running:g} request(s) running and no token produced for "
                    f"{stall_seconds:g} s (AIM_STALL_SECONDS)")
                break
        metrics.ENGINE_ALIVE.set(0)
        log.error("the vLLM engine died: %s", engine.dead_reason)
        self.on_death(engine.dead_reason or "unknown")

    async def healthy(self) -> bool:
        """Ready: loaded, warmed, not draining, and the engine answers."""
        return (self.engine is not None and self.warmed and not self.draining
                and await self.engine.healthy())

    def not_ready_reason(self) -> str:
        """Why readiness is 503: loading, warming, draining, stalled or dead (for the probe's
        body)."""
        engine = self.engine
        if engine is None:
            return "loading"
        if engine.dead_reason is not None:
            return "stalled" if engine.dead_reason.startswith("stalled") else "dead"
        if self.draining:
            return "draining"
        return "warming" if not self.warmed else "unhealthy"

    @property
    def dead(self) -> bool:
        return self.dead_reason is not None

    @property
    def dead_reason(self) -> str | None:
        return self.engine.dead_reason if self.engine is not None else None

    def live_engine(self) -> ServedEngine | None:
        """The engine while it is loaded and alive (asked on every OpenAI request)."""
        engine = self.engine
        return engine if engine is not None and engine.dead_reason is None else None

    def capacity(self) -> int | None:
        """Sequences the engine runs at once, all data-parallel ranks (None until loaded)."""
        return self.engine.running_capacity if self.engine is not None else None

    def adapter_names(self) -> set[str]:
        """LoRA adapters served now, each under its own model name."""
        return self.engine.adapter_names() if self.engine is not None else set()

    @property
    def openai_app(self) -> Any | None:
        """vLLM's OpenAI application (behind the adapter guard with LoRA), once the engine is
        loaded and alive (else None)."""
        engine = self.live_engine()
        if engine is None:
            return None
        return self._openai_app or engine.app

    # --- drain and stop ----------------------------------------------------------------------

    def drain(self) -> bool:
        """Readiness turns 503 `draining`; requests are still served. False if already
        draining."""
        if self.draining:
            return False
        self.draining = True
        return True

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        if self.spec.cluster is not None:
            stop_ray()

