"""Detect: what accelerators this process can use.

Order of sources (the first that yields GPUs wins):
1. `--simulate PRODUCT:N` (what-if planning; always wins, nothing is probed);
2. a captured `amd-smi static --json` file, when one is given;
3. the `amdsmi` Python library, where it imports and initialises (the ROCm image);
4. the KFD sysfs topology, keeping only GPUs whose render node exists in this container;
5. `AIM_GPU_PRODUCT` / `AIM_GPU_COUNT` when no GPU was found (planning on a machine without GPUs);
6. otherwise the CPU.

With real GPUs found, `AIM_GPU_PRODUCT`/`AIM_GPU_COUNT` are checks and limits, not replacements:
a product that differs from the detected one, or more GPUs than the pod has, is an error.
`ROCR_VISIBLE_DEVICES`, then `HIP_VISIBLE_DEVICES`/`CUDA_VISIBLE_DEVICES`, narrow the list by index.
A pod that sees more than one product (or partition mode) is refused: plans assume equal devices.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aim_runtime import settings
from aim_runtime.errors import DetectionError, OverrideError
from aim_runtime.hardware import amd_smi, kfd
from aim_runtime.hardware.host import read_host
from aim_runtime.hardware.inventory import Device, Inventory, InventorySource
from aim_runtime.hardware.products import PRODUCTS, lookup_product

_IMPORT = object()  # sentinel: import the real amdsmi library


def detect(
    *,
    simulate: str | None = None,
    nodes: int = 1,
    sys_root: Path = Path("/sys"),
    dev_root: Path = Path("/dev"),
    proc_root: Path = Path("/proc"),
    environ: Mapping[str, str] | None = None,
    amd_smi_json: Path | None = None,
    amdsmi_module: Any = _IMPORT,
) -> Inventory:
    """Build the inventory from the sources in the module's documented order. `nodes` > 1: this
    node is the head of that many identical nodes (a KServe multi-node deployment)."""
    env = os.environ if environ is None else environ
    host = read_host(sys_root, proc_root)
    if simulate:
        product, count, nodes = parse_simulate(simulate, "--simulate")
        return Inventory(source="simulated", devices=simulated_devices(product, count), host=host,
                         nodes=nodes, notes=(f"simulated: {simulate}",))

    source, devices, notes = _probe_hardware(sys_root, dev_root, amd_smi_json, amdsmi_module)
    if devices:
        devices, visibility_notes = _apply_visible_devices(devices, env)
        _check_homogeneous(devices)
        devices, override_notes = _apply_env_limits(devices, env)
        notes = notes + visibility_notes + override_notes
        return Inventory(source=source, devices=tuple(devices), host=host, nodes=nodes,
                         notes=tuple(notes))

    env_product = settings.GPU_PRODUCT.read(env)
    if env_product:
        product, _, _ = parse_simulate(env_product, "AIM_GPU_PRODUCT")
        env_count = settings.GPU_COUNT.read(env)
        count_note = () if env_count else ("AIM_GPU_COUNT not set: planning for 1 device",)
        return Inventory(
            source="override", devices=simulated_devices(product, env_count or 1), host=host,
            nodes=nodes,
            notes=(*notes, f"no GPU found; planning for AIM_GPU_PRODUCT={product}", *count_note),
        )
    if settings.GPU_COUNT.read(env) is not None:  # a bad value is its own error
        raise OverrideError(
            f"AIM_GPU_COUNT={env['AIM_GPU_COUNT']} is set but no GPU was found and "
            "AIM_GPU_PRODUCT is not set",
            "set AIM_GPU_PRODUCT too (for example MI300X) to plan for GPUs this machine lacks",
        )
    return Inventory(source="cpu", host=host, nodes=nodes,
                     notes=(*notes, "no AMD GPU found: using the CPU"))


def parse_simulate(spec: str, origin: str) -> tuple[str, int, int]:
    """`MI300X:8` -> ("MI300X", 8, 1); `MI300X:8x2` -> 8 per node on 2 nodes; `MI300X` -> 1."""
    name, _, count_text = spec.partition(":")
    try:
        product = lookup_product(name).name
    except KeyError as exc:
        raise OverrideError(f"{origin} {spec!r}: {exc.args[0]}") from exc
    per_node, separator, nodes = (count_text.strip() or "1").lower().partition("x")
    nodes = nodes if separator else "1"
    for text in (per_node, nodes):
        if not text.isdigit() or int(text) < 1:
            raise OverrideError(
                f"{origin} {spec!r}: {text!r} is not a positive integer",
                "write PRODUCT:COUNT or PRODUCT:COUNTxNODES, for example MI300X:8 or "
                "MI300X:8x2",
            )
    return product, int(per_node), int(nodes)


def simulated_devices(product_name: str, count: int) -> tuple[Device, ...]:
    """Whole (un-partitioned) devices of a product, as the table describes them."""
    product = PRODUCTS[product_name]
    partition = "SPX" if product.xcc_count > 1 else None
    return tuple(
        Device(index=i, product=product.name, isa=product.isa,
               pci_device_id=f"0x{product.pci_device_ids[0]:04x}", vram_bytes=product.vram_bytes,
               compute_units=product.compute_units, compute_partition=partition)
        for i in range(count)
    )


def _probe_hardware(
    sys_root: Path, dev_root: Path, amd_smi_json: Path | None, amdsmi_module: Any
) -> tuple[InventorySource, list[Device], tuple[str, ...]]:
    if amd_smi_json is not None:
        try:
            document = json.loads(Path(amd_smi_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DetectionError(f"cannot read amd-smi JSON {amd_smi_json}: {exc}") from exc
        records = amd_smi.records_from_static_json(document)
        return "amd-smi-json", amd_smi.devices_from_records(records), ()

    notes: list[str] = []
    module = amd_smi.import_amdsmi() if amdsmi_module is _IMPORT else amdsmi_module
    if module is not None:
        library_records = amd_smi.records_from_library(module)
        if library_records:
            return "amdsmi", amd_smi.devices_from_records(library_records), ()
        notes.append("amdsmi imported but reported no GPU; trying sysfs")
    if kfd.topology_available(sys_root):
        devices = kfd.read_kfd_devices(sys_root, dev_root)
        if devices:
            return "sysfs", devices, tuple(notes)
        notes.append("KFD topology present but no GPU node is accessible in this container")
    return "cpu", [], tuple(notes)


def _apply_visible_devices(
    devices: list[Device], env: Mapping[str, str]
) -> tuple[list[Device], tuple[str, ...]]:
    hip, cuda = env.get("HIP_VISIBLE_DEVICES"), env.get("CUDA_VISIBLE_DEVICES")
    if hip is not None and cuda is not None and hip != cuda:
        raise DetectionError(
            f"HIP_VISIBLE_DEVICES={hip} and CUDA_VISIBLE_DEVICES={cuda} differ",
            "vLLM on ROCm refuses this too; in a pod set neither (the device plugin already "
            "limits what the container sees)",
        )
    notes: list[str] = []
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES" if hip is not None
                 else "CUDA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is None:
            continue
        devices = _select_indices(devices, name, value)
        notes.append(f"{name}={value} keeps {len(devices)} device(s)")
    reindexed = [d.model_copy(update={"index": i}) for i, d in enumerate(devices)]
    return reindexed, tuple(notes)


def _select_indices(devices: list[Device], name: str, value: str) -> list[Device]:
    picked = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        if not item.isdigit() or int(item) >= len(devices):
            raise DetectionError(
                f"{name}={value}: {item!r} is not an index below {len(devices)}",
                "use device indices (0, 1, ...) of the GPUs this container sees",
            )
        picked.append(devices[int(item)])
    return picked


def _check_homogeneous(devices: list[Device]) -> None:
    kinds = Counter(
        f"{d.product}" + (f" ({d.compute_partition})" if d.compute_partition else "")
        for d in devices
    )
    if len(kinds) > 1:
        seen = ", ".join(f"{n}x {kind}" for kind, n in kinds.items())
        raise DetectionError(
            f"this pod sees different GPUs: {seen}; a plan needs identical devices",
            "schedule the pod on one GPU model (nodeSelector amd.com/gpu.device-id) or narrow "
            "the devices with ROCR_VISIBLE_DEVICES",
        )


def _apply_env_limits(
    devices: list[Device], env: Mapping[str, str]
) -> tuple[list[Device], tuple[str, ...]]:
    notes: list[str] = []
    wanted_product = settings.GPU_PRODUCT.read(env)
    if wanted_product:
        try:
            product = lookup_product(wanted_product).name
        except KeyError as exc:
            raise OverrideError(f"AIM_GPU_PRODUCT={wanted_product}: {exc.args[0]}") from exc
        if product != devices[0].product:
            raise OverrideError(
                f"AIM_GPU_PRODUCT={wanted_product} but this pod has {devices[0].product} GPUs",
                "remove AIM_GPU_PRODUCT (detection is automatic) or fix the node selector",
            )
    count = settings.GPU_COUNT.read(env)
    if count is not None:
        if count > len(devices):
            raise OverrideError(
                f"AIM_GPU_COUNT={count} but this pod has only {len(devices)} GPU(s)",
                f"request amd.com/gpu: {count} in the InferenceService, or lower AIM_GPU_COUNT",
            )
        if count < len(devices):
            notes.append(f"AIM_GPU_COUNT={count}: using {count} of {len(devices)} GPUs")
            devices = devices[:count]
    return devices, tuple(notes)
