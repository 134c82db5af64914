"""ROCm settings derived by rule for every plan: one table of rules, one function that applies it.

Each row of `RULES` is data: the condition it applies on (ISAs, model kinds the model must have or
must not have, weight precisions, tensor-parallel sizes, devices per replica, objective, head
dimensions, block size), what it sets (environment variables and vLLM engine arguments), one line
saying why, and its source. `derive()` applies every row whose condition holds, in table order.
Curated recipes go through the same rules: a recipe's own `env` and `engine_args` win over what a
rule sets, the user's flags win over both, and a recipe may skip rules by id (`skip_rules`). Rules
marked `needs_aiter` are dropped when the recipe turns AITER off.

Two rows compute their value from the plan's numbers: `block-budget` bounds `max_num_seqs` by the
KV-cache blocks the planner's memory estimate leaves (and, for hybrid Mamba/linear-attention
models, by the blocks of that pool that hold their per-sequence state: vLLM refuses to start when
`max_num_seqs` exceeds them), and `host-numa-balancing` warns when the node's kernel balances NUMA
memory automatically.

Every `VLLM_*` name a rule or recipe sets exists in the installed vLLM's environment registry
(`vllm.envs`) and every engine argument parses with vLLM's `vllm serve` parser (tests, and
`aim-runtime recipes validate`). Variables that other libraries read are listed in `EXTERNAL_ENV`
with their owner.

The table targets the supported window, vLLM 0.32-0.34. Every vLLM fact it relies on was read in
the source of 0.32 (the CPU build installed for development) and again in the Python files of the
0.33 and 0.34 wheels (ROCm only); the sources say "vLLM 0.32-0.34" or name the releases a fact
holds in. In all three the attention backend is the
`--attention-backend` engine argument (`VLLM_ATTENTION_BACKEND` is not in the registry), and two
variables AMD's guide still names, `VLLM_V1_USE_PREFILL_DECODE_ATTENTION` and
`VLLM_ROCM_CUSTOM_PAGED_ATTN`, are gone from it, with no `--attention-config` field in their place;
no rule sets them. Rows that select ROCM_AITER_UNIFIED_ATTN also state `--block-size 64`, the
block size vLLM gives that backend when none is set (`get_preferred_block_size`), so that the
plan's KV-cache blocks and a hybrid model's state page are the ones vLLM will use; where no rule
sets a block size, the plan states the 16 its memory estimate assumed (`plan._block_size`): vLLM
0.34 moved its own default to 64 for every ROCm backend but ROCM_ATTN (vllm/config/cache.py).
Only TRITON_ATTN has multimodal prefix attention (0.32-0.34), so no row picks an attention
backend for such models: vLLM picks the one that has it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from aim_runtime import settings
from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.planner.memory import Layout, MemoryEstimate, compute_dtype_bytes

ModelKind = Literal["mla", "moe", "sliding_window", "hybrid", "attention_sinks",
                    "multimodal_prefix"]
MODEL_KINDS: tuple[ModelKind, ...] = ("mla", "moe", "sliding_window", "hybrid",
                                      "attention_sinks", "multimodal_prefix")
KIND_NAMES: dict[ModelKind, str] = {
    "mla": "MLA", "moe": "MoE", "sliding_window": "sliding window",
    "hybrid": "hybrid (Mamba / linear attention)", "attention_sinks": "attention sinks",
    "multimodal_prefix": "multimodal prefix attention"}
# AITER is built for MI300 and MI350 series only (vLLM 0.32-0.34 `is_aiter_found_and_supported`:
# CDNA 3 or later).
AITER_ISAS = ("gfx942", "gfx950")
GPU_ISAS = ("gfx90a", "gfx942", "gfx950")
# Head sizes vLLM 0.32-0.34's ROCM_AITER_FA backend supports (`get_supported_head_sizes`).
AITER_FA_HEAD_DIMS = (64, 128, 256)
# Its kernels take 16- and 32-token blocks (`get_supported_kernel_block_sizes`); vLLM splits any
# cache block that is a multiple of 16 into them (`supports_block_size`).
AITER_FA_BLOCK_MULTIPLE = 16
# ROCM_AITER_UNIFIED_ATTN: head sizes from 32 (`supports_head_size`), and the block size vLLM
# 0.32-0.34 gives it when none is set (`get_preferred_block_size`).
AITER_UNIFIED_MIN_HEAD_DIM = 32
AITER_UNIFIED_BLOCK_SIZE = 64

AMD_GUIDE = ("AMD, 'vLLM V1 performance optimization' (ROCm docs, how-to/rocm-for-ai/"
             "inference-optimization/vllm-optimization)")
SOURCES = {
    "amd-guide-env": f"{AMD_GUIDE}: performance environment variables",
    "amd-guide-aiter": f"{AMD_GUIDE}: AITER switches",
    "amd-guide-mla": f"{AMD_GUIDE}: AITER MLA requirements (--block-size 1)",
    "amd-guide-moe": f"{AMD_GUIDE}: AITER MoE requirements",
    "amd-guide-attention": f"{AMD_GUIDE}: attention backend selection (gpt-oss: AITER unified "
                           "attention)",
    "amd-guide-quick-reduce": f"{AMD_GUIDE}: Quick Reduce (TP 4-8, throughput)",
    "amd-guide-awq": f"{AMD_GUIDE}: AWQ (VLLM_USE_TRITON_AWQ=1 on ROCm)",
    "amd-docker-gfx90a": ("AMD, vLLM inference docker page (ROCm docs): AITER is only supported "
                          "on gfx942 and gfx950; set VLLM_ROCM_USE_AITER=0 elsewhere"),
    "vllm-56945": ("vllm-project/vllm#56945: the ROCm image never sets VLLM_ROCM_USE_AITER; "
                   "1.7x (short prompts) to 3.7x (12k) decode speed left unused on "
                   "MI300X/MI325X/MI355X"),
    "vllm-46596": ("vllm-project/vllm#46596: vLLM picks ROCM_ATTN over ROCM_AITER_FA even with "
                   "AITER on; >80% geomean on MI355X from ROCM_AITER_FA; the order is the same "
                   "in vLLM 0.32-0.34 (vllm/platforms/rocm.py `_get_backend_priorities`: "
                   "ROCM_ATTN, ROCM_AITER_FA, ROCM_AITER_UNIFIED_ATTN, TRITON_ATTN)"),
    "vllm-attention": ("vLLM 0.32-0.34 vllm/v1/attention/backends: ROCM_AITER_FA head sizes "
                       "64/128/256, 16- and 32-token kernel blocks; ROCM_AITER_UNIFIED_ATTN head "
                       "size >= 32, attention sinks, 64-token blocks unless set "
                       "(`get_preferred_block_size`)"),
    "vllm-mm-prefix": ("vLLM 0.32-0.34 vllm/v1/attention/backends `supports_mm_prefix`: False "
                       "for ROCM_ATTN, ROCM_AITER_FA and ROCM_AITER_UNIFIED_ATTN, True for "
                       "TRITON_ATTN; an --attention-backend without it fails at start-up"),
    "vllm-aiter-mla": ("vLLM 0.32-0.34 rocm_aiter_mla.py: any block size (kernel blocks "
                       "`MultipleOf(1)`; the decode kernel pages by one token); "
                       "vllm/platforms/rocm.py lists ROCM_AITER_MLA first when AITER MLA is on"),
    "vllm-moe-oracle": ("vLLM 0.32-0.34 fused-MoE oracles (model_executor/layers/fused_moe/"
                        "oracle): `--moe-backend aiter` is AITER's fused MoE for unquantized and "
                        "FP8 experts; for MXFP4 (mxfp4.py) it and the default try AITER's CK "
                        "W4A16 kernel (AITER_MXFP4_BF16, gfx950 only), then AITER's Triton W4A16 "
                        "kernel (AITER_TRITON_MXFP4_BF16, gfx942/gfx950; not with data "
                        "parallelism, nor in 0.32 with expert parallelism, which 0.33-0.34 allow "
                        "unless data, context or sequence parallelism or EPLB come with it); the "
                        "default then falls back to vLLM's Triton kernels"),
    "vllm-fp8": ("vLLM 0.32-0.34 vllm/platforms/rocm.py: `is_fp8_fnuz()` on gfx94x "
                 "(float8_e4m3fnuz), OCP float8_e4m3fn on gfx95x; "
                 "`normalize_e4m3fn_to_e4m3fnuz` doubles the scales; ROCm precision-support page"),
    "vllm-quick-reduce": ("vLLM 0.32-0.34 quick_all_reduce.py: gfx94x/gfx95x, TP 2/4/8, "
                          "`VLLM_ROCM_QUICK_REDUCE_QUANTIZATION` FP, INT8, INT6, INT4, INT3 or "
                          "NONE"),
    "vllm-awq": ("vLLM 0.32-0.34 `RocmPlatform.verify_quantization` sets VLLM_USE_TRITON_AWQ=1 "
                 "for AWQ itself; the rule makes that visible in the plan"),
    "vllm-mamba-budget": ("vllm-project/vllm#49064 and #55148: the engine refuses to start when "
                          "max_num_seqs exceeds the Mamba cache blocks (one per decode "
                          "sequence); #56945 on a 192 GB card; vLLM 0.32-0.34 "
                          "`get_kv_cache_config_from_groups` (vllm/v1/core/kv_cache_utils.py, "
                          "kv_cache_planning.py from 0.33) and vllm/platforms/interface.py "
                          "`_align_hybrid_block_size`"),
    "amd-numa": ("AMD Instinct MI300X system optimization (ROCm docs): disable NUMA "
                 "auto-balancing (kernel.numa_balancing=0)"),
}
# Variables rules set that vLLM does not read itself (so they are not in vllm.envs), and who does.
EXTERNAL_ENV = {
    "TORCH_BLAS_PREFER_HIPBLASLT": "PyTorch (ATen BLAS backend selection on ROCm)",
    "NCCL_MIN_NCHANNELS": "RCCL (minimum number of channels)",
}


@dataclass(frozen=True)
class Rule:
    """One row: when it applies, what it sets, why, and where that comes from."""

    id: str
    why: str
    source: str
    isas: tuple[str, ...]
    kinds: tuple[ModelKind, ...] = ()  # the model has every one of these
    not_kinds: tuple[ModelKind, ...] = ()  # and none of these
    precisions: tuple[str, ...] = ()  # weight precision is one of these (empty: any)
    quantization: tuple[str, ...] = ()  # checkpoint/on-load quantization method one of these
    kv_fp8: bool | None = None  # the KV cache is (True) or is not (False) FP8
    tp: tuple[int, ...] = ()  # tensor-parallel size is one of these
    min_devices_per_replica: int = 1
    objective: str | None = None
    head_dims: tuple[int, ...] = ()  # head dimension is one of these
    not_head_dims: tuple[int, ...] = ()  # head dimension is none of these
    min_head_dim: int = 0  # head dimension is at least this
    block_sizes: tuple[int | None, ...] = ()  # the block size set by user/recipe is one of these
    block_multiple: int | None = None  # that block size is unset or a multiple of this
    needs_aiter: bool = False  # dropped when the final environment turns AITER off
    env: Mapping[str, str] = field(default_factory=dict)
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    compute: Literal["block_budget", "numa"] | None = None

    def condition(self) -> str:
        """The condition, as the docs' table shows it (docs/planning.md)."""
        parts = [" or ".join(self.isas)]
        if self.kinds:
            parts.append(" and ".join(KIND_NAMES[k] for k in self.kinds))
        if self.not_kinds:
            parts.append("not " + ", ".join(KIND_NAMES[k] for k in self.not_kinds))
        if self.precisions:
            parts.append(f"weights {' or '.join(self.precisions)}")
        if self.quantization:
            parts.append(f"quantization {' or '.join(self.quantization)}")
        if self.kv_fp8 is not None:
            parts.append("FP8 KV cache" if self.kv_fp8 else "16-bit KV cache")
        if self.tp:
            parts.append(f"TP {' or '.join(map(str, self.tp))}")
        if self.min_devices_per_replica > 1:
            parts.append(f">= {self.min_devices_per_replica} GPUs per replica")
        if self.objective:
            parts.append(f"objective {self.objective}")
        if self.head_dims:
            parts.append(f"head dim {' or '.join(map(str, self.head_dims))}")
        if self.not_head_dims:
            parts.append(f"head dim not {' or '.join(map(str, self.not_head_dims))}")
        if self.min_head_dim:
            parts.append(f"head dim >= {self.min_head_dim}")
        if self.block_sizes:
            shown = ["default" if b is None else str(b) for b in self.block_sizes]
            parts.append(f"block size {' or '.join(shown)}")
        if self.block_multiple:
            parts.append(f"block size default or a multiple of {self.block_multiple}")
        return "; ".join(parts)

    def settings(self) -> str:
        """What it sets, as the docs' table shows it."""
        parts = [f"`{k}={v}`" for k, v in self.env.items()]
        parts += [f"`{settings.flag_for(k)} {v}`" for k, v in self.engine_args.items()]
        if self.compute == "block_budget":
            parts.append("`--max-num-seqs` <= blocks of the KV (and Mamba state) pool")
        elif self.compute == "numa":
            parts.append("warning")
        return ", ".join(parts) or "note"


RULES: tuple[Rule, ...] = (
    Rule("hipblaslt", "prefer hipBLASLt over hipBLAS for GEMMs", SOURCES["amd-guide-env"],
         AITER_ISAS, env={"TORCH_BLAS_PREFER_HIPBLASLT": "1"}),
    Rule("rccl-channels", "more RCCL channels for collectives across the replica's GPUs",
         SOURCES["amd-guide-env"], ("gfx942",), min_devices_per_replica=2,
         env={"NCCL_MIN_NCHANNELS": "112"}),
    Rule("aiter", "AITER's fused kernels (linear, MoE, RMSNorm, MLA/MHA); off by default in "
         "vLLM and in its ROCm image", f"{SOURCES['amd-guide-aiter']}; {SOURCES['vllm-56945']}",
         AITER_ISAS, env={"VLLM_ROCM_USE_AITER": "1"}),
    Rule("no-aiter", "no AITER build for MI200 (gfx90a): keep it off whatever the image sets",
         SOURCES["amd-docker-gfx90a"], ("gfx90a",), env={"VLLM_ROCM_USE_AITER": "0"}),
    Rule("attention-aiter-fa", "AITER flash attention for MHA/GQA models; vLLM 0.32-0.34 would "
         "pick ROCM_ATTN first", f"{SOURCES['vllm-46596']}; {SOURCES['vllm-attention']}; "
         f"{SOURCES['amd-guide-attention']}",
         AITER_ISAS, not_kinds=("mla", "hybrid", "attention_sinks", "multimodal_prefix"),
         head_dims=AITER_FA_HEAD_DIMS, block_multiple=AITER_FA_BLOCK_MULTIPLE, needs_aiter=True,
         engine_args={"attention_backend": "ROCM_AITER_FA"}),
    Rule("attention-aiter-unified-sinks", "attention sinks (gpt-oss): AITER unified attention "
         "as AMD's guide prescribes, with the guide's two variables (in vLLM 0.32-0.34 the "
         "engine argument alone selects the backend: VLLM_ROCM_USE_AITER_MHA=0 only keeps "
         "ROCM_AITER_FA out of vLLM's own choice, and no selection reads "
         "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION); its 64-token blocks stated",
         f"{SOURCES['amd-guide-attention']}; {SOURCES['vllm-attention']}", AITER_ISAS,
         kinds=("attention_sinks",), not_kinds=("multimodal_prefix",), needs_aiter=True,
         env={"VLLM_ROCM_USE_AITER_MHA": "0", "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION": "1"},
         engine_args={"attention_backend": "ROCM_AITER_UNIFIED_ATTN",
                      "block_size": AITER_UNIFIED_BLOCK_SIZE}),
    Rule("attention-aiter-unified-hybrid", "hybrid Mamba/linear-attention models: AITER unified "
         "attention for the attention layers; its 64-token blocks stated (vLLM grows the "
         "attention block in steps of them until a page holds a layer's state)",
         f"{SOURCES['vllm-56945']}; {SOURCES['vllm-attention']}", AITER_ISAS,
         kinds=("hybrid",), not_kinds=("attention_sinks", "multimodal_prefix"),
         needs_aiter=True,
         engine_args={"attention_backend": "ROCM_AITER_UNIFIED_ATTN",
                      "block_size": AITER_UNIFIED_BLOCK_SIZE}),
    Rule("attention-multimodal-prefix", "bidirectional attention over image tokens (Gemma 3): "
         "no AITER attention backend has it in vLLM 0.32-0.34, so the attention backend is "
         "left to vLLM, which picks the one that has it (TRITON_ATTN)",
         f"{SOURCES['vllm-mm-prefix']}; {SOURCES['vllm-46596']}", AITER_ISAS,
         kinds=("multimodal_prefix",), not_kinds=("mla",), needs_aiter=True),
    Rule("attention-aiter-unified-head-dim", "head sizes ROCM_AITER_FA lacks: AITER unified "
         "attention (head size >= 32); its 64-token blocks stated", SOURCES["vllm-attention"],
         AITER_ISAS, not_kinds=("mla", "hybrid", "attention_sinks", "multimodal_prefix"),
         not_head_dims=AITER_FA_HEAD_DIMS, min_head_dim=AITER_UNIFIED_MIN_HEAD_DIM,
         needs_aiter=True, engine_args={"attention_backend": "ROCM_AITER_UNIFIED_ATTN",
                                        "block_size": AITER_UNIFIED_BLOCK_SIZE}),
    Rule("mla-block-size", "AITER MLA (vLLM picks ROCM_AITER_MLA first when AITER is on) with "
         "--block-size 1 as AMD's guide requires; vLLM 0.32-0.34's AITER MLA also takes larger "
         "blocks (its decode kernel pages by one token either way)",
         f"{SOURCES['amd-guide-mla']}; {SOURCES['vllm-aiter-mla']}", AITER_ISAS,
         kinds=("mla",), block_sizes=(None,), needs_aiter=True, engine_args={"block_size": 1}),
    Rule("moe-aiter", "AITER fused MoE for 16-bit and FP8 experts",
         f"{SOURCES['amd-guide-moe']}; {SOURCES['vllm-moe-oracle']}", AITER_ISAS,
         kinds=("moe",), precisions=("bf16", "fp16", "fp8"), needs_aiter=True,
         engine_args={"moe_backend": "aiter"}),
    Rule("moe-aiter-mxfp4", "AITER's MXFP4 MoE on gfx950: its CK W4A16 kernel keeps the "
         "weights in MXFP4 and multiplies in bf16 (vLLM's default there too; the argument "
         "keeps it to AITER's kernels where the default may fall back to vLLM's Triton ones)",
         SOURCES["vllm-moe-oracle"], ("gfx950",), kinds=("moe",), precisions=("mxfp4",),
         needs_aiter=True,
         engine_args={"moe_backend": "aiter"}),
    Rule("moe-mxfp4-gfx942", "MXFP4 experts on gfx942: AITER's CK MXFP4 kernel is gfx950-only; "
         "with AITER on, vLLM's default is AITER's Triton W4A16 kernel (moe_gemm_a16w4), and "
         "its own Triton kernels under data parallelism (and expert parallelism, as the "
         "oracle says per release), so the moe backend is left to vLLM",
         SOURCES["vllm-moe-oracle"], ("gfx942",), kinds=("moe",), precisions=("mxfp4",)),
    Rule("quick-reduce", "Quick Reduce with INT8 quantization for the large all-reduces of TP "
         "4/8 under load (INT8 is the least lossy quantized level; validate quality)",
         f"{SOURCES['amd-guide-quick-reduce']}; {SOURCES['vllm-quick-reduce']}", AITER_ISAS,
         tp=(4, 8), objective="throughput", env={"VLLM_ROCM_QUICK_REDUCE_QUANTIZATION": "INT8"}),
    Rule("awq-triton", "AWQ on ROCm runs on vLLM's Triton AWQ kernels",
         f"{SOURCES['amd-guide-awq']}; {SOURCES['vllm-awq']}", GPU_ISAS,
         quantization=("awq", "awq_marlin"), env={"VLLM_USE_TRITON_AWQ": "1"}),
    Rule("fp8-fnuz", "FP8 weights on gfx942 are e4m3fnuz: vLLM converts OCP e4m3fn checkpoints "
         "on load (scales doubled)", SOURCES["vllm-fp8"], ("gfx942",), precisions=("fp8",)),
    Rule("fp8-fnuz-kv", "an FP8 KV cache on gfx942 is stored as e4m3fnuz", SOURCES["vllm-fp8"],
         ("gfx942",), kv_fp8=True),
    Rule("fp8-ocp", "FP8 on gfx950 is OCP e4m3fn, as checkpoints store it: no conversion",
         SOURCES["vllm-fp8"], ("gfx950",), precisions=("fp8",)),
    Rule("fp8-ocp-kv", "an FP8 KV cache on gfx950 is stored as OCP e4m3fn", SOURCES["vllm-fp8"],
         ("gfx950",), kv_fp8=True),
    Rule("block-budget", "every running sequence holds at least one KV-cache block, and a "
         "hybrid model one block of its state pool: max_num_seqs within the blocks the memory "
         "estimate leaves", SOURCES["vllm-mamba-budget"], GPU_ISAS, compute="block_budget"),
    Rule("host-numa-balancing", "the node balances NUMA memory automatically, which AMD "
         "recommends turning off on Instinct hosts (a node setting; a pod cannot change it)",
         SOURCES["amd-numa"], GPU_ISAS, compute="numa"),
)
RULE_IDS = tuple(rule.id for rule in RULES)


class AppliedRule(BaseModel):
    """A rule that applied to a plan, what it set, and what recipe or user set otherwise."""

    model_config = ConfigDict(frozen=True)

    id: str
    sets: dict[str, str]  # env NAME or --engine-arg -> value
    overridden: dict[str, str]  # what the recipe or the user set instead
    why: str
    source: str


@dataclass(frozen=True)
class BlockBudget:
    """The engine's block budget on one device, from the planner's memory estimate."""

    kv_blocks: int
    state_blocks: int | None  # hybrid models: blocks of the pool that holds per-sequence state
    state_bytes_per_sequence: int | None = None

    @property
    def limit(self) -> int:
        return max(1, min(b for b in (self.kv_blocks, self.state_blocks) if b is not None))


@dataclass(frozen=True)
class RuleInput:
    """What the rules look at."""

    isa: str | None
    kinds: frozenset[ModelKind]
    precision: str
    quantization: str | None
    kv_cache_dtype: str
    tensor_parallel_size: int
    devices_per_replica: int
    objective: str
    head_dim: int
    block_size: int | None = None  # set by the user or the recipe
    max_num_seqs: int | None = None  # what the engine would run with
    max_num_seqs_pinned: bool = False  # set by the user's flag
    budget: BlockBudget | None = None
    host_numa_balancing: bool | None = None  # None: unknown (simulated, unreadable)
    recipe_env: Mapping[str, str] = field(default_factory=dict)
    recipe_engine_args: Mapping[str, Any] = field(default_factory=dict)
    user_engine_args: Mapping[str, Any] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RocmSettings:
    """The rules' environment and engine args (recipe ones merged in), and the rules applied."""

    env: dict[str, str]
    engine_args: dict[str, Any]
    applied: tuple[AppliedRule, ...]
    notes: tuple[str, ...]


def model_kinds(facts: ModelFacts) -> frozenset[ModelKind]:
    """What kind of model this is, as the rules distinguish models."""
    kinds: set[ModelKind] = set()
    if facts.mla is not None:
        kinds.add("mla")
    if facts.moe is not None:
        kinds.add("moe")
    if facts.sliding_window:
        kinds.add("sliding_window")
    if facts.hybrid is not None:
        kinds.add("hybrid")
    if facts.attention_sinks:
        kinds.add("attention_sinks")
    if facts.multimodal_prefix:
        kinds.add("multimodal_prefix")
    return frozenset(kinds)


def matches(rule: Rule, given: RuleInput) -> bool:
    """Whether a rule's condition holds (computed rules also need their numbers)."""
    checks = (
        given.isa in rule.isas,
        all(k in given.kinds for k in rule.kinds),
        not any(k in given.kinds for k in rule.not_kinds),
        not rule.precisions or given.precision in rule.precisions,
        not rule.quantization or given.quantization in rule.quantization,
        rule.kv_fp8 is None or given.kv_cache_dtype.startswith("fp8") == rule.kv_fp8,
        not rule.tp or given.tensor_parallel_size in rule.tp,
        given.devices_per_replica >= rule.min_devices_per_replica,
        rule.objective is None or given.objective == rule.objective,
        not rule.head_dims or given.head_dim in rule.head_dims,
        given.head_dim not in rule.not_head_dims,
        given.head_dim >= rule.min_head_dim,
        not rule.block_sizes or given.block_size in rule.block_sizes,
        not rule.block_multiple or given.block_size is None
        or given.block_size % rule.block_multiple == 0,
    )
    return all(checks)


def derive(given: RuleInput) -> RocmSettings:
    """Apply every matching rule in table order; the recipe's env and engine args, then the
    user's engine args, win over what rules set."""
    env: dict[str, str] = {}
    args: dict[str, Any] = {}
    late: dict[str, Any] = {}
    applied: list[AppliedRule] = []
    notes: list[str] = []
    final_aiter = given.recipe_env.get("VLLM_ROCM_USE_AITER")
    for rule in RULES:
        if rule.id in given.skip or not matches(rule, given):
            continue
        rule_env, rule_args, note = dict(rule.env), dict(rule.engine_args), None
        if rule.compute == "block_budget":
            rule_args, note = _block_budget(given)
            if not rule_args and note is None:
                continue
        elif rule.compute == "numa":
            if not given.host_numa_balancing:
                continue
            note = ("host: kernel.numa_balancing is on; AMD recommends 0 on Instinct nodes "
                    "(`sysctl kernel.numa_balancing=0` on the node, not in the pod)")
        aiter_on = env.get("VLLM_ROCM_USE_AITER", "0") if final_aiter is None else final_aiter
        if rule.needs_aiter and aiter_on != "1":
            continue
        if note:
            notes.append(note)
        env.update(rule_env)
        (late if rule.compute else args).update(rule_args)
        applied.append(_applied(rule, rule_env, rule_args, given))
    env.update(given.recipe_env)
    args.update(given.recipe_engine_args)
    args.update(late)  # the block budget bounds the recipe's max_num_seqs too
    return RocmSettings(env=env, engine_args=args, applied=tuple(applied), notes=tuple(notes))


def _applied(rule: Rule, env: dict[str, str], args: dict[str, Any],
             given: RuleInput) -> AppliedRule:
    sets = {**env, **{settings.flag_for(k): str(v) for k, v in args.items()}}
    overridden = {k: v for k, v in given.recipe_env.items() if k in env and v != env[k]}
    origins = (given.user_engine_args,) if rule.compute else (
        given.recipe_engine_args, given.user_engine_args)
    for origin in origins:
        overridden.update({settings.flag_for(k): str(v) for k, v in origin.items()
                           if k in args and v != args[k]})
    return AppliedRule(id=rule.id, sets=sets, overridden=overridden, why=rule.why,
                       source=rule.source)


def _block_budget(given: RuleInput) -> tuple[dict[str, Any], str | None]:
    budget, seqs = given.budget, given.max_num_seqs
    if budget is None or seqs is None or seqs <= budget.limit:
        return {}, None
    kind = ("blocks of its state pool" if budget.state_blocks is not None
            and budget.state_blocks <= budget.kv_blocks else "KV-cache blocks")
    if given.max_num_seqs_pinned:
        return {}, (f"--max-num-seqs {seqs} exceeds the {budget.limit} {kind} the memory "
                    "estimate leaves per device; vLLM may refuse to start (lower it)")
    return {"max_num_seqs": budget.limit}, (
        f"max_num_seqs {seqs} lowered to {budget.limit}: the {kind} the memory estimate leaves "
        "per device (one per running sequence)")


# --- the block budget, from the planner's memory estimate ----------------------------------------

# The smallest kernel block of the ROCm attention backends (ROCM_ATTN, ROCM_AITER_FA,
# ROCM_AITER_UNIFIED_ATTN, TRITON_ATTN): 16 tokens; MLA: vLLM aligns hybrid models to 128.
STATE_BLOCK_ALIGNMENT = 16
MLA_STATE_BLOCK_ALIGNMENT = 128


def block_budget(facts: ModelFacts, memory: MemoryEstimate, layout: Layout,
                 dtype: str) -> BlockBudget:
    """KV-cache blocks per device, and for hybrid models the blocks of the pool that holds their
    per-sequence state, the way vLLM 0.32-0.34 lays that pool out (vllm/platforms/interface.py
    `_align_hybrid_block_size`, vllm/v1/core/kv_cache_utils.py
    `get_kv_cache_config_from_groups`): one page size for every layer, the attention block grown
    in steps of the block size the attention backend starts from (at least its smallest kernel
    block, 16 tokens; 64 for ROCM_AITER_UNIFIED_ATTN, which the rules state as `--block-size`;
    128 for MLA) until its page holds a layer's state, layers grouped by kind (as many per group
    as the smaller kind has, or as the larger when that is under 1.5 times the smaller),
    `blocks = budget // (page x layers per group)`. Each running sequence needs one."""
    kv_blocks = memory.kv_capacity_tokens // memory.block_size
    hybrid = facts.hybrid
    if hybrid is None or hybrid.state_elements_per_layer is None:
        return BlockBudget(kv_blocks=kv_blocks, state_blocks=None)
    state_bytes = math.ceil(hybrid.state_elements_per_layer / layout.tp) * \
        compute_dtype_bytes(dtype)
    attention_token_bytes = memory.kv_bytes_per_token // max(1, math.ceil(
        facts.num_layers / layout.pp))
    alignment = MLA_STATE_BLOCK_ALIGNMENT if facts.mla is not None else STATE_BLOCK_ALIGNMENT
    step = attention_token_bytes * max(alignment, memory.block_size)
    page = max(state_bytes, math.ceil(state_bytes / step) * step) if step else state_bytes
    state_layers = math.ceil(hybrid.state_layers / layout.pp)
    attention_layers = math.ceil(hybrid.attention_layers / layout.pp)
    group = state_layers
    if attention_layers:
        fewer, more = sorted((state_layers, attention_layers))
        group = more if more < fewer * 1.5 else fewer
    blocks = memory.kv_budget_bytes_per_device // (page * max(1, group))
    return BlockBudget(kv_blocks=kv_blocks, state_blocks=blocks,
                       state_bytes_per_sequence=state_bytes * state_layers)


def markdown_table() -> str:
    """The docs' table of rules (docs/planning.md), generated from RULES."""
    lines = ["| rule | applies when | sets | why | source |", "|---|---|---|---|---|"]
    for rule in RULES:
        cells = (f"`{rule.id}`", rule.condition(), rule.settings(), rule.why, rule.source)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
