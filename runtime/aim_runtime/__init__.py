"""AIM Runtime: a KServe serving runtime for AMD Instinct GPUs.

Layers as folders, each importing only the ones below it (import-linter checks it in `make lint`):

    cli/          the `aim-runtime` command
    serving/      the only layer that imports vLLM, KServe, FastAPI or Starlette; inside it,
                  only `serving/vllm_adapter/` imports vLLM (the layers: docs/code-map.md)
    deploy/       Kubernetes objects rendered from a plan
    pipeline.py   flags + environment -> Inventory -> ModelFacts -> Recipes -> Plan, the one way
    planner/      overrides, catalog, candidates, memory, ROCm rules, roofline, plan, explain
    hardware/     detection and the GPU product table     checkpoint/  what a model needs
    settings.py   every AIM_* variable once, and the shared vocabulary
    errors.py

Where this differs from the layering the project was first sketched with, and why:
- `planner/setting.py` holds what is fixed before candidates are tried (`PlanSetting`): the plan
  and the no-fit suggestions both need it, and a module of its own keeps them from importing
  each other.
- `checkpoint/shapes.py` holds the model-shape types that both the facts reader and the parameter
  counter use, for the same reason.
- `errors.NoFitError` keeps the planner's candidate records through a protocol
  (`TriedCandidate`), so `errors` stays below every layer with no import cycle.
- `deploy/` renders InferenceServices only; `cli/` imports it, not `serving/`.
"""

__version__ = "0.1.0"
