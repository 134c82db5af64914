"""Start-up phases: each timed, logged and exported (aim_startup_phase_seconds); the one running
now is named in the termination message when start-up fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aim_runtime.serving import metrics

log = logging.getLogger("aim_runtime")

CURRENT_PHASE = ["arguments"]  # the start-up phase running now, for the termination message


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a start-up phase: logged, and exported as aim_startup_phase_seconds."""
    started = time.monotonic()
    CURRENT_PHASE.append(name)
    yield
    seconds = time.monotonic() - started
    metrics.record_phase(name, seconds)
    log.info("phase %s: %.3f s", name, seconds)
