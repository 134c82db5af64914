"""What the runtime knows about each AMD Instinct product, in one table.

Detection, planning and manifest rendering all read this table, so a product is described once.
Sources (docs/gpu-products.md gives each figure's, with links): PCI ids from the AMD node
labeller's `amdgpu.ids` and vLLM's `_ROCM_DEVICE_ID_NAME_MAP`; VRAM, compute units and XCC counts
from ROCm's gpu-arch-specs; FP8/MX support from ROCm precision-support and vLLM's `rocm.py`.

Figures are per *device as the runtime sees it* with no partitioning: one MI250/MI250X GCD is one
device (two per card), one MI300X in SPX mode is one device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aim_runtime.settings import GIB


@dataclass(frozen=True)
class GpuProduct:
    """One Instinct product, per un-partitioned device."""

    name: str
    isa: str
    gfx_target_version: int
    pci_device_ids: tuple[int, ...]
    vram_bytes: int
    compute_units: int
    xcc_count: int
    # Peak HBM bandwidth (TB/s, 10^12 bytes/s) and peak dense matrix TFLOPS by compute precision
    # (bf16 = bf16/fp16, fp8, mxfp4); None where no published figure exists (MI308X).
    hbm_tb_per_s: float | None = None
    peak_dense_tflops: tuple[tuple[str, float], ...] = ()

    @property
    def vram_gib(self) -> float:
        return self.vram_bytes / GIB

    @property
    def hbm_bytes_per_s(self) -> float | None:
        return self.hbm_tb_per_s * 1e12 if self.hbm_tb_per_s is not None else None

    def peak_flops(self, precision: str) -> float | None:
        """Peak dense FLOP/s of matrix math in `precision` (bf16, fp8, mxfp4), None if none."""
        tflops = dict(self.peak_dense_tflops).get(precision)
        return tflops * 1e12 if tflops is not None else None

    @property
    def node_label_values(self) -> tuple[str, ...]:
        """Every value the AMD node labeller may give `amd.com/gpu.device-id` on a node of this
        product: its PCI device ids (physical, virtual and hybrid functions) in lower-case hex."""
        return tuple(f"{device_id:04x}" for device_id in self.pci_device_ids)


PRODUCTS: dict[str, GpuProduct] = {
    p.name: p
    for p in (
        GpuProduct("MI210", "gfx90a", 90010, (0x740F,), 64 * GIB, 104, 1,
                   hbm_tb_per_s=1.6,
                   peak_dense_tflops=(("bf16", 181.0),)),
        # 0x740C is shared by MI250 and MI250X; compute units per GCD tell them apart (104 vs 110).
        # Bandwidth and TFLOPS are per GCD (one device): half of the OAM's.
        GpuProduct("MI250", "gfx90a", 90010, (0x740C,), 64 * GIB, 104, 1,
                   hbm_tb_per_s=1.6,
                   peak_dense_tflops=(("bf16", 181.0),)),
        GpuProduct("MI250X", "gfx90a", 90010, (0x7408, 0x740C), 64 * GIB, 110, 1,
                   hbm_tb_per_s=1.6,
                   peak_dense_tflops=(("bf16", 191.5),)),
        GpuProduct("MI300A", "gfx942", 90402, (0x74A0,), 128 * GIB, 228, 6,
                   hbm_tb_per_s=5.3,
                   peak_dense_tflops=(("bf16", 980.6), ("fp8", 1961.2))),
        GpuProduct("MI300X", "gfx942", 90402, (0x74A1, 0x74B5, 0x74A9, 0x74BD), 192 * GIB, 304, 8,
                   hbm_tb_per_s=5.3,
                   peak_dense_tflops=(("bf16", 1307.4), ("fp8", 2614.9))),
        GpuProduct("MI308X", "gfx942", 90402, (0x74A2, 0x74B6, 0x74A8, 0x74BC), 192 * GIB, 80, 4),
        GpuProduct("MI325X", "gfx942", 90402, (0x74A5, 0x74B9), 256 * GIB, 304, 8,
                   hbm_tb_per_s=6.0,
                   peak_dense_tflops=(("bf16", 1307.4), ("fp8", 2614.9))),
        GpuProduct("MI350X", "gfx950", 90500, (0x75A0, 0x75B0), 288 * GIB, 256, 8,
                   hbm_tb_per_s=8.0,
                   peak_dense_tflops=(("bf16", 2306.9), ("fp8", 4613.7), ("mxfp4", 9227.5))),
        GpuProduct("MI355X", "gfx950", 90500, (0x75A3, 0x75B3), 288 * GIB, 256, 8,
                   hbm_tb_per_s=8.0,
                   peak_dense_tflops=(("bf16", 2516.6), ("fp8", 5033.2), ("mxfp4", 10066.3))),
    )
}

# Compute partition modes between SPX (whole chip) and CPX (one XCC each), by partitions per chip.
PARTITION_BY_XCC_SHARE = {2: "DPX", 3: "TPX", 4: "QPX"}


# Matrix-core FP8 exists from MI300 (gfx942; FNUZ encoding) on; MX formats from MI350 (gfx950).
FP8_ISAS = ("gfx942", "gfx950")

# How vLLM 0.32-0.34 runs MXFP4 weights (gpt-oss and other OCP-MX checkpoints), by ISA (its MXFP4
# MoE oracle, model_executor/layers/fused_moe/oracle/mxfp4.py, and the OpenAI Triton MoE kernels'
# device gate, fused_moe/experts/gpt_oss_triton_kernels_moe.py). gfx950 has MX matrix cores
# ("native"); vLLM's default there is still W4A16 (AITER's CK kernel: MXFP4 weights, bf16
# arithmetic), its native W4A4 kernel only when MXFP4 activations are requested. gfx942 and gfx90a
# have none ("weight-only"): W4A16 through AITER's Triton kernel (gfx942) or the OpenAI Triton MoE
# kernels (gfx90a, verified there by vLLM). Either way the weights take MXFP4's memory.
Mxfp4Path = Literal["native", "weight-only"]
MXFP4_PATHS: dict[str, Mxfp4Path] = {"gfx950": "native", "gfx942": "weight-only",
                                     "gfx90a": "weight-only"}


def isa_supports_fp8(isa: str | None) -> bool:
    """FP8 weights/KV cache run natively (MI200's gfx90a has no FP8 matrix cores)."""
    return isa in FP8_ISAS


def mxfp4_path(isa: str | None) -> Mxfp4Path | None:
    """How vLLM runs MXFP4 weights on this ISA, or None where it has no kernel."""
    return MXFP4_PATHS.get(isa or "")


def lookup_product(name: str) -> GpuProduct:
    """Product by name, case-insensitive, tolerating an `AMD Instinct ` prefix."""
    key = name.strip().upper().removeprefix("AMD INSTINCT ").replace("AMD_INSTINCT_", "").strip()
    if key in PRODUCTS:
        return PRODUCTS[key]
    raise KeyError(f"unknown GPU product {name!r}; known: {', '.join(PRODUCTS)}")


def product_for_device(pci_device_id: int, compute_units: int | None = None) -> GpuProduct:
    """Identify the product from its PCI device id; MI250 vs MI250X needs the CU count of a GCD."""
    matches = [p for p in PRODUCTS.values() if pci_device_id in p.pci_device_ids]
    if not matches:
        raise KeyError(f"unknown AMD GPU PCI device id 0x{pci_device_id:04x}")
    if len(matches) == 1 or compute_units is None:
        return matches[0]
    for product in matches:
        if product.compute_units == compute_units:
            return product
    return matches[0]


def isa_from_gfx_target_version(version: int) -> str:
    """KFD `gfx_target_version` (e.g. 90010) to ISA name (gfx90a), as libhsakmt decodes it."""
    major, minor, step = (version // 10000) % 100, (version // 100) % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def partition_mode(product: GpuProduct, xcc_in_partition: int) -> str:
    """Compute partition name (SPX/DPX/QPX/CPX) from how many XCCs one visible device holds."""
    if xcc_in_partition <= 0 or product.xcc_count % xcc_in_partition:
        return "unknown"
    share = product.xcc_count // xcc_in_partition
    if share == 1:
        return "SPX"
    if share == product.xcc_count:
        return "CPX"
    return PARTITION_BY_XCC_SHARE.get(share, f"{share}-way")
