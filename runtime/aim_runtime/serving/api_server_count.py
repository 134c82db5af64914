"""How many API server processes serve the pod (serving/api_server_group.py runs them)."""

from __future__ import annotations

import argparse

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.planner.plan import Plan


def api_server_count(plan: Plan, vllm_args: argparse.Namespace, explicit: set[str],
                     args: argparse.Namespace) -> tuple[int, str]:
    """How many API server processes serve the pod, and why: `--api-server-count`, else one
    per data-parallel rank as `vllm serve` does; one where several cannot work (a refusal when
    the count was asked for)."""
    asked = "api_server_count" in explicit and vllm_args.api_server_count is not None
    count = int(vllm_args.api_server_count) if asked else plan.data_parallel_size
    if count < 1:
        raise AimError(f"--api-server-count {count}: at least one API server serves the pod",
                       "give 1 or more (default: the data-parallel size)")
    if count == 1:
        return 1, "--api-server-count" if asked else "data parallelism 1"
    single_reasons = {
        "a multi-node head serves through Ray": args.role == "head",
        "--exit-after-warmup fills caches and stops": args.exit_after_warmup,
        "vLLM's runtime adapter API (AIM_LORA_DIR) needs one API server":
            settings.LORA_DIR.read() is not None
            or settings.VLLM_ALLOW_RUNTIME_LORA_UPDATING.read(),
        "data-parallel ranks balanced outside the pod":
            bool(vllm_args.data_parallel_external_lb or vllm_args.data_parallel_hybrid_lb
                 or vllm_args.data_parallel_rank is not None),
    }
    reason = next((why for why, holds in single_reasons.items() if holds), None)
    if reason is None:
        return count, ("--api-server-count" if asked else
                       "one per data-parallel rank, as `vllm serve`; --api-server-count "
                       "overrides")
    if asked:
        raise AimError(f"--api-server-count {count}: {reason}",
                       "drop --api-server-count (one API server then serves the pod)")
    return 1, reason
