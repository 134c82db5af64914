"""Several API server processes in one pod, sharing one set of vLLM engine cores, as `vllm serve
--api-server-count N` runs them.

Why: one API server process (HTTP, JSON, tokenizing, detokenizing, streaming) costs a fixed amount
of CPU per streamed token, so one process saturates one core at a few thousand tokens per second;
a small model with data parallelism over 8 GPUs produces several times that. vLLM therefore starts
one API server per data-parallel rank by default, and so does `aim-runtime serve` (the count is
`--api-server-count`, else the plan's data-parallel size; the start-up log says which and why).

How: the `aim-runtime serve` process plans, binds the HTTP port (once per API server, with
SO_REUSEPORT), then becomes a supervisor. The engine cores start as vLLM's launcher starts them,
then N processes (serving/vllm_adapter/api_servers.py, `launch_api_servers`), each of them a whole
AIM Runtime server (KServe's ModelServer with the OpenAI routes, v2 over HTTP and gRPC, the gate,
/metrics) whose AsyncLLM is a client of the shared engine cores, each accepting connections on its
own listening socket of the shared port. The kernel spreads new connections evenly over those
sockets; with one socket shared by all processes, whichever process's event loop woke first took
the connection, and under load one process served about three times the other's share
(benchmarks/api_servers.py).

What holds for the pod as a whole, through the shared memory of `ApiServerGroup` (made before the
processes start):
- admission: one count of inference requests in flight, against the engines' capacity;
- readiness: a process answers ready only once every process has loaded and warmed up (each
  warms itself, in process, so no warm-up request lands on a peer);
- liveness: when any process dies (an API server, an engine core, the coordinator), the survivors
  answer live 503 while the supervisor stops them and exits 1, so Kubernetes restarts the pod;
- SIGTERM: passed to every API server, each drains as a single server does (AIM_DRAIN_SECONDS,
  then the grace period), then the engine cores stop;
- /metrics: Prometheus multiprocess mode, every process's series (ours and vLLM's) merged on each
  scrape; the engine phases, which the supervisor reads from the engines' log lines, reach the
  API servers through shared memory;
- API keys: every process reads the same keys, on HTTP and gRPC;
- gRPC: every process listens on the gRPC port as well (gRPC binds with SO_REUSEPORT on Linux);
  the kernel spreads the connections among them.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from aim_runtime.serving import metrics
from aim_runtime.serving.engine_log import PHASE_LINES
from aim_runtime.serving.vllm_adapter import ApiServers

log = logging.getLogger(__name__)

ENGINE_PHASES = tuple(PHASE_LINES)


@dataclass(frozen=True)
class ApiServerGroup:
    """Shared memory of the pod's API server processes (picklable while they are spawned)."""

    count: int
    ready: Any  # RawArray("b", count): 1 once process i has loaded and warmed up
    failed: Any  # RawValue("b"): 1 once any process of the pod died
    in_flight: Any  # RawArray("q", count): inference requests admitted, by process (no lock)
    engine_phases: Any  # RawArray("d"): seconds per ENGINE_PHASES entry, 0 until timed

    @classmethod
    def create(cls, count: int) -> ApiServerGroup:
        context = multiprocessing.get_context("spawn")
        return cls(count=count, ready=context.RawArray("b", count),
                   failed=context.RawValue("b", 0), in_flight=context.RawArray("q", count),
                   engine_phases=context.RawArray("d", len(ENGINE_PHASES)))

    def record_engine_phase(self, phase: str, seconds: float) -> None:
        """An engine phase the supervisor read from the engines' log (engine_log's sink)."""
        if phase in ENGINE_PHASES:
            self.engine_phases[ENGINE_PHASES.index(phase)] = seconds


@dataclass(frozen=True)
class GroupMember:
    """One API server process's view of its group."""

    group: ApiServerGroup
    index: int

    def mark_ready(self) -> None:
        self.group.ready[self.index] = 1

    def ready_count(self) -> int:
        return sum(self.group.ready)

    @property
    def count(self) -> int:
        return self.group.count

    @property
    def group_failed(self) -> bool:
        return bool(self.group.failed.value)

    def publish_engine_phases(self) -> None:
        """Copy the engine phases timed so far into this process's metrics (before a scrape)."""
        for phase, seconds in zip(ENGINE_PHASES, self.group.engine_phases, strict=True):
            if seconds > 0:
                metrics.record_phase(phase, seconds)


def supervise(start: Callable[[], ApiServers], group: ApiServerGroup,
              shutdown_seconds: float) -> int:
    """Run the API servers `start` launches until they end: 0 after SIGTERM or SIGINT (passed
    to each, `shutdown_seconds` to drain), 1 when any process died (the survivors are stopped,
    with the group marked failed first so that their liveness turns 503)."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signum)
            raise SystemExit

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers: ApiServers | None = None
    try:
        servers = start()
        log.info("%d API server processes started (pids %s)", group.count,
                 ", ".join(str(p.pid) for p in servers.processes))
        servers.wait()
        return 0
    except SystemExit:
        log.info("signal %s: stopping %d API server processes (up to %g s to drain)",
                 stopping[0] if stopping else "?", group.count, shutdown_seconds)
        return 0
    except Exception as exc:  # a process died, or the engines did not start
        group.failed.value = 1
        log.error("stopping the pod's processes: %s", exc)
        return 1
    finally:
        if servers is not None:
            servers.shutdown(timeout=shutdown_seconds if stopping else 5.0)
