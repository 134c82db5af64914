"""The inventory: what accelerators (and host) this process can use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from aim_runtime.settings import CPU_PRODUCT

InventorySource = Literal["amdsmi", "amd-smi-json", "sysfs", "override", "simulated", "cpu"]


class Device(BaseModel):
    """One logical GPU as the process sees it (a GCD on MI250, a partition in CPX mode)."""

    model_config = ConfigDict(frozen=True)

    index: int
    product: str
    isa: str
    pci_device_id: str
    vram_bytes: int
    compute_units: int
    compute_partition: str | None = None
    memory_partition: str | None = None
    pci_bus_id: str | None = None
    render_minor: int | None = None
    xgmi_hive_id: int | None = None


class HostInfo(BaseModel):
    """CPU cores and memory this process may use (cgroup limits applied where readable)."""

    model_config = ConfigDict(frozen=True)

    cpu_model: str = ""
    cpu_cores: int
    ram_bytes: int
    memory_limit_bytes: int | None = None
    # /proc/sys/kernel/numa_balancing (the host's, not namespaced): None when unreadable.
    numa_balancing: bool | None = None

    @property
    def usable_memory_bytes(self) -> int:
        if self.memory_limit_bytes is None:
            return self.ram_bytes
        return min(self.ram_bytes, self.memory_limit_bytes)


class Inventory(BaseModel):
    """Devices of one product (mixed products are refused at detection) plus the host.

    `devices` are this node's; `nodes` > 1 describes a multi-node deployment of identical nodes
    (KServe's workerSpec), where the planner keeps tensor parallelism inside a node.
    """

    model_config = ConfigDict(frozen=True)

    source: InventorySource
    devices: tuple[Device, ...] = ()
    host: HostInfo
    nodes: int = 1
    notes: tuple[str, ...] = ()

    @property
    def accelerator(self) -> Literal["rocm", "cpu"]:
        return "rocm" if self.devices else "cpu"

    @property
    def device_count(self) -> int:
        """Devices over all nodes."""
        return len(self.devices) * self.nodes

    @property
    def devices_per_node(self) -> int:
        return len(self.devices)

    @property
    def product(self) -> str:
        return self.devices[0].product if self.devices else CPU_PRODUCT

    @property
    def isa(self) -> str | None:
        return self.devices[0].isa if self.devices else None

    @property
    def vram_bytes_per_device(self) -> int:
        return min(d.vram_bytes for d in self.devices) if self.devices else 0

    @property
    def compute_partition(self) -> str | None:
        return self.devices[0].compute_partition if self.devices else None

    @property
    def is_simulated(self) -> bool:
        return self.source in ("override", "simulated")

    @property
    def xgmi_connected(self) -> bool:
        """All devices share one XGMI hive (tensor parallelism stays off PCIe)."""
        hives = {d.xgmi_hive_id for d in self.devices}
        return len(hives) == 1 and None not in hives and 0 not in hives
