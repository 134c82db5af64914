"""The `aim-runtime` subcommands other than `serve` and `worker`: parser and handlers."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from aim_runtime import __version__, pipeline, settings
from aim_runtime.cli import validate
from aim_runtime.errors import AimError, RecipeError
from aim_runtime.planner.catalog import Catalog, load_recipe_file
from aim_runtime.planner.explain import describe_inventory, explain_plan, summarize_plan
from aim_runtime.settings import GPUS_PER_NODE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim-runtime", allow_abbrev=False,
        description="KServe serving runtime for AMD Instinct GPUs: detect GPUs, plan a vLLM "
                    "recipe for a model, serve it.",
    )
    parser.add_argument("--version", action="version", version=f"aim-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect_cmd = commands.add_parser("detect", help="show the accelerators this process can use")
    pipeline.add_detection_args(detect_cmd)
    detect_cmd.add_argument("--json", action="store_true", help="print the inventory as JSON")
    detect_cmd.set_defaults(handler=run_detect)

    plan_cmd = commands.add_parser("plan", help="choose a recipe for a model on these devices")
    plan_cmd.add_argument("--model-dir", "--model_dir", "--model", dest="model", required=True,
                          help="model directory (or its config.json); weights are optional")
    plan_cmd.add_argument("--model-id", help="Hugging Face id of the model, for recipe matching "
                          "(default: AIM_MODEL_ID, or _name_or_path in config.json)")
    pipeline.add_detection_args(plan_cmd)
    pipeline.add_planner_args(plan_cmd)
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
        pipeline.add_recipes_dir_arg(sub)
    list_cmd.set_defaults(handler=run_recipes_list)
    show_cmd.set_defaults(handler=run_recipes_show)
    validate_cmd.set_defaults(handler=run_recipes_validate)

    validate.add_parser(commands)

    render_cmd = commands.add_parser(
        "render", help="print an InferenceService (or LLMInferenceService) for a model on a GPU "
                       "type, from the plan")
    render_cmd.add_argument("--kind", choices=("inferenceservice", "llminferenceservice"),
                            default="inferenceservice",
                            help="KServe resource to render (default %(default)s; "
                                 "llminferenceservice uses the aim-runtime-llm preset)")
    render_cmd.add_argument("--output", choices=("manifest", "helm-values"), default="manifest",
                            help="manifest: the KServe object; helm-values: the values with "
                                 "which charts/aim-model renders that object (default "
                                 "%(default)s)")
    render_cmd.add_argument("--prefill-replicas", type=int, default=0, metavar="N",
                            help="llminferenceservice: split prefill (N pods) from decode")
    render_cmd.add_argument("--model-dir", "--model_dir", "--model", dest="model", required=True,
                            type=Path,
                            help="model directory or its config.json (weights not needed)")
    render_cmd.add_argument("--model-id", help="Hugging Face id (storageUri hf://ID, recipes)")
    render_cmd.add_argument("--gpu", required=True, help="product, e.g. MI300X")
    render_cmd.add_argument("--count", type=int,
                            help="GPUs per replica (default: the fewest that serve the model); "
                                 f"with --nodes, GPUs per node (default {GPUS_PER_NODE})")
    render_cmd.add_argument("--nodes", type=int, default=1,
                            help="multi-node: nodes per replica (KServe workerSpec, Ray); needs "
                                 "--storage-uri pvc:// or oci://")
    render_cmd.add_argument("--name", help="InferenceService name (canary: predictor name)")
    render_cmd.add_argument("--namespace")
    render_cmd.add_argument("--storage-uri", help="pvc://, s3://, oci:// or hf:// URI")
    settings.OBJECTIVE.add_argument(render_cmd, from_env=False)
    render_cmd.add_argument("--mode", choices=("standard", "knative"), default="standard",
                            help="KServe deployment mode (default %(default)s)")
    render_cmd.add_argument("--canary-of", metavar="NAME",
                            help="render a canary of this InferenceService")
    render_cmd.add_argument("--traffic", type=int, help="canary traffic percentage")
    render_cmd.add_argument("--stable", type=Path, metavar="FILE",
                            help="standard mode: the running InferenceService (kubectl get -o "
                                 "yaml)")
    render_cmd.add_argument("--supplemental-groups", default="44",
                            help="pod GIDs for /dev/kfd and /dev/dri: video,render of your nodes")
    render_cmd.add_argument("--compile-cache-pvc", metavar="CLAIM",
                            help="mount this PersistentVolumeClaim for kernel and compile "
                                 "caches (AIM_COMPILE_CACHE_DIR; filled by "
                                 "manifests/model-cache/compile-cache-job.yaml)")
    render_cmd.add_argument("--lora-pvc", metavar="CLAIM[/PATH]",
                            help="serve the LoRA adapters in this PersistentVolumeClaim (one "
                                 "per subdirectory; AIM_LORA_DIR; filled by "
                                 "manifests/lora/adapters-download-job.yaml)")
    render_cmd.add_argument("--max-loras", type=int, metavar="N",
                            help="with --lora-pvc: adapters in memory at once (vLLM's default 1)")
    render_cmd.add_argument("--max-lora-rank", type=int, metavar="R",
                            help="with --lora-pvc: largest adapter rank (vLLM's default 16)")
    render_cmd.add_argument("--service-account", metavar="NAME",
                            help="ServiceAccount whose Secret holds HF_TOKEN, for gated hf:// "
                                 "models (KServe's storage initializer reads it; see "
                                 "manifests/storage/)")
    pipeline.add_recipes_dir_arg(render_cmd)
    render_cmd.set_defaults(handler=run_render)

    download_cmd = commands.add_parser(
        "download", help="download a model into a directory (model cache) and verify it")
    download_cmd.add_argument("--model-id", help="Hugging Face id (omit with --verify-only)")
    download_cmd.add_argument("--revision", help="branch, tag or commit (default: main)")
    download_cmd.add_argument("--dest", required=True, type=Path, help="target directory")
    download_cmd.add_argument("--verify-only", action="store_true",
                              help="verify what is already in --dest, download nothing")
    download_cmd.add_argument("--adapter", action="store_true",
                              help="the repository is a LoRA adapter: verify it as one (with "
                                   "--base, against that base model's config)")
    download_cmd.add_argument("--base", type=Path, metavar="DIR",
                              help="--adapter: the base model directory it must fit")
    download_cmd.add_argument("--gpu", metavar="PRODUCT[:N]",
                              help="also require a plan on these GPUs (e.g. MI300X:8)")
    pipeline.add_recipes_dir_arg(download_cmd)
    download_cmd.set_defaults(handler=run_download)

    commands.add_parser("serve", help="serve a model (see `aim-runtime serve --help`)")
    commands.add_parser("worker", help="multi-node: join a head as a Ray worker node (see "
                                       "`aim-runtime worker --help`)")
    return parser


def catalog_from_args(args: argparse.Namespace) -> Catalog:
    return pipeline.catalog_for(args.recipes_dir, os.environ)


def run_detect(args: argparse.Namespace) -> int:
    inventory = pipeline.detect_inventory(pipeline.request_from_args(args, Path(".")))
    if args.json:
        print(inventory.model_dump_json(indent=2))
    else:
        print(describe_inventory(inventory))
    return 0


def run_plan(args: argparse.Namespace) -> int:
    plan = pipeline.run(pipeline.request_from_args(args, Path(args.model))).plan
    if args.json:
        print(plan.model_dump_json(indent=2))
    elif args.explain:
        print(explain_plan(plan))
    else:
        print(summarize_plan(plan))
    return 0


def run_render(args: argparse.Namespace) -> int:
    from aim_runtime.deploy.helm_values import check_release_owns, helm_values
    from aim_runtime.deploy.llm import render_llm
    from aim_runtime.deploy.render import RenderRequest, render, to_yaml

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
        nodes=args.nodes, service_account=args.service_account,
        compile_cache_pvc=args.compile_cache_pvc, lora_pvc=args.lora_pvc,
        max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
    )
    if args.output == "helm-values":
        check_release_owns(request)
    if args.kind == "llminferenceservice":
        document, plan = render_llm(request, catalog_from_args(args), args.prefill_replicas)
    elif args.prefill_replicas:
        raise AimError("--prefill-replicas needs --kind llminferenceservice")
    else:
        document, plan = render(request, catalog_from_args(args))
    if args.output == "helm-values":
        kind = "LLMInferenceService" if args.kind == "llminferenceservice" else "InferenceService"
        document = helm_values(request, plan, kind, args.prefill_replicas)
    print(to_yaml(document), end="")
    nodes = f"{plan.nodes} nodes, " if plan.nodes > 1 else ""
    print(f"# plan: {plan.recipe_id} on {nodes}{plan.devices_used}x {plan.product} "
          f"(tp={plan.tensor_parallel_size} pp={plan.pipeline_parallel_size} "
          f"dp={plan.data_parallel_size}, {plan.precision}, context {plan.max_model_len})",
          file=sys.stderr)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from aim_runtime.checkpoint.download import download, verify, write_manifest

    if not args.verify_only and not args.model_id:
        raise AimError("--model-id is required (or --verify-only)")
    if args.adapter:
        return _download_adapter(args)
    if args.base:
        raise AimError("--base checks an adapter: it goes with --adapter")
    hub_hashes: dict = {}
    revision = None
    if not args.verify_only:
        args.dest.mkdir(parents=True, exist_ok=True)
        revision, hub_hashes = download(args.model_id, args.dest, args.revision)
    summary = verify(args.dest, hub_hashes)
    summary.update({"model_id": args.model_id, "revision": revision})
    if args.gpu:
        request = pipeline.PlanRequest(model=args.dest, model_id=args.model_id,
                                       simulate=args.gpu, recipe_dirs=tuple(args.recipes_dir or ()))
        plan = pipeline.run(request).plan
        summary["plan"] = {"gpu": args.gpu, "recipe_id": plan.recipe_id}
        print(summarize_plan(plan))
    write_manifest(args.dest, summary)
    print(f"verified {len(summary['files'])} weight file(s) in {args.dest}")
    return 0


def _download_adapter(args: argparse.Namespace) -> int:
    """A LoRA adapter: fetched into a hidden sibling directory (an adapter directory's watcher
    skips dot-directories), verified, then renamed into place."""
    from aim_runtime.checkpoint.download import download, verify_adapter, write_manifest

    if args.gpu:
        raise AimError("--gpu plans a model; an adapter is planned with its base model")
    revision: str | None = None
    hub_hashes: dict[str, str] = {}
    target = args.dest
    staging = target.parent / f".{target.name}.partial"
    if not args.verify_only:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        revision, hub_hashes = download(args.model_id, staging, args.revision)
    checked = target if args.verify_only else staging
    summary = verify_adapter(checked, hub_hashes, args.base)
    summary.update({"model_id": args.model_id, "revision": revision})
    write_manifest(checked, summary)
    if not args.verify_only:  # swap by renames: the watcher never sees a half-written adapter
        previous = target.parent / f".{target.name}.previous"
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            os.replace(target, previous)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    print(f"verified LoRA adapter (rank {summary['adapter']['rank']}) in {target}")
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
                errors.append(exc.message)
    else:
        try:
            recipes = list(catalog_from_args(args).recipes)
        except RecipeError as exc:
            errors.append(exc.message)
    from aim_runtime.serving.vllm_adapter import check_recipe_args

    vllm_problems = check_recipe_args(recipes) if recipes else []
    errors.extend(vllm_problems or [])
    for error in errors:
        print(error, file=sys.stderr)
    checked = "checked against the installed vLLM" if vllm_problems is not None else \
        "vLLM not importable here: engine args checked by name only at serve time"
    status = "invalid" if errors else "valid"
    print(f"{len(recipes)} recipe(s) {status}; engine args {checked}")
    return 1 if errors else 0


