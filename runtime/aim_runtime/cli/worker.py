"""`aim-runtime worker`'s command line: a multi-node deployment's worker node joins the head's
Ray cluster (serving/cluster.py) and stays up."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aim_runtime import settings
from aim_runtime.serving.cluster import WORKER_HEALTH_PORT, worker_main


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aim-runtime worker", allow_abbrev=False,
                                     description="Join a multi-node AIM Runtime head as a Ray "
                                                 "worker node and stay up.")
    parser.add_argument("--head-address", help="host:port of the head's Ray GCS (default: "
                        "RAY_HEAD_ADDRESS or <ISVC_NAME>-head.<POD_NAMESPACE>...:"
                        f"{settings.RAY_PORT.default})")
    settings.RAY_JOIN_TIMEOUT.add_argument(parser)
    parser.add_argument("--health-port", type=int, default=WORKER_HEALTH_PORT,
                        help=f"where liveness and readiness are answered (default "
                             f"{WORKER_HEALTH_PORT}, KServe's HTTP port)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = worker_parser().parse_args(list(argv))
    return worker_main(args.head_address, args.ray_join_timeout, args.health_port)
