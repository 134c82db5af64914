"""The one way flags and environment become a plan: detect -> inspect -> catalog -> plan.

`plan`, `serve`, `render`, `download`, the benchmarks and the tests all build a `PlanRequest` and
call `run`. The environment is an explicit part of the request: `serve` and `plan` pass the
process's (`AIM_*` overrides, `AIM_GPU_*` limits, visibility variables apply), `render` and
`download --gpu` pass none, because they plan for GPUs that are elsewhere and the local machine's
settings must not leak into a manifest.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aim_runtime import settings
from aim_runtime.checkpoint.facts import ModelFacts, load_model_facts
from aim_runtime.hardware import Inventory, detect
from aim_runtime.planner.catalog import Catalog, load_catalog, packaged_recipe_dir
from aim_runtime.planner.overrides import (
    BATCH_SHAPE,
    FIELDS,
    PLANNER_ONLY,
    collect_overrides,
    override_flag,
    override_variable,
)
from aim_runtime.planner.plan import Plan, make_plan

Phase = Callable[[str], AbstractContextManager[None]]


@contextmanager
def untimed(name: str) -> Iterator[None]:
    """A phase that is not measured."""
    yield


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on."""

    model: Path  # the model directory, or its config.json
    model_id: str | None = None  # Hugging Face id (default: AIM_MODEL_ID)
    simulate: str | None = None  # PRODUCT:N[xNODES]: plan for GPUs that are not here
    nodes: int = 1
    amd_smi_json: Path | None = None
    sys_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    proc_root: Path = Path("/proc")
    recipe_dirs: tuple[Path, ...] = ()  # default: AIM_RECIPES_DIR, else the curated recipes
    cli_overrides: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Planned:
    """What the pipeline produced, stage by stage."""

    inventory: Inventory
    facts: ModelFacts
    catalog: Catalog
    plan: Plan


def run(request: PlanRequest, phase: Phase = untimed, catalog: Catalog | None = None) -> Planned:
    """Detect, inspect, load the catalog (unless one is given) and plan; each stage inside
    `phase(name)`."""
    with phase("detect"):
        inventory = detect_inventory(request)
    return plan_on(inventory, request, phase, catalog)


def plan_on(inventory: Inventory, request: PlanRequest, phase: Phase = untimed,
            catalog: Catalog | None = None, facts: ModelFacts | None = None) -> Planned:
    """The stages after detection, for an inventory (and the model's facts) already at hand."""
    if facts is None:
        with phase("inspect"):
            facts = inspect_model(request.model, request.model_id, request.environ)
    with phase("plan"):
        catalog = catalog or catalog_for(request.recipe_dirs, request.environ)
        overrides = collect_overrides(request.cli_overrides, request.environ)
        plan = make_plan(inventory, facts, catalog, overrides)
    return Planned(inventory=inventory, facts=facts, catalog=catalog, plan=plan)


def inspect_model(model: Path, model_id: str | None, environ: Mapping[str, str]) -> ModelFacts:
    """The model's facts, from its directory (or config.json); `model_id` (else AIM_MODEL_ID)
    names it for the curated recipes."""
    return load_model_facts(model, hf_id=model_id or settings.MODEL_ID.read(environ))


def detect_inventory(request: PlanRequest) -> Inventory:
    """The request's devices: simulated, or detected with its environment."""
    return detect(simulate=request.simulate, nodes=request.nodes, sys_root=request.sys_root,
                  dev_root=request.dev_root, proc_root=request.proc_root,
                  amd_smi_json=request.amd_smi_json, environ=request.environ)


def catalog_for(recipe_dirs: tuple[Path, ...] | list[Path] | None,
                environ: Mapping[str, str]) -> Catalog:
    """The recipe directories given, else AIM_RECIPES_DIR, else the curated recipes."""
    dirs = list(recipe_dirs or settings.RECIPES_DIR.read(environ) or [packaged_recipe_dir()])
    return load_catalog(dirs)


# --- the command-line flags every planning command shares -----------------------------------------


def add_detection_args(parser: argparse.ArgumentParser, simulate: bool = True) -> None:
    """--simulate (unless serving), --amd-smi-json, and hidden roots for tests."""
    group = parser.add_argument_group("detection")
    if simulate:
        group.add_argument("--simulate", metavar="PRODUCT:N[xNODES]",
                           help="plan for N GPUs of a product instead of detecting (e.g. "
                                "MI300X:8), or for N GPUs on each of several nodes "
                                "(MI300X:8x2: two 8-GPU nodes)")
    group.add_argument("--amd-smi-json", type=Path, metavar="FILE",
                       help="read GPUs from saved `amd-smi static --json` output")
    group.add_argument("--sys-root", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    group.add_argument("--dev-root", type=Path, default=Path("/dev"), help=argparse.SUPPRESS)
    group.add_argument("--proc-root", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)


def add_planner_args(parser: argparse.ArgumentParser, vllm_names: bool = True) -> None:
    """Planner overrides, from their AIM_* variables' flags. With `vllm_names` False, the flags
    vLLM also defines are left to vLLM's own parser (serve) and only the planner's own flags
    are added here."""
    group = settings.section(parser, settings.PLANNER_GROUP)
    for name in FIELDS:
        variable = override_variable(name)
        if variable is not None and (vllm_names or name in PLANNER_ONLY):
            variable.add_argument(parser, from_env=False)
        elif vllm_names and name in BATCH_SHAPE:
            group.add_argument(override_flag(name), type=settings.positive_int,
                               help="as `vllm serve` takes it")
    add_recipes_dir_arg(parser)


def add_recipes_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes-dir", type=Path, action="append", metavar="DIR",
                        help="recipe directory (repeatable; default: AIM_RECIPES_DIR or the "
                             "curated recipes)")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The planner overrides among parsed flags (None: not given)."""
    return {name: getattr(args, name, None) for name in FIELDS}


def request_from_args(args: argparse.Namespace, model: Path, *, nodes: int = 1,
                      overrides: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> PlanRequest:
    """A request from the shared flags (`add_detection_args`, `add_planner_args`)."""
    return PlanRequest(
        model=model, model_id=getattr(args, "model_id", None),
        simulate=getattr(args, "simulate", None), nodes=nodes,
        amd_smi_json=args.amd_smi_json, sys_root=args.sys_root, dev_root=args.dev_root,
        proc_root=args.proc_root, recipe_dirs=tuple(getattr(args, "recipes_dir", None) or ()),
        cli_overrides=cli_overrides(args) if overrides is None else overrides,
        environ=os.environ if environ is None else environ,
    )
