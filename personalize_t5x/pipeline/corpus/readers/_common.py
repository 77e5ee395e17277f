"""Helpers shared by the readers: opening (gzip-aware), JSON lines, timestamps, ids."""
from __future__ import annotations

import calendar
import codecs
import datetime as dt
import hashlib
import math
import json
import os
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator

from personalize_t5x.io import files as io_lib
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import MAX_PLAUSIBLE_SECONDS

if TYPE_CHECKING:
    from personalize_t5x.pipeline.corpus.records import Document

_READ_CHUNK = 1 << 20


open_binary = io_lib.open_binary_for_read


def short_hash(*parts: str, length: int = 16) -> str:
    """A stable hex digest of the parts (for ids a source does not provide)."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def iter_json_lines(path: str, report: StageReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, decoded JSON object) per non-blank line: io.files' reader,
    bad lines through `report.bad_record` (raised, or counted with skip_bad)."""
    return io_lib.iter_json_lines(path, report=report)


def first_nonspace_char(path: str) -> str:
    """The first character of the file that is not whitespace or a BOM ('' if none)."""
    with open_binary(path, report=StageReport(skip_bad=True)) as f:  # a fault: reported by the real read
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped.startswith(codecs.BOM_UTF8):
                stripped = stripped[len(codecs.BOM_UTF8):].lstrip(b" \t\r\n")
            if stripped:
                return chr(stripped[0]) if stripped[0] < 128 else "?"


def iter_json_array(path: str, report: StageReport) -> Iterator[tuple[int, int, Any]]:
    """Streams the elements of a top-level JSON array: yields (line, index, value).

    The file is decoded incrementally and each element parsed as soon as it is complete,
    so memory holds one element (plus one read chunk), not the file. `line` is the line
    on which the element starts (1 for a one-line array; the index then tells which).
    A malformed element or invalid UTF-8 ends the file's array: the error goes through
    `report.bad_record` and, when skipped, the rest of that file is not read (there is
    no reliable way to find the next element).
    """
    with open_binary(path, report=report) as f:
        yield from _JsonArrayScanner(path, f, report).elements()


class _JsonArrayScanner:
    _SPACE = frozenset(" \t\r\n\ufeff")

    def __init__(self, path: str, f: IO[bytes], report: StageReport):
        self.path, self.f, self.report = path, f, report
        self.decoder = json.JSONDecoder()
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.buf = ""
        self.pos = 0
        self.line = 1  # the line number at buf[pos]
        self.eof = False
        self.failed = False  # invalid UTF-8 met and reported: no further errors for this file
        self.pending: InputError | None = None  # invalid UTF-8 met, to report when reached

    def _more(self, size: int = _READ_CHUNK) -> bool:
        """Appends the next chunk to buf; False at end of file or at invalid UTF-8.

        Invalid UTF-8 ends the readable text where it starts: the valid part before it is
        still appended, and the error is reported once that text has been used up.
        """
        if self.eof:
            if self.pending is not None:
                error, self.pending, self.failed = self.pending, None, True
                self.report.bad_record(error)
            return False
        chunk = self.f.read(size)
        final = not chunk
        try:
            text = self.utf8.decode(chunk, final)
        except UnicodeDecodeError as e:
            text = chunk[: e.start].decode("utf-8", errors="ignore") if e.start else ""
            bad_line = self.line + self.buf.count("\n", self.pos) + chunk[: e.start].count(b"\n")
            self.pending = InputError(self.path, bad_line, "<file>", "invalid UTF-8")
            final = True
        if self.pos:
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += text
        self.eof = final
        return bool(text) or not final

    def _skip_space(self) -> bool:
        """Advances over whitespace; False when the file ends (or fails) first."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in self._SPACE:
                if buf[pos] == "\n":
                    self.line += 1
                pos += 1
            self.pos = pos
            if pos < n:
                return True
            if not self._more():
                return False

    def _fail(self, field: str, reason: str, line: int | None = None) -> None:
        if not self.failed:
            self.report.bad_record(InputError(self.path, self.line if line is None else line, field, reason))

    def elements(self) -> Iterator[tuple[int, int, Any]]:
        if not self._skip_space():
            self._fail("<file>", "empty file; expected a JSON array")
            return
        if self.buf[self.pos] != "[":
            self._fail("<file>", "expected a JSON array ('[')")
            return
        self.pos += 1
        index = 0
        while True:
            if not self._skip_space():
                self._fail("<file>", "unterminated JSON array (the file ends before ']')")
                return
            ch = self.buf[self.pos]
            if ch == "]":
                self.pos += 1
                if self._skip_space():
                    self._fail("<file>", "extra data after the JSON array")
                return
            if index:
                if ch != ",":
                    self._fail("<record>", f"malformed JSON array: expected ',' or ']' after element {index - 1}")
                    return
                self.pos += 1
                if not self._skip_space():
                    self._fail("<file>", "unterminated JSON array (the file ends before ']')")
                    return
            while True:
                # Reads grow with the element so a huge element costs O(n log n), not O(n^2).
                grow = max(_READ_CHUNK, len(self.buf) - self.pos)
                try:
                    value, end = self.decoder.raw_decode(self.buf, self.pos)
                    if end >= len(self.buf) and not isinstance(value, (dict, list)) and self._more(grow):
                        continue  # a number cut by the chunk boundary
                    break
                except json.JSONDecodeError as e:
                    # A truncated buffer fails at its very end (or inside an open string);
                    # read on before calling the element malformed.
                    incomplete = e.pos >= len(self.buf) - 16 or e.msg.startswith("Unterminated string")
                    if incomplete and self._more(grow):
                        continue
                    line = self.line + self.buf.count("\n", self.pos, e.pos)
                    self._fail("<record>", f"malformed JSON: array element {index}: {e.msg}", line)
                    return
                except RecursionError:
                    self._fail("<record>", f"malformed JSON: array element {index}: nested too deeply")
                    return
            # The element's text through the one JSONL decoder, so an array holds to the same
            # rules as a line (no lone surrogates, NaN, over-64-bit integers, 1024+ levels).
            try:
                value = io_lib.decode_json_line(self.buf[self.pos:end].encode("utf-8"), path=self.path, line=0)
            except InputError as error:
                self._fail("<record>", f"array element {index}: {error.reason}")
                return
            start_line = self.line
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            yield start_line, index, value
            index += 1


def parse_iso_utc(value: str) -> int:
    """Seconds since the epoch for an ISO 8601 date-time; no zone means UTC.

    Fractions of a second are dropped (floor). Raises ValueError if unparsable.
    """
    value = value.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        seconds = calendar.timegm(parsed.timetuple())
    else:
        seconds = calendar.timegm(parsed.utctimetuple())
    if seconds >= MAX_PLAUSIBLE_SECONDS:
        raise ValueError(f"implausibly late date: {value!r} (after 5138; the Document format would refuse it)")
    return seconds


def parse_epoch_seconds(value: Any) -> int:
    """An integer count of seconds from an int, an integral float, or a numeric string.

    Raises ValueError (with a message fit for an InputError reason) otherwise, including
    for values that look like milliseconds.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not seconds since the epoch: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"not seconds since the epoch: {value!r}") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not seconds since the epoch: {value!r}")
        value = math.floor(value)  # the one rule for fractions of a second: floor
    if not isinstance(value, int):
        raise ValueError(f"not seconds since the epoch: {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"negative timestamp: {value}")
    if value >= MAX_PLAUSIBLE_SECONDS:
        raise ValueError(f"looks like milliseconds: {value} (expected seconds since the epoch)")
    return value


def string_field(obj: dict[str, Any], key: str) -> str | None:
    """obj[key] as a string: ints become their decimal form; None/absent give None."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, str)):
        return str(value)
    return None


class SeenIds:
    """Doc ids already yielded in this read: a repeat is dropped and counted.

    Dumps repeat records (Amazon 2018 has exact duplicate lines; Pushshift dumps the odd
    item twice; one message sits in two mbox archives); downstream ids must be unique.
    Memory is one string per document.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def is_new(self, doc_id: str, report: StageReport, reason: str = "duplicate_doc_id") -> bool:
        if doc_id in self._seen:
            report.drop(reason)
            return False
        self._seen.add(doc_id)
        return True


def document(path: str, line: int, user_id: str, doc_id: str, timestamp: int, title: str, text: str, *,
             timestamp_field: str = "timestamp") -> "Document":
    """A Document built by a reader, checked by the canonical record's own validation
    (records.document_from_json) before it can be written: a value the next stage would
    refuse (a date after 5138, an empty id, ...) is a located error here instead. The
    error names the input's own field (`timestamp_field`) where the timestamp is wrong."""
    from personalize_t5x.pipeline.corpus.records import document_from_json

    if type(timestamp) is int and timestamp >= MAX_PLAUSIBLE_SECONDS and timestamp_field != "timestamp":
        raise InputError(path, line, timestamp_field,
                         f"implausibly late: {timestamp} s since the epoch is after the year 5138")
    try:
        return document_from_json({"user_id": user_id, "doc_id": doc_id, "timestamp": timestamp, "title": title,
                                   "text": text}, path=path, line=line)
    except InputError as error:
        if error.field == "timestamp" and timestamp_field != "timestamp":
            raise InputError(path, line, timestamp_field, error.reason) from None
        raise


def require_files(paths: list[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise InputError(path, 0, "<file>", "no such file")
        if os.path.isdir(path):
            raise InputError(path, 0, "<file>", "is a directory; pass the file inside it")


def kept_documents(attempts: Iterable[Callable[[], "Document | None"]], *, report: StageReport,
                   seen: "SeenIds") -> Iterator["Document"]:
    """The readers' shared loop: each attempt converts one record to a Document (None =
    dropped on purpose, already counted); a located error is reported (raised or counted),
    a repeated doc id is dropped and counted, and every yielded document is counted kept."""
    for attempt in attempts:
        try:
            document = attempt()
        except InputError as error:
            report.bad_record(error)
            continue
        if document is None or not seen.is_new(document.doc_id, report):
            continue
        report.kept += 1
        yield document
