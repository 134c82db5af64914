"""Run a module as `python -m` runs it, with cProfile switched on and off by SIGUSR2.

    python -m benchmarks.profiled OUT MODULE [ARGS...]

The first SIGUSR2 starts profiling the main thread (where both servers run their event loop; on
Python 3.12 and later cProfile sees every thread), the second stops it and writes the statistics to
OUT (pstats format). Start-up, loading and warm-up stay out of the profile; only the window between
the two signals is in it."""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    out, module, *args = sys.argv[1:]
    profiler = cProfile.Profile()
    profiling = False

    def toggle(signum: int, frame: FrameType | None) -> None:
        nonlocal profiling
        if profiling:
            profiler.disable()
            profiler.dump_stats(out + ".part")
            os.replace(out + ".part", out)  # whoever waits for `out` sees it whole
        else:
            profiler.enable()
        profiling = not profiling

    signal.signal(signal.SIGUSR2, toggle)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
