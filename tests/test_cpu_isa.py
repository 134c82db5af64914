"""The CPU under the engine: the kernel library vLLM loads for it, and the AMX permission that the
runtime's vLLM plugin asks for in every vLLM process (hardware/amx.py). On an AMX host the
plugin must be granted it; elsewhere it finds none. `make test-avx2` runs this module with the
embedded-model tests forced onto AVX2 kernels (AIM_TEST_FORCED_ISA=avx2)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest

from aim_runtime.hardware.amx import request_amx_permission

FORCED_ISA = os.environ.get("AIM_TEST_FORCED_ISA")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def expected_kernel_library() -> str:
    """vLLM's CPU platform (import_kernels): _C with AVX-512 BF16, _C_AVX512 with AVX-512 alone,
    else _C_AVX2."""
    flags = cpu_flags()
    if FORCED_ISA == "avx2" or "avx512f" not in flags:
        return "_C_AVX2"
    return "_C" if "avx512_bf16" in flags else "_C_AVX512"


def test_the_permission_matches_what_the_cpu_has():
    permission = request_amx_permission()
    if "amx_tile" in cpu_flags():
        assert permission.outcome in ("granted", "already permitted") and permission.usable
    else:
        assert permission.outcome == "no AMX" and not permission.usable


@pytest.mark.serving
def test_every_vllm_process_asked_for_amx_tile_data(server):
    outcomes = "no AMX|granted|already permitted|refused"
    asked = dict(re.findall(rf"AMX permission \(pid (\d+)\): ({outcomes})",
                            server.log_path.read_text()))
    engine_pids = {str(p.pid) for p in psutil.Process(server.process.pid).children(recursive=True)}
    assert len(engine_pids & asked.keys()) >= 2, (asked, engine_pids)  # engine core and worker
    expected = {"granted", "already permitted"} if "amx_tile" in cpu_flags() else {"no AMX"}
    assert set(asked.values()) <= expected, asked


@pytest.mark.serving
def test_the_engine_runs_the_kernel_library_for_this_cpu(server):
    libraries = set()
    for process in psutil.Process(server.process.pid).children(recursive=True):
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        libraries |= set(re.findall(r"vllm/(_C(?:_AVX2|_AVX512)?)\.abi3\.so", maps))
    assert libraries == {expected_kernel_library()}, libraries
