"""The engine's own start-up phases, read from the lines vLLM writes, into
`aim_startup_phase_seconds`.

Loading weights, compiling (torch.compile, and on GPUs the kernels behind it), capturing graphs
and the rest of the engine's initialisation happen in vLLM's engine processes, which report them
only as log lines on the standard output they inherit. So the server's standard output runs
through a pipe read here: every line is passed on unchanged, and the lines that time a phase are
also recorded as `engine_<phase>` (sub-phases of `engine`). A vLLM release that words them
differently loses the sub-phase figures, never a log line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable

from aim_runtime.serving import metrics

log = logging.getLogger(__name__)

CHUNK_BYTES = 65536
MAX_PENDING_BYTES = 65536  # a line longer than this is not matched (it is still passed on)
# vLLM's wording (model_executor/model_loader/default_loader.py, v1/engine/core.py,
# v1/worker/gpu_model_runner.py).
INIT_LINE = r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s"
PHASE_LINES = {
    "engine_load_weights": re.compile(r"Loading weights took ([0-9.]+) s"),
    "engine_init": re.compile(INIT_LINE),
    "engine_compile": re.compile(INIT_LINE.replace("([0-9.]+)", "[0-9.]+")
                                 + r" \(compilation: ([0-9.]+) s"),
    "engine_graph_capture": re.compile(r"Graph capturing finished in ([0-9.]+) sec"),
}


# Where timed phases go: this process's metrics, or (several API server processes) the shared
# memory they read them from (serving/api_server_group.py).
_sink: list[Callable[[str, float], None]] = [metrics.record_phase]


def send_phases_to(sink: Callable[[str, float], None]) -> None:
    """Record the engine phases read from now on with `sink` instead of this process's metrics."""
    _sink[0] = sink


def phases_of(line: str) -> list[tuple[str, float]]:
    """(phase, seconds) of every engine phase this log line times."""
    return [(phase, float(match.group(1))) for phase, pattern in PHASE_LINES.items()
            if (match := pattern.search(line))]


def tap_standard_output() -> None:
    """Route this process's standard output (fd 1, which the engine processes started later
    inherit) through a pipe whose reader passes every line on and records the phases."""
    try:
        read_end, write_end = os.pipe()
        passthrough = os.dup(1)
        os.dup2(write_end, 1)
        os.close(write_end)
    except OSError as exc:  # no standard output to tap: the phases stay in the log only
        log.debug("engine phases not tapped: %s", exc)
        return
    thread = threading.Thread(target=_forward, args=(read_end, passthrough),
                              name="engine-log-tap", daemon=True)
    thread.start()

    def untap() -> None:  # at exit: the last lines reach the real standard output
        os.dup2(passthrough, 1)
        thread.join(timeout=2)

    atexit.register(untap)


def _forward(read_end: int, passthrough: int) -> None:
    """Pass every chunk on as it arrives; match whole lines. Runs until every writer is gone:
    if it stopped early, writers would block on a full pipe, so nothing here may end it."""
    pending = b""
    while chunk := os.read(read_end, CHUNK_BYTES):
        with contextlib.suppress(OSError):  # the real standard output gone: drop the text
            _write_all(passthrough, chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-MAX_PENDING_BYTES:]
        for line in lines:
            try:
                for phase, seconds in phases_of(line.decode("utf-8", "replace")):
                    _sink[0](phase, seconds)
            except Exception as exc:  # never stop draining
                log.debug("engine phase line not recorded: %s", exc)
    os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
