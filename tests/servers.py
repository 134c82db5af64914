"""Real server processes, for benchmarks and tests: `aim-runtime serve` and the bare vLLM OpenAI
server, started as users start them and watched from outside through HTTP only."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).parent.parent
STARTUP_TIMEOUT_SECONDS = 600
READY_POLL_SECONDS = 0.2


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 20000  # above Ray's default worker ports (10002-19999), which a head refuses
_turn = itertools.count(random.randrange(1 << 16))


def free_port() -> int:
    """A port free now that stays free until a server binds it: below the kernel's ephemeral
    range, so that no outgoing connection (a client's, a scrape's, the engine's) is given it in
    the meantime, and from a slice of its own per xdist worker, handed out in turn. (A port the
    kernel picked, closed and handed over was sometimes taken again before the server, seconds
    later, bound it: `address already in use`.)"""
    ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0]) if EPHEMERAL_PORTS.exists() \
        else 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = (ephemeral - LOWEST_PORT) // workers
    for _ in range(span):
        port = LOWEST_PORT + worker * span + next(_turn) % span
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port among {span} from {LOWEST_PORT + worker * span}")


def server_environment(work_dir: Path, extra: dict | None = None) -> dict[str, str]:
    # The caller's PYTHONPATH stays behind the runtime's (`make test-avx2` forces an ISA there).
    python_path = os.pathsep.join(filter(None, [str(REPO / "runtime"),
                                                os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path,
           "VLLM_CACHE_ROOT": str(work_dir / "vllm-cache"), "AIM_CACHE_DIR": str(work_dir),
           "AIM_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    for name in [k for k in env if k.startswith("AIM_") and k not in (
            "AIM_CACHE_DIR", "AIM_LOG_LEVEL")]:
        env.pop(name)
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A server started as users start it, watched from outside through HTTP only."""

    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    ready_path: str = "/v2/health/ready"
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_seconds: float | None = None  # process start -> first 200 from the ready route
    # (seconds since start, path, status) of every probe made while waiting for readiness.
    probes: list[tuple[float, str, int | None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.started_at = time.monotonic()
        with self.log_path.open("w") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, cwd=REPO, start_new_session=True)
        return self

    def wait_ready(self, also_probe: tuple[str, ...] = ()) -> ServerProcess:
        started = time.monotonic()
        with httpx.Client(timeout=5) as client:
            while time.monotonic() - started < STARTUP_TIMEOUT_SECONDS:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n"
                                       + self.log_tail())
                status = self._probe(client, self.ready_path, started)
                for path in also_probe:
                    self._probe(client, path, started)
                if status == 200:
                    self.ready_seconds = time.monotonic() - self.started_at
                    return self
                time.sleep(READY_POLL_SECONDS)
        raise TimeoutError("server not ready in time:\n" + self.log_tail())

    def _probe(self, client: httpx.Client, path: str, started: float) -> int | None:
        try:
            status = client.get(self.url + path).status_code
        except httpx.TransportError:
            status = None
        self.probes.append((time.monotonic() - started, path, status))
        return status

    def processes(self, named: str) -> list[psutil.Process]:
        """The server's descendants whose command line (vLLM retitles its processes:
        `VLLM::EngineCore`, `VLLM::APIServer_1`...) contains `named`."""
        assert self.process is not None
        return [p for p in psutil.Process(self.process.pid).children(recursive=True)
                if named in " ".join(p.cmdline())]

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM to the server's process group, then its exit code (SIGKILL after `timeout`)."""
        if not self._terminate():
            return self.process.returncode if self.process else None
        return self._await_exit(timeout)

    def dismiss(self) -> None:
        """Stop without waiting for the exit, for a fixture or test done with its server: the
        SIGTERM now, the exit awaited in a thread (vLLM's engine takes seconds to stop; no test
        needs to wait for it), all of them joined by `await_dismissed` before the session ends."""
        if self._terminate():
            waiter = threading.Thread(target=self._await_exit, args=(60,), daemon=True)
            waiter.start()
            _dismissed.append(waiter)

    def _terminate(self) -> bool:
        """SIGTERM to the process group, if the server still runs."""
        if self.process is None or self.process.poll() is not None:
            return False
        os.killpg(self.process.pid, signal.SIGTERM)
        return True

    def _await_exit(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def aim_server(work_dir: Path, model_dir: Path, *extra_args: str, env: dict | None = None,
               name: str = "tiny") -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "aim_runtime", "serve", "--model_dir", str(model_dir),
               "--model_name", name, "--host", "127.0.0.1", "--http_port", str(port),
               "--enable_grpc", "false", *extra_args]
    return ServerProcess(command, port, work_dir / f"aim-{port}.log",
                         server_environment(work_dir, env))


def bare_vllm_server(work_dir: Path, model_dir: Path, engine_argv: list[str],
                     env: dict | None = None, name: str = "tiny",
                     launcher: str = "vllm.entrypoints.openai.api_server") -> ServerProcess:
    """Bare vLLM's OpenAI server; `launcher` is the module run (benchmarks.vllm_serve for
    `vllm serve` itself, which honours --api-server-count)."""
    port = free_port()
    command = [sys.executable, "-m", launcher,
               "--model", str(model_dir), "--served-model-name", name, "--host", "127.0.0.1",
               "--port", str(port), *engine_argv]
    return ServerProcess(command, port, work_dir / f"vllm-{port}.log",
                         server_environment(work_dir, env), ready_path="/health")


_dismissed: list[threading.Thread] = []


def await_dismissed() -> None:
    """Every dismissed server has exited (or been killed): nothing outlives the session."""
    for waiter in _dismissed:
        waiter.join()
