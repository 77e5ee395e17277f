"""T5X's gin flags: --gin_file (repeatable), --gin.NAME=VALUE, --gin_bindings, --gin_search_paths.

Only entry points and gin files use gin; library code stays gin-free. Gin errors (a
typo in a binding, an unknown configurable, a missing file, an unset REQUIRED macro)
become one-line `ConfigError`s that name the file and line gin reports.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import re
from typing import Optional, Sequence

import gin

from personalize_t5x.trainer.utils import ConfigError

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "gin"
# T5X's rule: --gin_search_paths (default '.') is searched first, then the defaults
# (T5X's own source root there; this repository's gin/ folder here) are appended.
DEFAULT_GIN_SEARCH_PATHS = (os.fspath(REPO_GIN_DIR),)
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")
_MACRO_USE = re.compile(r"%([A-Za-z_]\w*)")
_MACRO_DEFINITION = re.compile(r"^([A-Za-z_]\w*)\s*=", re.MULTILINE)
_INCLUDE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]", re.MULTILINE)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(arg)
    return out


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file to parse, in order (repeatable); looked up on --gin_search_paths")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a gin binding such as 'MODEL_DIR = \"/tmp/run\"' (repeatable); "
                             "--gin.NAME=VALUE is the same thing")
    parser.add_argument("--gin_search_paths", default=".",
                        help="comma-separated folders to look up gin files and includes in, before "
                             "this repository's gin/ folder, which is always searched last (T5X's rule; "
                             "default '.')")


def add_seqio_arguments(parser: argparse.ArgumentParser) -> None:
    """T5X's data flags."""
    parser.add_argument("--tfds_data_dir", default=None,
                        help="overrides the data_dir of TFDS-backed seqio tasks")
    parser.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                        help="extra folders to look for cached seqio tasks in (repeatable)")


def apply_seqio_arguments(args: argparse.Namespace) -> None:
    import seqio

    if getattr(args, "tfds_data_dir", None):
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    if getattr(args, "seqio_additional_cache_dirs", None):
        seqio.add_global_cache_dirs(list(args.seqio_additional_cache_dirs))


def add_multihost_arguments(parser: argparse.ArgumentParser) -> None:
    """T5X's multi-host flags."""
    parser.add_argument("--multiprocess_gpu", action="store_true",
                        help="initialize jax.distributed (multi-host GPU; TPU VMs discover peers themselves)")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--process_count", type=int, default=None, help="number of processes")
    parser.add_argument("--process_index", type=int, default=None, help="index of this process")
    parser.add_argument("--initialization_timeout", type=int, default=None,
                        help="seconds jax.distributed.initialize waits for all processes "
                             "(default: jax's own)")


def _one_line(error: Exception) -> str:
    """gin's multi-line message folded to one line: what, where, and the offending text."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    head = lines[0] if lines else type(error).__name__
    rest = " | ".join(lines[1:3])
    if isinstance(error, SyntaxError):
        where = error.filename or "bindings"
        text = (error.text or "").strip()
        return f"{error.msg} in {where}" + (f" line {error.lineno}" if error.lineno else "") + (
            f": {text}" if text else "")
    return f"{head} ({rest})" if rest else head


class _DropGinPathProbes(logging.Filter):
    """Drops gin's `ERROR Path not found: X` lines.

    gin probes every search path for each file and include, and logs an ERROR for each
    miss of its Python-package reader before it finds the file on the next path; a file
    that is found nowhere still fails (as a one-line ConfigError), so nothing is lost.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and str(record.msg).startswith("Path not found:"))


def parse_gin_flags(gin_search_paths: Sequence[str], gin_files: Sequence[str],
                    gin_bindings: Sequence[str], *, skip_unknown: bool = False,
                    finalize_config: bool = True) -> None:
    """Parses gin files then bindings (later ones win); raises ConfigError in one line."""
    gin.clear_config()
    for path in gin_search_paths:
        if path:
            gin.add_config_file_search_path(os.fspath(path))
    if not gin_files:
        raise ConfigError("no --gin_file given; pass a model gin (e.g. models/t5_1_1_small.gin) "
                          "and a run gin (e.g. runs/finetune.gin)")
    resolved = []
    for name in gin_files:
        candidates = [name] + [os.path.join(p, name) for p in gin_search_paths if p]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise ConfigError(f"gin file {name!r} not found (searched {', '.join(map(str, gin_search_paths))})")
        resolved.append(found)
    probes = _DropGinPathProbes()
    logging.getLogger().addFilter(probes)
    try:
        gin.parse_config_files_and_bindings(resolved, None, skip_unknown=skip_unknown, finalize_config=False)
    except ConfigError:
        raise
    except Exception as error:  # gin raises ValueError, SyntaxError, ImportError, ... for bad files
        raise ConfigError(f"gin: {_one_line(error)}") from None
    finally:
        logging.getLogger().removeFilter(probes)
    used = macros_in_files(resolved, gin_search_paths)
    for binding in gin_bindings:
        check_macro_binding(binding, used)
        try:
            gin.parse_config(binding, skip_unknown=skip_unknown)
        except Exception as error:
            raise ConfigError(f"gin: bad binding {binding.strip()!r}: {_one_line(error)}") from None
    if finalize_config:
        try:
            gin.finalize()
        except ValueError as error:
            required = re.match(r"\s*(\w+)/macro\.value set to `%gin\.REQUIRED`", str(error))
            if required:
                name = required.group(1)
                raise ConfigError(f"gin: macro {name} is required; set it in a gin file or with "
                                  f"--gin.{name}=VALUE") from None
            raise ConfigError(f"gin: {_one_line(error)}") from None


def _resolve_include(name: str, including: str, search_paths: Sequence[str]) -> Optional[str]:
    for base in [os.path.dirname(including), *search_paths, "."]:
        candidate = os.path.join(base, name) if base else name
        if os.path.isfile(candidate):
            return candidate
    return None


def macros_in_files(files: Sequence[str], search_paths: Sequence[str]) -> set[str]:
    """Every macro the gin files (and their includes) define or reference with %NAME."""
    names: set[str] = set()
    seen: set[str] = set()
    pending = list(files)
    while pending:
        path = os.path.abspath(pending.pop())
        if path in seen:
            continue
        seen.add(path)
        try:
            text = pathlib.Path(path).read_text()
        except OSError:
            continue
        body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        names.update(_MACRO_USE.findall(body))
        names.update(_MACRO_DEFINITION.findall(body))
        for include in _INCLUDE.findall(body):
            found = _resolve_include(include, path, search_paths)
            if found:
                pending.append(found)
    return names


def check_macro_binding(binding: str, used: set[str]) -> None:
    """Refuses `NAME = VALUE` for a macro NAME that no loaded gin file uses (a typo, silently ignored by gin).

    Bindings of configurables (`trainer.Trainer.num_microbatches = 2`) contain a dot and
    keep gin's own checks; a scoped name (`train/NAME`) is left alone too.
    """
    match = _MACRO_BINDING.match(binding)
    if not match:
        return
    name = match.group(1)
    if name in used:
        return
    import difflib

    close = difflib.get_close_matches(name, sorted(used), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"gin: --gin.{name} sets macro {name}, which no loaded gin file uses{hint}")


def call_configured(fn, name: str):
    """Calls a gin-configured entry function; gin's call-time errors become one line."""
    try:
        return fn()
    except ValueError as error:
        text = str(error)
        if "gin.REQUIRED" in text or "Required bindings" in text or re.search(r"REQUIRED", text):
            missing = re.findall(r"'([A-Za-z_][\w.]*)'", text)
            raise ConfigError(f"gin: {name} is missing a required binding"
                              + (f": {missing[0]}" if missing else f" ({_one_line(error)})")
                              + " (set it in a gin file or with --gin.NAME=VALUE)") from None
        raise


def summarize_gin_config(model_dir: str, *, filename: str = "config.gin") -> pathlib.Path:
    """Writes gin's operative config (every value the run used) to MODEL_DIR/config.gin."""
    path = pathlib.Path(model_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(gin.operative_config_str())
    os.replace(tmp, path)
    return path


def accept_gin_shorthand(parser: argparse.ArgumentParser) -> None:
    """Makes `parser` understand `--gin.NAME=VALUE`, whoever calls its parse_args.

    The `personalize-t5x` dispatcher builds the parser and parses it itself, so the
    rewrite is attached to this parser instance rather than done before parsing.
    """
    import sys

    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return original(rewrite_gin_args(args), namespace)

    parser.parse_known_args = parse_known_args


def search_paths_from_args(args: argparse.Namespace) -> list[str]:
    """--gin_search_paths, then the defaults (T5X: `FLAGS.gin_search_paths + _DEFAULT_GIN_SEARCH_PATHS`)."""
    given = [p for p in str(args.gin_search_paths).split(",") if p]
    return given + [p for p in DEFAULT_GIN_SEARCH_PATHS if p not in given]


def parse_from_args(args: argparse.Namespace) -> None:
    parse_gin_flags(search_paths_from_args(args), args.gin_file, args.gin_bindings)


# ---------------------------------------------------------------------------
# The shared shape of the train / eval / infer command lines.
# ---------------------------------------------------------------------------
def add_entry_point_arguments(parser: argparse.ArgumentParser) -> None:
    """T5X's flags: gin files and bindings, multi-host, SeqIO data directories."""
    add_gin_arguments(parser)
    add_multihost_arguments(parser)
    add_seqio_arguments(parser)
    accept_gin_shorthand(parser)


def run_entry_point(args: argparse.Namespace, function, name: str, **call_kwargs) -> int:
    """Joins a multi-host job if asked, parses gin, calls the gin-configured `function`.

    Configuration and checkpoint problems end with one `error:` line and exit status 2.
    """
    from personalize_t5x.errors import PersonalizeError
    from personalize_t5x.trainer import partitioning

    try:
        partitioning.initialize_distributed(
            multiprocess_gpu=args.multiprocess_gpu, coordinator_address=args.coordinator_address,
            process_count=args.process_count, process_index=args.process_index,
            initialization_timeout=getattr(args, "initialization_timeout", None))
        apply_seqio_arguments(args)
        parse_from_args(args)
        configured = gin.get_configurable(function)
        call_configured(lambda: configured(**call_kwargs), name)
    except PersonalizeError as error:  # anything else is a bug and keeps its traceback
        import sys

        # gin appends "In call to configurable 'train' (<function ...>)": not the user's concern.
        message = re.sub(r"\s*In call to configurable .*$", "", str(error), flags=re.DOTALL)
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0
