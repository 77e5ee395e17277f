"""LongLaMP records (a JSON array, or JSON lines) -> Documents.

LongLaMP (Kumar et al. 2024; the `LongLaMP/LongLaMP` dataset) ships one record per
example: the user's id, an `input` prompt, the target `output`, and a `profile` list of
the user's earlier items. The published tasks and their field names:

| task (user / temporal) | user field   | target  | profile item fields                          |
|------------------------|--------------|---------|----------------------------------------------|
| product_review         | `reviewerId` | output  | `reviewText`, `summary`, `overall`, `description` |
| abstract_generation    | `name`       | output  | `abstract`, `title`, `id`, `year`            |
| topic_writing (Reddit) | `author`     | output  | `content`, `summary`, `id`, `author`         |
| email completion (Avocado, not public; LaMP-style) | `user_id` | output | `text`, `title`, `id`, `date` |

Each profile item and the target become Documents of the record's user.

User: the first present of `user_id`, `reviewerId`, `reviewerID`, `name`, `author`,
`user`; a record with none but an `id` (LaMP-style questions) is its own user,
`"record:<id>"`.

Profile item -> Document:

- `text`: the first non-empty of `text`, `reviewText`, `abstract`, `content`, `output`
  (an older topic-writing layout stores items as `input`/`output`);
- `title`: `title`, else `summary` (a review's or a Reddit post's summary line), else
  read off an `input` prompt as for the target (below), else "" (whitespace collapsed);
- `doc_id`: `"<user>:<id>"` when the item has an `id` (an abstract's paper id is shared
  by its co-authors, hence the user prefix), else `"<user>:h<sha1 of the text>"`;
- `timestamp`: from `date` (ISO date or date-time, or seconds), `timestamp` / `time` /
  `unixReviewTime` (seconds), or `year` (1 January of that year, UTC, plus the item's
  position in the list in seconds, so that one year's items stay in list order).

Target -> Document: `text` = `output`; `doc_id` = `"<user>:target:<id>"` when the
record has an `id`, else `"<user>:h<sha1 of the text>"` (so the same text met again as a
later record's profile item is recognised as the same document); `title` from the
record's `title` / `summary` if present, else read off the LongLaMP prompt in `input`:
'Generate an abstract for the title "<title>" ...', '... The summary of the review text is
"<summary>".', 'Generate the content for a reddit post <summary>'.

Timestamps when the data has no dates (product_review and topic_writing have none): each
user has a synthetic clock starting at 0 (seconds after the epoch: plainly synthetic, and
earlier than any real date). Undated profile items take the clock's next values in list
order; an undated target takes one second more than the latest timestamp of its record's
profile (items read earlier keep the timestamp they got then), and the clock moves past
it. So in every record each profile item is strictly before its target, and a user's
later record (the temporal setting: the same user again, with the earlier target now in
the profile) continues after the earlier one. A dated target keeps its date.

Dropped and counted: records without a target (`no_target`: e.g. a test split without
outputs; their profile items are still read), items or targets with empty text
(`empty_text`), documents already read (`duplicate_doc_id`: users of the temporal
setting reappear across splits with overlapping profiles; the first reading wins).
Located errors: bad JSON or UTF-8, a record that is not an object, no user field,
a `profile` that is not a list of objects, unparsable dates.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Any, Iterator, Sequence

from personalize_t5x.io import files as io_lib
from personalize_t5x.pipeline.corpus import cleaning
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common
from personalize_t5x.pipeline.corpus.records import Document

USER_FIELDS = ("user_id", "reviewerId", "reviewerID", "name", "author", "user")
TEXT_FIELDS = ("text", "reviewText", "abstract", "content", "output")
TITLE_FIELDS = ("title", "summary")
SECONDS_FIELDS = ("timestamp", "time", "unixReviewTime")

_TITLE_FROM_INPUT = (
    re.compile(r'^\s*Generate an abstract for the title\s*"(.*)"\s*(?:using the following items:|$)', re.DOTALL | re.IGNORECASE),
    re.compile(r'The summary of the review text is\s*"(.*)"\s*\.?\s*$', re.DOTALL),
    re.compile(r"^\s*Generate the content for a reddit post[:\s]\s*(.*?)\s*$", re.DOTALL | re.IGNORECASE),
)


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    state = _State()
    for path in paths:
        if _common.first_nonspace_char(path) == "[":
            records = ((line, index, obj) for line, index, obj in _common.iter_json_array(path, report))
        else:
            records = ((line, None, obj) for line, obj in _common.iter_json_lines(path, report))
        for line, index, obj in records:
            where = "" if index is None else f" (array element {index})"
            try:
                documents = convert(obj, path, line, where, report, state)
            except InputError as error:
                report.bad_record(error)
                continue
            report.kept += len(documents)
            yield from documents


class _State:
    """What one read remembers across records: doc id -> timestamp of every document
    yielded, and per user the next synthetic timestamp."""

    def __init__(self) -> None:
        self.timestamps: dict[str, int] = {}
        self.clock: dict[str, int] = {}


def title_from_input(prompt: str) -> str:
    """The target's title as LongLaMP's prompt states it ("" when it does not)."""
    for pattern in _TITLE_FROM_INPUT:
        match = pattern.search(prompt)
        if match:
            title = match.group(1).strip()
            if len(title) >= 2 and title[0] == title[-1] == '"':
                title = title[1:-1]
            return cleaning.normalize_inline(title)
    return ""


def _user_id(obj: dict[str, Any], path: str, line: int, where: str) -> str:
    for key in USER_FIELDS:
        value = _common.string_field(obj, key)
        if value is not None and value.strip():
            return value.strip()
    record_id = _common.string_field(obj, "id")
    if record_id is not None and record_id.strip():
        return f"record:{record_id.strip()}"
    raise InputError(path, line, "user_id", f"missing: none of {', '.join(USER_FIELDS)} (nor a record id){where}")


def _first_text(item: dict[str, Any], keys: Sequence[str]) -> str:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _explicit_timestamp(item: dict[str, Any], position: int, path: str, line: int, where: str) -> int | None:
    """The item's own time in seconds, or None when it has none."""
    date = item.get("date")
    if date is not None and date != "":
        if isinstance(date, str) and not date.strip().lstrip("-").isdigit():
            try:
                return _common.parse_iso_utc(date)
            except ValueError:
                pass
            try:
                return calendar.timegm(dt.date.fromisoformat(date.strip()).timetuple())
            except ValueError:
                raise InputError(path, line, "date", f"not an ISO 8601 date: {date!r}{where}") from None
        try:
            return _common.parse_epoch_seconds(date)
        except ValueError as e:
            raise InputError(path, line, "date", f"{e}{where}") from None
    for key in SECONDS_FIELDS:
        value = item.get(key)
        if value is not None and value != "":
            try:
                return _common.parse_epoch_seconds(value)
            except ValueError as e:
                raise InputError(path, line, key, f"{e}{where}") from None
    year = item.get("year")
    if year is not None and year != "":
        try:
            year_number = int(str(year).strip())
            if not 1970 <= year_number <= 9999:
                raise ValueError
        except ValueError:
            raise InputError(path, line, "year", f"not a year from 1970 on: {year!r}{where}") from None
        return calendar.timegm((year_number, 1, 1, 0, 0, 0)) + position
    return None


def _profile(obj: dict[str, Any], path: str, line: int, where: str) -> list[dict[str, Any]]:
    profile = obj.get("profile")
    if profile is None:
        return []
    if isinstance(profile, str):  # some exports store the list as a JSON string
        try:
            profile = io_lib.decode_json_line(profile.encode("utf-8", "surrogatepass"), path=path, line=0)
        except InputError as error:
            raise InputError(path, line, "profile", f"not a list: a string that is not a JSON list ({error.reason}){where}") from None
    if not isinstance(profile, list):
        raise InputError(path, line, "profile", f"not a list: {type(profile).__name__}{where}")
    for i, item in enumerate(profile):
        if not isinstance(item, dict):
            raise InputError(path, line, "profile", f"not a list of objects: item {i} is a {type(item).__name__}{where}")
    return profile


def convert(obj: Any, path: str, line: int, where: str, report: StageReport, state: _State | None = None) -> list[Document]:
    """One record -> its new Documents (profile items in list order, then the target)."""
    state = state if state is not None else _State()
    if not isinstance(obj, dict):
        raise InputError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}{where}")
    user = _user_id(obj, path, line, where)
    profile = _profile(obj, path, line, where)
    target_text = obj.get("output")
    if target_text is not None and not isinstance(target_text, str):
        raise InputError(path, line, "output", f"expected a string, got {type(target_text).__name__}{where}")

    # Validate everything before emitting anything: a bad record yields nothing.
    # (doc_id, own timestamp or None, title, text) per profile item with text.
    entries: list[tuple[str, int | None, str, str]] = []
    empty_items = 0
    for position, item in enumerate(profile):
        timestamp = _explicit_timestamp(item, position, path, line, f" (profile item {position}){where}")
        text = cleaning.normalize_whitespace(_first_text(item, TEXT_FIELDS))
        if not text:
            empty_items += 1
            continue
        item_id = _common.string_field(item, "id")
        doc_id = f"{user}:{item_id.strip()}" if item_id and item_id.strip() else f"{user}:h{_common.short_hash(text)}"
        title = cleaning.normalize_inline(_first_text(item, TITLE_FIELDS))
        if not title and isinstance(item.get("input"), str):
            title = title_from_input(item["input"])
        entries.append((doc_id, timestamp, title, text))
    target_time = _explicit_timestamp(obj, len(profile), path, line, where)
    if empty_items:
        report.drop("empty_text", empty_items)

    documents: list[Document] = []
    clock = state.clock.get(user, 0)
    latest = -1
    for doc_id, timestamp, title, text in entries:
        known = state.timestamps.get(doc_id)
        if known is not None:  # already read (an earlier record of the same user)
            report.drop("duplicate_doc_id")
            latest = max(latest, known)
            continue
        if timestamp is None:
            timestamp = clock
            clock += 1
        document = _common.document(path, line, user, doc_id, timestamp, title, text, timestamp_field="date")
        latest = max(latest, timestamp)
        state.timestamps[doc_id] = timestamp
        documents.append(document)

    if target_text is None:
        report.drop("no_target")
    elif not (text := cleaning.normalize_whitespace(target_text)):
        report.drop("empty_text")
    else:
        record_id = _common.string_field(obj, "id")
        doc_id = f"{user}:target:{record_id.strip()}" if record_id and record_id.strip() else f"{user}:h{_common.short_hash(text)}"
        if doc_id in state.timestamps:
            report.drop("duplicate_doc_id")
        else:
            if target_time is None:
                target_time = max(latest + 1, clock)
                clock = target_time + 1
            title = cleaning.normalize_inline(_first_text(obj, TITLE_FIELDS))
            if not title and isinstance(obj.get("input"), str):
                title = title_from_input(obj["input"])
            document = _common.document(path, line, user, doc_id, target_time, title, text, timestamp_field="date")
            state.timestamps[doc_id] = target_time
            documents.append(document)
    state.clock[user] = clock
    return documents
