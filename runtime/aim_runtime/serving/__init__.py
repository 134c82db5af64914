"""Serving: the only layer that imports vLLM, KServe, FastAPI or Starlette.

`vllm_adapter` is the one door to vLLM (engine, argument parser, errors, supported versions);
`model`, `server`, `gate` and `metrics` make the KServe model server; `startup` runs the pipeline
and starts serving; `cluster` forms the Ray cluster of a multi-node deployment.
"""
