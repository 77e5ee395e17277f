"""Email in mbox form -> Documents (the form in which the paper's email domain arrives).

Messages are split on "From " lines exactly as the stdlib `mailbox.mbox` does (any line
starting with "From " opens a message), but streamed: one message in memory at a time,
gzip allowed, and each message located by the line of its "From " line. Body lines
escaped as ">From " (mboxo/mboxrd) lose one ">". Each message is parsed by the stdlib
`email` package (`policy.default`: MIME, encoded words, transfer encodings, charsets).

Mapping:

- `user_id`: the sender's address from `From`, lowercased. Mailman/pipermail archives
  write "john at example.com"; that form is read as john@example.com.
- `title`: `Subject`, decoded, whitespace collapsed ("Re:" prefixes are kept: they are
  what the user saw).
- `timestamp`: `Date` as seconds UTC (no zone means UTC); when `Date` is missing or
  unparsable, the date of the "From " line.
- `doc_id`: `Message-ID` without its angle brackets; for a message without one,
  "sha1:" + the first 20 hex digits of the SHA-1 of its raw bytes (stable).
- `text`: the first text/plain part (falling back to text/html through
  `cleaning.html_to_text`, leaving out `<blockquote>`s: the quoted message), with what
  the sender did not write removed:
  quoted lines (starting with ">"), attribution lines ("On <date>, <name> wrote:",
  also folded over two lines, and "<name> wrote:" right before quoted lines, plus the
  French/German/Spanish/Italian/Portuguese/Dutch forms), and everything from the
  first of: a signature delimiter line ("-- ", or "--" once trailing spaces are gone),
  an "-----Original Message-----" or "Forwarded message" separator, or a line of
  underscores (Outlook's reply separator, Mailman's list footer). Whitespace is then
  normalized.

Dropped and counted: messages with no text part (`no_text_part`), messages with nothing
left after the removals (`empty_text`: pure quotes or forwards), a Message-ID already read
(`duplicate_doc_id`: one message archived in two mailboxes). Located errors: text before
the first "From " line (not an mbox), a missing or unparsable `From` address, no usable
date at all.
"""
from __future__ import annotations

import functools

import datetime as dt
import email.utils
import hashlib
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Iterator, Sequence

from personalize_t5x.pipeline.corpus import cleaning
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common
from personalize_t5x.pipeline.corpus.records import Document

_PARSER = BytesParser(policy=policy.default)
_FROM_ESCAPE = re.compile(rb"^>+From ")
_PIPERMAIL_ADDRESS = re.compile(r"([^\s<>()\"',;:]+) at ([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
_ATTRIBUTION_VERBS = r"(?:wrote|writes|said|a écrit|schrieb|escribió|ha scritto|escreveu|schreef)"
_ON_WROTE = re.compile(rf"^(?:On|Le|Am|El|Il|Em|Op)\b.*\b{_ATTRIBUTION_VERBS}\b[^:]*:$", re.IGNORECASE)
_ON_START = re.compile(r"^(?:On|Le|Am|El|Il|Em|Op)\s", re.IGNORECASE)
_ENDS_WROTE = re.compile(rf"\b{_ATTRIBUTION_VERBS}\s*:$", re.IGNORECASE)
_CUT_LINE = re.compile(
    r"^(?:-{2,}\s*Original Message\s*-{2,}|-{2,}\s*Forwarded message\s*-{2,}|Begin forwarded message:|_{10,})$",
    re.IGNORECASE,
)


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    seen = _common.SeenIds()
    for path in paths:
        yield from _common.kept_documents(
            (functools.partial(convert, data, from_line, path, line, report)
             for line, from_line, data in iter_raw_messages(path, report)),
            report=report, seen=seen)


def iter_raw_messages(path: str, report: StageReport) -> Iterator[tuple[int, bytes, bytes]]:
    """Yields (line of the "From " line, the "From " line, the message's bytes)."""
    start = 0
    from_line = b""
    lines: list[bytes] = []
    complained = False
    with _common.open_binary(path, report=report) as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 BOM: the first message still starts here
            if raw.startswith(b"From "):
                if start:
                    yield start, from_line, _message_bytes(lines)
                start, from_line, lines = number, raw, []
            elif start:
                lines.append(raw)
            elif raw.strip() and not complained:
                complained = True
                report.bad_record(InputError(path, number, "<file>", "not an mbox: text before the first 'From ' line"))
        if start:
            yield start, from_line, _message_bytes(lines)


def _message_bytes(lines: list[bytes]) -> bytes:
    # The blank line that separates messages belongs to the format, not the message.
    while lines and not lines[-1].strip():
        lines.pop()
    for i, raw in enumerate(lines):
        if raw.startswith(b">") and _FROM_ESCAPE.match(raw):
            lines[i] = raw[1:]
    return b"".join(lines)


def sender_address(header: str) -> str | None:
    """The lowercased address in a From header, or None."""
    _, address = email.utils.parseaddr(header)
    if "@" in address:
        return address.strip().lower()
    match = _PIPERMAIL_ADDRESS.search(header)
    if match:
        return f"{match.group(1)}@{match.group(2)}".lower()
    return None


def _date_from_header(value: str) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    try:
        return int(parsed.timestamp())
    except (OverflowError, ValueError, OSError):
        return None


def _date_from_from_line(from_line: bytes) -> int | None:
    # "From sender@example.com Mon Jan  5 10:00:00 2015": the date follows the address.
    parts = from_line.decode("latin-1").split(None, 2)
    if len(parts) < 3:
        return None
    parsed = email.utils.parsedate_tz(parts[2])
    if parsed is None:
        return None
    try:
        return int(email.utils.mktime_tz(parsed if parsed[9] is not None else parsed[:9] + (0,)))
    except (OverflowError, ValueError):
        return None


def _header(message: EmailMessage, name: str) -> str:
    value = message.get(name)
    return "" if value is None else str(value)


def _part_text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", errors="replace")
    return content if isinstance(content, str) else ""


def body_text(message: EmailMessage) -> str | None:
    """The text the sender wrote, or None when the message has no text part."""
    part = message.get_body(preferencelist=("plain",))
    if part is not None:
        return strip_quotes_and_signature(_part_text(part))
    part = message.get_body(preferencelist=("html",))
    if part is not None:
        return strip_quotes_and_signature(cleaning.html_to_text(_part_text(part), drop_blockquotes=True))
    return None


def strip_quotes_and_signature(text: str) -> str:
    """Removes quoted replies, attribution lines and the signature; normalizes whitespace."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    kept: list[str] = []
    n = len(lines)
    i = 0
    while i < n:
        line = lines[i]
        stripped = line.strip()
        if line.rstrip("\n") == "-- " or stripped == "--" or _CUT_LINE.match(stripped):
            break
        if stripped.startswith(">"):
            i += 1
            continue
        if stripped and stripped[-1] == ":" and _is_attribution(lines, i):
            i += 1
            continue
        if _ON_START.match(stripped) and i + 1 < n and _ENDS_WROTE.search(lines[i + 1].strip()) and _is_attribution(lines, i + 1, folded=True):
            i += 2
            continue
        kept.append(line)
        i += 1
    return cleaning.normalize_whitespace("\n".join(kept))


def _is_attribution(lines: list[str], i: int, folded: bool = False) -> bool:
    stripped = lines[i].strip()
    if not folded and _ON_WROTE.match(stripped):
        return True
    if not _ENDS_WROTE.search(stripped):
        return False
    # "<name> wrote:" (or the second half of a folded "On ...") counts when quoted lines follow.
    for following in lines[i + 1:]:
        following = following.strip()
        if following:
            return following.startswith(">")
    return True  # nothing follows: an attribution of a quote that was cut away


def convert(data: bytes, from_line: bytes, path: str, line: int, report: StageReport) -> Document | None:
    """One raw message -> Document; None when dropped (counted in `report`)."""
    try:
        message = _PARSER.parsebytes(data)
        from_header = _header(message, "From")
    except Exception as e:  # noqa: BLE001 - the email package raises many kinds on bad headers
        raise InputError(path, line, "From", f"unparsable message headers ({type(e).__name__})") from None
    if not from_header.strip():
        raise InputError(path, line, "From", "missing")
    user = sender_address(from_header)
    if user is None:
        raise InputError(path, line, "From", f"no email address: {from_header.strip()[:80]!r}")
    try:
        date_header = _header(message, "Date")
        subject = _header(message, "Subject")
        message_id = _header(message, "Message-ID")
        text = body_text(message)
    except Exception as e:  # noqa: BLE001
        raise InputError(path, line, "<message>", f"unparsable message: {type(e).__name__}: {e}") from None
    timestamp = _date_from_header(date_header) if date_header.strip() else None
    if timestamp is None:
        timestamp = _date_from_from_line(from_line)
    if timestamp is None:
        if date_header.strip():
            raise InputError(path, line, "Date", f"unparsable: {date_header.strip()[:60]!r} (and no date on the 'From ' line)")
        raise InputError(path, line, "Date", "missing (and no date on the 'From ' line)")
    if timestamp < 0:
        raise InputError(path, line, "Date", f"before 1970: {date_header.strip()[:60]!r}")
    if text is None:
        report.drop("no_text_part")
        return None
    if not text:
        report.drop("empty_text")
        return None
    doc_id = message_id.strip().strip("<>").strip()
    if not doc_id or any(c.isspace() for c in doc_id):
        doc_id = "sha1:" + hashlib.sha1(data).hexdigest()[:20]
    return _common.document(path, line, user, doc_id, timestamp, cleaning.normalize_inline(subject), text,
                            timestamp_field="Date")
