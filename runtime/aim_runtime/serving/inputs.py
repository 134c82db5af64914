"""What start-up hands on: the command line as cli/serve.py parsed it, and what a server is
built from (frozen, and picklable for the API server processes)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from aim_runtime.checkpoint.facts import ModelFacts
from aim_runtime.planner.plan import Plan
from aim_runtime.serving.cluster import ClusterSpec
from aim_runtime.serving.listener import ListenerOptions


@dataclass(frozen=True)
class ServeCommand:
    """`aim-runtime serve`'s command line as cli/serve.py parsed it."""

    args: argparse.Namespace  # KServe's flags and ours
    vllm_argv: tuple[str, ...]  # the rest: `vllm serve`'s, for vLLM's own parser
    explicit: frozenset[str] = frozenset()  # our options the user set (line or AIM_*)


@dataclass(frozen=True)
class ServerInputs:
    """What a server is built from, as start-up produced it, never written afterwards
    (picklable: each of several API server processes builds its own server from it)."""

    args: argparse.Namespace  # the parsed flags, KServe's and ours
    plan: Plan
    names: tuple[str, ...]
    vllm_argv: tuple[str, ...]
    api_keys: tuple[str, ...]
    listener: ListenerOptions
    facts: ModelFacts
    http_port: int  # where the HTTP listener is (KServe moves a TLS listener from 8080 to 8443)
    cluster: ClusterSpec | None = None
