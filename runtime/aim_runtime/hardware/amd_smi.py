"""GPU discovery through AMD SMI: the `amdsmi` Python library, or captured `amd-smi static --json`.

Both end in the same `SmiRecord`, so the library path (only real inside the ROCm image) and the JSON
path (fixtures, support bundles) share one conversion to `Device`.

Outside a ROCm image `import amdsmi` can print to stdout and raise KeyError rather than ImportError,
so every failure of the library is caught and reported as "unavailable" (vLLM does the same).
The library's gfx name for MI200 is wrong in some versions ("gfx9010"), so the ISA of a known
product comes from the product table, not from the library.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aim_runtime.errors import DetectionError
from aim_runtime.hardware.inventory import Device
from aim_runtime.hardware.products import product_for_device

log = logging.getLogger(__name__)
MIB = 1024**2


@dataclass(frozen=True)
class SmiRecord:
    """The fields of one GPU that AMD SMI reports and the runtime uses."""

    pci_device_id: int
    market_name: str = ""
    compute_units: int | None = None
    gfx_name: str = ""
    vram_bytes: int = 0
    compute_partition: str | None = None
    memory_partition: str | None = None
    bdf: str | None = None


def devices_from_records(records: list[SmiRecord]) -> list[Device]:
    """Convert SMI records to devices; unknown PCI ids are an error naming the id."""
    devices = []
    for index, record in enumerate(records):
        try:
            product = product_for_device(record.pci_device_id, record.compute_units)
        except KeyError as exc:
            raise DetectionError(
                f"GPU {index} ({record.market_name or 'unnamed'}): {exc.args[0]}",
                "this runtime supports AMD Instinct MI210/MI250/MI250X/MI300A/MI300X/MI308X/"
                "MI325X/MI350X/MI355X; set AIM_GPU_PRODUCT to plan as one of them",
            ) from exc
        devices.append(
            Device(
                index=index,
                product=product.name,
                isa=product.isa,
                pci_device_id=f"0x{record.pci_device_id:04x}",
                vram_bytes=record.vram_bytes or product.vram_bytes,
                compute_units=record.compute_units or product.compute_units,
                compute_partition=record.compute_partition,
                memory_partition=record.memory_partition,
                pci_bus_id=record.bdf,
            )
        )
    return devices


# --- `amd-smi static --json` -------------------------------------------------------------------


def records_from_static_json(document: Any) -> list[SmiRecord]:
    """Parse `amd-smi static --json` in either shape: a bare list (older amd-smi) or an object
    with `gpu_data` (current amd-smi)."""
    if isinstance(document, dict):
        if "gpu_data" not in document:
            raise DetectionError(
                "amd-smi JSON is an object without 'gpu_data'",
                "pass the output of `amd-smi static --json`",
            )
        entries = document["gpu_data"]
    elif isinstance(document, list):
        entries = document
    else:
        raise DetectionError(f"amd-smi JSON has unexpected type {type(document).__name__}")
    return [_record_from_static_entry(i, entry) for i, entry in enumerate(entries)]


def _record_from_static_entry(position: int, entry: dict[str, Any]) -> SmiRecord:
    asic = entry.get("asic") or {}
    device_id = _as_int(asic.get("device_id"))
    if device_id is None:
        raise DetectionError(f"amd-smi JSON gpu[{position}].asic.device_id is missing or invalid")
    partition = entry.get("partition") or {}
    return SmiRecord(
        pci_device_id=device_id,
        market_name=str(asic.get("market_name", "")),
        compute_units=_as_int(asic.get("num_compute_units")),
        gfx_name=str(asic.get("target_graphics_version", "")),
        vram_bytes=_vram_size_bytes((entry.get("vram") or {}).get("size")),
        compute_partition=_partition_name(partition.get("compute_partition")),
        memory_partition=_partition_name(partition.get("memory_partition")),
        bdf=(entry.get("bus") or {}).get("bdf"),
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            return int(text, 16) if text.lower().startswith("0x") else int(text)
    return None


def _vram_size_bytes(size: Any) -> int:
    """amd-smi prints VRAM size as {"value": N, "unit": "MB"}, "N MB", or a bare number of MB.
    Its "MB" are MiB (196592 MB on an MI300X is 192 GiB less 16 MiB)."""
    if isinstance(size, dict):
        value, unit = size.get("value"), str(size.get("unit", "MB"))
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", size)
        if not match:
            return 0
        value, unit = match.group(1), match.group(2) or "MB"
    else:
        value, unit = size, "MB"
    try:
        amount = float(value)  # type: ignore[arg-type]  # checked: TypeError below
    except (TypeError, ValueError):
        return 0
    scale = {"B": 1, "KB": 1024, "MB": MIB, "GB": 1024**3}.get(unit.upper(), MIB)
    return int(amount * scale)


def _partition_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or value.strip().upper() == "N/A":
        return None
    return value.strip().upper()


# --- the amdsmi Python library -----------------------------------------------------------------


def import_amdsmi() -> ModuleType | None:
    """The amdsmi module, or None when it is absent or broken (anything it raises)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import amdsmi
    except Exception as exc:  # amdsmi raises KeyError without its .so
        log.debug("amdsmi unavailable: %r", exc)
        return None
    module: ModuleType = amdsmi
    return module


def records_from_library(amdsmi: Any) -> list[SmiRecord] | None:
    """Query the library; None when it does not initialise or reports no GPU."""
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:
        log.debug("amdsmi_init failed: %r", exc)
        return None
    try:
        return [_record_from_handle(amdsmi, h) for h in amdsmi.amdsmi_get_processor_handles()]
    except Exception as exc:
        log.warning("amdsmi query failed, falling back to sysfs: %r", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            amdsmi.amdsmi_shut_down()


def _record_from_handle(amdsmi: Any, handle: Any) -> SmiRecord:
    asic = amdsmi.amdsmi_get_gpu_asic_info(handle)
    device_id = _as_int(asic.get("device_id"))
    if device_id is None:
        raise ValueError(f"amdsmi returned device_id {asic.get('device_id')!r}")
    return SmiRecord(
        pci_device_id=device_id,
        market_name=str(asic.get("market_name", "")),
        compute_units=_as_int(asic.get("num_compute_units")),
        gfx_name=str(asic.get("target_graphics_version", "")),
        vram_bytes=_optional(lambda: int(amdsmi.amdsmi_get_gpu_memory_total(
            handle, amdsmi.AmdSmiMemoryType.VRAM))) or 0,
        compute_partition=_partition_name(
            _optional(lambda: amdsmi.amdsmi_get_gpu_compute_partition(handle))),
        memory_partition=_partition_name(
            _optional(lambda: amdsmi.amdsmi_get_gpu_memory_partition(handle))),
        bdf=_optional(lambda: amdsmi.amdsmi_get_gpu_device_bdf(handle)),
    )


def _optional(query: Any) -> Any:
    """Result of an amdsmi query that older libraries or VFs may not support, else None."""
    try:
        return query()
    except Exception:
        return None
