"""The CLI's commands, one module each (see personalize_t5x/cli.py), and the option
checks they share: an invalid value ends in exit 2 with one line naming the option."""
from __future__ import annotations

import argparse
import contextlib
import math
from typing import Callable, Iterator

from personalize_t5x.errors import OptionError, PersonalizeError


def _number(kind: Callable, minimum: float | None, maximum: float | None, *, strict_min: bool = False) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if strict_min else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict_min else '>='} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, None)
non_negative_int = _number(int, 0, None)
seed_int = _number(int, 0, 2 ** 63 - 1)
fraction = _number(float, 0.0, 1.0)
non_negative_float = _number(float, 0.0, None)
open_unit_interval = _number(float, 0.0, 1.0, strict_min=True)


@contextlib.contextmanager
def config_values() -> Iterator[None]:
    """Around a config dataclass's constructor only: its __post_init__ validation (a
    ValueError naming the field) becomes an OptionError, so the CLI reports it in one line.
    Never wrap more than the constructor: a ValueError elsewhere is a bug."""
    try:
        yield
    except PersonalizeError:
        raise
    except ValueError as error:
        text = str(error)
        field, _, reason = text.partition(": ")
        if not reason or " " in field:
            field, reason = "<options>", text
        raise OptionError(f"--{field.replace('_', '-')}" if field != "<options>" else field, reason) from None


def check_output_folder(path: str, option: str) -> None:
    """Refuses an output folder that cannot be one, before any input is read: an existing
    file, a path under a file, or (for a non-root user) a folder without write permission.
    Remote paths (gs://, ...) are left to their filesystem."""
    import os

    if "://" in path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError(option, f"{path} exists and is not a folder")
    parent = path
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent):
        raise OptionError(option, f"{parent} is a file, so {path} cannot be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(option, f"{parent} is not writable")
