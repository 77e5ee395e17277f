"""`personalize-t5x demo`: `run` on the bundled demo corpus (gin/experiments/demo.gin).

The same command a user runs on a real corpus, with the demo's experiment gin:

    personalize-t5x run --gin_file=experiments/demo.gin [--gin.OUTPUT_DIR="'demo_output'"]

It trains ImmedCtx, a ranker row, SynCtx and AuthorPred under one budget on a synthetic
corpus whose personas write their own way after the part of a post the model is given,
and reports whether reading past passages beat ImmedCtx and copying the start.
"""
from __future__ import annotations

import argparse

DEMO_GIN = "experiments/demo.gin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personalize_t5x.trainer import gin_utils

    parser.add_argument("--output-dir", default=None, help="where every step writes (default: the gin's demo_output)")
    gin_utils.add_gin_arguments(parser)
    gin_utils.accept_gin_shorthand(parser)


def as_run_args(args: argparse.Namespace) -> argparse.Namespace:
    """The `run` command line this demo command stands for."""
    args.gin_file = [DEMO_GIN, *args.gin_file]
    if args.output_dir:
        args.gin_bindings = [*args.gin_bindings, f"OUTPUT_DIR = {args.output_dir!r}"]
    return args


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.commands import run as run_command

    return run_command.run(as_run_args(args))
