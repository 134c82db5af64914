"""Fabricated KFD sysfs trees and /dev/dri folders, shaped like real captures.

The property keys and values follow the kernel's `kfd_topology.c` output and the captures in the
AMD k8s-device-plugin test data (MI210, MI300X CPX, MI308X CPX): CU = simd_count / simd_per_cu,
`location_id` packs bus/device/function, VRAM lives in `mem_banks/0/properties`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    device_id: int
    gfx_target_version: int
    compute_units: int
    vram_bytes: int
    num_xcc: int = 1
    bus: int = 0x0C
    function: int = 0
    hive_id: int = 0
    partition: str | None = None  # written to the PCI device's current_compute_partition


MI300X = Gpu(0x74A1, 90402, 304, 196592 * MIB, num_xcc=8, hive_id=0x1234)
MI325X = Gpu(0x74A5, 90402, 304, 256 * GIB, num_xcc=8, hive_id=0x1235)
MI355X = Gpu(0x75A3, 90500, 256, 288 * GIB, num_xcc=8, hive_id=0x1236)
MI250_GCD = Gpu(0x740C, 90010, 104, 64 * GIB, hive_id=0x2222)
MI250X_GCD = Gpu(0x740C, 90010, 110, 64 * GIB, hive_id=0x2223)
MI210 = Gpu(0x740F, 90010, 104, 64 * GIB)


def node_properties(gpu: Gpu, render_minor: int) -> str:
    location = (gpu.bus << 8) | (0 << 3) | gpu.function
    values = {
        "cpu_cores_count": 0, "simd_count": gpu.compute_units * 4, "mem_banks_count": 1,
        "caches_count": 0, "io_links_count": 1, "p2p_links_count": 0, "cpu_core_id_base": 0,
        "simd_id_base": 2147487744, "max_waves_per_simd": 8, "lds_size_in_kb": 64,
        "gds_size_in_kb": 0, "num_gws": 64, "wave_front_size": 64, "array_count": 8,
        "simd_arrays_per_engine": 1, "cu_per_simd_array": 14, "simd_per_cu": 4,
        "max_slots_scratch_cu": 32, "gfx_target_version": gpu.gfx_target_version,
        "vendor_id": 4098, "device_id": gpu.device_id, "location_id": location, "domain": 0,
        "drm_render_minor": render_minor, "hive_id": gpu.hive_id, "num_sdma_engines": 2,
        "num_sdma_xgmi_engines": 6, "num_sdma_queues_per_engine": 8, "num_cp_queues": 24,
        "max_engine_clk_fcompute": 2100, "local_mem_size": 0, "fw_version": 177,
        "capability": 746029184, "debug_prop": 1495, "sdma_fw_version": 20,
        "unique_id": 1000 + render_minor, "num_xcc": gpu.num_xcc,
        "max_engine_clk_ccompute": 2450,
    }
    return "".join(f"{key} {value}\n" for key, value in values.items())


CPU_PROPERTIES = (
    "cpu_cores_count 96\nsimd_count 0\nmem_banks_count 1\ncaches_count 0\nio_links_count 8\n"
    "vendor_id 0\ndevice_id 0\nlocation_id 0\ndrm_render_minor 0\nhive_id 0\n"
    "max_engine_clk_ccompute 2450\n"
)


def write_tree(root: Path, gpus: list[Gpu], visible: list[int] | None = None,
               cpu_nodes: int = 2) -> tuple[Path, Path]:
    """Write sys/ and dev/ under root. `visible` lists the GPU indices whose render node the
    container has (default all). Returns (sys_root, dev_root)."""
    sys_root, dev_root = root / "sys", root / "dev"
    nodes = sys_root / "class/kfd/kfd/topology/nodes"
    (dev_root / "dri").mkdir(parents=True, exist_ok=True)
    for node in range(cpu_nodes):
        _write(nodes / str(node) / "gpu_id", "0\n")
        _write(nodes / str(node) / "properties", CPU_PROPERTIES)
    for index, gpu in enumerate(gpus):
        node_dir = nodes / str(cpu_nodes + index)
        minor = 128 + index
        _write(node_dir / "gpu_id", f"{40000 + index}\n")
        _write(node_dir / "properties", node_properties(gpu, minor))
        _write(node_dir / "mem_banks/0/properties",
               f"heap_type 1\nsize_in_bytes {gpu.vram_bytes}\nflags 0\nwidth 8192\n"
               "mem_clk_max 1300\n")
        if gpu.partition:
            pci = sys_root / f"bus/pci/devices/0000:{gpu.bus:02x}:00.0"
            _write(pci / "current_compute_partition", gpu.partition + "\n")
            _write(pci / "current_memory_partition", "NPS1\n")
        if visible is None or index in visible:
            (dev_root / "dri" / f"renderD{minor}").write_text("")
            (dev_root / "dri" / f"card{index + 1}").write_text("")
    (dev_root / "kfd").write_text("")
    return sys_root, dev_root


def cards(gpu: Gpu, count: int) -> list[Gpu]:
    """`count` GPUs on distinct PCI buses."""
    return [replace(gpu, bus=0x0C + 0x10 * i) for i in range(count)]


def cpx_partitions(gpu: Gpu, gpus: int, per_gpu: int) -> list[Gpu]:
    """Each GPU split into `per_gpu` compute partitions: one XCC and an even share of VRAM each;
    partitions of one GPU share its bus and differ by PCI function."""
    part = replace(gpu, compute_units=gpu.compute_units // per_gpu,
                   vram_bytes=gpu.vram_bytes // per_gpu, num_xcc=gpu.num_xcc // per_gpu,
                   partition="CPX")
    return [replace(part, bus=0x0C + 0x10 * g, function=p)
            for g in range(gpus) for p in range(per_gpu)]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
