"""`vllm serve`'s listener flags, honoured by our listener.

`aim-runtime serve` accepts every `vllm serve` flag. Engine and OpenAI-application flags reach
vLLM unchanged; the flags that configure `vllm serve`'s own HTTP listener (TLS, shutdown, access
log) would reach nothing, because the listener is KServe's. They are translated here, so that a
command line written for `vllm serve` (KServe's LLMInferenceService presets pass `--ssl-certfile`,
`--ssl-keyfile`, `--enable-ssl-refresh`, `--shutdown-timeout`) does what it says, and the flags
that cannot be honoured are refused by name instead of being dropped. vLLM's request-header limits
(`--h11-max-incomplete-event-size`, `--h11-max-header-count`) hold whichever HTTP parser uvicorn
uses (httptools has no limit of its own): a request past them is answered 431 before the gate.

Some hold without translation: KServe's listener refreshes its certificate whenever TLS is on
(`--enable-ssl-refresh`), and writes no access log unless `--access_log_format` asks for one
(`--disable-uvicorn-access-log`, `--disable-access-log-for-endpoints`). vLLM's
`--shutdown-timeout` reaches the engine as it is, and is also the listener's drain time unless
`--graceful-shutdown-seconds` is given.

Start-up binds the listening sockets here (`listening_sockets`, `check_port_free` for gRPC's
port) before any engine loads, so that a taken port fails in a second, not after the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
from dataclasses import dataclass
from typing import Any

from kserve.constants.constants import DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT

from aim_runtime import settings
from aim_runtime.errors import AimError

# `vllm serve` flags for listeners or processes this server does not have.
REFUSED = {
    "uds": "serve on TCP (--http_port)",
    "root_path": "route by path in the gateway, or use the /openai prefix",
    "headless": "multi-node workers run `aim-runtime worker`",
    "grpc_port": "KServe's v2 gRPC listener is --grpc_port with --enable_grpc true",
}


@dataclass(frozen=True)
class ListenerOptions:
    """TLS and shutdown of the HTTP listener, from KServe's and `vllm serve`'s flags."""

    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int | None = None
    ssl_ciphers: str | None = None
    graceful_shutdown_seconds: int = settings.GRACEFUL_SHUTDOWN_SECONDS.default
    # `vllm serve`'s request-header limits (--h11-max-incomplete-event-size, a request head's
    # bytes; --h11-max-header-count), vLLM's defaults unless given.
    max_header_bytes: int = 4 * 1024 * 1024
    max_header_count: int = 256

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def served_port(self, http_port: int) -> int:
        """The port the listener binds: KServe's rule, a TLS listener asked for its default
        HTTP port listens on its default HTTPS port."""
        if self.tls and http_port == DEFAULT_HTTP_PORT:
            return DEFAULT_HTTPS_PORT
        return http_port


def listener_options(ours: argparse.Namespace, vllm: argparse.Namespace,
                     explicit_vllm: set[str], explicit_ours: set[str]) -> ListenerOptions:
    """Our listener's options: KServe's `--ssl_certfile`/`--ssl_keyfile` or vLLM's
    `--ssl-certfile`/`--ssl-keyfile` (the same value twice is fine, two values are an error),
    vLLM's CA and cipher options, and the drain time: `--graceful-shutdown-seconds`, else
    vLLM's `--shutdown-timeout`."""
    for dest, hint in REFUSED.items():
        if dest in explicit_vllm:
            raise AimError(f"{settings.flag_for(dest)}: `vllm serve`'s option is not supported "
                           "by aim-runtime serve", hint)
    certfile = _one_of("ssl_certfile", ours, vllm, explicit_vllm)
    keyfile = _one_of("ssl_keyfile", ours, vllm, explicit_vllm)
    if (certfile is None) != (keyfile is None):
        raise AimError("TLS needs both a certificate and its key: "
                       f"--ssl-certfile={certfile}, --ssl-keyfile={keyfile}",
                       "give both, or neither for plain HTTP")
    grace = ours.graceful_shutdown_seconds
    if "graceful_shutdown_seconds" not in explicit_ours and "shutdown_timeout" in explicit_vllm:
        grace = int(vllm.shutdown_timeout)
    return ListenerOptions(
        ssl_certfile=certfile, ssl_keyfile=keyfile,
        ssl_ca_certs=vllm.ssl_ca_certs if "ssl_ca_certs" in explicit_vllm else None,
        ssl_cert_reqs=vllm.ssl_cert_reqs if "ssl_cert_reqs" in explicit_vllm else None,
        ssl_ciphers=vllm.ssl_ciphers if "ssl_ciphers" in explicit_vllm else None,
        graceful_shutdown_seconds=grace,
        max_header_bytes=int(vllm.h11_max_incomplete_event_size),
        max_header_count=int(vllm.h11_max_header_count))


def _one_of(dest: str, ours: argparse.Namespace, vllm: argparse.Namespace,
            explicit_vllm: set[str]) -> str | None:
    kserve_value = getattr(ours, dest, None)
    vllm_value = getattr(vllm, dest) if dest in explicit_vllm else None
    if kserve_value and vllm_value and kserve_value != vllm_value:
        flag = dest.removeprefix("ssl_")
        raise AimError(f"--ssl_{flag}={kserve_value} (KServe's) and --ssl-{flag}={vllm_value} "
                       "(vllm serve's) disagree", "give one of them")
    value = kserve_value or vllm_value
    return str(value) if value else None


TLS_CLOSE_GRACE_SECONDS = 1.0


def cut_tls_closes_short(server: Any) -> None:
    """Make a TLS uvicorn server's shutdown abort a connection still closing a second after it
    was closed. Closing TLS waits for the client's close_notify, up to the event loop's
    ssl_shutdown_timeout (30 s), and uvicorn waits for every connection: one idle keep-alive
    connection in a client's pool held a pod's exit for 30 s, an LLMInferenceService's whole
    grace period. A connection closed mid-response is not cut: uvicorn closes only idle ones
    and those whose response is complete."""
    shutdown = server.shutdown

    async def shutdown_cutting_tls_closes(sockets: Any = None) -> None:
        reaper = asyncio.create_task(_abort_lingering_tls(server.server_state.connections))
        try:
            await shutdown(sockets)
        finally:
            reaper.cancel()

    server.shutdown = shutdown_cutting_tls_closes


async def _abort_lingering_tls(connections: set[Any]) -> None:
    closing_before: set[Any] = set()
    while True:
        await asyncio.sleep(TLS_CLOSE_GRACE_SECONDS)
        closing = {c for c in list(connections) if c.transport.is_closing()}
        for connection in closing & closing_before:
            connection.transport.abort()
        closing_before = closing


# --- binding: before any engine loads, so that a taken port fails start-up at once ----------

LISTEN_BACKLOG = 2048  # uvicorn's default


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on the HTTP port, one per API server (sharing it with
    SO_REUSEPORT when there are several), bound before any engine loads so that a taken port
    fails start-up at once. `::` (or an empty host) listens on IPv6 and IPv4 alike; a name is
    resolved as uvicorn resolves it."""
    family, address = _listen_address(host, port)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and host in ("", "::"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """(address family, bind address) of a host: every address for `::` or an empty host (IPv4
    alone where IPv6 is off), else the first address the name resolves to."""
    if host in ("", "::") and socket.has_ipv6:
        return socket.AF_INET6, ("::", port)
    family, _, _, _, address = socket.getaddrinfo(host or "0.0.0.0", port,
                                                  type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    return family, address


def check_port_free(port: int) -> None:
    """Raise OSError if another socket holds `port` on IPv6's or IPv4's every-address, which
    gRPC binds ([::], dual-stack or not; 0.0.0.0 where IPv6 is off). Each is probed on its
    own, so an IPv4 holder is found where IPv6 sockets are IPv6-only too."""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
