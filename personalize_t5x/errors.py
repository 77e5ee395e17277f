"""Located input errors and the per-stage report of what was dropped and why.

Every stage follows one rule: a bad record either stops the run with a one-line
message naming file, line and field, or (with `skip_bad`) is skipped and counted.
Records dropped on purpose (the paper's filters, rows that are not user writing) are
always counted. Nothing disappears without a line in the report.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any


class PersonalizeError(ValueError):
    """The base class of the project's own errors: what the CLI and the entry points catch.

    Anything that is not a PersonalizeError is a bug and keeps its traceback. It stays a
    ValueError so that callers written against the older classes keep working.
    """


class InputError(PersonalizeError):
    """A bad input record, located by file, line (1-based; 0 if not line-based) and field."""

    def __init__(self, path: str, line: int, field: str, reason: str):
        self.path, self.line, self.field, self.reason = str(path), int(line), field, reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: field '{self.field}': {self.reason}"


@dataclasses.dataclass
class StageReport:
    """Counts for one stage: records kept, dropped on purpose, and bad ones skipped.

    Attributes:
      skip_bad: when False, `bad()` raises the InputError; when True it counts it.
      kept: records the stage passed on.
      dropped: reason -> count of records removed on purpose (filters, non-user rows).
      bad: reason -> count of malformed records skipped (only with skip_bad).
      bad_examples: the first few skipped errors, verbatim, so a user can find them.
    """

    skip_bad: bool = False
    kept: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bad_examples: list[str] = dataclasses.field(default_factory=list)
    max_bad_examples: int = 20

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def bad_record(self, error: InputError) -> None:
        if not self.skip_bad:
            raise error
        self.bad[f"{error.field}: {error.reason.split(':')[0]}"] += 1
        if len(self.bad_examples) < self.max_bad_examples:
            self.bad_examples.append(str(error))

    def merge(self, other: "StageReport") -> None:
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.bad.update(other.bad)
        room = self.max_bad_examples - len(self.bad_examples)
        self.bad_examples.extend(other.bad_examples[: max(room, 0)])

    def to_json(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "bad_skipped": dict(sorted(self.bad.items())),
            "bad_examples": list(self.bad_examples),
        }
