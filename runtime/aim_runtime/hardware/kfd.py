"""GPU discovery from the KFD sysfs topology, without any ROCm userland.

Mirrors what libhsakmt does in a container: every host GPU's node stays visible in sysfs (it is not
namespaced), so a node counts only if its `/dev/dri/renderD<drm_render_minor>` exists in this
container; reads that fail with EPERM (the device cgroup denies GPUs not given to the pod) or ENOENT
skip the node. VRAM comes from the node's memory bank (`local_mem_size` is always 0 in current
kernels); for CPX/NPS partitions the bank already holds the partition's share.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aim_runtime.hardware.inventory import Device
from aim_runtime.hardware.products import (
    isa_from_gfx_target_version,
    partition_mode,
    product_for_device,
)

log = logging.getLogger(__name__)

TOPOLOGY = "class/kfd/kfd/topology/nodes"
AMD_VENDOR_ID = 0x1002
# HSA heap types of VRAM banks: 1 = frame buffer public, 2 = frame buffer private.
VRAM_HEAP_TYPES = (1, 2)


def read_text(path: Path) -> str | None:
    """File contents, or None when it is missing or the kernel refuses the read (EPERM)."""
    try:
        return path.read_text()
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None
    except OSError as exc:  # e.g. EIO from a GPU in a bad state: skip it, say so
        log.warning("cannot read %s: %s", path, exc)
        return None


def parse_properties(text: str) -> dict[str, int]:
    """`key value` lines of a KFD properties file; values are integers."""
    props: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        try:
            props[key] = int(value)
        except ValueError:
            continue
    return props


def render_minors_present(dev_root: Path) -> set[int]:
    """Render node minors that exist in this container's /dev/dri."""
    dri = dev_root / "dri"
    if not dri.is_dir():
        return set()
    minors = set()
    for entry in dri.glob("renderD*"):
        suffix = entry.name.removeprefix("renderD")
        if suffix.isdigit():
            minors.add(int(suffix))
    return minors


def topology_available(sys_root: Path) -> bool:
    return (sys_root / TOPOLOGY).is_dir()


def read_kfd_devices(sys_root: Path, dev_root: Path) -> list[Device]:
    """GPUs of the KFD topology that this container can open, in KFD node order."""
    nodes_dir = sys_root / TOPOLOGY
    minors = render_minors_present(dev_root)
    node_dirs = sorted(
        (p for p in nodes_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    devices: list[Device] = []
    for node_dir in node_dirs:
        props = _gpu_node_properties(node_dir)
        if props is None or props.get("drm_render_minor") not in minors:
            continue
        devices.append(_device_from_node(len(devices), node_dir, props, sys_root))
    return devices


def _gpu_node_properties(node_dir: Path) -> dict[str, int] | None:
    gpu_id = read_text(node_dir / "gpu_id")
    if gpu_id is None or gpu_id.strip() in ("", "0"):
        return None  # CPU node, or a GPU this container may not touch
    text = read_text(node_dir / "properties")
    if text is None:
        return None
    props = parse_properties(text)
    if props.get("vendor_id") != AMD_VENDOR_ID or props.get("simd_count", 0) == 0:
        return None
    return props


def _device_from_node(index: int, node_dir: Path, props: dict[str, int], sys_root: Path) -> Device:
    compute_units = props["simd_count"] // max(props.get("simd_per_cu", 1), 1)
    product = product_for_device(props["device_id"], compute_units)
    xcc_in_device = props.get("num_xcc", 1) or 1
    bus_id = _pci_bus_id(props)
    pci_dir = sys_root / "bus/pci/devices" / _function_zero(bus_id)
    compute_partition = _read_partition(pci_dir / "current_compute_partition")
    if compute_partition is None and product.xcc_count > 1:
        compute_partition = partition_mode(product, xcc_in_device)
    return Device(
        index=index,
        product=product.name,
        isa=isa_from_gfx_target_version(props["gfx_target_version"]),
        pci_device_id=f"0x{props['device_id']:04x}",
        vram_bytes=_vram_bytes(node_dir),
        compute_units=compute_units,
        compute_partition=compute_partition,
        memory_partition=_read_partition(pci_dir / "current_memory_partition"),
        pci_bus_id=bus_id,
        render_minor=props["drm_render_minor"],
        xgmi_hive_id=props.get("hive_id") or None,
    )


def _vram_bytes(node_dir: Path) -> int:
    banks = sorted((node_dir / "mem_banks").glob("*/properties"))
    sizes_by_heap = []
    for bank in banks:
        text = read_text(bank)
        if text is None:
            continue
        props = parse_properties(text)
        sizes_by_heap.append((props.get("heap_type"), props.get("size_in_bytes", 0)))
    vram = [size for heap, size in sizes_by_heap if heap in VRAM_HEAP_TYPES]
    if vram:
        return max(vram)
    return sizes_by_heap[0][1] if sizes_by_heap else 0


def _pci_bus_id(props: dict[str, int]) -> str:
    """`location_id` packs bus/device/function (as the AMD device plugin decodes it)."""
    location = props.get("location_id", 0)
    bus, device, function = (location >> 8) & 0xFF, (location >> 3) & 0x1F, location & 0x7
    return f"{props.get('domain', 0):04x}:{bus:02x}:{device:02x}.{function}"


def _function_zero(bus_id: str) -> str:
    """Partitions of one GPU differ by PCI function; the partition mode lives on function 0."""
    return bus_id.rsplit(".", 1)[0] + ".0"


def _read_partition(path: Path) -> str | None:
    text = read_text(path)
    if text is None or not text.strip():
        return None
    return text.strip().upper()
