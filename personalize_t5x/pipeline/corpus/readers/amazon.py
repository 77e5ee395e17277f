"""Amazon product reviews (JSON lines) -> Documents.

Two published forms, detected per line:

- 2014 / 2018 (McAuley et al.): `reviewerID`, `asin`, `unixReviewTime` (seconds),
  `reviewTime` ("MM D, YYYY", used only when `unixReviewTime` is absent), `summary`,
  `reviewText` (absent on some 2018 lines), plus `overall`, `vote`, `style`, ...
- 2023 (McAuley Lab, Amazon-Reviews-2023): `user_id`, `asin`, `parent_asin`,
  `timestamp` in MILLISECONDS, `title`, `text`, plus `rating`, `helpful_vote`, ...

Mapping: `user_id` = reviewerID / user_id; `title` = summary / title; `text` =
reviewText / text with `<br />` turned into line breaks, HTML entities unescaped and
whitespace normalized; `timestamp` = unixReviewTime, or the 2023 timestamp // 1000.
`doc_id` = `"<user>:<asin>:<time>"` (2014/2018: time in seconds; 2023: the original
milliseconds, which keeps two reviews of one item apart): the same reviewer reviewing
the same item at the same moment is the same review.

Dropped and counted: empty or missing review text (`empty_text`), a doc id already read
(`duplicate_doc_id`: the 2018 files repeat some reviews verbatim). Malformed lines (bad
JSON, invalid UTF-8, a line in neither form, missing ids, a 2014 time in milliseconds or
a 2023 time in seconds) are located errors.
"""
from __future__ import annotations

import functools

import datetime as dt
import calendar
from typing import Any, Iterator, Sequence

from personalize_t5x.pipeline.corpus import cleaning
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common
from personalize_t5x.pipeline.corpus.records import MAX_PLAUSIBLE_SECONDS, Document


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    seen = _common.SeenIds()
    for path in paths:
        yield from _common.kept_documents(
            (functools.partial(convert, obj, path, line, report) for line, obj in _common.iter_json_lines(path, report)),
            report=report, seen=seen)


def convert(obj: dict[str, Any], path: str, line: int, report: StageReport) -> Document | None:
    """One review line -> Document; None when dropped (counted in `report`)."""
    if "reviewerID" in obj:
        return _convert_2014(obj, path, line, report)
    if "user_id" in obj:
        return _convert_2023(obj, path, line, report)
    raise InputError(path, line, "reviewerID", "missing: neither the 2014/2018 form (reviewerID) nor the 2023 form (user_id)")


def _text_field(obj: dict[str, Any], key: str, path: str, line: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(path, line, key, f"expected a string, got {type(value).__name__}")
    return value


def _id_field(obj: dict[str, Any], key: str, path: str, line: int) -> str:
    value = _common.string_field(obj, key)
    if value is None or not value.strip():
        raise InputError(path, line, key, "missing or not a non-empty string")
    return value.strip()


def _convert_2014(obj: dict[str, Any], path: str, line: int, report: StageReport) -> Document | None:
    user = _id_field(obj, "reviewerID", path, line)
    asin = _id_field(obj, "asin", path, line)
    if obj.get("unixReviewTime") is not None:
        try:
            timestamp = _common.parse_epoch_seconds(obj["unixReviewTime"])
        except ValueError as e:
            raise InputError(path, line, "unixReviewTime", str(e)) from None
    elif isinstance(obj.get("reviewTime"), str):
        try:
            day = dt.datetime.strptime(" ".join(obj["reviewTime"].replace(",", " ").split()), "%m %d %Y")
        except ValueError:
            raise InputError(path, line, "reviewTime", f"not 'MM DD, YYYY': {obj['reviewTime']!r}") from None
        timestamp = calendar.timegm(day.timetuple())
    else:
        raise InputError(path, line, "unixReviewTime", "missing (and no reviewTime)")
    text = cleaning.unescape_and_normalize(_text_field(obj, "reviewText", path, line))
    if not text:
        report.drop("empty_text")
        return None
    title = cleaning.normalize_inline(cleaning.unescape_and_normalize(_text_field(obj, "summary", path, line)))
    return _common.document(path, line, user, f"{user}:{asin}:{timestamp}", timestamp, title, text,
                            timestamp_field="unixReviewTime" if obj.get("unixReviewTime") is not None else "reviewTime")


def _convert_2023(obj: dict[str, Any], path: str, line: int, report: StageReport) -> Document | None:
    user = _id_field(obj, "user_id", path, line)
    asin = _common.string_field(obj, "asin") or _common.string_field(obj, "parent_asin")
    if not asin or not asin.strip():
        raise InputError(path, line, "asin", "missing (and no parent_asin)")
    millis = obj.get("timestamp")
    if isinstance(millis, str) and millis.strip().isdigit():
        millis = int(millis)
    if isinstance(millis, bool) or not isinstance(millis, int):
        raise InputError(path, line, "timestamp", "missing or not an integer (milliseconds since the epoch)" if millis is None else f"not integer milliseconds: {millis!r}")
    if millis < 0:
        raise InputError(path, line, "timestamp", f"negative timestamp: {millis}")
    if millis < MAX_PLAUSIBLE_SECONDS:
        # 2023 timestamps are milliseconds: 1e11 ms is 1973, before any Amazon review.
        raise InputError(path, line, "timestamp", f"looks like seconds: {millis} (the 2023 form has milliseconds)")
    timestamp = millis // 1000
    text = cleaning.unescape_and_normalize(_text_field(obj, "text", path, line))
    if not text:
        report.drop("empty_text")
        return None
    title = cleaning.normalize_inline(cleaning.unescape_and_normalize(_text_field(obj, "title", path, line)))
    return _common.document(path, line, user, f"{user}:{asin.strip()}:{millis}", timestamp, title, text)
