"""Hardware: what accelerators this process can use (detection) and what each AMD Instinct
product is (the product table). Imports nothing of the runtime but `settings` and `errors`."""

from aim_runtime.hardware.detect import detect, parse_simulate, simulated_devices
from aim_runtime.hardware.inventory import Device, HostInfo, Inventory

__all__ = ["Device", "HostInfo", "Inventory", "detect", "parse_simulate", "simulated_devices"]
