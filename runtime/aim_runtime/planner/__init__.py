"""Planner: overrides, the recipe catalog, candidates, memory math, suggestions, the plan and its
explanation. Pure functions over typed data: no vLLM, no KServe, no I/O beyond reading recipes."""
