"""The `aim-runtime` command: detect, plan, recipes (and serve, render)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aim_runtime import __version__
from aim_runtime.detection import Inventory, detect
from aim_runtime.errors import AimError, NoFitError, RecipeError
from aim_runtime.explain import describe_inventory, explain_plan, format_reasons, summarize_plan
from aim_runtime.model_facts import load_model_facts
from aim_runtime.overrides import FIELDS, KV_CACHE_DTYPES, OBJECTIVES, PRECISIONS, collect_overrides
from aim_runtime.planning import Plan, make_plan
from aim_runtime.recipes import (
    Catalog,
    check_against_vllm,
    default_recipe_dirs,
    load_catalog,
    load_recipe_file,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m aim_runtime`."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list else ""
    long_running = command in ("serve", "worker")
    configure_logging("INFO" if long_running else "WARNING", timestamps=long_running)
    explain = False
    try:
        if command == "serve":
            from aim_runtime.startup import serve_main  # imports KServe and vLLM: only here

            return serve_main(args_list[1:])
        if command == "worker":
            from aim_runtime.cluster import worker_main

            return worker_main(args_list[1:])
        args = build_parser().parse_args(args_list)
        explain = getattr(args, "explain", False)
        return args.handler(args)
    except AimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, NoFitError) and explain and exc.reasons:
            print("candidates, in the order tried:\n" + format_reasons(exc.reasons),
                  file=sys.stderr)
        return exc.exit_code


def configure_logging(default_level: str, timestamps: bool) -> None:
    """Log to stderr at AIM_LOG_LEVEL (else `default_level`); servers stamp their lines."""
    stamp = "%(asctime)s " if timestamps else ""
    logging.basicConfig(level=os.environ.get("AIM_LOG_LEVEL", default_level).upper(),
                        format=stamp + "%(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim-runtime", allow_abbrev=False,
        description="KServe serving runtime for AMD Instinct GPUs: detect GPUs, plan a vLLM "
                    "recipe for a model, serve it.",
    )
    parser.add_argument("--version", action="version", version=f"aim-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect_cmd = commands.add_parser("detect", help="show the accelerators this process can use")
    add_detection_args(detect_cmd)
    detect_cmd.add_argument("--json", action="store_true", help="print the inventory as JSON")
    detect_cmd.set_defaults(handler=run_detect)

    plan_cmd = commands.add_parser("plan", help="choose a recipe for a model on these devices")
    plan_cmd.add_argument("--model", required=True,
                          help="model directory (or its config.json); weights are optional")
    plan_cmd.add_argument("--model-id", help="Hugging Face id of the model, for recipe matching "
                          "(default: AIM_MODEL_ID, or _name_or_path in config.json)")
    add_detection_args(plan_cmd)
    add_planner_args(plan_cmd)
    plan_cmd.add_argument("--explain", action="store_true",
                          help="show every candidate tried and why it was taken or refused")
    plan_cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan_cmd.set_defaults(handler=run_plan)

    recipes_cmd = commands.add_parser("recipes", help="list, show or validate recipes")
    recipe_actions = recipes_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    list_cmd = recipe_actions.add_parser("list", help="one line per recipe")
    list_cmd.add_argument("--json", action="store_true")
    show_cmd = recipe_actions.add_parser("show", help="one resolved recipe")
    show_cmd.add_argument("recipe_id")
    validate_cmd = recipe_actions.add_parser(
        "validate", help="check recipe files (schema, and engine args against vLLM if installed)")
    validate_cmd.add_argument("paths", nargs="*", type=Path,
                              help="files or directories (default: the catalog)")
    for sub in (list_cmd, show_cmd, validate_cmd):
        add_recipes_dir_arg(sub)
    list_cmd.set_defaults(handler=run_recipes_list)
    show_cmd.set_defaults(handler=run_recipes_show)
    validate_cmd.set_defaults(handler=run_recipes_validate)

    render_cmd = commands.add_parser(
        "render", help="print an InferenceService for a model on a GPU type, from the plan")
    render_cmd.add_argument("--model", required=True, type=Path,
                            help="model directory or its config.json (weights not needed)")
    render_cmd.add_argument("--model-id", help="Hugging Face id (storageUri hf://ID, recipes)")
    render_cmd.add_argument("--gpu", required=True, help="product, e.g. MI300X")
    render_cmd.add_argument("--count", type=int,
                            help="GPUs per replica (default: the fewest that serve the model); "
                                 "with --nodes, GPUs per node (default 8)")
    render_cmd.add_argument("--nodes", type=int, default=1,
                            help="multi-node: nodes per replica (KServe workerSpec, Ray); needs "
                                 "--storage-uri pvc:// or oci://")
    render_cmd.add_argument("--name", help="InferenceService name (canary: predictor name)")
    render_cmd.add_argument("--namespace")
    render_cmd.add_argument("--storage-uri", help="pvc://, s3://, oci:// or hf:// URI")
    render_cmd.add_argument("--objective", choices=OBJECTIVES)
    render_cmd.add_argument("--mode", choices=("standard", "knative"), default="standard",
                            help="KServe deployment mode (default standard)")
    render_cmd.add_argument("--canary-of", metavar="NAME",
                            help="render a canary of this InferenceService")
    render_cmd.add_argument("--traffic", type=int, help="canary traffic percentage")
    render_cmd.add_argument("--stable", type=Path, metavar="FILE",
                            help="standard mode: the running InferenceService (kubectl get -o "
                                 "yaml)")
    render_cmd.add_argument("--supplemental-groups", default="44",
                            help="pod GIDs for /dev/kfd and /dev/dri: video,render of your nodes")
    add_recipes_dir_arg(render_cmd)
    render_cmd.set_defaults(handler=run_render)

    download_cmd = commands.add_parser(
        "download", help="download a model into a directory (model cache) and verify it")
    download_cmd.add_argument("--model-id", help="Hugging Face id (omit with --verify-only)")
    download_cmd.add_argument("--revision", help="branch, tag or commit (default: main)")
    download_cmd.add_argument("--dest", required=True, type=Path, help="target directory")
    download_cmd.add_argument("--verify-only", action="store_true",
                              help="verify what is already in --dest, download nothing")
    download_cmd.add_argument("--gpu", metavar="PRODUCT[:N]",
                              help="also require a plan on these GPUs (e.g. MI300X:8)")
    add_recipes_dir_arg(download_cmd)
    download_cmd.set_defaults(handler=run_download)

    commands.add_parser("serve", help="serve a model (see `aim-runtime serve --help`)")
    commands.add_parser("worker", help="multi-node: join a head as a Ray worker node (see "
                                       "`aim-runtime worker --help`)")
    return parser


def add_detection_args(parser: argparse.ArgumentParser, simulate: bool = True) -> None:
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
    """Planner overrides. With `vllm_names` False, the flags vLLM also defines are left to
    vLLM's own parser (serve) and only the planner's own flags are added here."""
    group = parser.add_argument_group("planner overrides (win over AIM_* variables and recipes)")
    group.add_argument("--objective", choices=OBJECTIVES, help="default: latency")
    group.add_argument("--recipe", dest="recipe_id", help="pin a recipe by id")
    group.add_argument("--precision", choices=PRECISIONS, help="weight precision")
    group.add_argument("--min-concurrency", type=int,
                       help="full-length sequences the KV cache must hold (default 4)")
    if vllm_names:
        group.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES)
        group.add_argument("--max-model-len", type=int)
        group.add_argument("--tensor-parallel-size", type=int)
        group.add_argument("--pipeline-parallel-size", type=int)
        group.add_argument("--data-parallel-size", type=int)
        group.add_argument("--gpu-memory-utilization", type=float)
        group.add_argument("--trust-remote-code", action="store_const", const=True, default=None)
    add_recipes_dir_arg(parser)


def add_recipes_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes-dir", type=Path, action="append", metavar="DIR",
                        help="recipe directory (repeatable; default: AIM_RECIPES_DIR or the "
                             "curated recipes)")


def inventory_from_args(args: argparse.Namespace) -> Inventory:
    return detect(simulate=args.simulate, sys_root=args.sys_root, dev_root=args.dev_root,
                  proc_root=args.proc_root, amd_smi_json=args.amd_smi_json)


def catalog_from_args(args: argparse.Namespace) -> Catalog:
    return load_catalog(args.recipes_dir or default_recipe_dirs())


def plan_from_args(args: argparse.Namespace) -> tuple[Inventory, Plan]:
    """Detect, inspect, load the catalog and plan, as `plan` and `serve` both do."""
    inventory = inventory_from_args(args)
    facts = load_model_facts(args.model, hf_id=args.model_id or os.environ.get("AIM_MODEL_ID"))
    cli_values = {name: getattr(args, name, None) for name in FIELDS}
    overrides = collect_overrides(cli_values, os.environ)
    return inventory, make_plan(inventory, facts, catalog_from_args(args), overrides)


def run_detect(args: argparse.Namespace) -> int:
    inventory = inventory_from_args(args)
    if args.json:
        print(inventory.model_dump_json(indent=2))
    else:
        print(describe_inventory(inventory))
    return 0


def run_plan(args: argparse.Namespace) -> int:
    _, plan = plan_from_args(args)
    if args.json:
        print(plan.model_dump_json(indent=2))
    elif args.explain:
        print(explain_plan(plan))
    else:
        print(summarize_plan(plan))
    return 0


def run_render(args: argparse.Namespace) -> int:
    from aim_runtime.render import RenderRequest, render, to_yaml

    try:
        groups = tuple(int(g) for g in args.supplemental_groups.split(",") if g.strip())
    except ValueError as exc:
        raise AimError(f"--supplemental-groups {args.supplemental_groups}: expected numeric "
                       "GIDs separated by commas") from exc
    request = RenderRequest(
        model=args.model, gpu=args.gpu, model_id=args.model_id, count=args.count,
        name=args.name, namespace=args.namespace, storage_uri=args.storage_uri,
        objective=args.objective, mode=args.mode, canary_of=args.canary_of,
        traffic=args.traffic, stable=args.stable, supplemental_groups=groups,
        nodes=args.nodes,
    )
    document, plan = render(request, catalog_from_args(args))
    print(to_yaml(document), end="")
    nodes = f"{plan.nodes} nodes, " if plan.nodes > 1 else ""
    print(f"# plan: {plan.recipe_id} on {nodes}{plan.devices_used}x {plan.product} "
          f"(tp={plan.tensor_parallel_size} pp={plan.pipeline_parallel_size} "
          f"dp={plan.data_parallel_size}, {plan.precision}, context {plan.max_model_len})",
          file=sys.stderr)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from aim_runtime.download import download, verify, write_manifest

    if not args.verify_only and not args.model_id:
        raise AimError("--model-id is required (or --verify-only)")
    hub_hashes: dict = {}
    revision = None
    if not args.verify_only:
        args.dest.mkdir(parents=True, exist_ok=True)
        revision, hub_hashes = download(args.model_id, args.dest, args.revision)
    summary = verify(args.dest, hub_hashes)
    summary.update({"model_id": args.model_id, "revision": revision})
    if args.gpu:
        facts = load_model_facts(args.dest, hf_id=args.model_id)
        plan = make_plan(detect(simulate=args.gpu, environ={}), facts, catalog_from_args(args))
        summary["plan"] = {"gpu": args.gpu, "recipe_id": plan.recipe_id}
        print(summarize_plan(plan))
    write_manifest(args.dest, summary)
    print(f"verified {len(summary['files'])} weight file(s) in {args.dest}")
    return 0


def run_recipes_list(args: argparse.Namespace) -> int:
    catalog = catalog_from_args(args)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in catalog.recipes], indent=2))
        return 0
    rows = [("ID", "GPU", "PRECISION", "KV", "TPxPP", "OBJECTIVE", "MODEL")]
    for r in catalog.recipes:
        model = ", ".join(r.model.hf_ids[:1] or r.model.architectures[:1]) or "(any model)"
        rows.append((r.id, ",".join(r.gpu_products), r.precision, r.kv_cache_dtype,
                     f"{r.tensor_parallel_size}x{r.pipeline_parallel_size}",
                     r.objective or "any", model))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def run_recipes_show(args: argparse.Namespace) -> int:
    recipe = catalog_from_args(args).get(args.recipe_id)
    if recipe is None:
        raise RecipeError(f"no recipe with id {args.recipe_id!r}",
                          "list them with `aim-runtime recipes list`")
    print(json.dumps(recipe.model_dump(mode="json"), indent=2))
    return 0


def run_recipes_validate(args: argparse.Namespace) -> int:
    errors: list[str] = []
    recipes = []
    if args.paths:
        files = [f for p in args.paths for f in (sorted(p.rglob("*.yaml")) if p.is_dir() else [p])]
        for file in files:
            try:
                recipes.extend(load_recipe_file(file))
            except RecipeError as exc:
                errors.append(str(exc))
    else:
        try:
            recipes = list(catalog_from_args(args).recipes)
        except RecipeError as exc:
            errors.append(exc.message)
    vllm_problems = check_against_vllm(recipes) if recipes else []
    errors.extend(vllm_problems or [])
    for error in errors:
        print(error, file=sys.stderr)
    checked = "checked against the installed vLLM" if vllm_problems is not None else \
        "vLLM not importable here: engine args checked by name only at serve time"
    status = "invalid" if errors else "valid"
    print(f"{len(recipes)} recipe(s) {status}; engine args {checked}")
    return 1 if errors else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
