"""The runtime's vLLM general plugin: vLLM runs it in every process it starts (the API server,
the engine core, each worker), before a model loads (entry point group `vllm.general_plugins`,
pyproject.toml). It asks Linux for AMX tile data (hardware/amx.py), so that a bf16 model's first
request on an AMX host cannot die with SIGILL in vLLM's AMX attention kernel.

vLLM calls plugins without a guard: this one never raises. It logs through a child of vLLM's
logger, the one vLLM configures in the processes it spawns.
"""

from __future__ import annotations

import logging
import os

from aim_runtime.hardware.amx import request_amx_permission

log = logging.getLogger("vllm.aim_runtime")
NAME = "aim_runtime"  # the entry point's name: what VLLM_PLUGINS must list, when it is set


def register() -> None:
    try:
        permission = request_amx_permission()
    except Exception as exc:  # a plugin that raises takes vLLM's start-up down with it
        log.warning("AMX permission (pid %d): could not ask: %s", os.getpid(), exc)
        return
    report = log.warning if permission.outcome == "refused" else log.info
    report("AMX permission (pid %d): %s%s", os.getpid(), permission.outcome,
           f" ({permission.detail})" if permission.detail else "")
