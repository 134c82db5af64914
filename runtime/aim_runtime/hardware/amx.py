"""Linux's permission to use Intel AMX tile data, asked for by this process.

Linux traps the first AMX tile instruction of a process and kills it with SIGILL unless the
process asked first: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (Linux 5.16+,
Documentation/arch/x86/xstate.rst). The permission covers every thread of the process, is
inherited by fork and cleared by exec, so each process vLLM spawns must ask for itself.

vLLM's CPU attention runs AMX tile instructions for bf16 on hosts with AMX and never asks; it
works only when oneDNN has asked already as a side effect (a oneDNN matmul, or a batch of more
than 4 tokens through vLLM's small-GEMM path). A small bf16 model's first step can come before
either: the worker dies on the first request. `serving/vllm_plugin.py` asks in every vLLM process
before the model loads. docs/cpu-dev-stack.md, "One model, every CPU", has the whole account.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from dataclasses import dataclass

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
# XTILECFG (bit 17) is permitted by default; the tile data (bit 18) is what must be asked for.
XTILEDATA_BIT = 1 << XFEATURE_XTILEDATA


@dataclass(frozen=True)
class AmxPermission:
    """What this process may do with AMX tile data, and what asking did."""

    outcome: str  # "not applicable" | "no AMX" | "already permitted" | "granted" | "refused"
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.outcome in ("already permitted", "granted")


def _arch_prctl_mask(libc: ctypes.CDLL, code: int) -> int | None:
    mask = ctypes.c_uint64(0)
    status = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(code), ctypes.byref(mask))
    return mask.value if status == 0 else None


def request_amx_permission() -> AmxPermission:
    """Ask Linux for AMX tile data where the CPU and kernel have it; never raises."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return AmxPermission("not applicable", f"{sys.platform} {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    supported = _arch_prctl_mask(libc, ARCH_GET_XCOMP_SUPP)
    if supported is None or not supported & XTILEDATA_BIT:
        return AmxPermission("no AMX", "this CPU (or kernel) has no AMX tile data")
    permitted = _arch_prctl_mask(libc, ARCH_GET_XCOMP_PERM)
    if permitted is not None and permitted & XTILEDATA_BIT:
        return AmxPermission("already permitted")
    status = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_ulong(XFEATURE_XTILEDATA))
    if status != 0:
        return AmxPermission("refused", f"arch_prctl: {ctypes.get_errno()}")
    permitted = _arch_prctl_mask(libc, ARCH_GET_XCOMP_PERM)
    if permitted is None or not permitted & XTILEDATA_BIT:
        return AmxPermission("refused", "granted, but the permitted mask lacks tile data")
    return AmxPermission("granted")
