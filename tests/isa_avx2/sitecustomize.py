"""Force every Python process started with this folder on PYTHONPATH onto AVX2 kernels, as on a
CPU without AVX-512 (`make test-avx2`): torch's CPU capability probes, which vLLM's CPU platform
reads to pick its kernel library (_C_AVX2, _C_AVX512 or _C) and its attention ISA, answer no
for AVX-512, AVX-512 BF16 and AMX. The Makefile also sets ATEN_CPU_CAPABILITY=avx2 (torch's own
kernels) and ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's). torch is patched when something imports it,
not before, so processes that never use torch pay nothing."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

PROBES = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
          "_is_amx_tile_supported", "_is_amx_fp16_supported")


def _patch(module: object) -> None:
    for probe in PROBES:
        if hasattr(module, probe):
            setattr(module, probe, lambda: False)


class _PatchTorchCpu(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name != "torch.cpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_and_patch(module: object) -> None:
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchTorchCpu())
