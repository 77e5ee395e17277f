"""File helpers shared by every stage: gzip-aware text files and atomic outputs.

Outputs are written to a temporary sibling and renamed into place, so a stage that is
killed half-way never leaves a file that a rerun could mistake for a finished one.
Gzip streams are written with a zero mtime and no file name so that the same records
give byte-identical files (the determinism tests rely on it).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import queue
import re
import tempfile
import threading
import zlib
from typing import IO, Any, Iterable, Iterator

import orjson
from isal import igzip, isal_zlib

from personalize_t5x.errors import InputError, PersonalizeError, StageReport

# Gzip goes through ISA-L (python-isal): the same gzip format as zlib's, deflated ~5x and
# inflated ~2x faster; its level 1 compresses text ~7x. Stage outputs are written once
# and read a few times, so speed wins.
GZIP_LEVEL = 1


def is_gzip_path(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(".gz")


_STREAM_ERRORS = (EOFError, OSError, isal_zlib.error, zlib.error)


def _stream_error(path: str, error: BaseException, line: int = 0) -> InputError:
    if isinstance(error, EOFError):
        kind = "truncated compressed stream"
    elif is_gzip_path(path):
        kind = "corrupt or not gzip compressed stream"
    else:
        kind = "unreadable file"
    detail = " ".join(str(error).split()).replace(f"{path}: ", "")
    return InputError(path, line, "<file>", f"{kind} ({detail or type(error).__name__})")


class _LocatedReader:
    """A binary reader whose I/O and decompression failures are located InputErrors.

    With a `report` that skips bad records, a failure is counted there once and the
    stream ends (b""): nothing after a corrupt point of a compressed stream is readable.
    """

    def __init__(self, path: str, raw: IO[bytes], report: StageReport | None):
        self._path, self._raw, self._report, self._failed = path, raw, report, False

    def _fail(self, error: BaseException) -> bytes:
        located = _stream_error(self._path, error)
        if self._report is None or not self._report.skip_bad:
            raise located from None
        if not self._failed:
            self._failed = True
            self._report.bad_record(located)
        return b""

    def read(self, size: int = -1) -> bytes:
        if self._failed:
            return b""
        try:
            return self._raw.read(size)
        except _STREAM_ERRORS as error:
            return self._fail(error)

    def readline(self, size: int = -1) -> bytes:
        if self._failed:
            return b""
        try:
            return self._raw.readline(size)
        except _STREAM_ERRORS as error:
            return self._fail(error)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "_LocatedReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_binary_for_read(path: str | os.PathLike, *, report: StageReport | None = None) -> IO[bytes]:
    """Opens a file for binary reading, transparently gunzipping `*.gz` paths. A missing
    file or a folder raises a located InputError; so does a truncated or corrupt stream,
    unless `report` skips bad records (then it is counted and the stream ends there)."""
    path = os.fspath(path)
    _check_readable_file(path)
    try:
        raw = igzip.open(path, "rb") if is_gzip_path(path) else open(path, "rb")
    except OSError as error:
        raise _stream_error(path, error) from None
    return _LocatedReader(path, raw, report)  # type: ignore[return-value]


_READ_BLOCK_BYTES = 1 << 22
_BLOCKS_AHEAD = 4


def _iter_gunzipped_blocks(path: str | os.PathLike) -> Iterator[bytes]:
    """Decompressed blocks of a gzip file, inflated on a background thread.

    The inflater releases the GIL while it works, so the caller's parsing on one core overlaps
    the decompression on the other. Errors (a truncated or corrupt stream) are re-raised
    in the caller; closing the generator early stops the thread.
    """
    blocks: queue.Queue = queue.Queue(maxsize=_BLOCKS_AHEAD)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def inflate() -> None:
        # The inflater directly, with large inputs: gzip.GzipFile inflates 128 KB at a time,
        # and each return to Python makes this thread wait for the parser's GIL slice.
        try:
            with open(path, "rb") as f:
                member = isal_zlib.decompressobj(wbits=31)
                fed = False
                while compressed := f.read(_READ_BLOCK_BYTES // 4):
                    while compressed:
                        fed = True
                        block = member.decompress(compressed)
                        if block and not put(block):
                            return
                        compressed = b""
                        if member.eof:  # concatenated gzip members are one stream
                            compressed, member, fed = member.unused_data, isal_zlib.decompressobj(wbits=31), False
                if fed and not member.eof:
                    raise EOFError(f"{os.fspath(path)}: compressed file ended before the end-of-stream marker")
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)
            return
        put(None)

    thread = threading.Thread(target=inflate, name=f"gunzip:{os.path.basename(os.fspath(path))}", daemon=True)
    thread.start()
    try:
        while (item := blocks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _iter_plain_blocks(path: str | os.PathLike) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK_BYTES):
            yield block


_BOM = b"\xef\xbb\xbf"
# orjson turns an integer literal beyond 64 bits into a float without a word; a run of 19+
# digits sends the line to a second, exact check (rare: ids and hashes inside strings too).
_LONG_DIGITS = re.compile(rb"\d{19,}")
_INT64 = (-(1 << 63), 1 << 63)


def _checked_int(literal: str) -> int:
    value = int(literal)
    if not _INT64[0] <= value < _INT64[1]:
        raise OverflowError(literal)
    return value


def decode_json_line(raw: bytes, *, path: str, line: int) -> Any:
    """One JSONL line (bytes, without its newline) -> the JSON value, or a located InputError.

    The one decoder every JSONL reader uses. Strict in what every later stage needs to
    write back: valid UTF-8, no lone surrogates (`\\ud800`), no NaN/Infinity, nesting at
    most 1024 deep, integers within 64 bits. A UTF-8 byte order mark on the first line
    is accepted (and only there: elsewhere it is not whitespace).
    """
    if line == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(path, line, "<line>", f"invalid UTF-8: at byte {e.start}") from None
        reason = str(error.msg) if hasattr(error, "msg") else str(error)
        if "surrogate" in reason:
            reason = f"lone surrogate escape in a string ({reason})"
        elif "depth limit" in reason:
            reason = "nested more than 1024 levels deep"
        raise InputError(path, line, "<line>", f"malformed JSON: {reason} at column {getattr(error, 'colno', '?')}") from None
    if _LONG_DIGITS.search(raw):
        try:
            json.loads(raw.decode("utf-8"), parse_int=_checked_int)
        except OverflowError as error:
            raise InputError(path, line, "<line>", f"integer {str(error)[:40]} does not fit in 64 bits") from None
        except (ValueError, RecursionError):
            pass  # orjson read it; only the integer range was in question
    return value


def _check_readable_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(path, 0, "<file>", "no such file")
    if os.path.isdir(path):
        raise InputError(path, 0, "<file>", "is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, 0, "<file>", "not readable (permission denied)")


def iter_json_lines(path: str | os.PathLike, *, report: StageReport | None = None, objects_only: bool = True,
                    stream: IO[bytes] | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based line number, decoded value) for each non-blank line of a JSONL(.gz) file.

    The project's one located JSONL reader. A bad line (see `decode_json_line`; with
    `objects_only`, also a value that is not an object) goes through `report.bad_record`:
    raised, or skipped and counted when the report has skip_bad. A missing file, a folder,
    or a truncated/corrupt gzip stream is a located InputError too (counted with
    skip_bad, after which the rest of that file is unreadable). `stream` reads an already
    opened binary stream instead of opening `path` (Beam's filesystems).
    """
    path = os.fspath(path)
    report = report if report is not None else StageReport()
    lines = iter_binary_lines(path, stream=stream)
    if stream is None:
        _check_readable_file(path)  # a missing input is never a record to skip
    try:
        for number, raw in lines:
            if not raw or raw.isspace():
                continue
            try:
                value = decode_json_line(raw, path=path, line=number)
                if objects_only and type(value) is not dict:
                    raise InputError(path, number, "<record>", f"expected a JSON object, got {type(value).__name__}")
            except InputError as error:
                report.bad_record(error)
                continue
            yield number, value
    except InputError as error:
        if error.field != "<file>":
            raise
        report.bad_record(error)


def iter_json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; the first bad line raises."""
    return iter_json_lines(path)


def iter_binary_lines(path: str | os.PathLike, *, stream: IO[bytes] | None = None) -> Iterator[tuple[int, bytes]]:
    """Yields (1-based line number, raw line bytes without the newline or a final CR).

    A file that cannot be opened, or a compressed stream that is truncated or corrupt,
    raises an InputError with field '<file>' naming the line where reading stopped.
    """
    path = os.fspath(path)
    if stream is not None:
        blocks: Iterator[bytes] = iter(lambda: stream.read(_READ_BLOCK_BYTES), b"")
    else:
        _check_readable_file(path)
        blocks = _iter_gunzipped_blocks(path) if is_gzip_path(path) else _iter_plain_blocks(path)
    number = 0
    partial = b""
    try:
        for block in blocks:
            lines = (partial + block).split(b"\n") if partial else block.split(b"\n")
            partial = lines.pop()
            for line in lines:
                number += 1
                yield number, line.rstrip(b"\r")
    except _STREAM_ERRORS as error:
        raise _stream_error(path, error, number + 1) from None
    if partial:
        yield number + 1, partial.rstrip(b"\r")


class OutputError(PersonalizeError):
    """An output that cannot be written (unwritable folder, a file in the way, a directory
    where a file belongs, a full disk), as one line naming the path."""

    def __init__(self, path: str, error: OSError):
        reason = error.strerror or str(error)
        ancestor = os.path.dirname(os.path.abspath(path))
        while ancestor and not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
            ancestor = os.path.dirname(ancestor)
        if os.path.exists(ancestor) and not os.path.isdir(ancestor):
            reason = f"{ancestor} is a file, not a folder"
        super().__init__(f"cannot write: {reason}", path=path, field="<output>")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Writes `path` through a temporary file renamed into place on success.

    `mode` is "w" (text, UTF-8) or "wb". Gzip is applied for `*.gz` paths.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "is a directory")
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    except OSError as error:
        raise OutputError(path, error) from None
    try:
        with os.fdopen(fd, "wb") as raw:
            if is_gzip_path(path):
                sink: IO[bytes] = igzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL)
            else:
                sink = raw
            try:
                if "b" in mode:
                    yield sink
                else:
                    text = io.TextIOWrapper(sink, encoding="utf-8", newline="\n", write_through=True)
                    yield text
                    text.flush()
                    text.detach()
            finally:
                if sink is not raw:
                    sink.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        try:
            os.replace(tmp_path, path)
        except OSError as error:
            raise OutputError(path, error) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def dumps_record(record: dict[str, Any]) -> bytes:
    """One canonical JSON line as UTF-8 bytes: sorted keys, no spaces, newline-terminated."""
    return orjson.dumps(record, option=_CANONICAL)


loads_record = orjson.loads


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]], *, chunk: int = 2048) -> int:
    """Writes records as JSON lines (gzip for `*.gz`), atomically. Returns the count.

    Lines are joined in chunks before they reach gzip: one large write costs far less than
    thousands of small ones.
    """
    count = 0
    pending: list[bytes] = []
    with atomic_output(path, "wb") as f:
        for record in records:
            pending.append(dumps_record(record))
            if len(pending) >= chunk:
                f.write(b"".join(pending))
                count += len(pending)
                pending.clear()
        f.write(b"".join(pending))
        count += len(pending)
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_output(path) as f:
        json.dump(obj, f, ensure_ascii=False, sort_keys=True, indent=2)
        f.write("\n")


def resolve_inside(root: str | os.PathLike, name: str, *, what: str,
                   also_inside: Iterable[str | os.PathLike] = (), error: type = PersonalizeError) -> str:
    """`root/name`, refused unless it stays inside `root` (or one of `also_inside`).

    For paths a file names (checkpoint specs, index files): an absolute name, a `..` that
    climbs out, or a symlink resolving outside is refused with a PersonalizeError naming
    `what` (of class `error`). Returns the lexical path `root/name` (symlinks kept, so a HF cache snapshot
    still reads through its blob links).
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what}: {name!r} is not a file name", path=os.fspath(root))
    if os.path.isabs(name) or "://" in name:
        raise error(f"{what}: {name!r} is not inside the checkpoint folder (absolute path refused)",
                               path=os.fspath(root))
    joined = os.path.normpath(os.path.join(os.fspath(root), name))
    roots = [os.path.realpath(root)] + [os.path.realpath(r) for r in also_inside]
    lexical_root = os.path.normpath(os.path.abspath(root))
    if os.path.commonpath([os.path.abspath(joined), lexical_root]) != lexical_root:
        raise error(f"{what}: {name!r} climbs out of the checkpoint folder", path=os.fspath(root))
    resolved = os.path.realpath(joined)
    if not any(os.path.commonpath([resolved, r]) == r for r in roots):
        raise error(f"{what}: {name!r} resolves to {resolved}, outside the checkpoint folder",
                               path=os.fspath(root))
    return joined
