"""Host CPU cores and memory, with the pod's cgroup (v2) limits applied where readable."""

from __future__ import annotations

import math
import os
from pathlib import Path

from aim_runtime.hardware.inventory import HostInfo


def read_host(sys_root: Path, proc_root: Path) -> HostInfo:
    """CPU model, usable cores (affinity, then cgroup quota) and memory (MemTotal, cgroup limit)."""
    return HostInfo(
        cpu_model=_cpu_model(proc_root),
        cpu_cores=_usable_cores(sys_root),
        ram_bytes=_mem_total_bytes(proc_root),
        memory_limit_bytes=_cgroup_memory_limit(sys_root),
        numa_balancing=_numa_balancing(proc_root),
    )


def _numa_balancing(proc_root: Path) -> bool | None:
    """Automatic NUMA balancing of the host kernel (a host setting a pod can read, not change)."""
    try:
        return (proc_root / "sys/kernel/numa_balancing").read_text().strip() not in ("", "0")
    except OSError:
        return None


def _cpu_model(proc_root: Path) -> str:
    try:
        for line in (proc_root / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def _usable_cores(sys_root: Path) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(sys_root)
    return max(1, min(cores, quota)) if quota else cores


def _cgroup_cpu_quota(sys_root: Path) -> int | None:
    try:
        quota, period = (sys_root / "fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return math.ceil(int(quota) / int(period))


def _mem_total_bytes(proc_root: Path) -> int:
    try:
        for line in (proc_root / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cgroup_memory_limit(sys_root: Path) -> int | None:
    try:
        text = (sys_root / "fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return None if text == "max" or not text.isdigit() else int(text)
