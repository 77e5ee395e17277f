"""`personalize-t5x <command>`: one entry point over the pipeline's stages.

Each command lives in its own module under personalize_t5x/commands/ and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
command runs, so `personalize-t5x corpus stats` does not pay for importing TensorFlow.
Bad input ends a command with one line naming file, line and field (exit status 2),
never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# command name -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("personalize_t5x.commands.corpus", "convert public corpora to Document JSONL; corpus statistics"),
    "examples": ("personalize_t5x.commands.examples", "build the paper's examples, splits and author pairs"),
    "features": ("personalize_t5x.commands.features", "retrieval and ranking features (Apache Beam) as TFRecords"),
    "eval-retrieval": ("personalize_t5x.commands.eval_retrieval", "ROUGE of each ranker's text against the target"),
    "vocab": ("personalize_t5x.commands.vocab", "train a SentencePiece vocabulary on the training split"),
    "train": ("personalize_t5x.trainer.train", "train a T5 model (T5X flags: --gin_file, --gin.NAME=VALUE)"),
    "eval": ("personalize_t5x.trainer.eval", "evaluate a checkpoint on a SeqIO task or mixture"),
    "infer": ("personalize_t5x.trainer.infer", "write predictions of a checkpoint as JSONL"),
    "compare": ("personalize_t5x.commands.compare", "paired t-test between two prediction files"),
    "run": ("personalize_t5x.commands.run", "a whole experiment from a gin file: data, every row, the report"),
    "demo": ("personalize_t5x.commands.demo", "run the whole pipeline on the bundled demo corpus"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this installation."""
    available = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            available[name] = (module, help_text)
    return available


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="personalize-t5x",
        description="Personalized long-form generation with T5 on JAX (T5X conventions).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _available_commands().items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module define the rest of its flags.
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    available = _available_commands()
    if name not in available:
        parser.error(f"unknown command {name!r}; choose from {', '.join(available)}")
    module = importlib.import_module(available[name][0])
    sub = argparse.ArgumentParser(prog=f"personalize-t5x {name}", description=available[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    from personalize_t5x.errors import InputError  # light import, no TF

    try:
        return int(module.run(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
