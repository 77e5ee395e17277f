"""`personalize-t5x <command>`: one entry point over the pipeline's stages.

Each command lives in its own module under personalize_t5x/commands/ and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
command runs, so `personalize-t5x corpus stats` does not pay for importing TensorFlow.
Bad input ends a command with one line naming file, line and field (exit status 2),
never a traceback: the CLI catches `personalize_t5x.errors.PersonalizeError`, the one base
class of the project's errors, and nothing else. `--verbose` (anywhere on the line) shows
the libraries' log noise that is hidden by default.
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
    "aux-join": ("personalize_t5x.commands.aux_join", "join the SumCtx/SynCtx models' predictions into the features"),
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


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line `PROG: error: MESSAGE` (exit 2): the
    same shape as every other error of the CLI. `-h` still prints the full usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="personalize-t5x",
        description="Personalized long-form generation with T5 on JAX (T5X conventions).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _available_commands().items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
    return parser


# Loggers of libraries that report things irrelevant to a user of this CLI at WARNING or
# INFO: Beam's option parser ("Discarding unparseable args"), apitools, JAX looking for
# TPU/GPU backends (libtpu, cuda), TensorFlow and absl. `--verbose` leaves them alone.
NOISY_LOGGERS = ("apache_beam", "apitools", "oauth2client", "jax._src.xla_bridge", "jax", "tensorflow", "absl",
                 "orbax", "urllib3", "google")


# Messages some libraries log on the root logger itself (so no logger level reaches
# them): Beam's apitools/bigquery notice at import, and backend probing.
NOISY_ROOT_MESSAGES = ("apitools not found", "Discarding unparseable args", "Unable to initialize backend",
                       "libtpu", "An NVIDIA GPU may be present", "cuda", "CUDA")


class _DropLibraryNoise:
    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISY_ROOT_MESSAGES)


def quiet_library_noise() -> None:
    import logging
    import os
    import warnings

    root = logging.getLogger()
    if not any(isinstance(f, _DropLibraryNoise) for f in root.filters):
        root.addFilter(_DropLibraryNoise())

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logging (cuda drivers)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module="apache_beam")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if verbose:
        argv.remove("--verbose")
    else:
        quiet_library_noise()
    parser = build_parser()
    # Parse the command name first, then let its module define the rest of its flags.
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    available = _available_commands()
    if name not in available:
        try:
            parser.error(f"unknown command {name!r}; choose from {', '.join(available)}")
        except SystemExit as exit_:
            return int(exit_.code or 0)
    from personalize_t5x.errors import PersonalizeError  # light import, no TF

    module = importlib.import_module(available[name][0])
    sub = OneLineErrorParser(prog=f"personalize-t5x {name}", description=available[name][1])
    module.add_arguments(sub)
    try:
        args = sub.parse_args(argv[1:])
    except SystemExit as exit_:  # -h or a usage error: a status, also for in-process callers
        return int(exit_.code or 0)
    args.verbose = verbose
    # Only the project's own errors become one line: anything else is a bug and keeps
    # its traceback.
    try:
        return int(module.run(args) or 0)
    except PersonalizeError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
