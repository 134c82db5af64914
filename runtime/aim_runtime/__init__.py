"""AIM Runtime: a KServe serving runtime for AMD Instinct GPUs.

Pipeline (one direction, plain data between stages):
detect -> Inventory, inspect -> ModelFacts, catalog -> Recipes, plan -> Plan, engine, serve.
"""

__version__ = "0.1.0"
