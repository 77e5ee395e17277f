"""The canonical Document record and its JSONL form, the project's stable input format.

One JSON object per line (the file may be gzipped):

    {"user_id": "u1", "doc_id": "d17", "timestamp": 1420070400,
     "title": "Why does my espresso taste sour?", "text": "I grind ..."}

`timestamp` is an integer count of seconds since the Unix epoch, UTC. Any corpus can be
brought into the pipeline by writing this format; the readers in this package convert
public formats into it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Iterator

from personalize_t5x.io import files as io_lib
from personalize_t5x.errors import InputError, StageReport

# Seconds since the epoch beyond this (year 5138) are taken to be milliseconds by
# mistake: a clear error beats a corpus silently sorted into the far future.
MAX_PLAUSIBLE_SECONDS = 10**11

DOCUMENT_FIELDS = ("user_id", "doc_id", "timestamp", "title", "text")


@dataclasses.dataclass(frozen=True, order=False)
class Document:
    """One piece of writing by one user."""

    user_id: str
    doc_id: str
    timestamp: int
    title: str
    text: str

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies, and corpora have millions of documents.
        return {"user_id": self.user_id, "doc_id": self.doc_id, "timestamp": self.timestamp,
                "title": self.title, "text": self.text}

    @property
    def title_and_text(self) -> str:
        """Title and body joined as the paper's immediate context reads them."""
        return join_title_and_text(self.title, self.text)


def join_title_and_text(title: str, text: str) -> str:
    """Joins title and body with one newline; a missing title contributes nothing."""
    title = title.strip()
    return f"{title}\n{text}" if title else text


_new_object = object.__new__


def _document_from_valid_fields(values: dict[str, Any]) -> Document:
    # The frozen dataclass's __init__ pays one object.__setattr__ per field, seconds over a
    # million documents; the values are already validated, so fill the instance at once.
    document = _new_object(Document)
    document.__dict__.update(values)
    return document


def document_from_json(obj: Any, *, path: str = "<memory>", line: int = 0) -> Document:
    """Validates one decoded JSON object into a Document, or raises a located InputError."""
    if type(obj) is dict:
        # The common case, a record already in canonical form, is checked in one pass;
        # anything else takes the field-by-field path below, which normalizes or names
        # the offending field.
        user_id, doc_id, timestamp = obj.get("user_id"), obj.get("doc_id"), obj.get("timestamp")
        title, text = obj.get("title", ""), obj.get("text")
        if (type(timestamp) is int and 0 <= timestamp < MAX_PLAUSIBLE_SECONDS and type(title) is str
                and type(user_id) is str and user_id and not user_id.isspace()
                and type(doc_id) is str and doc_id and not doc_id.isspace()
                and type(text) is str and text and not text.isspace()):
            return _document_from_valid_fields(
                {"user_id": user_id, "doc_id": doc_id, "timestamp": timestamp, "title": title, "text": text})
    return _document_from_json_checked(obj, path=path, line=line)


def _document_from_json_checked(obj: Any, *, path: str, line: int) -> Document:
    if not isinstance(obj, dict):
        raise InputError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    values: dict[str, Any] = {}
    for field in ("user_id", "doc_id"):
        value = obj.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids are common in dumps; they are still ids
        if not isinstance(value, str) or not value.strip():
            raise InputError(path, line, field, "missing or not a non-empty string" if value is None or isinstance(value, str) else f"expected a string, got {type(value).__name__}")
        values[field] = value
    timestamp = obj.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise InputError(path, line, "timestamp", "missing or not an integer number of seconds since the epoch" if timestamp is None else f"expected an integer (seconds since the epoch): got {type(timestamp).__name__} {timestamp!r}")
    if isinstance(timestamp, float):
        if not math.isfinite(timestamp):
            raise InputError(path, line, "timestamp", f"not a finite number: {timestamp!r}")
        # The one rule for fractions of a second, in every reader: floor.
        timestamp = math.floor(timestamp)
    if timestamp < 0:
        raise InputError(path, line, "timestamp", f"negative timestamp: {timestamp}")
    if timestamp >= MAX_PLAUSIBLE_SECONDS:
        raise InputError(path, line, "timestamp", f"looks like milliseconds: {timestamp}; the format wants seconds since the epoch")
    values["timestamp"] = timestamp
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise InputError(path, line, "title", f"expected a string, got {type(title).__name__}")
    values["title"] = title
    text = obj.get("text")
    if not isinstance(text, str):
        raise InputError(path, line, "text", "missing" if text is None else f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(path, line, "text", "empty text")
    values["text"] = text
    return _document_from_valid_fields(values)


def read_documents(path: str | os.PathLike, *, report: StageReport | None = None) -> Iterator[Document]:
    """Streams Documents from a JSONL(.gz) file.

    Malformed lines raise a located InputError, or are skipped and counted in `report`
    when it was built with skip_bad=True. Duplicate doc ids within the file are errors
    too: ids are how profiles refer to documents.
    """
    report = report if report is not None else StageReport()
    path_str = os.fspath(path)
    if not os.path.exists(path_str):
        raise InputError(path_str, 0, "<file>", "no such file")
    seen_ids: set[str] = set()
    for number, obj in io_lib.iter_json_lines(path_str, report=report):
        try:
            document = document_from_json(obj, path=path_str, line=number)
            if document.doc_id in seen_ids:
                raise InputError(path_str, number, "doc_id", f"duplicate doc id: {document.doc_id!r}")
        except InputError as error:
            report.bad_record(error)
            continue
        seen_ids.add(document.doc_id)
        report.kept += 1
        yield document


def write_documents(path: str | os.PathLike, documents: Iterable[Document]) -> int:
    """Writes Documents as canonical JSONL (gzip for `*.gz`), atomically."""
    return io_lib.write_jsonl(path, documents)  # orjson serializes dataclasses natively


# ---------------------------------------------------------------------------- Example

EXAMPLE_FIELDS = ("example_id", "user_id", "split", "doc_id", "timestamp", "title", "immediate_context",
                  "target", "profile")


@dataclasses.dataclass(frozen=True)
class Example:
    """One generation example, as the examples stage writes it (docs/contracts.md).

    The examples stage is its only producer: it has already applied the paper's filters,
    deduplicated the user's history and listed in `profile` exactly the user's documents
    strictly earlier than the target, oldest first. Later stages read the record back
    from that stage's fingerprinted output and trust it (no re-validation, re-sorting or
    re-filtering).
    """

    example_id: str
    user_id: str
    split: str
    doc_id: str
    timestamp: int
    title: str
    immediate_context: str
    target: str
    profile: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"example_id": self.example_id, "user_id": self.user_id, "split": self.split,
                "doc_id": self.doc_id, "timestamp": self.timestamp, "title": self.title,
                "immediate_context": self.immediate_context, "target": self.target,
                "profile": list(self.profile)}


def example_from_json(obj: Any, *, path: str = "<memory>", line: int = 0) -> Example:
    """An Example from a record the examples stage wrote: fields are taken as they are;
    only a record that is not an object or lacks a field (a file from elsewhere) is a
    located InputError."""
    if type(obj) is not dict:
        raise InputError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    try:
        values = {name: obj[name] for name in EXAMPLE_FIELDS}
    except KeyError as e:
        raise InputError(path, line, e.args[0], "missing (not a file of the examples stage?)") from None
    values["profile"] = tuple(values["profile"])
    example = _new_object(Example)
    example.__dict__.update(values)
    return example
