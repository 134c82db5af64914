"""Detection on fabricated KFD trees, amd-smi captures, a stand-in amdsmi library, overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from aim_runtime.errors import DetectionError, OverrideError
from aim_runtime.hardware import detect

from kfd_trees import (
    GIB,
    MI210,
    MI250_GCD,
    MI250X_GCD,
    MI300X,
    MI325X,
    MI355X,
    cards,
    cpx_partitions,
    write_tree,
)

AMD_SMI = Path(__file__).parent / "fixtures" / "amd-smi"
NO_LIBRARY = None  # amdsmi_module=None: behave as if the library is absent


def detect_tree(tmp_path: Path, gpus, visible=None, environ=None):
    sys_root, dev_root = write_tree(tmp_path, gpus, visible)
    return detect(sys_root=sys_root, dev_root=dev_root, environ=environ or {},
                  amdsmi_module=NO_LIBRARY)


@pytest.mark.parametrize(
    ("gpus", "product", "isa", "count", "vram_gib", "cus", "partition"),
    [
        (cards(MI300X, 8), "MI300X", "gfx942", 8, 191.98, 304, "SPX"),
        (cards(MI325X, 8), "MI325X", "gfx942", 8, 256, 304, "SPX"),
        (cards(MI355X, 8), "MI355X", "gfx950", 8, 288, 256, "SPX"),
        (cards(MI210, 4), "MI210", "gfx90a", 4, 64, 104, None),
        (cards(MI250_GCD, 8), "MI250", "gfx90a", 8, 64, 104, None),
        (cards(MI250X_GCD, 8), "MI250X", "gfx90a", 8, 64, 110, None),
    ],
    ids=["mi300x-x8-spx", "mi325x-x8", "mi355x-x8", "mi210-x4", "mi250-4-cards", "mi250x"],
)
def test_whole_gpus_are_identified(tmp_path, gpus, product, isa, count, vram_gib, cus, partition):
    inventory = detect_tree(tmp_path, gpus)
    assert inventory.source == "sysfs"
    assert inventory.device_count == count
    device = inventory.devices[0]
    assert (device.product, device.isa, device.compute_units) == (product, isa, cus)
    assert device.vram_bytes / GIB == pytest.approx(vram_gib, abs=0.01)
    assert device.compute_partition == partition
    assert [d.index for d in inventory.devices] == list(range(count))


def test_mi300x_cpx_pod_given_one_of_64_partitions(tmp_path):
    partitions = cpx_partitions(MI300X, gpus=8, per_gpu=8)
    assert len(partitions) == 64
    inventory = detect_tree(tmp_path, partitions, visible=[17])
    assert inventory.device_count == 1
    device = inventory.devices[0]
    assert device.product == "MI300X"
    assert device.compute_partition == "CPX"
    assert device.compute_units == 38
    assert device.vram_bytes == partitions[17].vram_bytes  # the partition's share, ~24 GiB
    assert device.vram_bytes / GIB == pytest.approx(24.0, abs=0.01)
    assert device.pci_bus_id == "0000:2c:00.1"  # third GPU (bus 0x2c), partition 1 = function 1
    assert device.memory_partition == "NPS1"


def test_partition_mode_inferred_from_xcc_count_without_pci_files(tmp_path):
    dpx = [replace(p, partition=None) for p in cpx_partitions(MI300X, gpus=1, per_gpu=2)]
    inventory = detect_tree(tmp_path, dpx)
    assert {d.compute_partition for d in inventory.devices} == {"DPX"}


def test_pod_that_sees_two_of_eight_gpus(tmp_path):
    inventory = detect_tree(tmp_path, cards(MI300X, 8), visible=[2, 5])
    assert inventory.device_count == 2
    assert [d.render_minor for d in inventory.devices] == [130, 133]
    assert [d.index for d in inventory.devices] == [0, 1]


def test_nodes_the_cgroup_refuses_are_skipped(tmp_path, monkeypatch):
    """Reads of GPUs outside the pod's device cgroup fail with EPERM; they are not ours."""
    sys_root, dev_root = write_tree(tmp_path, cards(MI300X, 4))
    for minor in (130, 131):  # all render nodes exist, but the kernel denies two GPUs' sysfs
        assert (dev_root / "dri" / f"renderD{minor}").exists()
    denied = {str(sys_root / "class/kfd/kfd/topology/nodes" / n) for n in ("4", "5")}
    real_read_text = Path.read_text

    def read_text(path: Path, *args, **kwargs):
        if str(path.parent) in denied:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    inventory = detect(sys_root=sys_root, dev_root=dev_root, environ={}, amdsmi_module=None)
    assert [d.render_minor for d in inventory.devices] == [128, 129]


def test_mixed_products_are_refused_with_counts(tmp_path):
    with pytest.raises(DetectionError) as error:
        detect_tree(tmp_path, cards(MI300X, 4) + cards(MI325X, 4)[:4])
    message = str(error.value)
    assert "4x MI300X (SPX)" in message and "4x MI325X (SPX)" in message
    assert "amd.com/gpu.device-id" in message


def test_visible_devices_narrow_the_list(tmp_path):
    environ = {"ROCR_VISIBLE_DEVICES": "1,3,5,7", "HIP_VISIBLE_DEVICES": "0,1"}
    inventory = detect_tree(tmp_path, cards(MI300X, 8), environ=environ)
    assert [d.render_minor for d in inventory.devices] == [129, 131]


def test_visible_devices_that_disagree_are_an_error(tmp_path):
    with pytest.raises(DetectionError, match="differ"):
        detect_tree(tmp_path, cards(MI300X, 2),
                    environ={"HIP_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "1"})
    with pytest.raises(DetectionError, match="not an index below 2"):
        detect_tree(tmp_path, cards(MI300X, 2), environ={"ROCR_VISIBLE_DEVICES": "GPU-abc"})


def test_env_limits_apply_to_real_gpus(tmp_path):
    inventory = detect_tree(tmp_path, cards(MI300X, 8), environ={"AIM_GPU_COUNT": "4"})
    assert inventory.device_count == 4
    assert any("using 4 of 8" in note for note in inventory.notes)
    with pytest.raises(OverrideError, match="AIM_GPU_COUNT=8 but this pod has only 4"):
        detect_tree(tmp_path / "b", cards(MI300X, 4), environ={"AIM_GPU_COUNT": "8"})
    with pytest.raises(OverrideError, match="AIM_GPU_PRODUCT=MI325X but this pod has MI300X"):
        detect_tree(tmp_path / "c", cards(MI300X, 2), environ={"AIM_GPU_PRODUCT": "MI325X"})


def test_env_override_without_gpus_plans_for_named_product(tmp_path):
    inventory = detect_tree(tmp_path, [], environ={"AIM_GPU_PRODUCT": "mi355x",
                                                  "AIM_GPU_COUNT": "8"})
    assert (inventory.source, inventory.product, inventory.device_count) == ("override",
                                                                            "MI355X", 8)
    one = detect_tree(tmp_path / "b", [], environ={"AIM_GPU_PRODUCT": "MI300X"})
    assert one.device_count == 1
    assert any("AIM_GPU_COUNT not set" in note for note in one.notes)
    with pytest.raises(OverrideError, match="AIM_GPU_PRODUCT is not set"):
        detect_tree(tmp_path / "c", [], environ={"AIM_GPU_COUNT": "2"})
    with pytest.raises(OverrideError, match="unknown GPU product"):
        detect_tree(tmp_path / "d", [], environ={"AIM_GPU_PRODUCT": "H100"})


def test_simulate_wins_and_validates(tmp_path):
    sys_root, dev_root = write_tree(tmp_path, cards(MI210, 4))
    inventory = detect(simulate="MI300X:8", sys_root=sys_root, dev_root=dev_root, environ={})
    assert (inventory.source, inventory.product, inventory.device_count) == ("simulated",
                                                                            "MI300X", 8)
    assert inventory.vram_bytes_per_device == 192 * GIB
    with pytest.raises(OverrideError, match="positive integer"):
        detect(simulate="MI300X:zero", environ={})
    with pytest.raises(OverrideError, match="unknown GPU product"):
        detect(simulate="MI999:1", environ={})


def test_no_gpu_means_cpu(tmp_path):
    inventory = detect_tree(tmp_path, [])
    assert inventory.accelerator == "cpu"
    assert inventory.host.cpu_cores >= 1 and inventory.host.ram_bytes > 0


def test_cgroup_limits_are_read(tmp_path):
    sys_root, dev_root = write_tree(tmp_path, [])
    (sys_root / "fs/cgroup").mkdir(parents=True)
    (sys_root / "fs/cgroup/cpu.max").write_text("150000 100000\n")
    (sys_root / "fs/cgroup/memory.max").write_text(f"{16 * GIB}\n")
    host = detect(sys_root=sys_root, dev_root=dev_root, environ={}, amdsmi_module=None).host
    assert host.memory_limit_bytes == 16 * GIB
    assert host.usable_memory_bytes == min(16 * GIB, host.ram_bytes)
    assert host.cpu_cores <= 2


@pytest.mark.parametrize(
    ("fixture", "product", "count", "vram_mib", "partition"),
    [
        ("static-list-mi300x.json", "MI300X", 2, 196592, "SPX"),
        ("static-gpu-data-mi355x.json", "MI355X", 8, 294896, "SPX"),
        ("static-gpu-data-mi250x.json", "MI250X", 2, 65520, None),
    ],
)
def test_amd_smi_json_in_both_shapes(fixture, product, count, vram_mib, partition):
    inventory = detect(amd_smi_json=AMD_SMI / fixture, environ={})
    assert inventory.source == "amd-smi-json"
    assert (inventory.product, inventory.device_count) == (product, count)
    assert inventory.vram_bytes_per_device == vram_mib * 1024**2
    assert inventory.compute_partition == partition
    # gfx9010 is what some amdsmi versions report for MI200; the product table knows better.
    assert inventory.isa == {"MI250X": "gfx90a", "MI300X": "gfx942", "MI355X": "gfx950"}[product]


def test_amd_smi_json_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cpu_data": []}))
    with pytest.raises(DetectionError, match="without 'gpu_data'"):
        detect(amd_smi_json=bad, environ={})
    bad.write_text(json.dumps([{"asic": {"device_id": "0x1234"}}]))
    with pytest.raises(DetectionError, match="unknown AMD GPU PCI device id 0x1234"):
        detect(amd_smi_json=bad, environ={})


class StandInAmdsmi:
    """The few calls of the amdsmi library the detector makes, answering from a capture."""

    class AmdSmiMemoryType:
        VRAM = "VRAM"

    def __init__(self, capture: dict, fail_init: bool = False) -> None:
        self.gpus = capture["gpu_data"]
        self.fail_init = fail_init
        self.shut_down = False

    def amdsmi_init(self):
        if self.fail_init:
            raise RuntimeError("AMDSMI_STATUS_DRIVER_NOT_LOADED")

    def amdsmi_get_processor_handles(self):
        return list(range(len(self.gpus)))

    def amdsmi_get_gpu_asic_info(self, handle):
        return self.gpus[handle]["asic"]

    def amdsmi_get_gpu_memory_total(self, handle, kind):
        assert kind == "VRAM"
        return self.gpus[handle]["vram"]["size"]["value"] * 1024**2

    def amdsmi_get_gpu_compute_partition(self, handle):
        return self.gpus[handle]["partition"]["compute_partition"]

    def amdsmi_get_gpu_memory_partition(self, handle):
        raise NotImplementedError("not supported on this ASIC")

    def amdsmi_get_gpu_device_bdf(self, handle):
        return self.gpus[handle]["bus"]["bdf"]

    def amdsmi_shut_down(self):
        self.shut_down = True


def test_amdsmi_library_is_the_first_source(tmp_path):
    capture = json.loads((AMD_SMI / "static-gpu-data-mi355x.json").read_text())
    library = StandInAmdsmi(capture)
    sys_root, dev_root = write_tree(tmp_path, cards(MI210, 4))
    inventory = detect(sys_root=sys_root, dev_root=dev_root, environ={}, amdsmi_module=library)
    assert (inventory.source, inventory.product, inventory.device_count) == ("amdsmi",
                                                                            "MI355X", 8)
    assert inventory.devices[3].pci_bus_id == "0000:3c:00.0"
    assert inventory.devices[0].memory_partition is None  # the call raised: optional
    assert library.shut_down


def test_amdsmi_that_fails_to_initialise_falls_back_to_sysfs(tmp_path):
    capture = json.loads((AMD_SMI / "static-gpu-data-mi355x.json").read_text())
    sys_root, dev_root = write_tree(tmp_path, cards(MI210, 4))
    inventory = detect(sys_root=sys_root, dev_root=dev_root, environ={},
                       amdsmi_module=StandInAmdsmi(capture, fail_init=True))
    assert (inventory.source, inventory.product) == ("sysfs", "MI210")


def test_broken_amdsmi_import_is_tolerated(monkeypatch):
    """Outside ROCm images `import amdsmi` raises KeyError, not ImportError."""
    import builtins

    from aim_runtime.hardware import amd_smi

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "amdsmi":
            print("libamd_smi.so not found")  # the real module prints to stdout, then fails
            raise KeyError("LD_LIBRARY_PATH")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert amd_smi.import_amdsmi() is None
